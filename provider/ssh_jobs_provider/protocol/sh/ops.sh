# Operations on a whole base dir, for the airflow-ssh-jobs command: list the job directories
# with their state (the poll's own probes, `poll_job` in lib.sh) and remove finished ones
# (`cleanup_job` in lib.sh). Read-only except `reap_job`. POSIX sh; the caller defines answer_tag and puts process.sh
# and lib.sh before this file.
# shellcheck disable=SC2154 # answer_tag comes from the caller

# mtime_of PATH: mtime = PATH's modification time in seconds since the epoch, or nothing.
mtime_of() {
  mtime=$(stat -c %Y -- "$1" 2>/dev/null) || mtime=$(stat -f %m -- "$1" 2>/dev/null) ||
    mtime=$(perl -e 'print((lstat $ARGV[0])[9])' -- "$1" 2>/dev/null) || mtime=
  case $mtime in ''|*[!0-9]*) mtime= ;; esac
}

# newest_of PATH...: mtime = the latest modification time of the PATHs that exist.
newest_of() {
  newest_mtime=
  for newest_path in "$@"; do
    if [ -e "$newest_path" ]; then
      mtime_of "$newest_path"
      if [ -n "$mtime" ] && { [ -z "$newest_mtime" ] || [ "$mtime" -gt "$newest_mtime" ]; }; then newest_mtime=$mtime; fi
    fi
  done
  mtime=$newest_mtime
}

# list_jobs BASE: one "entry" line per direct child of BASE named af_* (a job id: no other
# characters than the protocol's), then its poll answer; the clock of the host first.
list_jobs() {
  echo "$answer_tag now at=$(date +%s) len=0"
  entry_key=0
  for entry_dir in "$1"/af_*; do
    entry_name=${entry_dir##*/}
    case $entry_name in *[!A-Za-z0-9_.-]*) continue ;; esac
    if [ ! -d "$entry_dir" ] || [ -L "$entry_dir" ]; then continue; fi
    mtime_of "$entry_dir/token"
    [ -n "$mtime" ] || mtime_of "$entry_dir"
    entry_created=$mtime
    newest_of "$entry_dir" "$entry_dir/stdout.log" "$entry_dir/exit_code"
    entry_token=
    [ -f "$entry_dir/token" ] && read -r entry_token < "$entry_dir/token" 2>/dev/null
    case $entry_token in *[!0-9a-f]*) entry_token= ;; esac
    echo "$answer_tag entry key=$entry_key name=$entry_name created=$entry_created active=$mtime token=$entry_token len=0"
    poll_job "$entry_key" "$entry_dir" 0 0 0 ""
    entry_key=$((entry_key + 1))
  done
}

# reap_job KEY DIR TOKEN: remove a finished job's directory (`cleanup_job`), unless its job runs again by now
# (a Slurm job's directory has no pid: it is kept while Slurm still has the job, see sh/slurm.sh).
reap_job() {
  # shellcheck disable=SC2034 # read by ended_record in lib.sh
  NO_ENDED=1
  poll_state "$1" "$2" "$3"
  reap_header=
  eval "reap_header=\${job_header_$1:-}"
  case $reap_header in
    *alive=1*) echo "$answer_tag cleanup key=$1 state=running len=0" ;;
    *)
      if slurm_job_active "$2"; then
        echo "$answer_tag cleanup key=$1 state=running len=0"
      else
        cleanup_job "$1" "$2" "$3"
      fi
      ;;
  esac
}
