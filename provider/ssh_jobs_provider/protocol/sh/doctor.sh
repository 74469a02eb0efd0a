# The doctor's look at a host: which tools are there, whether the base dir passes the submit's
# checks (check_chain, submit.sh) and is writable, its free space and the processors. Leaves
# nothing behind. POSIX sh; the caller defines T and puts process.sh, lib.sh and submit.sh
# before this file.
# shellcheck disable=SC2154 # why comes from submit.sh

# tools NAME...: one answer per tool, found=1 when `command -v` finds it.
tools() {
  for tl in "$@"; do
    if command -v "$tl" >/dev/null 2>&1; then f=1; else f=0; fi
    echo "$T tool name=$tl found=$f len=0"
  done
}

# base BASE: the deepest existing directory of BASE, whether it and the path to it pass the
# submit's checks, whether a directory can be created in it (and removed again), whether a
# file in it can be executed (not on a noexec mount), its space.
base() {
  d=$1
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do
    d=${d%/*}
    [ -n "$d" ] || d=/
  done
  ex=0
  [ "$d" = "$1" ] && ex=1
  check_chain "$d"
  tr=1
  [ -z "$why" ] || tr=0
  wr=0 left=0 exe=
  probe="$d/.airflow-ssh-jobs-doctor.$$"
  if mkdir -m 700 "$probe" 2>/dev/null; then
    if printf 'x\n' > "$probe/f" 2>/dev/null && mv -f "$probe/f" "$probe/g" 2>/dev/null; then wr=1; fi
    # Executing a file is the one honest test: mount options, security modules and every
    # system's own way of reporting them all end in this answer.
    if [ "$wr" = 1 ] && printf '#!/bin/sh\nexit 0\n' > "$probe/x" 2>/dev/null && chmod 700 "$probe/x" 2>/dev/null; then
      exe=0
      if "$probe/x" >/dev/null 2>&1; then exe=1; fi
    fi
    rm -rf -- "$probe" 2>/dev/null
    [ ! -e "$probe" ] || left=1
  fi
  kib=$(df_available "$d")
  echo "$T base exists=$ex trusted=$tr writable=$wr exec=$exe left=$left kib=${kib:-} len=0"
  printf 'dir %s\n' "$d"
  printf 'why %s\n' "$why"
}

# facts: the host's processors and user.
facts() {
  cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc 2>/dev/null || echo)
  echo "$T facts cpus=$cpus uid=$(id -u) len=0"
}
