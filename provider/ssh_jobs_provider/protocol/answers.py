"""
What every verb's answer is made of, parsed. Pure code: bytes in, values out.

Every answer is a header line ``SSHJOBS1 <verb> k=v ...``, found even after a chatty login
shell printed something first (:func:`find_header`). A job's state, as the poll and the submit
answer it, is a :class:`JobStatus` (:func:`status_from_fields`). Each verb parses the rest of
its own answer beside its builder (``submit.py``, ``poll.py``, ``cleanup.py``, ``kill.py``, ...);
a batch's framing is :mod:`~ssh_jobs_provider.protocol.batch`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG

_HEADER_FIELD = re.compile(r"(\w+)=(\S*)")


class RemoteJobProtocolError(ValueError):
    """Raised when a script's answer cannot be understood (not our protocol, or truncated)."""


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
    index = first_header(output, needle, anywhere=True)
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


def parse_simple_state(output: bytes, verb: str) -> str:
    """Parse the ``state=`` of a kill or cleanup answer."""
    fields, _ = find_header(output, verb)
    return fields.get("state", "")


def first_header(output: bytes, tag: bytes, anywhere: bool = False) -> int | None:
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
