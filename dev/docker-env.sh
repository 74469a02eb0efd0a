# shellcheck shell=bash
# Sourced by dev/run-tests.sh: make a Docker engine and the OpenSSH 10 test image available
# for the container-backed tests (tests/support/sshd_container.py).
#
# - installs docker.io and debootstrap when missing (root only; otherwise prints the command);
# - starts dockerd when no engine answers, logging to $SSH_JOBS_TEST_CACHE/dockerd.log, and
#   stops it again at exit only if it started it (by the pid it started);
# - builds the image with dev/sshd-image/build.sh (cached).
# When Docker cannot run here, it exports SSH_JOBS_DOCKER_UNAVAILABLE=<reason>: the container
# tests then skip with that reason, or fail when CI=true.
#
# The engine started here has no bridge network and adds no iptables rules: the tests use
# host networking on 127.0.0.1 only.

SSH_JOBS_TEST_CACHE="${SSH_JOBS_TEST_CACHE:-/var/cache/ssh-jobs-test}"
DOCKERD_START_TIMEOUT=60
_started_dockerd_pid=""

_docker_unavailable() {
  export SSH_JOBS_DOCKER_UNAVAILABLE="$1"
  echo "docker: $1 (the container tests will be skipped)" >&2
}

_docker_answers() {
  command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1
}

stop_started_dockerd() {
  local pid="$_started_dockerd_pid"
  [ -n "$pid" ] || return 0
  _started_dockerd_pid=""
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # dockerd stops its containers and its containerd first; give it a bounded time.
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "docker: dockerd (pid $pid) ignored SIGTERM for 30s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  echo "docker: stopped the dockerd this run started (pid $pid)"
}

ensure_docker_env() {
  unset SSH_JOBS_DOCKER_UNAVAILABLE
  local need_apt=()
  command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
  if [ ${#need_apt[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "docker: for the container tests, install: sudo apt-get install -y ${need_apt[*]}" >&2
    else
      echo "docker: installing ${need_apt[*]}"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null; } \
        || { _docker_unavailable "apt-get could not install ${need_apt[*]}"; return 0; }
    fi
  fi

  if ! _docker_answers; then
    if [ "$(id -u)" -ne 0 ]; then
      _docker_unavailable "no Docker engine reachable, and only root may start one here"
      return 0
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
      _docker_unavailable "dockerd is not installed"
      return 0
    fi
    mkdir -p "$SSH_JOBS_TEST_CACHE"
    local log="$SSH_JOBS_TEST_CACHE/dockerd.log"
    echo "docker: starting dockerd (log: $log)"
    dockerd --iptables=false --ip6tables=false --bridge=none >>"$log" 2>&1 &
    _started_dockerd_pid=$!
    local waited=0
    until _docker_answers; do
      if ! kill -0 "$_started_dockerd_pid" 2>/dev/null; then
        _started_dockerd_pid=""
        _docker_unavailable "dockerd exited during start-up; see $log"
        tail -n 5 "$log" >&2
        return 0
      fi
      if [ "$waited" -ge $((DOCKERD_START_TIMEOUT * 5)) ]; then
        stop_started_dockerd
        _docker_unavailable "dockerd did not answer within ${DOCKERD_START_TIMEOUT}s; see $log"
        return 0
      fi
      sleep 0.2
      waited=$((waited + 1))
    done
  fi

  local image="${SSH_JOBS_TEST_IMAGE:-local/sshd:openssh10}"
  if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null 2>&1; then
    if ! docker image inspect "$image" >/dev/null 2>&1; then
      _docker_unavailable "image $image missing; build it as root with: bash dev/sshd-image/build.sh"
    fi
    return 0
  fi
  # A broken recipe is a real failure, not a reason to skip.
  SSH_JOBS_TEST_IMAGE="$image" SSH_JOBS_TEST_CACHE="$SSH_JOBS_TEST_CACHE" bash dev/sshd-image/build.sh
}
