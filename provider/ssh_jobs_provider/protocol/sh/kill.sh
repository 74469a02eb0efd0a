# The kill of a job. POSIX sh; the caller defines answer_tag and puts process.sh and lib.sh
# before this file.
# shellcheck disable=SC2154 # answer_tag comes from the caller

# kill_job DIR TOKEN GRACE MARKER: stop every process of one job: SIGTERM, then SIGKILL after GRACE
# seconds. Answers "TAG kill state=..." with missing, foreign, not-started, not-running, killed,
# or survived (with the pids still there after SIGKILL). "dir=missing" follows killed or
# survived when the job directory was gone and the job's processes were found by their marker.
#
# MARKER is derived from TOKEN by the caller: with it, the job's processes are found even when
# the job directory (or its ./pid, ./marker) is gone, e.g. removed by the job itself. A caller
# without a token gives no marker: the one recorded in the directory is used, and without the
# directory there is nothing to go by ("missing"). A directory that exists but is not this
# job's (another token, another owner, not a directory) is "foreign", and nothing is killed.
#
# A job's processes are found four ways, so that neither a recycled pid nor a child that left
# the job's process group, session or process tree is missed:
#  - every process whose environment carries the job's marker SSH_JOBS_JOB_MARKER=<marker>
#    (Linux /proc; a process can only shed it by clearing its own environment);
#  - under setsid, the members of the job's process group, when its leader is verified to be
#    the job's wrapper (start time recorded in ./start) or a marked process is in the group;
#  - the descendants of the verified wrapper, and of every process found at SIGTERM time;
#  - every process found at SIGTERM time, as long as it is still that process (same start
#    time): a child whose parent died on SIGTERM is re-parented out of the wrapper's tree
#    (without /proc and setsid, e.g. on macOS, nothing else would find it), yet it must get the
#    SIGKILL, and the kill must not report "killed" while it lives.
kill_job() {
  kill_dir=$1 kill_token=$2 grace=$3 job_marker=$4
  pid='' mode='' leader=0 seen='' dir_found=''
  if cd "$kill_dir" 2>/dev/null; then
    if ! owned_by_job "$kill_dir" "$kill_token"; then echo "$answer_tag kill state=foreign"; return 0; fi
    dir_found=1
    [ -z "$job_marker" ] && [ -f marker ] && read -r job_marker < marker
    [ -f pid ] && read -r pid < pid
    case $pid in ''|*[!0-9]*) pid= ;; esac
    if [ -n "$pid" ] && [ "$pid" -le 1 ]; then pid=; fi
    [ -f launcher ] && read -r mode < launcher
    if [ -n "$pid" ] && is_wrapper "$pid"; then leader=1; fi
  elif [ -n "$job_marker" ] && { [ -e "$kill_dir" ] || [ -L "$kill_dir" ]; }; then
    # There, but not a directory we can enter: not this job's.
    echo "$answer_tag kill state=foreign"
    return 0
  elif [ -z "$job_marker" ]; then
    echo "$answer_tag kill state=missing"
    return 0
  fi
  found=$(members)
  if [ -z "$found" ]; then
    if [ -z "$dir_found" ]; then echo "$answer_tag kill state=missing"
    elif [ -z "$pid" ]; then echo "$answer_tag kill state=not-started"
    else echo "$answer_tag kill state=not-running"
    fi
    return 0
  fi
  # shellcheck disable=SC2086 # pids, one word each
  seen=$(stamped $found | tr '\n' ' ')
  signal TERM "$found"
  tenths=0
  while running && [ "$tenths" -lt $((grace * 10)) ]; do
    sleep 0.1 2>/dev/null || sleep 1
    tenths=$((tenths + 1))
  done
  found=$(members)
  if [ -n "$found" ]; then signal KILL "$found"; sleep 0.2 2>/dev/null || sleep 1; fi
  left=$(members | tr '\n' ',')
  gone=
  [ -n "$dir_found" ] || gone=' dir=missing'
  if [ -n "$left" ]; then echo "$answer_tag kill state=survived pids=${left%,}$gone"; else echo "$answer_tag kill state=killed$gone"; fi
}

