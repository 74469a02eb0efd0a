#!/usr/bin/env bash
# Fan-out benchmark: this provider against apache-airflow-providers-ssh, side by side, against
# a throwaway sshd on 127.0.0.1. Options go to dev/bench/bench.py (see --help), e.g.
#   bash dev/bench/run.sh            # full run (burst and monitor 12 to 15 min on 2 cores, then scaling)
#   bash dev/bench/run.sh --quick    # small and short check (a few minutes)
#   bash dev/bench/run.sh --only scaling   # one scenario; only its tables and plots reach docs/
set -euo pipefail
cd "$(dirname "$0")/../.."

# The newest release at the time of writing; its SSHRemoteJobOperator already reuses one
# connection per task. Override with UPSTREAM_SSH_PROVIDER=<version>.
UPSTREAM_VERSION="${UPSTREAM_SSH_PROVIDER:-7.0.1}"

# openssh-server and the project's .venv, unless both are there already.
if [ ! -x /usr/sbin/sshd ] || ! .venv/bin/python -c "import ssh_jobs_provider, asyncssh, paramiko" 2>/dev/null; then
  bash dev/setup-env.sh
fi
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi
if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  echo "== installing the bench extra (matplotlib) into .venv"
  .venv/bin/python -m pip install -q -e ".[bench]"
fi

# The comparison gets its own virtualenv, with exactly the versions of Airflow and of every
# shared dependency that .venv has (pip freeze as constraints), so that only the provider differs.
AIRFLOW_VERSION="$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("apache-airflow"))')"
UPSTREAM_VENV="dev/out/bench/venv-upstream-${UPSTREAM_VERSION}-airflow-${AIRFLOW_VERSION}"
if ! "$UPSTREAM_VENV/bin/python" -c "import airflow.providers.ssh.operators.ssh_remote_job" 2>/dev/null; then
  echo "== creating $UPSTREAM_VENV (apache-airflow-providers-ssh==$UPSTREAM_VERSION, apache-airflow==$AIRFLOW_VERSION)"
  rm -rf "$UPSTREAM_VENV"
  mkdir -p dev/out/bench
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  .venv/bin/python -m pip freeze --exclude-editable | grep -v -e '^-e ' -e ' @ ' > "$constraints"
  "$(.venv/bin/python -c 'import sys; print(sys._base_executable)')" -m venv "$UPSTREAM_VENV"
  "$UPSTREAM_VENV/bin/python" -m pip install -q --upgrade pip
  "$UPSTREAM_VENV/bin/python" -m pip install -q -c "$constraints" \
    "apache-airflow==$AIRFLOW_VERSION" "apache-airflow-providers-ssh==$UPSTREAM_VERSION"
fi

exec .venv/bin/python dev/bench/bench.py --upstream-python "$UPSTREAM_VENV/bin/python" \
  --command "bash dev/bench/run.sh${*:+ $*}" "$@"
