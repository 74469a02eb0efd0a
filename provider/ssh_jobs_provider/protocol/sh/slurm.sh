# Slurm: submit a job's command as a batch script, ask Slurm for the state of every Slurm job
# of a batch in one squeue (sacct for the jobs squeue no longer shows), and scancel one job.
# POSIX sh; the caller defines answer_tag and puts process.sh and lib.sh before this file (and, for a
# submit, submit.sh: begin, put, refuse). The job directory keeps the token, the command, the
# log (sbatch --output) and `slurm_job`, the id Slurm gave the job.
# shellcheck disable=SC2154 # submit_dir and launched come from submit.sh, answer_tag from the caller

# slurm_launch [SBATCH OPTION...]: submit the job of $submit_dir (files written by `put`) with sbatch;
# records its id in slurm_job, or refuses (removing what this submit created) with sbatch's
# own words. The command is the batch script as written: its #! line chooses the
# interpreter and its #SBATCH lines apply, except where the options given here say otherwise
# (they come from scheduler_options, and win, as command-line options do in sbatch).
slurm_launch() {
  sbatch_path=$(command -v sbatch 2>/dev/null) || sbatch_path=
  if [ -z "$sbatch_path" ]; then
    refuse noslurm "sbatch is not on the PATH of the SSH user's non-interactive shell on $(uname -n 2>/dev/null)"
  fi
  # Claimed atomically: of two submits of the same job (a re-sent one), one runs sbatch.
  mkdir "$submit_dir/claimed" 2>/dev/null || { launched=0; return 0; }
  first_line=
  IFS= read -r first_line < "$submit_dir/command.sh"
  case $first_line in
    '#!'*) { cat "$submit_dir/command.sh" > "$submit_dir/batch.sh"; } 2>/dev/null || abort "writing batch.sh" ;;
    *)
      # sbatch wants an interpreter line: the same shell the detached wrapper would use.
      batch_shell=$(command -v bash 2>/dev/null) || batch_shell=/bin/sh
      { { printf '#!%s\n' "$batch_shell"; cat "$submit_dir/command.sh"; } > "$submit_dir/batch.sh"; } 2>/dev/null ||
        abort "writing batch.sh"
      ;;
  esac
  work_dir=
  [ -f "$submit_dir/workdir" ] && IFS= read -r work_dir < "$submit_dir/workdir"
  # shellcheck disable=SC2088 # a literal "~" from the operator's remote_working_dir
  case $work_dir in
    ''|'~') work_dir=${HOME:-/} ;;
    '~/'*) work_dir=${HOME:-}/${work_dir#??} ;;
  esac
  { : >> "$submit_dir/stdout.log"; } 2>/dev/null || abort "creating stdout.log"
  # The job's environment applies to sbatch's own (which Slurm hands to the job); sbatch
  # itself was found before it, so a PATH there cannot change which sbatch runs.
  sbatch_answer=$(
    SSH_JOBS_JOB_ID=${submit_dir##*/}
    SSH_JOBS_JOB_DIR=$submit_dir
    SSH_JOBS_LOG_FILE=$submit_dir/stdout.log
    export SSH_JOBS_JOB_ID SSH_JOBS_JOB_DIR SSH_JOBS_LOG_FILE
    # shellcheck disable=SC1091 # written by the submit
    . "$submit_dir/env.sh"
    "$sbatch_path" --parsable --output="$submit_dir/stdout.log" --open-mode=append --chdir="$work_dir" \
      "$@" "$submit_dir/batch.sh" </dev/null 2>&1
  )
  sbatch_status=$?
  # --parsable answers "id" or "id;cluster"; warnings may come before it, the id is last.
  queued_id=${sbatch_answer##*
}
  queued_id=${queued_id%%;*}
  case $sbatch_status:$queued_id in
    0:[0-9]*)
      case $queued_id in *[!0-9]*) ;; *) put slurm_job "$queued_id
"; launched=1; return 0 ;; esac
      ;;
  esac
  # Refused (or not understood): nothing was queued. What sbatch said, on one line.
  rmdir "$submit_dir/claimed" 2>/dev/null
  sbatch_reason=$(printf '%s' "$sbatch_answer" | tr '\n' ' ')
  refuse sbatch "sbatch (status $sbatch_status): ${sbatch_reason:-no message}"
}

