# Submit: create (or verify) the job directory and launch the wrapper detached, idempotently.
# The caller runs: begin BASE JOB_ID TOKEN; then, unless $claimed, put ... and launch; then
# finish. Any refusal or failure answers "TAG submit error=<code>" followed by one line that
# says why, after removing what this submit created: nothing half-done is left behind.
# shellcheck disable=SC2154 # m, o and me come from lib.sh, which precedes this file

# unsafe DIR: why = why DIR may not be trusted, or nothing. The rule is sshd's StrictModes:
# owned by the SSH user or root, and not writable by group or others unless the sticky bit
# is set (then others may add entries of their own, but never remove or rename ours).
unsafe() {
  why=
  stat_of "$1"
  case $m in
    d*) ;;
    l*) why="is a symbolic link"; return 0 ;;
    '') why="cannot be examined"; return 0 ;;
    *) why="is not a directory"; return 0 ;;
  esac
  if ! trusted_owner; then
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
        if ! trusted_owner; then
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

# check_resolved LINK: why = the first untrusted directory on the path LINK resolves to. That
# path holds no links, so it is the same walk; in a subshell, which keeps the walk in
# progress (c, rest) of the caller intact.
check_resolved() {
  phys=$(cd -P "$1" 2>/dev/null && pwd -P) || { why="$1 cannot be entered"; return 0; }
  why=$(check_chain "$phys"; printf '%s' "$why")
}

# refuse CODE MESSAGE: undo what this submit created, answer, and stop. In a batch (K is the
# entry's key) the answer is framed like every batch answer, and only the submit's subshell
# stops (see sb).
refuse() {
  rollback
  if [ -n "${K:-}" ]; then
    framed "$T submit key=$K error=$1" "$2"
    exit 9
  fi
  echo "$T submit error=$1"
  printf '%s\n' "$2"
  exit 0
}

# abort WHAT: a write failed; say whether it was for lack of space.
abort() {
  if fs_full "$B"; then
    refuse nospace "the file system holding $B is full (no space left while $1)"
  fi
  refuse io "could not complete $1 in $jd (a used-up disk quota looks like this too)"
}

# rollback: remove the job directory this submit created. The base dir (and parents) it may
# have created stay, empty and private: another task of the same fan-out may have checked
# them a moment ago, and a base dir that vanished could be re-created by someone else.
rollback() {
  if [ -n "$job_created" ]; then rm -rf -- "$jd"; fi
}

# ensure_base BASE: check the deepest existing directory of BASE (and the path to it), then
# create what is missing below it with mode 700.
ensure_base() {
  d=$1 missing=
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do
    missing="/${d##*/}$missing"
    d=${d%/*}
    [ -n "$d" ] || d=/
  done
  check_chain "$d"
  if [ -n "$why" ]; then refuse unsafe "$why"; fi
  [ "$d" = / ] && d=
  rest=${missing#/}
  while [ -n "$rest" ]; do
    d="$d/${rest%%/*}"
    case $rest in */*) rest=${rest#*/} ;; *) rest= ;; esac
    if mkdir -m 700 "$d" 2>/dev/null; then
      :
    elif [ -e "$d" ] || [ -L "$d" ]; then
      # Created meanwhile by someone else (often another task of the same fan-out).
      unsafe "$d"
      if [ -n "$why" ]; then refuse unsafe "$d $why"; fi
    else
      abort "creating $d (its parent must be writable by the SSH user)"
    fi
  done
}

# begin BASE JOB_ID TOKEN: the job directory exists afterwards, is the SSH user's, private,
# and carries TOKEN; claimed=1 when a wrapper already owns it (this submit re-attaches).
begin() {
  B=$1 jd=$1/$2 tok=$3 job_created='' launched=0 claimed=0
  # A batch checks each base dir once for all its submits (check_base_once).
  [ "$B" = "${base_ok:-}" ] || ensure_base "$B"
  if [ -n "${K:-}" ] && ended_of "$jd" "$tok"; then
    # This submit's job ran and its directory was removed (or is being removed) already: the
    # triggerer that submitted it was restarted before it could report. Answer that; never
    # start it again.
    echo "$T submit key=$K ended=$ended len=0"
    exit 8
  fi
  t=
  if mkdir -m 700 "$jd" 2>/dev/null; then
    job_created=1
  elif [ -e "$jd" ] || [ -L "$jd" ]; then
    if ! owned_by_job "$jd" ""; then
      refuse foreign "$jd exists but is not a directory of the SSH user's (mode ${m:-?}, owner uid ${o:-?})"
    fi
    case $m in
      d???------*) ;;
      *) refuse foreign "$jd exists but is accessible to group or others (mode $m)" ;;
    esac
    [ -f "$jd/token" ] && read -r t < "$jd/token"
    if [ "$t" != "$tok" ]; then
      if [ -n "$t" ] || [ -e "$jd/claimed" ]; then
        refuse foreign "$jd was created by another submit, not by this task instance"
      fi
      # A submit of ours that stopped before recording its token: nothing ran; take it over.
      job_created=1
    fi
  else
    abort "creating $jd"
  fi
  if [ "$t" != "$tok" ]; then put token "$tok
