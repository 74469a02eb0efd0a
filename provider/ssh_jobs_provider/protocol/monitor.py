"""
What a trigger does with poll answers, as pure code: no sockets, no clocks of its own.

:class:`JobMonitor` is a small state machine. The host session asks it for its next batch
entry, has it run however it likes (one batched exec per host shared by every trigger, see
:mod:`ssh_jobs_provider.triggers.host_session`), feeds the parsed answer back with the
current time, and gets back the
log lines to emit and, at the end, the one final outcome. Keeping this free of I/O is
what lets the transport change without touching the poll logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ssh_jobs_provider.protocol.answers import JobState, JobStatus
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.log_stream import LogStream
from ssh_jobs_provider.protocol.poll import PollEntry

#: Consecutive polls that must see the process gone without an exit code before the
#: monitor gives up on it (one more look guards against a transient ``kill -0`` answer).
VANISHED_CONFIRMATIONS = 2

#: Consecutive polls that must find the job directory gone (with no record of its end) before
#: the monitor believes it: one failed ``cd`` may be transient (NFS ``ESTALE``, an automount).
MISSING_CONFIRMATIONS = 2

#: Seconds a submitted job may stay without a recorded pid before it counts as never started.
PENDING_LIMIT_SECONDS = 120.0

#: Log bytes read past the log's size at the job's end: what processes the job left running
#: write there later is shown up to this many bytes, then the watch ends and says how many
#: were left unread (a writer that never stops must not keep the job from ending).
AFTER_EXIT_BYTES = 64 * 1024


class OutcomeStatus(str, Enum):
    """How watching one job ended: the job exited 0, exited otherwise, or was not seen to end."""

    SUCCESS = "success"
    FAILED = "failed"
    ERROR = "error"


@dataclass(frozen=True)
class Outcome:
    """
    The final result of watching one job.

    :param status: :class:`OutcomeStatus` (``"error"``: the job was not seen to end)
    :param exit_code: the job's exit code (``None`` after an error)
    :param message: what happened, for the task log
    :param leave_remote: the job directory is not this task instance's: nothing may kill or remove it
    :param never_started: no job was started (its submit was refused, or never reached the
        host): there is nothing to kill or remove
    :param watch_lost: the connection to the host was lost for good: the job may still be running
    """

    status: OutcomeStatus
    exit_code: int | None
    message: str
    #: The job directory is not this task instance's: nothing may kill or remove it.
    leave_remote: bool = False
    #: No job was started (its submit was refused or never reached the host).
    never_started: bool = False
    #: The connection to the host was lost for good: the job may still be running.
    watch_lost: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", OutcomeStatus(self.status))  # "error" -> OutcomeStatus.ERROR


@dataclass
class MonitorUpdate:
    """
    What one poll answer means for the trigger.

    :param lines: complete log lines to emit
    :param more_now: more log is waiting: poll again at once instead of after ``poll_interval``
    :param outcome: the final outcome, once the job has ended and its log is drained
    :param notes: what the task log should be told about the log itself
    :param progress: where the job stands, for the task log at info level (a Slurm job's state
        and pending reason, each time it changes)
    """

    lines: list[str] = field(default_factory=list)
    #: Poll again right away (more log is waiting) instead of sleeping ``poll_interval``.
    more_now: bool = False
    outcome: Outcome | None = None
    #: What the task log should be told about the log itself (cut short, unreadable, left unread).
    notes: list[str] = field(default_factory=list)
    #: Where the job stands (info, not a warning): a Slurm job's state and pending reason.
    progress: list[str] = field(default_factory=list)


class JobMonitor:
    """
    Follow one remote job from its poll answers until its log is drained.

    :param paths: the job's remote paths
    :param log_offset: byte offset of the log already delivered
    :param chunk_size: most log bytes one poll may return
    :param started_at: the caller's clock reading when watching began
    :param token: the submit's token; a job directory that does not carry it is not watched
    :param resume: resume at the offset an earlier watcher recorded as delivered, if it is
        further (a re-created trigger); ``False``: from ``log_offset`` whatever was delivered
    :param resume_after: a record counts only beyond this many bytes (what an earlier try's
        watchers had delivered to that try's log when this try took the job over)
    """

    def __init__(
        self,
        paths: RemoteJobPaths,
        log_offset: int,
        chunk_size: int,
        started_at: float,
        token: str = "",
        resume: bool = True,
        resume_after: int = 0,
    ) -> None:
        self.paths = paths
        self.resume = resume
        self.resume_after = resume_after
        self.token = token
        self.chunk_size = chunk_size
        self.log = LogStream(offset=log_offset, max_pending=max(chunk_size, 4096))
        self._started_at = started_at
        self._vanished_seen = 0
        self._missing_seen = 0
        self._final: JobStatus | None = None
        #: Where reading the log stops once the job has ended (see AFTER_EXIT_BYTES).
        self._drain_end: int | None = None
        self._unreadable_said = False
        self.last_status: JobStatus | None = None
        #: The wrapper's pid, once an answer carried it (a batch's submit answers before the
        #: wrapper has recorded it: a later poll brings it).
        self.wrapper_pid: int | None = None
        #: The last answer that found the job directory (its log size counts).
        self._last_found: JobStatus | None = None

    def submitted(self, now: float) -> None:
        """The job was submitted just now: a job without a pid counts as pending from here."""
        self._started_at = now

    @property
    def finishing(self) -> bool:
        """The job has ended; only its remaining log is still being read."""
        return self._final is not None

    @property
    def log_offset(self) -> int:
        """Offset of the first log byte not yet emitted (safe to resume from)."""
        return self.log.emitted_offset

    def poll_entry(self, max_bytes: int | None = None, delivered: int | None = None) -> PollEntry:
        """
        This job's entry in a batch poll.

        :param max_bytes: cap on the log window (default: the chunk size)
        :param delivered: log offset known to be in the task log, recorded remotely so that a
            re-created watcher resumes there (default: everything emitted so far)
        """
        size = self.chunk_size if max_bytes is None else min(max_bytes, self.chunk_size)
        if self._drain_end is not None:
            size = min(size, max(0, self._drain_end - self.log.read_offset))
        recorded = self.log_offset if delivered is None else delivered
        return PollEntry(self.paths, self.log.read_offset, size, delivered=recorded, token=self.token)

    def feed_status(self, status: JobStatus, now: float) -> MonitorUpdate:
        """Digest one parsed poll answer."""
        found = status.state not in (JobState.MISSING, JobState.FOREIGN) and not status.removed
        further = status.delivered > max(self.log.read_offset, self.resume_after)
        if self.resume and found and self._last_found is None and further:
            # An earlier watcher of this job (before a triggerer restart) already delivered
            # the log up to there: resume at that byte instead of repeating it. (Asked of the
            # first answer that found the directory: a transient miss must not skip it.)
            self.log = LogStream(offset=status.delivered, max_pending=self.log.max_pending)
            self.last_status = self._last_found = status
            return MonitorUpdate(more_now=True)
        self.last_status = status
        if status.pid:
            self.wrapper_pid = status.pid
        if found:
            self._last_found = status
            self._missing_seen = 0
        elif status.state is JobState.MISSING and not status.removed:
            # Gone without a record of its end: believed only when a second look agrees.
            self._missing_seen += 1
            if self._final is not None:
                return self._missing_while_draining(status)
        truncated = found and status.log_size < self.log.read_offset
        update = MonitorUpdate(notes=self._log_notes(status, truncated))
        if truncated:
            # Cut below what was read: what was pending belongs to the old text; the new
            # text starts at byte 0 (the job writes in append mode).
            update.lines = self.log.flush()
            self.log = LogStream(offset=0, max_pending=self.log.max_pending)
            if self._drain_end is not None:
                self._drain_end = min(self._drain_end, status.log_size + AFTER_EXIT_BYTES)
        update.lines.extend(self.log.feed(status.log_data))
        if self._final is None:
            self._final = self._terminal(status, now)
            if self._final is not None:
                end = status.log_end if status.log_end is not None else status.log_size
                self._drain_end = end + AFTER_EXIT_BYTES
        if self._final is not None:
            # Terminal: keep reading until every byte the job wrote has been emitted, and no
            # further than the bound past its end.
            assert self._drain_end is not None
            if min(status.log_size, self._drain_end) > self.log.read_offset and status.log_data:
                update.more_now = True
                return update
            update.lines.extend(self.log.flush())
            update.notes.extend(self._unread_note(self._last_found or status))
            update.outcome = self._outcome(self._final)
            return update
        update.more_now = status.log_size > self.log.read_offset and bool(status.log_data)
        return update

    def _missing_while_draining(self, status: JobStatus) -> MonitorUpdate:
        """The job has ended and its directory is gone while its log was still being read."""
        if self._missing_seen < MISSING_CONFIRMATIONS:
            return MonitorUpdate()  # perhaps a passing miss: ask again at the next tick
        assert self._final is not None
        gone = "were not read: its directory was removed before they could be"
        update = MonitorUpdate(
            lines=self.log.flush(), notes=self._unread_note(self._last_found or status, gone)
        )
        update.outcome = self._outcome(self._final)
        return update

    def _log_notes(self, status: JobStatus, truncated: bool) -> list[str]:
        """What this answer says about the log itself: cut shorter by the job, or unreadable."""
        read = self.log.read_offset
        if truncated:
            return [
                f"The log of remote job {self.paths.job_id} was cut to {status.log_size} byte(s) after "
                f"{read} had been read (the job truncated {self.paths.log_file}): reading on from "
                "its new start."
            ]
        if status.log_unreadable and not self._unreadable_said:
            self._unreadable_said = True
            return [
                f"The log of remote job {self.paths.job_id} cannot be read ({self.paths.log_file} "
                f"was made unreadable): its output from byte {read} on is not shown."
            ]
        return []

    def _unread_note(self, status: JobStatus, why: str = "") -> list[str]:
        """The watch ends with bytes in the log it did not read: say how many, and why."""
        unread = status.log_size - self.log.read_offset
        if unread <= 0:
            return []
        if not why and status.log_unreadable:
            why = "could not be read"
        elif not why:
            why = (
                "were written after the job ended, by processes it left running, and were not read "
                f"(at most {AFTER_EXIT_BYTES} bytes past its end are shown)"
            )
        return [f"{unread} byte(s) in the log of remote job {self.paths.job_id} {why}."]

    def _terminal(self, status: JobStatus, now: float) -> JobStatus | None:
        if status.state is JobState.MISSING and not status.removed:
            return status if self._missing_seen >= MISSING_CONFIRMATIONS else None
        if status.state in (JobState.EXITED, JobState.MISSING, JobState.FOREIGN):
            return status
        if status.state is JobState.VANISHED:
            self._vanished_seen += 1
            return status if self._vanished_seen >= VANISHED_CONFIRMATIONS else None
        self._vanished_seen = 0
        if status.state is JobState.PENDING and now - self._started_at > PENDING_LIMIT_SECONDS:
            return status
        return None

    def _outcome(self, status: JobStatus) -> Outcome:
        job_dir = self.paths.job_dir
        if status.state is JobState.EXITED and status.exit_code is not None:
            code = status.exit_code
            full = (
                f" (the file system holding {job_dir} was full when it ended: its log may be incomplete)"
                if status.disk_full
                else ""
            )
            if status.removed:
                full = (
                    " earlier: its directory was removed already, so its output is in the log of the "
                    "try (or the trigger) that watched it; it was not run again"
                )
            return Outcome(
                OutcomeStatus.SUCCESS if code == 0 else OutcomeStatus.FAILED,
                code,
                f"Remote job {self.paths.job_id} exited with code {code}{full}",
            )
        if status.state is JobState.FOREIGN:
            return Outcome(
                OutcomeStatus.ERROR,
                None,
                f"Remote job directory {job_dir} no longer carries this task instance's token: it was "
                "replaced by someone else. Not watching, killing or removing it.",
                leave_remote=True,
            )
        if status.state is JobState.MISSING:
            return Outcome(
                OutcomeStatus.ERROR,
                None,
                f"Remote job directory {job_dir} no longer exists: it was removed while the job was "
                "watched (a reaper, a reboot clearing /tmp, or manual deletion).",
            )
        if status.state is JobState.PENDING:
            return Outcome(
                OutcomeStatus.ERROR,
                None,
                f"Remote job {self.paths.job_id} never started: no process recorded in {job_dir} after "
                f"{PENDING_LIMIT_SECONDS:.0f}s.",
            )
        if status.disk_full:
            return Outcome(
                OutcomeStatus.ERROR,
                None,
                f"Remote job process {status.pid} is gone without an exit code, and the file system holding "
                f"{job_dir} is full: the exit code could not be recorded. Free space on it; the job's output "
                f"so far is in {self.paths.log_file}.",
            )
        return Outcome(
            OutcomeStatus.ERROR,
            None,
            f"Remote job process {status.pid} is gone without writing an exit code (killed by the OOM "
            f"killer or SIGKILL, or the host rebooted). Its output so far is in {self.paths.log_file}.",
        )