# slurm_submitted: the worker's submit answer: whether this submit queued the job, and its id.
slurm_submitted() {
  queued_id=
  [ -f "$submit_dir/slurm_job" ] && read -r queued_id < "$submit_dir/slurm_job"
  echo "$answer_tag submit os=$(uname -s 2>/dev/null | tr -d ' ') launched=$launched slurm=$queued_id"
}

# slurm_states KEY DIR [KEY DIR ...]: one "slurm" line per KEY: the state Slurm holds for the
# job recorded in DIR. ONE squeue for all of them; ONE sacct for those squeue no longer shows
# (they aged out of slurmctld after MinJobAge). Answers, per KEY:
#   TAG slurm key=KEY job=ID state=STATE exit=STATUS from=squeue|sacct reason=REASON
# (exit: squeue's raw wait status, or sacct's CODE:SIGNAL), or state=unknown (neither knows
# ID), state=nojob (no id recorded: not submitted yet, or not a Slurm job), state=error
# (squeue is missing or failed: reason= says why; nothing is known about any job).
slurm_states() {
  slurm_ids=
  slurm_keys=
  while [ $# -ge 2 ]; do
    states_id=
    [ -f "$2/slurm_job" ] && read -r states_id < "$2/slurm_job" 2>/dev/null
    case $states_id in
      ''|*[!0-9]*) echo "$answer_tag slurm key=$1 state=nojob" ;;
      *)
        eval "slurm_dir_$1=\$2"
        eval "slurm_key_$states_id=\"\${slurm_key_$states_id:-} $1\""
        slurm_ids="$slurm_ids,$states_id"
        slurm_keys="$slurm_keys $1:$states_id"
        ;;
    esac
    shift 2
  done
  [ -n "$slurm_ids" ] || return 0
  if ! command -v squeue >/dev/null 2>&1; then
    slurm_error "squeue is not on the PATH of the SSH user's non-interactive shell"
    return 0
  fi
  # -t all: finished jobs too (until MinJobAge). "|" ends every field, so none is padded.
  states_listed=$(squeue -h -t all -j "${slurm_ids#,}" -O 'JobID:|,State:|,exit_code:|,Reason:|' 2>&1)
  squeue_status=$?
  # A single id that squeue no longer knows makes it fail ("Invalid job id"): that is an answer
  # (sacct decides), any other failure is not.
  case $squeue_status:$states_listed in
    0:*) ;;
    *'Invalid job id'*) states_listed= ;;
    *) slurm_error "squeue failed (status $squeue_status): $(printf '%s' "$states_listed" | tr '\n' ' ')"; return 0 ;;
  esac
  slurm_answer squeue "$states_listed" '|'
  states_missing=
  for states_pair in $slurm_keys; do
    eval "states_seen=\${slurm_seen_${states_pair#*:}:-}"
    [ -n "$states_seen" ] || states_missing="$states_missing,${states_pair#*:}"
  done
  [ -n "$states_missing" ] || return 0
  # Aged out of squeue: the accounting database, else the job completion log (sacct -c).
  states_listed=$(sacct -n -P -X -j "${states_missing#,}" -o JobIDRaw,State,ExitCode,Reason 2>/dev/null) ||
    states_listed=$(sacct -c -n -P -j "${states_missing#,}" -o JobIDRaw,State,ExitCode 2>/dev/null) ||
    states_listed=
  slurm_answer sacct "$states_listed" '|'
  for states_pair in $slurm_keys; do
    eval "states_seen=\${slurm_seen_${states_pair#*:}:-}"
    [ -n "$states_seen" ] || echo "$answer_tag slurm key=${states_pair%%:*} job=${states_pair#*:} state=unknown"
  done
}

# slurm_answer SOURCE LINES SEPARATOR: a "slurm" line for every key whose job is in LINES
# (ID, STATE, EXIT, REASON per line); each job counted once (sacct may list it twice).
slurm_answer() {
  answer_source=$1 answer_separator=$3
  answer_old_ifs=$IFS
  set -f
  IFS='
'
  for answer_line in $2; do
    IFS=$answer_separator
    # shellcheck disable=SC2086 # split on the separator, on purpose
    set -- $answer_line
    IFS='
'
    answer_job=${1:-} answer_state=${2:-} answer_exit=${3:-} answer_reason=${4:-}
    case $answer_job in ''|*[!0-9]*) continue ;; esac
    eval "answer_seen=\${slurm_seen_$answer_job:-} answer_keys=\${slurm_key_$answer_job:-}"
    if [ -n "$answer_seen" ] || [ -z "$answer_keys" ]; then continue; fi
    eval "slurm_seen_$answer_job=1"
    # sacct says "CANCELLED by 1234": the state is the first word.
    answer_state=${answer_state%% *}
    IFS=' '
    for answer_key in $answer_keys; do
      echo "$answer_tag slurm key=$answer_key job=$answer_job state=$answer_state exit=$answer_exit from=$answer_source reason=$answer_reason"
      answer_dir=
      eval "answer_dir=\${slurm_dir_$answer_key:-}"
      slurm_record_end "$answer_dir" "$answer_state" "$answer_exit"
    done
    IFS='
