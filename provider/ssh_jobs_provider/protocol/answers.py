"""
What the remote scripts answer, parsed. Pure code: bytes in, values out.

Every answer is a header line ``SSHJOBS1 <verb> k=v ...``, found even after a chatty login
shell printed something first. A batch answer is a sequence of such headers, each with
``len=N`` and followed by exactly ``N`` raw bytes, ended by ``SSHJOBS1 end``. Length framing
keeps arbitrary log bytes (newlines, invalid UTF-8, even text that looks like a header) from
confusing the parser, and a missing ``end`` line reveals a truncated answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from ssh_jobs_provider.protocol.batch import CleanupEntry, CleanupState, Entry, PollEntry, SubmitEntry
from ssh_jobs_provider.protocol.identity import DEFAULT_BASE_DIR, RemoteJobPaths
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG

_HEADER_FIELD = re.compile(r"(\w+)=(\S*)")


class RemoteJobProtocolError(ValueError):
    """Raised when a script's answer cannot be understood (not our protocol, or truncated)."""


class EntryNotAnswered(RemoteJobProtocolError):
    """A batch answer holds nothing for this entry (the answer ended before it, or lacks it)."""


class BatchNotAnswered(RemoteJobProtocolError):
    """
    The host ran a batch but answered none of its entries (see :func:`batch_not_answered`).

    :param entries: how many entries the batch had
    :param stderr: what the host's shell wrote to standard error, whose first line usually
        says why (a full file system, a missing tool)
    """

    def __init__(self, entries: int, stderr: bytes | str = b"") -> None:
        text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
        reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
        super().__init__(
            f"The host answered none of the {entries} entries of a batch"
            + (f": {reason[:300]}" if reason else " (nothing on standard error)")
        )
        self.reason = reason


class JobState(str, Enum):
    """What the remote job directory says about the job."""

    PENDING = "pending"  # directory exists, no wrapper has recorded a pid yet
    RUNNING = "running"
    EXITED = "exited"  # exit code recorded: the log is complete
    VANISHED = "vanished"  # process gone (killed, OOM, reboot) without an exit code
    MISSING = "missing"  # no job directory at all
    FOREIGN = "foreign"  # the directory does not carry this job's token: not ours to watch


@dataclass(frozen=True)
class JobStatus:
    """
    One parsed answer of the submit or poll script.

    :param state: what the job directory says about the job
    :param pid: the wrapper's pid, once recorded
    :param exit_code: the exit code, once the wrapper has ended
    :param log_size: bytes in the log when the answer was written
    :param remote_os: ``uname -s`` of the host (submit answers only)
    :param launched: whether this submit launched the job (``False``: it re-attached)
    :param delivered: log bytes an earlier watcher recorded as delivered
    :param disk_full: the file system holding the job directory was (or is) full
    :param removed: the job ended and its directory was removed: only its ``.ended`` record
        (exit code) is left, its log is gone
    :param log_end: the log's size when the job ended, as its wrapper recorded it (``None``:
        not ended, or recorded by an older wrapper)
    :param log_unreadable: the log holds bytes past the window's start that cannot be read
        (its permissions were changed): none were sent
    :param log_short: fewer bytes could be read than the log's size promised (it was cut
        shorter, or made unreadable, while being read): ``log_data`` holds the real ones
    :param log_data: the log window asked for
    """

    state: JobState
    pid: int | None = None
    exit_code: int | None = None
    log_size: int = 0
    remote_os: str | None = None
    launched: bool | None = None
    #: Log bytes an earlier watcher recorded as delivered (for resuming after a restart).
    delivered: int = 0
    #: The file system holding the job directory was (or is) full: the log may be incomplete.
    disk_full: bool = False
    #: The job ended and its directory was removed: only its exit code is known.
    removed: bool = False
    #: The log's size when the job ended, as its wrapper recorded it.
    log_end: int | None = None
    #: The log has bytes past the window's start that cannot be read.
    log_unreadable: bool = False
    #: Fewer bytes could be read than the log's size promised.
    log_short: bool = False
    log_data: bytes = field(default=b"", repr=False)

    @property
    def done(self) -> bool:
        return self.state in (JobState.EXITED, JobState.VANISHED, JobState.MISSING, JobState.FOREIGN)


