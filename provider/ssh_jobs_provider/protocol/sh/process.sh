# Process and file-system facts, shared by the remote-job scripts (through lib.sh's prelude)
# and by the detached wrapper (run.sh starts with this file): both sides must record and
# compare them the same way.
# shellcheck disable=SC2034 # start_ticks, ps_start, boot_now are read by the script this file precedes

# proc_stat PID: proc_fields = the fields of /proc/PID/stat after the command name (field 3 on:
# the state letter first), else nothing. The command name (field 2) may hold spaces: the fields
# after it follow the last ") ".
proc_stat() {
  proc_fields=
  [ -r "/proc/$1/stat" ] || return 0
  read -r proc_fields < "/proc/$1/stat" || { proc_fields=; return 0; }
  proc_fields=${proc_fields##*) }
}

# started_at PID: start_ticks = PID's start time in clock ticks since boot (Linux), else nothing.
started_at() {
  proc_stat "$1"
  set -f
  # shellcheck disable=SC2086
  set -- $proc_fields
  set +f
  start_ticks=${20:-}
}

# has_exited PID: success when PID is a process that has exited and waits to be reaped (a
# zombie, state Z or X in /proc): it is the same process still (is_wrapper holds), but no longer
# at work. Its parent, usually init, may reap it late or, a careless one, never.
has_exited() {
  proc_stat "$1"
  case $proc_fields in Z\ *|X\ *) return 0 ;; esac
  return 1
}

# ps_started PID: ps_start = PID's start time as `ps -o lstart=` shows it (where there is no
# /proc), its words re-joined: ps pads its columns differently from run to run.
ps_started() {
  set -f
  # shellcheck disable=SC2046
  set -- $(ps -o lstart= -p "$1" 2>/dev/null)
  set +f
  ps_start="$*"
}

# df_available DIR: the KiB available on DIR's file system. The column is found as the one
# before the capacity ("NN%"): a file system name may hold spaces (automounts, FUSE).
df_available() {
  df -P -k "$1" 2>/dev/null |
    awk 'NR == 2 { for (i = 2; i <= NF; i++) if ($i ~ /%$/) { print $(i - 1); exit } }'
}

# fs_full DIR: success when the file system holding DIR has no space left for the SSH user.
fs_full() {
  [ "$(df_available "$1")" = 0 ]
}

boot_now=
[ -r /proc/sys/kernel/random/boot_id ] && read -r boot_now < /proc/sys/kernel/random/boot_id
