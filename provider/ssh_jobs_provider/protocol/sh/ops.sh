# Operations on a whole base dir, for the airflow-ssh-jobs command: list the job directories
# with their state (the poll's own probes, `q` and `w` in lib.sh) and remove finished ones
# (`c` in lib.sh). Read-only except `r`. POSIX sh; the caller defines T and puts process.sh
# and lib.sh before this file.

# mtime_of PATH: mt = PATH's modification time in seconds since the epoch, or nothing.
mtime_of() {
  mt=$(stat -c %Y -- "$1" 2>/dev/null) || mt=$(stat -f %m -- "$1" 2>/dev/null) ||
    mt=$(perl -e 'print((lstat $ARGV[0])[9])' -- "$1" 2>/dev/null) || mt=
  case $mt in ''|*[!0-9]*) mt= ;; esac
}

# newest_of PATH...: mt = the latest modification time of the PATHs that exist.
newest_of() {
  nw=
  for f in "$@"; do
    if [ -e "$f" ]; then
      mtime_of "$f"
      if [ -n "$mt" ] && { [ -z "$nw" ] || [ "$mt" -gt "$nw" ]; }; then nw=$mt; fi
    fi
  done
  mt=$nw
}

# list_jobs BASE: one "entry" line per direct child of BASE named af_* (a job id: no other
# characters than the protocol's), then its poll answer; the clock of the host first.
list_jobs() {
  echo "$T now at=$(date +%s) len=0"
  i=0
  for d in "$1"/af_*; do
    n=${d##*/}
    case $n in *[!A-Za-z0-9_.-]*) continue ;; esac
    if [ ! -d "$d" ] || [ -L "$d" ]; then continue; fi
    mtime_of "$d/token"
    [ -n "$mt" ] || mtime_of "$d"
    created=$mt
    newest_of "$d" "$d/stdout.log" "$d/exit_code"
    t=
    [ -f "$d/token" ] && read -r t < "$d/token" 2>/dev/null
    case $t in *[!0-9a-f]*) t= ;; esac
    echo "$T entry key=$i name=$n created=$created active=$mt token=$t len=0"
    poll_job "$i" "$d" 0 0 0 ""
    i=$((i + 1))
  done
}

# reap_job KEY DIR TOKEN: remove a finished job's directory (`cleanup_job`), unless its job runs again by now.
reap_job() {
  # shellcheck disable=SC2034 # read by ended_record in lib.sh
  NO_ENDED=1
  poll_state "$1" "$2" "$3"
  rh=
  eval "rh=\${job_header_$1:-}"
  case $rh in
    *alive=1*) echo "$T cleanup key=$1 state=running len=0" ;;
    *) cleanup_job "$1" "$2" "$3" ;;
  esac
}
