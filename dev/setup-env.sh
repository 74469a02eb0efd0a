#!/usr/bin/env bash
# Prepare a fresh machine: OpenSSH server (the tests start their own sshd on loopback),
# Graphviz (the docs render their diagrams with `dot`), ShellCheck (the remote scripts are
# checked like any other code), BusyBox (a test plays a host with only its tools), Slurm and
# munge (the tests start a single-node cluster of their own: dev/harness/slurm.py) and the
# project's virtualenv in .venv (left out with --system-only: the run against one Airflow
# release brings its own virtualenv).
# Safe to run again; only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_apt+=(openssh-client)
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)
command -v shellcheck >/dev/null 2>&1 || need_apt+=(shellcheck)
command -v busybox >/dev/null 2>&1 || need_apt+=(busybox-static)
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
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
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
.venv/bin/python -m pip install -q -e ".[test,docs]"
