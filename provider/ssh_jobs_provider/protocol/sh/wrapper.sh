# The detached wrapper (run.sh in the job directory, after process.sh and shebang.sh): claims
# the job, runs the command and records how it ended. Started as
# `/bin/sh <job_dir>/run.sh <job_dir>` under setsid (or nohup), so its pid leads the job's
# process group; as `/bin/sh <job_dir>/run.sh <job_dir> recorded <bash>` by a perl submit that took
# its first steps (the claim, the start time, the boot id and the pid) in the process that then
# became this wrapper, the same steps without a process for mkdir and mv (perl/submit.pl's
# record_wrapper).
# shellcheck disable=SC2154 # start_ticks, ps_start and boot_now come from process.sh, which precedes this file
# cannot_run PATH: fails, saying why, when PATH cannot be started: status 127 when there is no
# such file, 126 when it is not an executable file. In words of ours, not of whichever shell
# runs this: the perl twin (perl/wrapper.pl) says the same.
cannot_run() {
  if [ ! -e "$1" ]; then
    echo "ssh-jobs: cannot run $1: no such file" >&2
    return 127
  fi
  if [ -d "$1" ] || [ ! -x "$1" ]; then
    echo "ssh-jobs: cannot run $1: not an executable file" >&2
    return 126
  fi
}

wrapper_job_dir=$1
cd "$wrapper_job_dir" || exit 1
if [ "${2:-}" != recorded ]; then
  # The one wrapper that creates "claimed" owns the job; any later one leaves at once.
  mkdir claimed 2>/dev/null || exit 0
  # The start time and boot id come before the pid: whoever sees the pid can verify it (the
  # poll compares them the same way, with the functions of process.sh).
  started_at $$
  if [ -n "$start_ticks" ]; then printf '%s\n' "$start_ticks" > start; else ps_started $$; printf 'ps:%s\n' "$ps_start" > start; fi
  if [ -n "$boot_now" ]; then printf '%s\n' "$boot_now" > boot_id; fi
  # Without a recorded pid the job could neither be watched nor killed: do not run it.
  { printf '%s\n' $$ > pid.tmp && mv -f pid.tmp pid; } || exit 1
fi
# Record a status even when the group is signalled: the trap runs after the child ends.
trap 'got_signal=1' HUP INT TERM

# Everything the wrapper needs is resolved before the job's environment applies: a PATH (or
# anything else) in `environment` changes the command's world, never the wrapper's.
first=
IFS= read -r first < command.sh
# The command's shell: bash where there is one, else /bin/sh (a perl submit that recorded the
# wrapper looked it up too, and passes it: one process less).
shell=/bin/sh
if [ "${2:-}" = recorded ]; then
  shell=${3:-/bin/sh}
else
  bash_path=$(command -v bash 2>/dev/null) && [ -n "$bash_path" ] && shell=$bash_path
fi
wrapper_work_dir=
[ -f workdir ] && IFS= read -r wrapper_work_dir < workdir
# shellcheck disable=SC2088 # a literal "~" from the operator's remote_working_dir
case $wrapper_work_dir in
  ''|'~') wrapper_work_dir=${HOME:-/} ;;
  '~/'*) wrapper_work_dir=${HOME:-}/${wrapper_work_dir#??} ;;
esac
marker=
read -r marker < marker
(
  if ! cd "$wrapper_work_dir" 2>/dev/null; then
    echo "ssh-jobs: cannot enter the working directory $wrapper_work_dir" >&2
    exit 126
  fi
  SSH_JOBS_JOB_ID=${wrapper_job_dir##*/}
  SSH_JOBS_JOB_DIR=$wrapper_job_dir
  SSH_JOBS_LOG_FILE=$wrapper_job_dir/stdout.log
  SSH_JOBS_JOB_MARKER=$marker
  export SSH_JOBS_JOB_ID SSH_JOBS_JOB_DIR SSH_JOBS_LOG_FILE SSH_JOBS_JOB_MARKER
  # The command line is settled before env.sh runs: it may set any name, the wrapper's own
  # variables too, but never the positional parameters. command.sh is never executed itself:
  # the job directory's file system may be mounted noexec.
  case $first in
    '#!'*)
      shebang_of "$first" || exit 126
      set -- "$sb_interp" "$sb_arg" "$wrapper_job_dir/command.sh"
      [ -n "$sb_arg" ] || set -- "$1" "$3"
      ;;
    *) set -- "$shell" "$wrapper_job_dir/command.sh" ;;
  esac
  # shellcheck disable=SC1091 # written by the submit
  . "$wrapper_job_dir/env.sh"
  cannot_run "$1" || exit
  exec "$@"
) </dev/null >>"$wrapper_job_dir/stdout.log" 2>&1
wrapper_status=$?
# The log's size as the job ended: a watcher reads the log up to here, and no further than a
# bound past it, however long processes the job left behind go on writing.
# Only a plain file is measured: the job may have put a FIFO or a device in its place.
log_end=
[ -f stdout.log ] && log_end=$(wc -c < stdout.log 2>/dev/null)
case $log_end in ''|*[!0-9\ ]*) log_end= ;; *) log_end=$((log_end + 0)) ;; esac

note=
# A full file system also cost the job (part of) its output: say so beside the exit code. A
# one-byte write tells without starting a process (thousands of jobs may end in the same
# second); df is asked too when the job failed, as a network file system may accept a write
# it cannot store.
if ! { printf x >> fs_probe; } 2>/dev/null; then note=nospace
elif [ "$wrapper_status" != 0 ] && fs_full .; then note=nospace
fi
# The record goes into a file of its own, renamed into place, so that whoever reads exit_code
# reads all of it. Where that write fails (a full file system), exit_code.new, filled at
# submit, is written over in place instead, which needs no free block: the exit code is
# recorded even then.
exit_record="$wrapper_status log=$log_end${note:+ $note}"
if ! { printf '%s\n' "$exit_record" > exit_code.tmp && mv -f exit_code.tmp exit_code; } 2>/dev/null; then
  printf '%s\n' "$exit_record" 1<>exit_code.new && mv -f exit_code.new exit_code
  rm -f exit_code.tmp
fi
