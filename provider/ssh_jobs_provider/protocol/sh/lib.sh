# Functions shared by every remote-job script: path safety, the state probe, the kill.
# The scripts are fed to `/bin/sh -s` and must stay POSIX sh (dash, busybox ash, bash).
# The caller defines T, the protocol tag every answer line starts with.

# stat_of PATH: m = PATH's mode string and o = its owner's uid, as `ls -ldn` shows them.
# Symbolic links are not followed; both are empty when PATH cannot be examined.
stat_of() {
  m='' o=''
  set -f
  # shellcheck disable=SC2046 # the fields are wanted as separate words
  set -- $(ls -ldn "$1" 2>/dev/null)
  set +f
  m=${1:-} o=${3:-}
}

# whoami_uid: me = the SSH user's uid (asked once per script).
whoami_uid() {
  [ -n "${me:-}" ] || me=$(id -u)
}

# unsafe DIR: why = why DIR may not be trusted, or nothing. The rule is sshd's StrictModes:
# owned by the SSH user or root, and not writable by group or others unless the sticky bit
# is set (then others may add entries of their own, but never remove or rename ours).
unsafe() {
  why=
  whoami_uid
  stat_of "$1"
  case $m in
    d*) ;;
    l*) why="is a symbolic link"; return 0 ;;
    '') why="cannot be examined"; return 0 ;;
    *) why="is not a directory"; return 0 ;;
  esac
  if [ "$o" != "$me" ] && [ "$o" != 0 ]; then
    why="is owned by uid $o, not by the SSH user (uid $me) or root"
    return 0
  fi
  case $m in
    ?????????[tT]*) ;;
    ?????w*|????????w*) why="is writable by group or others (mode $m) and not sticky" ;;
  esac
}

# check_chain DIR: why = "<component> <reason>" for the first untrusted component of DIR, or
# nothing. Every component of the path as written is checked, not only the resolved path:
# each later step goes through the literal path again, so a symbolic link on it must be one
# nobody else can re-point (owned by the SSH user or root, in a directory that passed), and
# then the directories it leads to are checked as well.
check_chain() {
  why=
  unsafe /
  if [ -n "$why" ]; then why="/ $why"; return 0; fi
  c='' rest=${1#/}
  while [ -n "$rest" ]; do
    c="$c/${rest%%/*}"
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    stat_of "$c"
    case $m in
      l*)
        whoami_uid
        if [ "$o" != "$me" ] && [ "$o" != 0 ]; then
          why="$c is a symbolic link owned by uid $o, not by the SSH user (uid $me) or root"
          return 0
        fi
        check_resolved "$c"
        if [ -n "$why" ]; then return 0; fi
        ;;
      *)
        unsafe "$c"
        if [ -n "$why" ]; then why="$c $why"; return 0; fi
        ;;
    esac
  done
}

# check_resolved LINK: why = the first untrusted directory on the path LINK resolves to.
check_resolved() {
  why=
  phys=$(cd -P "$1" 2>/dev/null && pwd -P) || { why="$1 cannot be entered"; return 0; }
  r='' rest_r=${phys#/}
  while [ -n "$rest_r" ]; do
    r="$r/${rest_r%%/*}"
    case $rest_r in */*) rest_r=${rest_r#*/} ;; *) rest_r= ;; esac
    unsafe "$r"
    if [ -n "$why" ]; then why="$r $why"; return 0; fi
  done
}

# owned_by_job DIR TOKEN: success when DIR is a directory of the SSH user's and, when TOKEN
# is given, the token recorded in it is TOKEN.
owned_by_job() {
  whoami_uid
  stat_of "$1"
  case $m in d*) ;; *) return 1 ;; esac
  [ "$o" = "$me" ] || return 1
  [ -z "$2" ] && return 0
  t=
  [ -f "$1/token" ] && read -r t < "$1/token"
  [ "$t" = "$2" ]
}

# fs_full DIR: success when the file system holding DIR has no space left for the SSH user.
fs_full() {
  [ "$(df_available "$1")" = 0 ]
}

# df_available DIR: the KiB available on DIR's file system. The column is found as the one
# before the capacity ("NN%"): a file system name may hold spaces (automounts, FUSE).
df_available() {
  df -P -k "$1" 2>/dev/null |
    awk 'NR == 2 { for (i = 2; i <= NF; i++) if ($i ~ /%$/) { print $(i - 1); exit } }'
}

