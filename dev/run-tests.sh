#!/usr/bin/env bash
# The project's test command: set up what is missing, lint, type-check, build the docs
# (warnings are errors), run every test.
# Extra arguments go to pytest (e.g. `bash dev/run-tests.sh -k trigger`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash dev/setup-env.sh
echo "== ruff"
.venv/bin/ruff check provider tests dev docs
.venv/bin/ruff format --check provider tests dev docs
echo "== shellcheck (the remote-job scripts)"
shellcheck -s sh provider/ssh_jobs_provider/protocol/sh/*.sh
echo "== mypy"
.venv/bin/mypy
echo "== docs"
.venv/bin/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html
echo "== pytest"
start=$(date +%s)
status=0
.venv/bin/pytest "$@" || status=$?
echo "== test suite wall time: $(( $(date +%s) - start ))s"
exit $status
