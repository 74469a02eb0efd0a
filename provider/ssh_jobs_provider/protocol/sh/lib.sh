# Functions shared by every remote-job script: ownership, the job's liveness, the state
# probe and the cleanup. The scripts are fed to `/bin/sh -s` and must stay POSIX sh (dash,
# busybox ash, bash). The caller defines answer_tag, the protocol tag every answer line starts with,
# and puts process.sh before this file.
# shellcheck disable=SC2154 # start_ticks, ps_start and boot_now come from process.sh, which precedes this file; answer_tag from the caller

# stat_of PATH: path_mode = PATH's mode string and path_owner = its owner's uid, as `ls -ldn` shows them.
# Symbolic links are not followed; both are empty when PATH cannot be examined.
stat_of() {
  path_mode='' path_owner=''
  set -f
  # shellcheck disable=SC2046 # the fields are wanted as separate words
  set -- $(ls -ldn "$1" 2>/dev/null)
  set +f
  path_mode=${1:-} path_owner=${3:-}
  # The type and the permissions only: ls may append "+" (an ACL) or "." (an SELinux context).
  case $path_mode in ???????????*) path_mode=${path_mode%"${path_mode#??????????}"} ;; esac
}

# whoami_uid: ssh_uid = the SSH user's uid (asked once per script).
whoami_uid() {
  [ -n "${ssh_uid:-}" ] || ssh_uid=$(id -u)
}

# trusted_owner: success when $path_owner (from stat_of) is the SSH user or root.
trusted_owner() {
  whoami_uid
  [ "$path_owner" = "$ssh_uid" ] || [ "$path_owner" = 0 ]
}

# owned_by_job DIR TOKEN: success when DIR is a directory of the SSH user's and, when TOKEN
# is given, the token recorded in it is TOKEN.
owned_by_job() {
  whoami_uid
  stat_of "$1"
  case $path_mode in d*) ;; *) return 1 ;; esac
  [ "$path_owner" = "$ssh_uid" ] || return 1
  [ -z "$2" ] && return 0
  dir_token=
  [ -f "$1/token" ] && read -r dir_token < "$1/token"
  [ "$dir_token" = "$2" ]
}

# is_wrapper PID: success when PID is alive and is the process that recorded its start time
# in ./start (the job's wrapper), not a later one given the same pid. The start time is the
# kernel's (Linux /proc), else what `ps -o lstart=` says; without a record, only a live pid
# in the same boot counts (the wrapper writes ./start before ./pid, so that is rare).
is_wrapper() {
  case $1 in ''|*[!0-9]*|0|1) return 1 ;; esac
  # No pid is larger than 2^31 - 1: a longer number would wrap in kill (perl's kill -1).
  [ "${#1}" -le 10 ] && [ "$1" -le 2147483647 ] || return 1
  kill -0 "$1" 2>/dev/null || return 1
  if [ -n "$boot_now" ] && [ -f boot_id ]; then
    read -r recorded_boot < boot_id
    [ "$recorded_boot" = "$boot_now" ] || return 1
  fi
  [ -f start ] || return 0
  recorded_start=
  read -r recorded_start < start
  case $recorded_start in
    '') return 0 ;;
    ps:*) ps_started "$1"; [ "ps:$ps_start" = "$recorded_start" ] ;;
    *) started_at "$1"; [ "$start_ticks" = "$recorded_start" ] ;;
  esac
}

# A poll in POSIX sh comes in three phases, so that a batch starts processes per tick, not per
# job: `poll_state` reads each job's state with builtins only, `poll_sizes` finds the log sizes of many jobs with
# one `ls`, `poll_answer` answers and reads the log window (the only per-job processes, and only for a
# log that grew). The phases keep the order of the probes for every job: liveness before exit
# code (so "dead and no exit code" really means vanished), exit code before log size (so a
# size reported with an exit code is final and the last bytes written before exit are never
# missed). Between phases a job's findings live in job_header_<KEY> (header fields, or missing/foreign),
# job_has_log_<KEY> (1: it has a log) and job_log_size_<KEY> (its log size); only values checked here are kept there.