def find_header(output: bytes, verb: str) -> tuple[dict[str, str], bytes]:
    """Locate ``TAG verb k=v ...`` as a whole line; return its fields and the bytes after it."""
    needle = f"{PROTOCOL_TAG} {verb}".encode()
    index = _first_header(output, needle, anywhere=True)
    # Without a newline after the first header, no later one can have one either.
    end = -1 if index is None else output.find(b"\n", index)
    if index is None or end < 0:
        preview = output[:200].decode("utf-8", errors="replace")
        raise RemoteJobProtocolError(f"No '{PROTOCOL_TAG} {verb}' answer in remote output: {preview!r}")
    line = output[index + len(needle) : end].decode("utf-8", errors="replace")
    return header_fields(line), output[end + 1 :]


def header_fields(text: str) -> dict[str, str]:
    """The ``name=value`` fields of a header line."""
    return dict(_HEADER_FIELD.findall(text))


def int_or_none(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise RemoteJobProtocolError(f"Expected an integer, got {value!r}") from None


def status_from_fields(fields: dict[str, str], log_data: bytes = b"") -> JobStatus:
    if fields.get("state") == "ended":
        # Removed after it ended; its .ended record keeps the exit code (none: it was killed).
        code = int_or_none(fields.get("exit"))
        if code is None:
            return JobStatus(JobState.MISSING, removed=True)
        return JobStatus(JobState.EXITED, exit_code=code, removed=True, launched=False)
    if fields.get("state") == "missing":
        return JobStatus(JobState.MISSING)
    if fields.get("state") == "foreign":
        return JobStatus(JobState.FOREIGN)
    pid = int_or_none(fields.get("pid"))
    alive = fields.get("alive") == "1"
    # An exit record counts only once the wrapper that writes it is gone: one that appears
    # while the wrapper still runs was written by the job itself (or the wrapper is about to
    # exit, and the next poll sees it gone).
    exit_code = None if alive else int_or_none(fields.get("exit"))
    if exit_code is not None:
        state = JobState.EXITED
    elif pid is None:
        state = JobState.PENDING
    elif alive and fields.get("boot") != "changed":
        state = JobState.RUNNING
    else:
        state = JobState.VANISHED
    return JobStatus(
        state=state,
        pid=pid,
        exit_code=exit_code,
        log_size=int_or_none(fields.get("size")) or 0,
        remote_os=fields.get("os") or None,
        launched=None if "launched" not in fields else fields["launched"] == "1",
        delivered=int_or_none(fields.get("delivered")) or 0,
        disk_full=fields.get("full") == "1" or fields.get("note") == "nospace",
        log_end=int_or_none(fields.get("logend")) if exit_code is not None else None,
        log_unreadable=fields.get("unreadable") == "1",
        log_data=log_data,
    )


class SubmitRefused(RemoteJobProtocolError):
    """
    The submit script refused or failed before launching anything, and removed what it created.

    :param code: ``unsafe`` (an untrusted directory on the way to the base dir), ``foreign``
        (the job directory is not this submit's), ``nospace`` (the file system is full) or
        ``io`` (another write failure)
    :param detail: the script's one-line reason, naming the path
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def parse_submit_output(output: bytes) -> JobStatus:
    """Parse the submit script's answer: its header, then the job's state as a poll answer."""
    fields, rest = find_header(output, "submit")
    if fields.get("error"):
        detail = rest.decode("utf-8", errors="replace").strip().splitlines()
        raise SubmitRefused(fields["error"], detail[0] if detail else "no reason given")
    # The poll record has no log window; its entry only has to name some job for messages.
    probe = PollEntry(RemoteJobPaths("submitted-job", DEFAULT_BASE_DIR), 0, 0)
    result = parse_batch_output(rest + f"{PROTOCOL_TAG} end\n".encode(), [probe])[0]
    if isinstance(result, RemoteJobProtocolError):
        raise result
    assert isinstance(result, JobStatus)
    return replace(result, remote_os=fields.get("os") or None, launched=fields.get("launched") == "1")


def parse_simple_state(output: bytes, verb: str) -> str:
    """Parse the ``state=`` of a kill or cleanup answer."""
    fields, _ = find_header(output, verb)
    return fields.get("state", "")


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class CleanupResult:
    """
    The answer of one cleanup entry.

    :param state: what the cleanup found and did; its text (``"removed"``) is taken as well
    """

    state: CleanupState

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", CleanupState(self.state))


EntryResult = JobStatus | CleanupResult | RemoteJobProtocolError


def parse_batch_output(
    output: bytes, entries: Sequence[Entry], tag: str = PROTOCOL_TAG
) -> dict[int, EntryResult]:
    """
    Split a batch answer into one result per entry.

    Only what comes before the first header is skipped as noise (a chatty login shell). From
    there on the answer must be framed exactly: once a header cannot be read or a length does
    not match what follows, nothing after it is trusted, because log bytes are never searched
    for headers (a log may hold any text). Every entry without a trusted answer gets a
    :class:`RemoteJobProtocolError` of its own, and is simply asked again in the next batch.

    :param tag: the tag the batch was built with (see :func:`~ssh_jobs_provider.protocol.scripts.batch_tag`)
    """
    results: dict[int, EntryResult] = {}
    #: The submit headers of the batch's submits, each to be joined with the poll that follows.
    submits: dict[int, dict[str, str]] = {}
    marker = tag.encode() + b" "
    if tag != PROTOCOL_TAG:
        # A batch's random tag cannot be in a banner: its first occurrence is the first header,
        # even one glued to a banner without a final newline.
        found = output.find(marker)
        position: int | None = found if found >= 0 else None
    else:
        position = _first_header(output, marker)
    complete = False
    last_window: int | None = None
    while position is not None and position < len(output):
        line_end = output.find(b"\n", position)
        if line_end < 0:
            break
        verb, _, rest = (
            output[position + len(marker) : line_end].decode("utf-8", errors="replace").partition(" ")
        )
        if verb == "end":
            complete = True
            break
        if verb == "short":
            # The window before it held fewer real bytes than announced (see log_window in
            # sh/lib.sh): keep those. It frames nothing (len=0), so the framing holds.
            position = line_end + 1
            _cut_window(results, entries, header_fields(rest))
            continue
        fields = header_fields(rest)
        data_start = line_end + 1
        try:
            key = int(fields.get("key", ""))
            length = int_or_none(fields.get("len")) or 0
        except (ValueError, RemoteJobProtocolError):
            break  # an unreadable header: the framing is lost
        data = output[data_start : data_start + length]
        position = data_start + length
        known = key in range(len(entries))
        if len(data) != length:
            break  # cut short
        if position < len(output) and not output.startswith(marker, position):
            # The announced length did not match what followed: the framing is lost.
            if known:
                results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} is misframed")
            break
        if known and isinstance(entries[key], SubmitEntry):
            if key in results and verb == "poll" and key not in submits:
                continue  # the poll after a refusal, or after "ended": the submit's answer is final
            if verb == "submit" and "ended" in fields and key not in results:
                results[key] = _ended(fields)
                continue
            if verb == "submit" and not fields.get("error") and key not in submits and key not in results:
                submits[key] = fields  # completed by the poll that follows
                continue
        if known and key in results:
            results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} came twice")
        elif known:
            results[key] = _entry_result(verb, fields, data, entries[key], submits.get(key))
            # Whether its window is whole is told by what follows it (a "short" line, or not).
            last_window = key if length else None
    if not complete and last_window is not None and position is not None and position >= len(output):
        # The answer stops right after this window: the line that would have said part of it
        # was padding may be what was lost. Asked again rather than believed.
        results.pop(last_window, None)
    for key, entry in enumerate(entries):
        if key not in results:
            why = "missing from the batch answer" if not complete else "not answered"
            results[key] = EntryNotAnswered(f"Answer for {entry.paths.job_id} is {why}")
    return results


def _cut_window(results: dict[int, EntryResult], entries: Sequence[Entry], fields: dict[str, str]) -> None:
    """Keep the first ``got`` bytes of the window of entry ``key``: the rest was padding."""
    try:
        key, got = int(fields.get("key", "")), int(fields.get("got", ""))
    except ValueError:
        return
    status = results.get(key)
    if isinstance(status, JobStatus) and 0 <= got <= len(status.log_data):
        results[key] = replace(status, log_data=status.log_data[:got], log_short=True)
    elif key in range(len(entries)):
        results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} is misframed")


def batch_not_answered(results: dict[int, EntryResult]) -> bool:
    """
    No entry of the batch got an answer: the batch failed as a whole (the host could not run
    it, or its answer was lost), which says nothing about any one job. It is retried as a
    batch, like a lost connection, and never turned into verdicts on the jobs in it.
    """
    return bool(results) and all(isinstance(r, EntryNotAnswered) for r in results.values())


def _ended(fields: dict[str, str]) -> EntryResult:
    """A re-sent submit found its job ended and removed: its exit code, never a second run."""
    try:
        return status_from_fields({"state": "ended", "exit": fields.get("ended", "")})
    except RemoteJobProtocolError as error:
        return error


def _entry_result(
    verb: str, fields: dict[str, str], data: bytes, entry: Entry, submitted: dict[str, str] | None = None
) -> EntryResult:
    try:
        if verb == "poll" and isinstance(entry, PollEntry):
            if len(data) > entry.max_bytes:
                # A window larger than asked for is not an answer to this entry: trusting it
                # could emit log bytes twice or skip the ones in between.
                return RemoteJobProtocolError(
                    f"Answer for {entry.paths.job_id} has {len(data)} log bytes, more than the "
                    f"{entry.max_bytes} asked for"
                )
            status = status_from_fields(fields, data)
            if not isinstance(entry, SubmitEntry):
                return status
            if submitted is None:
                return RemoteJobProtocolError(f"The submit of {entry.paths.job_id} was not answered")
            return replace(
                status, remote_os=submitted.get("os") or None, launched=submitted.get("launched") == "1"
            )
        if verb == "submit" and isinstance(entry, SubmitEntry) and fields.get("error"):
            detail = data.decode("utf-8", errors="replace").strip().splitlines()
            return SubmitRefused(fields["error"], detail[0] if detail else "no reason given")
        if verb == "cleanup" and isinstance(entry, CleanupEntry):
            return CleanupResult(CleanupState.parse(fields.get("state", "")))
    except RemoteJobProtocolError as error:
        return error
    return RemoteJobProtocolError(f"Unexpected '{verb}' answer for {entry.paths.job_id}")


def _first_header(output: bytes, tag: bytes, anywhere: bool = False) -> int | None:
    """
    Offset of the first ``tag`` that begins a line; failing that, with ``anywhere``, of the
    first ``tag`` at all: a login shell's banner (all that writes before an answer; a script
    writes nothing before its first header) may end without a newline and glue itself to it.
    """
    start = 0
    while True:
        index = output.find(tag, start)
        if index < 0:
            break
        if index == 0 or output[index - 1 : index] == b"\n":
            return index
        start = index + 1
    if anywhere:
        found = output.find(tag)
        return found if found >= 0 else None
    return None