# members: the job's live processes, one pid a line.
members() {
  marked=
  if [ -n "$job_marker" ] && [ -d /proc/self ]; then
    # -z: one entry per NUL-ended variable (BusyBox's grep stops at the first NUL of a line
    # otherwise, and would only ever see a process's first variable); -x: the whole entry.
    marked=$(grep -l -z -x -F "SSH_JOBS_JOB_MARKER=$job_marker" /proc/[0-9]*/environ 2>/dev/null |
      sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | tr '\n' ' ')
  fi
  same=
  [ -z "$seen" ] || same=$(still_seen | tr '\n' ' ')
  table=$(ps -A -o pid= -o ppid= -o pgid= -o stat= 2>/dev/null)
  if [ -z "$table" ]; then
    # No usable ps: the marked and seen processes still count (a zombie has no environment to
    # match; one seen earlier may be a zombie now, and is then counted, to be safe).
    listed=' '
    for member in $marked $same; do
      case $listed in *" $member "*) continue ;; esac
      listed="$listed$member "
      kill -0 "$member" 2>/dev/null && echo "$member"
    done
    return 0
  fi
  printf '%s\n' "$table" | awk -v root="$pid" -v mode="$mode" \
    -v leader="$leader" -v marked="$marked" -v same="$same" '
    BEGIN {
      n = split(marked, list, " "); for (i = 1; i <= n; i++) mark[list[i]] = 1
      n = split(same, list, " "); for (i = 1; i <= n; i++) seen[list[i]] = 1
    }
    { parent[$1] = $2; group[$1] = $3; state[$1] = $4 }
    END {
      for (p in mark) if ((p in group) && group[p] == root) leader = 1
      for (p in parent) {
        if (p + 0 <= 1 || state[p] ~ /^Z/) continue
        if ((p in mark) || (p in seen)) { print p; continue }
        if (mode == "setsid" && leader == 1 && group[p] == root) { print p; continue }
        # A descendant of the verified wrapper, or of a process seen at SIGTERM time.
        q = p; n = 0
        while (q != "" && q + 0 > 1 && n < 64) {
          if ((leader == 1 && q == root) || (q in seen)) { print p; break }
          q = parent[q]; n++
        }
      }
    }'
}

# stamped PID...: "PID:START" for each PID still alive, START its start time: the kernel's
# (Linux /proc, started_at), else what `ps -o lstart=` says, its blanks made underscores. Two
# stamps are equal only for the same process, not for a later one given the same pid.
stamped() {
  if [ -d /proc/self ]; then
    for stamp_pid in "$@"; do
      started_at "$stamp_pid"
      [ -z "$start_ticks" ] || echo "$stamp_pid:$start_ticks"
    done
    return 0
  fi
  [ "$#" -gt 0 ] || return 0
  pid_list=$*
  ps -o pid= -o lstart= -p "$(echo "$pid_list" | tr ' ' ',')" 2>/dev/null |
    awk '{ p = $1; $1 = ""; s = $0; gsub(/[ \t]+/, "_", s); print p ":" s }'
}

# still_seen: the pids of the processes found at SIGTERM time ($seen) that are still those
# processes, one a line.
still_seen() {
  stamp_pids=
  for seen_entry in $seen; do stamp_pids="$stamp_pids ${seen_entry%%:*}"; done
  # shellcheck disable=SC2086 # pids, one word each
  stamped $stamp_pids | awk -v seen="$seen" '
    BEGIN { n = split(seen, list, " "); for (i = 1; i <= n; i++) was[list[i]] = 1 }
    ($0 in was) { sub(/:.*/, ""); print }'
}

# signal SIG PIDS: send SIG to the job's process group (when its leader is the verified
# wrapper) and to each of PIDS.
signal() {
  if [ "$mode" = setsid ] && [ "$leader" = 1 ]; then kill -"$1" "-$pid" 2>/dev/null; fi
  for member in $2; do kill -"$1" "$member" 2>/dev/null; done
}

running() { [ -n "$(members)" ]; }