# poll_state KEY DIR TOKEN: phase 1, one job's state. A directory that cannot be entered is looked
# up in the records of removed jobs (ended_of) before it counts as missing: a job whose
# directory was removed after it ended keeps its exit code.
poll_state() {
  state_key=$1 state_token=$3 job_header=missing job_has_log=0
  if cd "$2" 2>/dev/null; then
    job_header=foreign
    if [ -n "$state_token" ]; then
      dir_token=
      [ -f token ] && read -r dir_token < token
      [ "$dir_token" = "$state_token" ] && job_header=
    elif owned_by_job "$2" ""; then
      job_header=
    fi
    [ -z "$job_header" ] && read_job_state
    cd / || true
  elif ended_of "$2" "$state_token"; then
    job_header="ended exit=$ended"
  fi
  eval "job_header_$state_key=\$job_header job_has_log_$state_key=\$job_has_log"
}

# exit_record FILE: code, note and log_end from the exit record FILE, which the wrapper writes
# as "<code> log=<bytes>[ nospace]" (older wrappers: "<code>[ nospace]"). Only what the wrapper
# writes is kept: a number, the word nospace, the log's size when the job ended.
exit_record() {
  code='' note='' log_end='' rest=''
  [ -f "$1" ] && read -r code rest < "$1"
  case $code in *[!0-9]*) code= ;; esac
  set -f
  for word in $rest; do
    case $word in
      nospace) note=nospace ;;
      log=*) log_end=${word#log=}; case $log_end in ''|*[!0-9]*) log_end= ;; esac ;;
    esac
  done
  set +f
}

# read_job_state: the header fields of the job directory we are in (phase 1, after its checks).
read_job_state() {
  pid=
  [ -f pid ] && read -r pid < pid
  case $pid in ''|*[!0-9]*) pid= ;; esac
  alive=0
  if [ -n "$pid" ] && is_wrapper "$pid" && ! has_exited "$pid"; then alive=1; fi
  exit_record exit_code
  [ -f stdout.log ] && job_has_log=1
  boot=unknown
  if [ -n "$boot_now" ] && [ -f boot_id ]; then
    read -r recorded_boot < boot_id
    if [ "$recorded_boot" = "$boot_now" ]; then boot=same; else boot=changed; fi
  fi
  claimed=0
  [ -d claimed ] && claimed=1
  full=0
  if [ "$alive" = 0 ] && [ -n "$pid" ] && [ -z "$code" ] && fs_full .; then full=1; fi
  job_header="pid=$pid alive=$alive exit=$code note=$note logend=$log_end boot=$boot claimed=$claimed full=$full"
}

