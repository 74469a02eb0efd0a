# k DIR TOKEN GRACE: stop every process of one job: SIGTERM, then SIGKILL after GRACE seconds.
# Answers "TAG kill state=..." with missing, foreign, not-started, not-running, killed, or
# survived (with the pids still there after SIGKILL).
#
# A job's processes are found three ways, so that neither a recycled pid nor a child that
# left the job's process group or session is missed:
#  - every process whose environment carries the job's marker SSH_JOBS_JOB_MARKER=<marker>
#    (Linux /proc; a process can only shed it by clearing its own environment). The marker is
#    a random value of its own, not the token: the job's environment may end up in logs;
#  - under setsid, the members of the job's process group, when its leader is verified to be
#    the job's wrapper (start time recorded in ./start) or a marked process is in the group;
#  - without setsid (e.g. macOS), the descendants of a verified wrapper.
k() {
  d=$1 tok=$2 grace=$3
  if ! cd "$d" 2>/dev/null; then echo "$T kill state=missing"; return 0; fi
  if ! owned_by_job "$d" "$tok"; then echo "$T kill state=foreign"; return 0; fi
  mk=
  [ -f marker ] && read -r mk < marker
  pid=
  [ -f pid ] && read -r pid < pid
  case $pid in ''|*[!0-9]*) pid= ;; esac
  if [ -z "$pid" ] || [ "$pid" -le 1 ]; then echo "$T kill state=not-started"; return 0; fi
  mode=
  [ -f launcher ] && read -r mode < launcher
  leader=0
  if is_wrapper "$pid"; then leader=1; fi
  if ! running; then echo "$T kill state=not-running"; return 0; fi
  signal TERM
  i=0
  while running && [ "$i" -lt $((grace * 10)) ]; do
    sleep 0.1 2>/dev/null || sleep 1
    i=$((i + 1))
  done
  if running; then signal KILL; sleep 0.2 2>/dev/null || sleep 1; fi
  left=$(members | tr '\n' ',')
  if [ -n "$left" ]; then echo "$T kill state=survived pids=${left%,}"; else echo "$T kill state=killed"; fi
}

# members: the job's live processes, one pid a line.
members() {
  marked=
  if [ -n "$mk" ] && [ -d /proc/self ]; then
    marked=$(grep -l -F "SSH_JOBS_JOB_MARKER=$mk" /proc/[0-9]*/environ 2>/dev/null |
      sed -n 's|^/proc/\([0-9]*\)/environ$|\1|p' | tr '\n' ' ')
  fi
  table=$(ps -A -o pid= -o ppid= -o pgid= -o stat= 2>/dev/null)
  if [ -z "$table" ]; then
    # No usable ps: the marked processes still count (a zombie has no environment to match).
    for member in $marked; do kill -0 "$member" 2>/dev/null && echo "$member"; done
    return 0
  fi
  printf '%s\n' "$table" | awk -v root="$pid" -v mode="$mode" \
    -v leader="$leader" -v marked="$marked" '
    BEGIN { n = split(marked, list, " "); for (i = 1; i <= n; i++) mark[list[i]] = 1 }
    { parent[$1] = $2; group[$1] = $3; state[$1] = $4 }
    END {
      for (p in mark) if ((p in group) && group[p] == root) leader = 1
      for (p in parent) {
        if (state[p] ~ /^Z/) continue
        if (p in mark) { print p; continue }
        if (leader != 1) continue
        if (mode == "setsid") { if (group[p] == root) print p; continue }
        q = p; n = 0
        while (q != "" && q > 1 && n < 64) { if (q == root) { print p; break }; q = parent[q]; n++ }
      }
    }'
}

signal() {
  if [ "$mode" = setsid ] && [ "$leader" = 1 ]; then kill -"$1" "-$pid" 2>/dev/null; fi
  for member in $(members); do kill -"$1" "$member" 2>/dev/null; done
}

running() { [ -n "$(members)" ]; }
