#!/usr/bin/env bash
# The README's main-job command: prepare this machine, then run a fan-out of remote jobs
# through a real Airflow deployment against a real sshd on 127.0.0.1, and summarise it.
# Options go to dev/demo.py, e.g. `bash dev/demo.sh --tasks 100` (see --help), except
# `--airflow-version 2.11.2`: run it on that Airflow release instead of the newest, from its
# own virtualenv (dev/airflow-venv.sh; built on first use, about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
airflow_version=""
demo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --airflow-version)
      airflow_version="${2:?--airflow-version needs a release, e.g. --airflow-version 2.11.2}"
      shift 2
      ;;
    --airflow-version=*) airflow_version="${1#*=}"; shift ;;
    *) demo_args+=("$1"); shift ;;
  esac
done
setup_started=$(date +%s)
if [ -n "$airflow_version" ]; then
  echo "== setting up (dev/setup-env.sh --system-only, dev/airflow-venv.sh $airflow_version)"
  bash dev/setup-env.sh --system-only
  python="$(bash dev/airflow-venv.sh "$airflow_version" | tail -n 1)/bin/python"
else
  echo "== setting up (dev/setup-env.sh: openssh-server, postgresql, redis-server, slurm and .venv)"
  bash dev/setup-env.sh
  python=.venv/bin/python
fi
export SSH_JOBS_DEMO_SETUP_SECONDS=$(( $(date +%s) - setup_started ))
exec "$python" dev/demo.py "${demo_args[@]}"
