#!/usr/bin/env bash
# Prepare a fresh machine: OpenSSH server (the tests start their own sshd on loopback),
# Graphviz (the docs render their diagrams with `dot`), ShellCheck (the remote scripts are
# checked like any other code), BusyBox (a test plays a host with only its tools),
# PostgreSQL and Redis (the production-shaped Airflow of the e2e tests and `demo.sh --production`
# runs its own of each, dev/harness/services.py), Slurm and munge (the tests start a single-node
# cluster of their own: dev/harness/slurm.py) and the project's virtualenv in .venv with the
# Celery executor and a PostgreSQL driver (left out with --system-only: the run against one
# Airflow release brings its own virtualenv).
# Safe to run again; only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox-static)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need_apt+=(postgresql)
[ -x /usr/bin/redis-server ] || need_apt+=(redis-server)
# Debian's packages, no systemd units started: the tests run the daemons themselves.
for slurm_part in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
  command -v "${slurm_part%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${slurm_part%%:*}" ] ||
    need_apt+=("${slurm_part#*:}")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Please install: ${need_apt[*]} (e.g. sudo apt-get install -y ${need_apt[*]})" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Installing postgresql or redis-server starts a system-wide server on its fixed port; the
  # tests start their own on free loopback ports, so the install is told to start nothing
  # (policy-rc.d exit 101), unless the machine already has a policy of its own.
  policy=/usr/sbin/policy-rc.d
  made_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  status=0
  apt-get update -qq || status=$?
  if [ "$status" -eq 0 ]; then
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null || status=$?
  fi
  if [ -n "$made_policy" ]; then rm -f "$policy"; fi
  if [ "$status" -ne 0 ]; then exit "$status"; fi
fi
# Root's sshd refuses to start without its privilege-separation directory.
if [ "$(id -u)" -eq 0 ]; then mkdir -p /run/sshd; fi

if [ "${1:-}" = --system-only ]; then
  exit 0
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,docs,production]"
