"""
Batched polling, as pure code: ONE exec reports on every watched job of a host.

A batch script defines two small shell functions and calls them once per entry:

- ``p KEY DIR OFFSET MAX DELIVERED`` reports one job's state, records how much of its log
  has been delivered (so a re-created trigger can resume at the right byte), and appends
  up to ``MAX`` log bytes from ``OFFSET``;
- ``c KEY DIR`` removes one finished job's directory.

Every answer is one header line ``SSHJOBS1 <verb> key=K ... len=N`` followed by exactly
``N`` raw bytes; the batch ends with ``SSHJOBS1 end``. Length framing keeps arbitrary log
bytes (newlines, invalid UTF-8, even text that looks like a header) from confusing the
parser, and a missing ``end`` line reveals a truncated answer.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from ssh_jobs_provider.utils.remote_job import (
    PROTOCOL_TAG,
    JobStatus,
    RemoteJobPaths,
    RemoteJobProtocolError,
    header_fields,
    int_or_none,
    status_from_fields,
)

# The order of the probes matters: liveness before exit code (so "dead and no exit code"
# really means vanished), exit code before log size (so a size reported with an exit
# code is final and the last bytes written before exit are never missed).
_FUNCTIONS = r"""boot_now=
[ -r /proc/sys/kernel/random/boot_id ] && read -r boot_now < /proc/sys/kernel/random/boot_id
p() {
  if ! cd "$2" 2>/dev/null; then echo "SSHJOBS1 poll key=$1 state=missing len=0"; return 0; fi
  pid=; [ -f pid ] && read -r pid < pid
  case "$pid" in ''|*[!0-9]*) pid= ;; esac
  alive=0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then alive=1; fi
  ec=; [ -f exit_code ] && read -r ec < exit_code
  size=0; [ -f stdout.log ] && size=$(wc -c < stdout.log)
  size=$((size + 0))
  boot=unknown
  if [ -n "$boot_now" ] && [ -f boot_id ]; then
    read -r b < boot_id
    if [ "$b" = "$boot_now" ]; then boot=same; else boot=changed; fi
  fi
  claimed=0; [ -d claimed ] && claimed=1
  old=0; [ -f delivered ] && read -r old < delivered
  case "$old" in ''|*[!0-9]*) old=0 ;; esac
  if [ "$5" -gt "$old" ]; then printf '%s\n' "$5" > delivered; fi
  n=0
  if [ "$size" -gt "$3" ]; then n=$((size - $3)); if [ "$n" -gt "$4" ]; then n=$4; fi; fi
  echo "SSHJOBS1 poll key=$1 pid=$pid alive=$alive exit=$ec size=$size boot=$boot claimed=$claimed delivered=$old len=$n"
  if [ "$n" -gt 0 ]; then tail -c +$(($3 + 1)) stdout.log | head -c "$n"; fi
  cd / || true
}
c() {
  if [ ! -e "$2" ]; then s=absent
  else rm -rf -- "$2"; if [ -e "$2" ]; then s=failed; else s=removed; fi
  fi
  echo "SSHJOBS1 cleanup key=$1 state=$s len=0"
}
"""


@dataclass(frozen=True)
class PollEntry:
    """Ask for one job's state and the log window ``[offset, offset + max_bytes)``."""

    paths: RemoteJobPaths
    offset: int
    max_bytes: int
    delivered: int = 0

    def __post_init__(self) -> None:
        if self.offset < 0 or self.max_bytes < 0 or self.delivered < 0:
            raise ValueError(f"Invalid poll window: {self}")


@dataclass(frozen=True)
class CleanupEntry:
    """Remove one finished job's directory (a direct child of its base dir, by construction)."""

    paths: RemoteJobPaths


Entry = PollEntry | CleanupEntry


@dataclass(frozen=True)
class CleanupResult:
    state: str  # "removed", "absent" or "failed"


EntryResult = JobStatus | CleanupResult | RemoteJobProtocolError


def build_batch_script(entries: Sequence[Entry]) -> str:
    """One script for all ``entries``; entry ``i`` answers with ``key=i``."""
    calls = []
    for key, entry in enumerate(entries):
        job_dir = shlex.quote(entry.paths.job_dir)
        if isinstance(entry, PollEntry):
            calls.append(f"p {key} {job_dir} {entry.offset} {entry.max_bytes} {entry.delivered}\n")
        else:
            calls.append(f"c {key} {job_dir}\n")
    # dd re-blocks the many small writes of the calls into 64 KiB writes: the answer then
    # travels in a few large SSH packets instead of hundreds of tiny ones, which is what
    # the triggerer (and sshd) would otherwise spend most of their CPU on.
    return (
        _FUNCTIONS
        + "{\n"
        + "".join(calls)
        + f'echo "{PROTOCOL_TAG} end"\n'
        + "} | dd obs=65536 2>/dev/null\n"
    )


def parse_batch_output(output: bytes, entries: Sequence[Entry]) -> dict[int, EntryResult]:
    """
    Split a batch answer into one result per entry.

    An entry whose answer is malformed, or missing because the output was cut short, gets
    a :class:`RemoteJobProtocolError` of its own; the other entries are unaffected.
    """
    results: dict[int, EntryResult] = {}
    tag = PROTOCOL_TAG.encode() + b" "
    position = _first_line_start(output, tag)
    complete = False
    while position is not None and position < len(output):
        line_end = output.find(b"\n", position)
        if line_end < 0:
            break
        verb, _, rest = (
            output[position + len(tag) : line_end].decode("utf-8", errors="replace").partition(" ")
        )
        if verb == "end":
            complete = True
            break
        fields = header_fields(rest)
        data_start = line_end + 1
        try:
            key = int(fields.get("key", ""))
            length = int_or_none(fields.get("len")) or 0
        except (ValueError, RemoteJobProtocolError):
            position = _first_line_start(output, tag, data_start)
            continue
        data = output[data_start : data_start + length]
        position = data_start + length
        if key not in range(len(entries)) or len(data) != length:
            continue
        results[key] = _entry_result(verb, fields, data, entries[key])
        if position < len(output) and not output.startswith(tag, position):
            # The announced length did not match what followed: resynchronise, and do not
            # trust this entry's answer.
            results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} is misframed")
            position = _first_line_start(output, tag, position)
    for key, entry in enumerate(entries):
        if key not in results:
            why = "missing from the batch answer" if not complete else "not answered"
            results[key] = RemoteJobProtocolError(f"Answer for {entry.paths.job_id} is {why}")
    return results


def _entry_result(verb: str, fields: dict[str, str], data: bytes, entry: Entry) -> EntryResult:
    try:
        if verb == "poll" and isinstance(entry, PollEntry):
            return status_from_fields(fields, data)
        if verb == "cleanup" and isinstance(entry, CleanupEntry):
            return CleanupResult(fields.get("state", "failed"))
    except RemoteJobProtocolError as error:
        return error
    return RemoteJobProtocolError(f"Unexpected '{verb}' answer for {entry.paths.job_id}")


def _first_line_start(output: bytes, tag: bytes, start: int = 0) -> int | None:
    """Offset of the first ``tag`` at or after ``start`` that begins a line."""
    while True:
        index = output.find(tag, start)
        if index < 0:
            return None
        if index == 0 or output[index - 1 : index] == b"\n":
            return index
        start = index + 1