# list_names FLAGS SUFFIX "KEY:ID[:...] ...": ONE `LC_ALL=C ls -n<FLAGS>` of the names ID<SUFFIX> in
# the current directory; listed_<KEY>="MODE OWNER SIZE" for each name it lists. The pairs come sorted
# as ls sorts those names, so its lines and the pairs are walked together, and a line is kept
# only for the pair whose name it shows. A pair left without one (a name ls prints differently,
# a symbolic link's line, which ends with its target, a file that vanished) has no listed_<KEY>.
# IDs are plain names (letters, digits, _ . -), safe unquoted; a string, not "$@", gathers
# them: appending to "$@" copies it each time.
list_names() {
  list_flags=$1 list_suffix=$2 list_pairs=$3
  set -f
  list_files=
  for list_item in $list_pairs; do list_item=${list_item#*:}; list_files="$list_files ${list_item%%:*}$list_suffix"; done
  # shellcheck disable=SC2086 # plain names
  list_output=$(LC_ALL=C ls -n"$list_flags" -- $list_files 2>/dev/null)
  list_pairs="$list_pairs "
  # The lines are split by IFS, not read from a here-document: bash writes those to a
  # temporary file, which a full /tmp refuses (then no job of the batch would be answered).
  IFS='
'
  for list_line in $list_output; do
    IFS=' 	
'
    # shellcheck disable=SC2086 # the fields are wanted as separate words
    set -- $list_line
    [ "$#" -ge 6 ] || continue
    case $1 in l*) continue ;; esac
    for list_name do :; done  # the last field
    while [ -n "$list_pairs" ]; do
      list_item=${list_pairs%% *} list_pairs=${list_pairs#* }
      list_key=${list_item%%:*} list_item=${list_item#*:}
      if [ "$list_name" = "${list_item%%:*}$list_suffix" ]; then
        eval "listed_$list_key=\"\$1 \$3 \$5\""
        break
      fi
    done
  done
  IFS=' 	
'
  set +f
}

# poll_sizes BASE "KEY:ID ...": phase 2, the log sizes of the jobs BASE/ID, with one `ls` (list_names). A job
# left without a size is measured on its own by `poll_answer`.
poll_sizes() {
  cd "$1" 2>/dev/null || return 0
  sizes_pairs=$2
  list_names lL /stdout.log "$sizes_pairs"
  set -f
  for sizes_item in $sizes_pairs; do
    sizes_key=${sizes_item%%:*}
    sizes_listed=
    eval "sizes_listed=\${listed_$sizes_key:-}"
    # shellcheck disable=SC2086 # the fields are wanted as separate words
    set -- $sizes_listed
    case ${3:-} in ''|*[!0-9]*) ;; *) eval "job_log_size_$sizes_key=\$3" ;; esac
  done
  set +f
  cd / || true
}

# poll_answer KEY DIR OFFSET MAX DELIVERED: phase 3, the answer: the job's state, then up to MAX log bytes
# from OFFSET (log_window). Records DELIVERED (log bytes known to be in the task log) for a
# watcher that resumes. A log that exists but cannot be read is said (unreadable=1), with no
# bytes: nothing a job does to its log may change the framing of the answers after its own.
poll_answer() {
  answer_key=$1 answer_offset=$3 answer_max=$4 answer_delivered=$5
  eval "job_header=\${job_header_$answer_key:-missing} job_has_log=\${job_has_log_$answer_key:-0} log_size=\${job_log_size_$answer_key:-}"
  case $job_header in missing|foreign|ended*) echo "$answer_tag poll key=$answer_key state=$job_header len=0"; return 0 ;; esac
  if ! cd "$2" 2>/dev/null; then echo "$answer_tag poll key=$answer_key state=missing len=0"; return 0; fi
  if [ -z "$log_size" ]; then
    log_size=0
    [ "$job_has_log" = 1 ] && [ -f stdout.log ] && log_size=$(wc -c < stdout.log)
    log_size=$((log_size + 0))
  fi
  delivered_before=0
  [ -f delivered ] && read -r delivered_before < delivered
  case $delivered_before in ''|*[!0-9]*) delivered_before=0 ;; esac
  # Only a plain file (or none) is written: opening a FIFO the job left there would block.
  if [ "$answer_delivered" -gt "$delivered_before" ] && { [ -f delivered ] || [ ! -e delivered ]; }; then
    printf '%s\n' "$answer_delivered" 2>/dev/null > delivered
  fi
  window=0 unreadable=
  if [ "$log_size" -gt "$answer_offset" ]; then window=$((log_size - answer_offset)); if [ "$window" -gt "$answer_max" ]; then window=$answer_max; fi; fi
  if [ "$window" -gt 0 ] && [ ! -r stdout.log ]; then window=0 unreadable=' unreadable=1'; fi
  echo "$answer_tag poll key=$answer_key $job_header size=$log_size delivered=$delivered_before$unreadable len=$window"
  if [ "$window" -gt 0 ]; then log_window "$answer_key" "$answer_offset" "$window"; fi
  cd / || true
}

