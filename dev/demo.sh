#!/usr/bin/env bash
# The README's main-job command: prepare this machine, then run a fan-out of remote jobs
# through a real Airflow deployment against a real sshd on 127.0.0.1, and summarise it.
# Options go to dev/demo.py, e.g. `bash dev/demo.sh --tasks 100` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
setup_started=$(date +%s)
echo "== setting up (dev/setup-env.sh: openssh-server, postgresql, redis-server and .venv)"
bash dev/setup-env.sh
export SSH_JOBS_DEMO_SETUP_SECONDS=$(( $(date +%s) - setup_started ))
exec .venv/bin/python dev/demo.py "$@"
