# Operations on a whole base dir, for the airflow-ssh-jobs command: list the job directories
# with their state (the poll's own probes, `poll_job` in lib.sh) and remove finished ones
# (`cleanup_job` in lib.sh). Read-only except `reap_job`. POSIX sh; the caller defines T and puts process.sh
# and lib.sh before this file.

# mtime_of PATH: mtime = PATH's modification time in seconds since the epoch, or nothing.
mtime_of() {
  mtime=$(stat -c %Y -- "$1" 2>/dev/null) || mtime=$(stat -f %m -- "$1" 2>/dev/null) ||
    mtime=$(perl -e 'print((lstat $ARGV[0])[9])' -- "$1" 2>/dev/null) || mtime=
  case $mtime in ''|*[!0-9]*) mtime= ;; esac
}

# newest_of PATH...: mtime = the latest modification time of the PATHs that exist.
newest_of() {
  newest=
  for path in "$@"; do
    if [ -e "$path" ]; then
      mtime_of "$path"
      if [ -n "$mtime" ] && { [ -z "$newest" ] || [ "$mtime" -gt "$newest" ]; }; then newest=$mtime; fi
    fi
  done
  mtime=$newest
}

# list_jobs BASE: one "entry" line per direct child of BASE named af_* (a job id: no other
# characters than the protocol's), then its poll answer; the clock of the host first.
list_jobs() {
  echo "$T now at=$(date +%s) len=0"
  key=0
  for job_dir in "$1"/af_*; do
    name=${job_dir##*/}
    case $name in *[!A-Za-z0-9_.-]*) continue ;; esac
    if [ ! -d "$job_dir" ] || [ -L "$job_dir" ]; then continue; fi
    mtime_of "$job_dir/token"
    [ -n "$mtime" ] || mtime_of "$job_dir"
    created=$mtime
    newest_of "$job_dir" "$job_dir/stdout.log" "$job_dir/exit_code"
    token=
    [ -f "$job_dir/token" ] && read -r token < "$job_dir/token" 2>/dev/null
    case $token in *[!0-9a-f]*) token= ;; esac
    echo "$T entry key=$key name=$name created=$created active=$mtime token=$token len=0"
    poll_job "$key" "$job_dir" 0 0 0 ""
    key=$((key + 1))
  done
}

# reap_job KEY DIR TOKEN: remove a finished job's directory (`cleanup_job`), unless its job runs again by now.
reap_job() {
  # shellcheck disable=SC2034 # read by ended_record in lib.sh
  NO_ENDED=1
  poll_state "$1" "$2" "$3"
  reap_header=
  eval "reap_header=\${job_header_$1:-}"
  case $reap_header in
    *alive=1*) echo "$T cleanup key=$1 state=running len=0" ;;
    *) cleanup_job "$1" "$2" "$3" ;;
  esac
}