# log_window KEY OFFSET COUNT: exactly COUNT bytes for the answer announced with len=COUNT: the
# log's bytes from OFFSET, then blanks, cut at COUNT, so that the framing holds whatever the log
# did meanwhile (cut shorter since it was measured, made unreadable). When fewer real bytes were
# read, a line "short key=KEY got=N" says how many. The count comes from dd's own report ("N
# bytes ...", in every dd that prints one); where dd reports only records (BusyBox), the bytes
# are believed whole only when the log still holds them after the read, else none are (got=0:
# the window is simply read again).
log_window() {
  { dd_report=$( { {
    tail -c +$(($2 + 1)) stdout.log 2>/dev/null | head -c "$3" | LC_ALL=C dd bs=65536 2>&3
    printf "%$3s" ''
  } | head -c "$3" >&4; } 3>&1); } 4>&1
  case $dd_report in
    *' byte'*)
      window_got=${dd_report%% byte*}
      window_got=${window_got##*[!0-9]}
      ;;
    *) window_got=0; [ -r stdout.log ] && [ "$(($(wc -c < stdout.log) + 0))" -ge $(($2 + $3)) ] && window_got=$3 ;;
  esac
  case $window_got in ''|*[!0-9]*) window_got=0 ;; esac
  if [ "$window_got" -lt "$3" ]; then echo "$answer_tag short key=$1 got=$window_got len=0"; fi
}

# poll_job KEY DIR OFFSET MAX DELIVERED TOKEN: all three phases for one job (its size from `poll_answer`).
poll_job() {
  poll_state "$1" "$2" "$6"
  poll_answer "$1" "$2" "$3" "$4" "$5"
}

# ended_dir BASE: success when BASE/.ssh-jobs-ended is a private directory of the SSH user's
# (created, mode 700, when missing); ended_records = its path. The records live in a directory of their
# own, which nobody else can write to: in a shared (sticky) base dir another user could plant
# a link or a file under a record's name, to redirect our write or to forge an outcome.
ended_dir() {
  ended_records=$1/.ssh-jobs-ended
  [ "${ended_records_ok:-}" = "$ended_records" ] && return 0
  [ -e "$ended_records" ] || [ -L "$ended_records" ] || mkdir -m 700 "$ended_records" 2>/dev/null
  stat_of "$ended_records"
  whoami_uid
  case $path_mode in d???------*) [ "$path_owner" = "$ssh_uid" ] || return 1 ;; *) return 1 ;; esac
  ended_records_ok=$ended_records
}

# ended_record DIR: record "<token> <exit code>" for DIR in its base dir's .ssh-jobs-ended/<ID>,
# before DIR goes. A job's directory is removed once its log was delivered, but a later look
# may still need to know that it ran and how it ended: a trigger re-created after a triggerer
# restart (whose submit must not start the job again) and the next try of a durable task.
# Fails when the record cannot be kept (then DIR must stay). Written with a builtin (no process
# per job); kept until cleanup_jobs runs there after ENDED_DAYS days.
ended_record() {
  # The reaper (ops.sh) removes directories whose tries are long over: no record for those.
  [ -n "${NO_ENDED:-}" ] && return 0
  ended_dir "${1%/*}" || return 1
  record_token='' record_code=''
  [ -f "$1/token" ] && read -r record_token < "$1/token"
  # shellcheck disable=SC2034 # record_rest: the record's fields after the code, not needed here
  [ -f "$1/exit_code" ] && read -r record_code record_rest < "$1/exit_code"
  case $record_code in *[!0-9]*) record_code= ;; esac
  [ -n "$record_token" ] || return 0
  printf '%s %s\n' "$record_token" "$record_code" 2>/dev/null > "$ended_records/${1##*/}"
}

# ended_of DIR TOKEN: ended = the exit code recorded for DIR ("" when it has none) and success,
# if there is a record carrying TOKEN (any, when TOKEN is empty) in a private records directory
# of the SSH user's. A record is written only right before its directory goes: with a record,
# the job ended, even if part of its directory is still there.
ended_of() {
  ended=''
  set -- "$1" "$2" "${1%/*}/.ssh-jobs-ended"
  [ -f "$3/${1##*/}" ] || return 1
  stat_of "$3"
  whoami_uid
  case $path_mode in d???------*) [ "$path_owner" = "$ssh_uid" ] || return 1 ;; *) return 1 ;; esac
  record_token='' record_code=''
  read -r record_token record_code < "$3/${1##*/}"
  [ -n "$record_token" ] || return 1
  [ -z "$2" ] || [ "$record_token" = "$2" ] || return 1
  case $record_code in *[!0-9]*) record_code= ;; esac
  # shellcheck disable=SC2034 # read by the callers
  ended=$record_code
}

