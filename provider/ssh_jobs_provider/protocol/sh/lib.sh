# Functions shared by every remote-job script: ownership, the job's liveness, the state
# probe and the cleanup. The scripts are fed to `/bin/sh -s` and must stay POSIX sh (dash,
# busybox ash, bash). The caller defines T, the protocol tag every answer line starts with,
# and puts process.sh before this file.
# shellcheck disable=SC2154 # st, pst and boot_now come from process.sh, which precedes this file

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

# trusted_owner: success when $o (from stat_of) is the SSH user or root.
trusted_owner() {
  whoami_uid
  [ "$o" = "$me" ] || [ "$o" = 0 ]
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
    ps:*) ps_started "$1"; [ "ps:$pst" = "$rec" ] ;;
    *) started_at "$1"; [ "$st" = "$rec" ] ;;
  esac
}

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
