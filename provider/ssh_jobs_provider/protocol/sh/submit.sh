# Submit: create (or verify) the job directory and launch the wrapper detached, idempotently.
# The caller runs: begin BASE JOB_ID TOKEN; then, unless $claimed, put ... and launch; then
# finish (a batch's submit: submitted, see below). The steps are built once for both, by
# sh_submit_steps in protocol/submit.py. Any refusal or failure answers "TAG submit
# error=<code>" followed by one line that says why, after removing what this submit created:
# nothing half-done is left behind.
# shellcheck disable=SC2154 # path_mode, path_owner and ssh_uid come from lib.sh, which precedes this file; answer_tag from the caller

# unsafe DIR: why = why DIR may not be trusted, or nothing. The rule is sshd's StrictModes:
# owned by the SSH user or root, and not writable by group or others unless the sticky bit
# is set (then others may add entries of their own, but never remove or rename ours).
unsafe() {
  why=
  stat_of "$1"
  case $path_mode in
    d*) ;;
    l*) why="is a symbolic link"; return 0 ;;
    '') why="cannot be examined"; return 0 ;;
    *) why="is not a directory"; return 0 ;;
  esac
  if ! trusted_owner; then
    why="is owned by uid $path_owner, not by the SSH user (uid $ssh_uid) or root"
    return 0
  fi
  case $path_mode in
    ?????????[tT]*) ;;
    ?????w*|????????w*) why="is writable by group or others (mode $path_mode) and not sticky" ;;
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
  chain_path='' rest=${1#/}
  while [ -n "$rest" ]; do
    chain_path="$chain_path/${rest%%/*}"
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    stat_of "$chain_path"
    case $path_mode in
      l*)
        if ! trusted_owner; then
          why="$chain_path is a symbolic link owned by uid $path_owner, not by the SSH user (uid $ssh_uid) or root"
          return 0
        fi
        check_resolved "$chain_path"
        if [ -n "$why" ]; then return 0; fi
        ;;
      *)
        unsafe "$chain_path"
        if [ -n "$why" ]; then why="$chain_path $why"; return 0; fi
        ;;
    esac
  done
}

# check_resolved LINK: why = the first untrusted directory on the path LINK resolves to. That
# path holds no links, so it is the same walk; in a subshell, which keeps the walk in
# progress (chain_path, rest) of the caller intact.
check_resolved() {
  resolved_path=$(cd -P "$1" 2>/dev/null && pwd -P) || { why="$1 cannot be entered"; return 0; }
  why=$(check_chain "$resolved_path"; printf '%s' "$why")
}

# refuse CODE MESSAGE: undo what this submit created, answer, and stop. In a batch (batch_key is the
# entry's key) the answer is framed like every batch answer, and only the submit's subshell
# stops (see the batch's steps below).
refuse() {
  rollback
  if [ -n "${batch_key:-}" ]; then
    framed "$answer_tag submit key=$batch_key error=$1" "$2"
    exit 9
  fi
  echo "$answer_tag submit error=$1"
  printf '%s\n' "$2"
  exit 0
}

# abort WHAT: a write failed; say whether it was for lack of space.
abort() {
  if fs_full "$submit_base"; then
    refuse nospace "the file system holding $submit_base is full (no space left while $1)"
  fi
  refuse io "could not complete $1 in $submit_dir (a used-up disk quota looks like this too)"
}

# rollback: remove the job directory this submit created. The base dir (and parents) it may
# have created stay, empty and private: another task of the same fan-out may have checked
# them a moment ago, and a base dir that vanished could be re-created by someone else.
rollback() {
  if [ -n "$job_created" ]; then rm -rf -- "$submit_dir"; fi
}

