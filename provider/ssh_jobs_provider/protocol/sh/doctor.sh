# The doctor's look at a host: which tools are there, whether the base dir passes the submit's
# checks (check_chain, submit.sh) and is writable, its free space and the processors. Leaves
# nothing behind. POSIX sh; the caller defines answer_tag and puts process.sh, lib.sh and submit.sh
# before this file.
# shellcheck disable=SC2154 # why comes from submit.sh, answer_tag from the caller

# tools NAME...: one answer per tool, tool_found=1 when `command -v` finds it.
tools() {
  for tool_name in "$@"; do
    if command -v "$tool_name" >/dev/null 2>&1; then tool_found=1; else tool_found=0; fi
    echo "$answer_tag tool name=$tool_name found=$tool_found len=0"
  done
}

# base BASE: the deepest existing directory of BASE, whether it and the path to it pass the
# submit's checks, whether a directory can be created in it (and removed again), whether a
# file in it can be executed (not on a noexec mount), its space.
base() {
  base_probe_dir=$1
  while [ ! -e "$base_probe_dir" ] && [ ! -L "$base_probe_dir" ]; do
    base_probe_dir=${base_probe_dir%/*}
    [ -n "$base_probe_dir" ] || base_probe_dir=/
  done
  base_exists=0
  [ "$base_probe_dir" = "$1" ] && base_exists=1
  check_chain "$base_probe_dir"
  base_trusted=1
  [ -z "$why" ] || base_trusted=0
  base_writable=0 base_left=0 base_executes=
  base_probe="$base_probe_dir/.airflow-ssh-jobs-doctor.$$"
  if mkdir -m 700 "$base_probe" 2>/dev/null; then
    if printf 'x\n' > "$base_probe/f" 2>/dev/null && mv -f "$base_probe/f" "$base_probe/g" 2>/dev/null; then base_writable=1; fi
    # Executing a file is the one honest test: mount options, security modules and every
    # system's own way of reporting them all end in this answer.
    if [ "$base_writable" = 1 ] && printf '#!/bin/sh\nexit 0\n' > "$base_probe/x" 2>/dev/null && chmod 700 "$base_probe/x" 2>/dev/null; then
      base_executes=0
      if "$base_probe/x" >/dev/null 2>&1; then base_executes=1; fi
    fi
    rm -rf -- "$base_probe" 2>/dev/null
    [ ! -e "$base_probe" ] || base_left=1
  fi
  base_kib=$(df_available "$base_probe_dir")
  echo "$answer_tag base exists=$base_exists trusted=$base_trusted writable=$base_writable exec=$base_executes left=$base_left kib=${base_kib:-} len=0"
  printf 'dir %s\n' "$base_probe_dir"
  printf 'why %s\n' "$why"
}

# facts: the host's processors and user.
facts() {
  cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo)
  echo "$answer_tag facts cpus=$cpus uid=$(id -u) len=0"
}