# started_at PID: st = PID's start time in clock ticks since boot (Linux), else nothing.
started_at() {
  st=
  [ -r "/proc/$1/stat" ] || return 0
  read -r st < "/proc/$1/stat" || { st=; return 0; }
  # The command name (field 2) may hold spaces: the fields after it follow the last ") ".
  st=${st##*) }
  set -f
  # shellcheck disable=SC2086
  set -- $st
  set +f
  st=${20:-}
}

# is_wrapper PID: success when PID is alive and is the process that recorded its start time
# in ./start (the job's wrapper), not a later one given the same pid. The start time is the
# kernel's (Linux /proc), else what `ps -o lstart=` says; without a record, only a live pid
# in the same boot counts (the wrapper writes ./start before ./pid, so that is rare).
is_wrapper() {
  case $1 in ''|*[!0-9]*|0|1) return 1 ;; esac
  kill -0 "$1" 2>/dev/null || return 1
  if [ -n "$boot_now" ] && [ -f boot_id ]; then
    read -r b < boot_id
    [ "$b" = "$boot_now" ] || return 1
  fi
  [ -f start ] || return 0
  rec=
  read -r rec < start
  case $rec in
    '') return 0 ;;
    ps:*)
      # Word-split and re-joined: ps pads its columns differently from run to run.
      set -f
      # shellcheck disable=SC2046
      set -- $(ps -o lstart= -p "$1" 2>/dev/null)
      set +f
      [ "ps:$*" = "$rec" ]
      ;;
    *) started_at "$1"; [ "$st" = "$rec" ] ;;
  esac
}

boot_now=
[ -r /proc/sys/kernel/random/boot_id ] && read -r boot_now < /proc/sys/kernel/random/boot_id

# p KEY DIR OFFSET MAX DELIVERED TOKEN: one job's state, then up to MAX log bytes from OFFSET.
# Records DELIVERED (log bytes known to be in the task log) for a watcher that resumes.
# The order of the probes matters: liveness before exit code (so "dead and no exit code"
# really means vanished), exit code before log size (so a size reported with an exit code
# is final and the last bytes written before exit are never missed).
p() {
  k=$1 off=$3 max=$4 dl=$5 tok=$6
  if ! cd "$2" 2>/dev/null; then echo "$T poll key=$k state=missing len=0"; return 0; fi
  if [ -n "$tok" ]; then
    t=
    [ -f token ] && read -r t < token
    if [ "$t" != "$tok" ]; then echo "$T poll key=$k state=foreign len=0"; cd /; return 0; fi
  elif ! owned_by_job "$2" ""; then
    echo "$T poll key=$k state=foreign len=0"; cd /; return 0
  fi
  pid=
  [ -f pid ] && read -r pid < pid
  case $pid in ''|*[!0-9]*) pid= ;; esac
  alive=0
  if [ -n "$pid" ] && is_wrapper "$pid"; then alive=1; fi
  ec='' note=''
  [ -f exit_code ] && read -r ec note < exit_code
  # Only what the wrapper writes: a number, and "nospace" or nothing.
  case $ec in *[!0-9]*) ec= ;; esac
  case $note in nospace) ;; *) note= ;; esac
  size=0
  [ -f stdout.log ] && size=$(wc -c < stdout.log)
  size=$((size + 0))
  boot=unknown
  if [ -n "$boot_now" ] && [ -f boot_id ]; then
    read -r b < boot_id
    if [ "$b" = "$boot_now" ]; then boot=same; else boot=changed; fi
  fi
  claimed=0
  [ -d claimed ] && claimed=1
  full=0
  if [ "$alive" = 0 ] && [ -n "$pid" ] && [ -z "$ec" ] && fs_full .; then full=1; fi
  old=0
  [ -f delivered ] && read -r old < delivered
  case $old in ''|*[!0-9]*) old=0 ;; esac
  if [ "$dl" -gt "$old" ]; then printf '%s\n' "$dl" 2>/dev/null > delivered; fi
  n=0
  if [ "$size" -gt "$off" ]; then n=$((size - off)); if [ "$n" -gt "$max" ]; then n=$max; fi; fi
  echo "$T poll key=$k pid=$pid alive=$alive exit=$ec note=$note size=$size boot=$boot claimed=$claimed full=$full delivered=$old len=$n"
  if [ "$n" -gt 0 ]; then tail -c +$((off + 1)) stdout.log | head -c "$n"; fi
  cd / || true
}

# c KEY DIR TOKEN: remove one finished job's directory, and only if it is this job's.
# The token goes last: after a removal that failed half-way (a busy mount, a file another
# process holds), it is still there to prove the directory is this job's to the next attempt.
c() {
  if [ ! -e "$2" ] && [ ! -L "$2" ]; then s=absent
  elif ! owned_by_job "$2" "$3"; then s=foreign
  else
    kept=
    for f in "$2"/* "$2"/.[!.]* "$2"/..?*; do
      if [ ! -e "$f" ] && [ ! -L "$f" ]; then continue; fi
      [ "$f" = "$2/token" ] || rm -rf -- "$f" 2>/dev/null || kept=1
    done
    [ -n "$kept" ] || rm -rf -- "$2"
    if [ -e "$2" ]; then s=failed; else s=removed; fi
  fi
  echo "$T cleanup key=$1 state=$s len=0"
}
