"""
Batched polling, as pure code: ONE exec reports on every watched job of a host.

A batch script is the shared prelude (``sh/lib.sh``) and one call per entry:

- ``p KEY DIR OFFSET MAX DELIVERED TOKEN`` reports one job's state, records how much of its
  log has been delivered (so a re-created trigger can resume at the right byte), and
  appends up to ``MAX`` log bytes from ``OFFSET``;
- ``c KEY DIR TOKEN`` removes one finished job's directory, if it is the SSH user's and
  carries ``TOKEN``.

A ``TOKEN`` of ``''`` skips the token check (watchers created before tokens existed).

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
    script_prelude,
    status_from_fields,
    validate_token,
)


@dataclass(frozen=True)
class PollEntry:
    """Ask for one job's state and the log window ``[offset, offset + max_bytes)``."""

    paths: RemoteJobPaths
    offset: int
    max_bytes: int
    delivered: int = 0
    #: The submit's token, checked against the job directory's (``""``: not checked).
    token: str = ""

    def __post_init__(self) -> None:
        if self.offset < 0 or self.max_bytes < 0 or self.delivered < 0:
            raise ValueError(f"Invalid poll window: {self}")
        validate_token(self.token, required=False)


@dataclass(frozen=True)
class CleanupEntry:
    """Remove one finished job's directory (a direct child of its base dir, by construction)."""

    paths: RemoteJobPaths
    token: str = ""

    def __post_init__(self) -> None:
        validate_token(self.token, required=False)


Entry = PollEntry | CleanupEntry


@dataclass(frozen=True)
class CleanupResult:
    state: str  # "removed", "absent", "failed" or "foreign" (not this job's: left alone)


EntryResult = JobStatus | CleanupResult | RemoteJobProtocolError


def build_batch_script(entries: Sequence[Entry]) -> str:
    """One script for all ``entries``; entry ``i`` answers with ``key=i``."""
    calls = []
    for key, entry in enumerate(entries):
        job_dir = shlex.quote(entry.paths.job_dir)
        token = shlex.quote(entry.token)
        if isinstance(entry, PollEntry):
            calls.append(f"p {key} {job_dir} {entry.offset} {entry.max_bytes} {entry.delivered} {token}\n")
        else:
            calls.append(f"c {key} {job_dir} {token}\n")
    # dd re-blocks the many small writes of the calls into 64 KiB writes: the answer then
    # travels in a few large SSH packets instead of hundreds of tiny ones, which is what
    # the triggerer (and sshd) would otherwise spend most of their CPU on.
    return (
        script_prelude()
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