# lookup_job KEY DIR TOKEN: what became of the job of an earlier try: its state as a poll answers it,
# or, once its directory is gone, what its .ended record says ("state=ended exit=CODE").
lookup_job() {
  if ended_of "$2" "$3"; then
    echo "$answer_tag poll key=$1 state=ended exit=$ended len=0"
    return 0
  fi
  poll_job "$1" "$2" 0 0 0 "$3"
}

# cleanup_job KEY DIR TOKEN: remove one finished job's directory, and only if it is this job's.
# The token goes last: after a removal that failed half-way (a busy mount, a file another
# process holds), it is still there to prove the directory is this job's to the next attempt.
cleanup_job() {
  if [ ! -e "$2" ] && [ ! -L "$2" ]; then cleanup_state=absent
  elif ! owned_by_job "$2" "$3"; then cleanup_state=foreign
  elif ! ended_record "$2"; then cleanup_state=failed
  else
    cleanup_kept=
    for cleanup_path in "$2"/* "$2"/.[!.]* "$2"/..?*; do
      if [ ! -e "$cleanup_path" ] && [ ! -L "$cleanup_path" ]; then continue; fi
      [ "$cleanup_path" = "$2/token" ] || rm -rf -- "$cleanup_path" 2>/dev/null || cleanup_kept=1
    done
    [ -n "$cleanup_kept" ] || rm -rf -- "$2"
    if [ -e "$2" ]; then cleanup_state=failed; else cleanup_state=removed; fi
  fi
  echo "$answer_tag cleanup key=$1 state=$cleanup_state len=0"
}

# cleanup_jobs BASE "KEY:ID:TOKEN ...": what cleanup_job does, for many jobs under BASE with a few processes in all:
# one `ls` for the owners, one `rm` for the directories' contents, one for the emptied
# directories (a removal costs the host per process, and thousands of jobs may end together).
# The triples come sorted as `LC_ALL=C ls` sorts the IDs (see list_names); a job ls does not show
# under its name (a symbolic link) is left to cleanup_job, one at a time. The tokens go last, as there.
cleanup_jobs() {
  cleanup_base=$1 cleanup_triples=$2
  if ! cd "$cleanup_base" 2>/dev/null; then
    for cleanup_item in $cleanup_triples; do
      cleanup_key=${cleanup_item%%:*} cleanup_item=${cleanup_item#*:}
      cleanup_job "$cleanup_key" "$cleanup_base/${cleanup_item%%:*}" "${cleanup_item#*:}"
    done
    return 0
  fi
  whoami_uid
  # Whose each directory is, with one `ls` (list_names); owned_<KEY>: 1 the SSH user's directory, no not.
  list_names ld "" "$cleanup_triples"
  set -f
  for cleanup_item in $cleanup_triples; do
    cleanup_key=${cleanup_item%%:*}
    eval "cleanup_listed=\${listed_$cleanup_key:-}"
    [ -n "$cleanup_listed" ] || continue
    # shellcheck disable=SC2086 # the fields are wanted as separate words
    set -- $cleanup_listed
    cleanup_owned=no
    case $1 in d*) [ "$2" = "$ssh_uid" ] && cleanup_owned=1 ;; esac
    eval "owned_$cleanup_key=$cleanup_owned"
  done
  set +f
  # The contents of every directory that is this job's, but its token, in one rm: the patterns
  # match every name but "token" (IDs are plain names, safe unquoted; a pattern that matches
  # nothing stays as it is, and rm -f ignores it). Strings, not "$@": appending to "$@" copies
  # it each time.
  cleanup_patterns=
  for cleanup_item in $cleanup_triples; do
    cleanup_key=${cleanup_item%%:*} cleanup_item=${cleanup_item#*:}
    cleanup_dir=${cleanup_item%%:*} cleanup_token=${cleanup_item#*:}
    eval "cleanup_owner=\${owned_$cleanup_key:-}"
    if [ "$cleanup_owner" = no ]; then echo "$answer_tag cleanup key=$cleanup_key state=foreign len=0"; continue; fi
    if [ -z "$cleanup_owner" ]; then
      if [ ! -e "$cleanup_dir" ] && [ ! -L "$cleanup_dir" ]; then echo "$answer_tag cleanup key=$cleanup_key state=absent len=0"
      else cleanup_job "$cleanup_key" "$cleanup_base/$cleanup_dir" "$cleanup_token"
      fi
      continue
    fi
    if [ -n "$cleanup_token" ]; then
      dir_token=
      [ -f "$cleanup_dir/token" ] && read -r dir_token < "$cleanup_dir/token"
      if [ "$dir_token" != "$cleanup_token" ]; then echo "$answer_tag cleanup key=$cleanup_key state=foreign len=0"; continue; fi
    fi
    if ! ended_record "$cleanup_base/$cleanup_dir"; then echo "$answer_tag cleanup key=$cleanup_key state=failed len=0"; continue; fi
    eval "removing_$cleanup_key=1"
    cleanup_patterns="$cleanup_patterns $cleanup_dir/[!t]* $cleanup_dir/t[!o]* $cleanup_dir/to[!k]* $cleanup_dir/tok[!e]* $cleanup_dir/toke[!n]* $cleanup_dir/token?*"
    cleanup_patterns="$cleanup_patterns $cleanup_dir/t $cleanup_dir/to $cleanup_dir/tok $cleanup_dir/toke $cleanup_dir/.[!.]* $cleanup_dir/..?*"
  done
  # shellcheck disable=SC2086 # the patterns are wanted as globs
  [ -z "$cleanup_patterns" ] || rm -rf -- $cleanup_patterns 2>/dev/null
  # Then the directories left with nothing but their token, in one rm.
  cleanup_patterns=
  for cleanup_item in $cleanup_triples; do
    cleanup_key=${cleanup_item%%:*} cleanup_item=${cleanup_item#*:}
    cleanup_dir=${cleanup_item%%:*}
    eval "cleanup_mark=\${removing_$cleanup_key:-}"
    [ -n "$cleanup_mark" ] || continue
    for cleanup_path in "$cleanup_dir"/* "$cleanup_dir"/.[!.]* "$cleanup_dir"/..?*; do
      if [ ! -e "$cleanup_path" ] && [ ! -L "$cleanup_path" ]; then continue; fi
      [ "$cleanup_path" = "$cleanup_dir/token" ] || { eval "removing_$cleanup_key=kept"; break; }
    done
    eval "cleanup_mark=\${removing_$cleanup_key}"
    [ "$cleanup_mark" = kept ] || cleanup_patterns="$cleanup_patterns $cleanup_dir"
  done
  # shellcheck disable=SC2086 # plain names
  [ -z "$cleanup_patterns" ] || rm -rf -- $cleanup_patterns 2>/dev/null
  for cleanup_item in $cleanup_triples; do
    cleanup_key=${cleanup_item%%:*} cleanup_item=${cleanup_item#*:}
    cleanup_dir=${cleanup_item%%:*}
    eval "cleanup_mark=\${removing_$cleanup_key:-}"
    [ -n "$cleanup_mark" ] || continue
    if [ -e "$cleanup_dir" ]; then cleanup_state=failed; else cleanup_state=removed; fi
    echo "$answer_tag cleanup key=$cleanup_key state=$cleanup_state len=0"
  done
  # The records of jobs removed more than ENDED_DAYS days ago go (one find for the base dir).
  if ended_dir "$cleanup_base"; then
    find "$ended_records" -type f -mtime +"${ENDED_DAYS:-7}" -exec rm -f {} + 2>/dev/null
  fi
  cd / || true
}