"; fi
  # shellcheck disable=SC2034 # read by the caller's script
  if [ -d "$jd/claimed" ]; then claimed=1; fi
}

# put NAME CONTENT: write a file of the job directory atomically (tmp + rename), byte for byte.
# A directory of that name is refused, not written into (mv would move the file into it).
put() {
  [ ! -d "$jd/$1" ] || abort "writing $1"
  { printf '%s' "$2" > "$jd/$1.tmp.$$" && mv -f "$jd/$1.tmp.$$" "$jd/$1"; } 2>/dev/null || abort "writing $1"
}

# launch: the wrapper, detached (setsid, else nohup). The one step that starts the job.
launch() {
  chmod 700 "$jd/command.sh" 2>/dev/null || abort "making command.sh executable"
  { : >> "$jd/stdout.log"; } 2>/dev/null || abort "creating stdout.log"
  if command -v setsid >/dev/null 2>&1; then
    put launcher setsid
    launched=1
    setsid /bin/sh "$jd/run.sh" "$jd" </dev/null >/dev/null 2>&1 &
  else
    put launcher nohup
    launched=1
    nohup /bin/sh "$jd/run.sh" "$jd" </dev/null >/dev/null 2>&1 &
  fi
}

# finish: wait (bounded, ~5 s) for the wrapper to record its pid, so the answer says whether
# the job really started; then answer with the submit header and the job's state.
finish() {
  i=0
  while [ ! -s "$jd/pid" ] && [ ! -f "$jd/exit_code" ] && [ "$i" -lt 50 ]; do
    sleep 0.1 2>/dev/null || sleep 1
    i=$((i + 1))
  done
  echo "$T submit os=$(uname -s 2>/dev/null | tr -d ' ') launched=$launched"
  poll_job 0 "$jd" 0 0 0 "$tok"
}

# framed HEADER LINE: HEADER with len= the bytes of LINE and its newline, then LINE. Counted by
# wc, not ${#LINE}: a shell may count characters, and one byte off loses the batch's framing.
framed() {
  n=$(printf '%s\n' "$2" | wc -c)
  echo "$1 len=$((n + 0))"
  printf '%s\n' "$2"
}

# ---- many submits in one batch (protocol/batch.py): each runs in a subshell of its own, so
# that a refusal ends that submit only:
#   check_base_once BASE                (once per base dir)
#   ( K=KEY; begin ...; [put ...; launch]; submitted ); submit_ended $? KEY DIR    (per submit)
#   answer_submits                      (once, without waiting for the pids)
# The state of each job is then answered by the batch's polls (the pid comes as soon as the
# wrapper recorded it: a batch never waits for its jobs, so the next one is not held back).

# check_base_once BASE: check BASE (creating what is missing) once for all the batch's submits into it.
# If it fails, each submit checks again and answers why.
check_base_once() {
  if (K=0 job_created=; ensure_base "$1"; exit 0) >/dev/null 2>&1; then base_ok=$1; fi
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
      sk="${sk:-} $2"
      ;;
    8|9) ;;
    *)
      framed "$T submit key=$2 error=io" "the submit of $3 stopped unexpectedly (status $1)"
      ;;
  esac
}

# answer_submits: the submit header of every submit that was not refused; its poll follows.
answer_submits() {
  [ -n "${sk:-}" ] || return 0
  os=$(uname -s 2>/dev/null | tr -d ' ')
  for k in $sk; do
    eval "s=\$launched_$k"
    echo "$T submit key=$k os=$os launched=$s len=0"
  done
}
