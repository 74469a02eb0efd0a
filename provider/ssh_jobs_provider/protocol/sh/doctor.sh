# The doctor's look at a host: which tools are there, whether the base dir passes the submit's
# checks (check_chain, submit.sh) and is writable, its free space and the processors. Leaves
# nothing behind. POSIX sh; the caller defines T and puts process.sh, lib.sh and submit.sh
# before this file.
# shellcheck disable=SC2154 # why comes from submit.sh

# tools NAME...: one answer per tool, found=1 when `command -v` finds it.
tools() {
  for tool in "$@"; do
    if command -v "$tool" >/dev/null 2>&1; then found=1; else found=0; fi
    echo "$T tool name=$tool found=$found len=0"
  done
}

# base BASE: the deepest existing directory of BASE, whether it and the path to it pass the
# submit's checks, whether a directory can be created in it (and removed again), whether a
# file in it can be executed (not on a noexec mount), its space.
base() {
  dir=$1
  while [ ! -e "$dir" ] && [ ! -L "$dir" ]; do
    dir=${dir%/*}
    [ -n "$dir" ] || dir=/
  done
  exists=0
  [ "$dir" = "$1" ] && exists=1
  check_chain "$dir"
  trusted=1
  [ -z "$why" ] || trusted=0
  writable=0 left=0 executes=
  probe="$dir/.airflow-ssh-jobs-doctor.$$"
  if mkdir -m 700 "$probe" 2>/dev/null; then
    if printf 'x\n' > "$probe/f" 2>/dev/null && mv -f "$probe/f" "$probe/g" 2>/dev/null; then writable=1; fi
    # Executing a file is the one honest test: mount options, security modules and every
    # system's own way of reporting them all end in this answer.
    if [ "$writable" = 1 ] && printf '#!/bin/sh\nexit 0\n' > "$probe/x" 2>/dev/null && chmod 700 "$probe/x" 2>/dev/null; then
      executes=0
      if "$probe/x" >/dev/null 2>&1; then executes=1; fi
    fi
    rm -rf -- "$probe" 2>/dev/null
    [ ! -e "$probe" ] || left=1
  fi
  kib=$(df_available "$dir")
  echo "$T base exists=$exists trusted=$trusted writable=$writable exec=$executes left=$left kib=${kib:-} len=0"
  printf 'dir %s\n' "$dir"
  printf 'why %s\n' "$why"
}

# facts: the host's processors and user.
facts() {
  cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo)
  echo "$T facts cpus=$cpus uid=$(id -u) len=0"
}