'
  done
  IFS=$answer_old_ifs
  set +f
}

# slurm_error WHY: every job asked about gets state=error, with WHY.
slurm_error() {
  for error_pair in $slurm_keys; do
    echo "$answer_tag slurm key=${error_pair%%:*} job=${error_pair#*:} state=error reason=$1"
  done
}

# slurm_cancel DIR TOKEN: scancel the Slurm job recorded in DIR, if DIR is the SSH user's and
# carries TOKEN. Answers "TAG kill state=cancelled job=ID", or state=not-started (no id
# recorded), missing (no directory), foreign (not this job's: nothing cancelled) or failed
# (scancel refused: reason= says why).
slurm_cancel() {
  if [ ! -d "$1" ]; then echo "$answer_tag kill state=missing"; return 0; fi
  if ! owned_by_job "$1" "$2"; then echo "$answer_tag kill state=foreign"; return 0; fi
  cancel_id=
  [ -f "$1/slurm_job" ] && read -r cancel_id < "$1/slurm_job"
  case $cancel_id in ''|*[!0-9]*) echo "$answer_tag kill state=not-started"; return 0 ;; esac
  # A finished job is not an error for scancel (it says so on stderr, status 0).
  if cancel_said=$(scancel "$cancel_id" 2>&1); then
    echo "$answer_tag kill state=cancelled job=$cancel_id"
  else
    echo "$answer_tag kill state=failed job=$cancel_id reason=$(printf '%s' "$cancel_said" | tr '\n' ' ')"
  fi
}

# slurm_job_active DIR: success when DIR records a Slurm job that Slurm still has (pending,
# running, ...), or whose state cannot be asked (squeue missing or failing): a reaper then keeps
# the directory, whose log the job may still write. Failure: no Slurm job, or one that ended.
slurm_job_active() {
  active_id=
  [ -f "$1/slurm_job" ] && read -r active_id < "$1/slurm_job" 2>/dev/null
  case $active_id in ''|*[!0-9]*) return 1 ;; esac
  command -v squeue >/dev/null 2>&1 || return 0
  if ! active_state=$(squeue -h -t all -j "$active_id" -o %T 2>&1); then
    # A job squeue no longer knows has ended long ago (MinJobAge); any other failure says nothing.
    case $active_state in *'Invalid job id'*) return 1 ;; *) return 0 ;; esac
  fi
  case $active_state in
    PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUE*|RESIZING|SIGNALING|STAGE_OUT|STOPPED|RESV_DEL_HOLD) return 0 ;;
  esac
  return 1
}

# slurm_record_end DIR STATE EXIT: once Slurm recorded the job COMPLETED or FAILED, write its exit
# code to DIR/exit_code as a detached job's wrapper does (128 + the signal for a job a signal
# ended): the cleanup's record of a removed directory then carries it, and a retry after the
# cleanup ends like the job instead of running it again. Other end states (cancelled, timed out,
# ...) record nothing: their retry runs a fresh job.
slurm_record_end() {
  [ -n "$1" ] && [ -f "$1/slurm_job" ] && [ ! -f "$1/exit_code" ] || return 0
  case $2 in COMPLETED|FAILED) ;; *) return 0 ;; esac
  case $3 in
    *:*) end_code=${3%%:*} end_signal=${3#*:} ;;
    ''|*[!0-9]*) return 0 ;;
    *) end_code=$((($3 >> 8) & 255)) end_signal=$(($3 & 127)) ;;
  esac
  case $end_code$end_signal in ''|*[!0-9]*) return 0 ;; esac
  [ "$end_signal" = 0 ] || end_code=$((128 + end_signal))
  { printf '%s log=\n' "$end_code" > "$1/exit_code.tmp" && mv -f "$1/exit_code.tmp" "$1/exit_code"; } 2>/dev/null ||
    rm -f "$1/exit_code.tmp" 2>/dev/null
  return 0
}