# ensure_base BASE: check the deepest existing directory of BASE (and the path to it), then
# create what is missing below it with mode 700.
ensure_base() {
  base_path=$1 missing=
  while [ ! -e "$base_path" ] && [ ! -L "$base_path" ]; do
    missing="/${base_path##*/}$missing"
    base_path=${base_path%/*}
    [ -n "$base_path" ] || base_path=/
  done
  check_chain "$base_path"
  if [ -n "$why" ]; then refuse unsafe "$why"; fi
  [ "$base_path" = / ] && base_path=
  rest=${missing#/}
  while [ -n "$rest" ]; do
    base_path="$base_path/${rest%%/*}"
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    if mkdir -m 700 "$base_path" 2>/dev/null; then
      :
    elif [ -e "$base_path" ] || [ -L "$base_path" ]; then
      # Created meanwhile by someone else (often another task of the same fan-out).
      unsafe "$base_path"
      if [ -n "$why" ]; then refuse unsafe "$base_path $why"; fi
    else
      abort "creating $base_path (its parent must be writable by the SSH user)"
    fi
  done
}

# begin BASE JOB_ID TOKEN: the job directory exists afterwards, is the SSH user's, private,
# and carries TOKEN; claimed=1 when a wrapper already owns it (this submit re-attaches).
begin() {
  submit_base=$1 submit_dir=$1/$2 submit_token=$3 job_created='' launched=0 claimed=0
  # A batch checks each base dir once for all its submits (check_base_once).
  [ "$submit_base" = "${base_ok:-}" ] || ensure_base "$submit_base"
  if [ -n "${batch_key:-}" ] && ended_of "$submit_dir" "$submit_token"; then
    # This submit's job ran and its directory was removed (or is being removed) already: the
    # triggerer that submitted it was restarted before it could report. Answer that; never
    # start it again.
    echo "$answer_tag submit key=$batch_key ended=$ended len=0"
    exit 8
  fi
  dir_token=
  if mkdir -m 700 "$submit_dir" 2>/dev/null; then
    job_created=1
  elif [ -e "$submit_dir" ] || [ -L "$submit_dir" ]; then
    if ! owned_by_job "$submit_dir" ""; then
      refuse foreign "$submit_dir exists but is not a directory of the SSH user's (mode ${path_mode:-?}, owner uid ${path_owner:-?})"
    fi
    case $path_mode in
      d???------*) ;;
      *) refuse foreign "$submit_dir exists but is accessible to group or others (mode $path_mode)" ;;
    esac
    [ -f "$submit_dir/token" ] && read -r dir_token < "$submit_dir/token"
    if [ "$dir_token" != "$submit_token" ]; then
      if [ -n "$dir_token" ] || [ -e "$submit_dir/claimed" ]; then
        refuse foreign "$submit_dir was created by another submit, not by this task instance"
      fi
      # A submit of ours that stopped before recording its token: nothing ran; take it over.
      job_created=1
    fi
  else
    abort "creating $submit_dir"
  fi
  if [ "$dir_token" != "$submit_token" ]; then put token "$submit_token
"; fi
  # shellcheck disable=SC2034 # read by the caller's script
  if [ -d "$submit_dir/claimed" ]; then claimed=1; fi
}

# put NAME CONTENT: write a file of the job directory atomically (tmp + rename), byte for byte.
# A directory of that name is refused, not written into (mv would move the file into it).
put() {
  [ ! -d "$submit_dir/$1" ] || abort "writing $1"
  { printf '%s' "$2" > "$submit_dir/$1.tmp.$$" && mv -f "$submit_dir/$1.tmp.$$" "$submit_dir/$1"; } 2>/dev/null || abort "writing $1"
}

# launch: the wrapper, detached (setsid, else nohup). The one step that starts the job.
launch() {
  chmod 700 "$submit_dir/command.sh" 2>/dev/null || abort "making command.sh executable"
  { : >> "$submit_dir/stdout.log"; } 2>/dev/null || abort "creating stdout.log"
  if command -v setsid >/dev/null 2>&1; then
    put launcher setsid
    launched=1
    setsid /bin/sh "$submit_dir/run.sh" "$submit_dir" </dev/null >/dev/null 2>&1 &
  else
    put launcher nohup
    launched=1
    nohup /bin/sh "$submit_dir/run.sh" "$submit_dir" </dev/null >/dev/null 2>&1 &
  fi
}

# finish: wait (bounded, ~5 s) for the wrapper to record its pid, so the answer says whether
# the job really started; then answer with the submit header and the job's state.
finish() {
  tenths=0
  while [ ! -s "$submit_dir/pid" ] && [ ! -f "$submit_dir/exit_code" ] && [ "$tenths" -lt 50 ]; do
    sleep 0.1 2>/dev/null || sleep 1
    tenths=$((tenths + 1))
  done
  echo "$answer_tag submit os=$(uname -s 2>/dev/null | tr -d ' ') launched=$launched"
  poll_job 0 "$submit_dir" 0 0 0 "$submit_token"
}

# framed HEADER LINE: HEADER with len= the bytes of LINE and its newline, then LINE. Counted by
# wc, not ${#LINE}: a shell may count characters, and one byte off loses the batch's framing.
framed() {
  framed_bytes=$(printf '%s\n' "$2" | wc -c)
  echo "$1 len=$((framed_bytes + 0))"
  printf '%s\n' "$2"
}

# ---- many submits in one batch (protocol/batch.py): each runs in a subshell of its own, so
# that a refusal ends that submit only:
#   check_base_once BASE                (once per base dir)
#   ( batch_key=KEY; begin ...; [put ...; launch]; submitted ); submit_ended $? KEY DIR    (per submit)
#   answer_submits                      (once, without waiting for the pids)
# The state of each job is then answered by the batch's polls (the pid comes as soon as the
# wrapper recorded it: a batch never waits for its jobs, so the next one is not held back).

# check_base_once BASE: check BASE (creating what is missing) once for all the batch's submits into it.
# If it fails, each submit checks again and answers why.
check_base_once() {
  if (batch_key=0 job_created=; ensure_base "$1"; exit 0) >/dev/null 2>&1; then base_ok=$1; fi
}

# submitted: end a batch submit's subshell: status 3 when it launched the job, 4 when the job
# was launched before (a re-sent submit re-attaches).
submitted() {
  exit $((4 - launched))
}

# submit_ended STATUS KEY DIR: record how the subshell of submit KEY ended; launched_<KEY> = launched (1/0).
submit_ended() {
  case $1 in
    3|4)
      eval "launched_$2=$((4 - $1))"
      submitted_keys="${submitted_keys:-} $2"
      ;;
    8|9) ;;
    *)
      framed "$answer_tag submit key=$2 error=io" "the submit of $3 stopped unexpectedly (status $1)"
      ;;
  esac
}

# answer_submits: the submit header of every submit that was not refused; its poll follows.
answer_submits() {
  [ -n "${submitted_keys:-}" ] || return 0
  host_os=$(uname -s 2>/dev/null | tr -d ' ')
  for submit_key in $submitted_keys; do
    launched_flag=
    eval "launched_flag=\$launched_$submit_key"
    echo "$answer_tag submit key=$submit_key os=$host_os launched=$launched_flag len=0"
  done
}
