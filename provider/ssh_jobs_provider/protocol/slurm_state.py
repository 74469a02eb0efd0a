"""
What Slurm says about a job, and what it means for the task. Pure code.

The one state query of a tick (:func:`slurm_section`, ``slurm_states`` in ``sh/slurm.sh``)
answers one ``slurm`` line per job, parsed into
a :class:`SlurmRecord`; :class:`SlurmJobView` follows one job's records and says what the task
log should be told (a pending reason, once per change) and, once Slurm has recorded the job's
end, its :class:`~ssh_jobs_provider.protocol.monitor.Outcome`.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.monitor import JobMonitor, MonitorUpdate, Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.scripts import as_whole, quote, script_prelude, shell_source

#: States in which the job has not ended yet.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "RESV_DEL_HOLD",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
    }
)
#: End states in which the job failed without an exit code of its own: Slurm (or an admin)
#: ended it. Named in the task's failure.
ENDED_BY_SLURM = frozenset(
    {"CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED"}
)
#: Ticks in a row neither squeue nor sacct must know a submitted job before the watch gives up.
UNKNOWN_CONFIRMATIONS = 3


def slurm_states_call(jobs: Sequence[tuple[int, RemoteJobPaths]]) -> str:
    """
    The line that asks Slurm about ``jobs`` (``(key, paths)``) in one squeue (and one sacct for
    those squeue no longer shows). Needs the prelude and ``sh/slurm.sh`` before it; answers are
    parsed by :func:`~ssh_jobs_provider.protocol.slurm_state.parse_slurm_states`.
    """
    if not jobs:
        return ""
    return "slurm_states " + " ".join(f"{int(key)} {quote(paths.job_dir)}" for key, paths in jobs) + "\n"


def build_slurm_states_script(jobs: Sequence[tuple[int, RemoteJobPaths]], tag: str) -> str:
    """A whole script asking Slurm about ``jobs``: for a tick that polls nothing else."""
    return as_whole(
        script_prelude(tag) + shell_source("slurm.sh") + slurm_states_call(jobs) + 'echo "$answer_tag end"\n'
    )


def slurm_section(jobs: Sequence[tuple[int, RemoteJobPaths]]) -> str:
    """
    What a tick's batch script gets appended for its Slurm jobs: run after the batch's own
    ``end`` line (its parser stops there), in the same shell, so ``$answer_tag`` is the batch's tag.
    """
    if not jobs:
        return ""
    return as_whole(shell_source("slurm.sh") + slurm_states_call(jobs) + 'echo "$answer_tag slurm-end"\n')


@dataclass(frozen=True)
class SlurmRecord:
    """
    One job's line in a tick's answer.

    :param state: Slurm's state (``RUNNING``, ``COMPLETED``, ...), or ``unknown`` (neither squeue
        nor sacct knows the id), ``nojob`` (no id recorded in the job directory) or ``error``
        (the query itself failed: :attr:`reason` says why)
    :param slurm_job_id: the id Slurm gave the job
    :param exit_code: the exit code (decoded from squeue's raw wait status, or sacct's ``code:signal``)
    :param signal: the signal that ended the job's batch script, if one did
    :param reason: squeue's reason (why a job is pending: ``Resources``, ``Priority``, ...)
    :param source: ``squeue`` or ``sacct`` (the job aged out of squeue)
    """

    state: str
    slurm_job_id: str = ""
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    source: str = ""

    @property
    def ended(self) -> bool:
        return self.state not in ACTIVE_STATES and self.state not in ("unknown", "nojob", "error")


def decode_exit(text: str) -> tuple[int | None, int | None]:
    """
    ``(exit code, signal)`` from squeue's raw wait status (``768``: exit 3) or sacct's
    ``code:signal`` (``3:0``); a signal of 0 is no signal, and a job killed by a signal has no
    exit code of its own.
    """
    if not text:
        return None, None
    try:
        if ":" in text:
            code_text, _, signal_text = text.partition(":")
            code, number = int(code_text), int(signal_text)
        else:
            status = int(text)
            code, number = (status >> 8) & 0xFF, status & 0x7F
    except ValueError:
        raise RemoteJobProtocolError(f"Unreadable Slurm exit status {text!r}") from None
    if number:
        return None, number
    return code, None


def parse_slurm_states(output: bytes, tag: str) -> dict[int, SlurmRecord]:
    """
    The ``slurm`` lines of a tick's answer, per key. Only whole lines that start with ``tag``
    count: log bytes elsewhere in the answer cannot hold a batch's random tag.
    """
    records: dict[int, SlurmRecord] = {}
    marker = f"{tag} slurm ".encode()
    for raw in output.split(b"\n"):
        if not raw.startswith(marker):
            continue
        text = raw[len(marker) :].decode("utf-8", errors="replace")
        # reason= is last and may hold spaces (a failed query's words): everything after it.
        head, _, reason = text.partition(" reason=")
        fields = dict(part.partition("=")[::2] for part in head.split())
        try:
            key = int(fields.get("key", ""))
        except ValueError:
            continue
        code, number = decode_exit(fields.get("exit", ""))
        records[key] = SlurmRecord(
            state=fields.get("state", "") or "unknown",
            slurm_job_id=fields.get("job", ""),
            exit_code=code,
            signal=number,
            reason=reason.strip(),
            source=fields.get("from", ""),
        )
    return records


def signal_name(number: int) -> str:
    """``SIGTERM (15)``, or ``signal 77`` for a number this Python does not name."""
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return f"signal {number}"


def describe_end(record: SlurmRecord) -> str:
    """``exit code 3``, ``SIGKILL (9)`` or ``exit code 0 and SIGTERM (15)`` for a record's wait status."""
    if record.signal is not None:
        return f"signal {signal_name(record.signal)}"
    if record.exit_code is not None:
        return f"exit code {record.exit_code}"
    return "no exit status recorded"


def slurm_outcome(record: SlurmRecord, job_id: str) -> Outcome | None:
    """
    The task's outcome for a job Slurm has recorded as ended (``None`` while it has not).

    ``COMPLETED`` succeeds with exit code 0; ``FAILED`` fails with the job's exit code (a job
    its own signal ended has none: the signal is named); every state in :data:`ENDED_BY_SLURM`
    fails with the state and the decoded wait status named, and no exit code, so that no
    ``skip_on_exit_code`` can turn a cancelled or timed-out job into a skipped task.
    """
    if not record.ended:
        return None
    where = f"Remote job {job_id} (Slurm job {record.slurm_job_id})"
    if record.state == "COMPLETED" and record.exit_code in (0, None) and record.signal is None:
        return Outcome(OutcomeStatus.SUCCESS, 0, f"{where} COMPLETED with exit code 0")
    if record.state == "FAILED" and record.exit_code is not None:
        return Outcome(
            OutcomeStatus.FAILED, record.exit_code, f"{where} FAILED with exit code {record.exit_code}"
        )
    why = {
        "CANCELLED": "it was cancelled (scancel, by the user, an admin or the task's kill)",
        "TIMEOUT": "it reached its time limit (scheduler_options 'time', or the partition's)",
        "NODE_FAIL": "its node failed",
        "OUT_OF_MEMORY": "it used more memory than it asked for (scheduler_options 'mem')",
        "PREEMPTED": "a job of higher priority took its resources",
        "BOOT_FAIL": "its node could not be booted",
        "DEADLINE": "it could not end before its deadline",
    }.get(record.state, "")
    return Outcome(
        OutcomeStatus.FAILED,
        None,
        f"{where} ended {record.state} ({describe_end(record)})" + (f": {why}" if why else ""),
    )


class SlurmJobView:
    """
    One Slurm job seen tick after tick: what to tell the task log, and when it has ended.

    :param job_id: the provider's job id (for messages)
    """

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        #: The last record fed.
        self.last: SlurmRecord | None = None
        #: What the task log was last told: (state, pending reason).
        self._said = ("", "")
        self._unknown_seen = 0
        self._errors_seen = 0
        #: Where the job stands, for the task log, not yet taken (:meth:`take_notes`).
        self.notes: list[str] = []
        #: Failed queries, for the task log as warnings, not yet taken (:meth:`take_warnings`).
        self.warnings: list[str] = []

    def feed(self, record: SlurmRecord) -> Outcome | None:
        """Digest this tick's record; returns the outcome once the job has ended (or is lost)."""
        self.last = record
        if record.state == "error":
            # The query failed: nothing is known about the job; another tick asks again.
            self._errors_seen += 1
            if self._errors_seen in (1, UNKNOWN_CONFIRMATIONS):
                self.warnings.append(f"Could not ask Slurm about remote job {self.job_id}: {record.reason}")
            return None
        self._errors_seen = 0
        if record.state in ("unknown", "nojob"):
            self._unknown_seen += 1
            if self._unknown_seen < UNKNOWN_CONFIRMATIONS:
                return None
            if record.state == "nojob":
                return Outcome(
                    OutcomeStatus.ERROR,
                    None,
                    f"Remote job {self.job_id} has no Slurm job id recorded in its directory: its submit did not "
                    "complete (or it is not a Slurm job).",
                    never_started=True,
                )
            return Outcome(
                OutcomeStatus.ERROR,
                None,
                f"Slurm no longer knows remote job {self.job_id} (Slurm job {record.slurm_job_id}): it left squeue "
                "(MinJobAge) and sacct has no record of it (no accounting storage or job completion log).",
            )
        self._unknown_seen = 0
        said = (record.state, record.reason if record.state == "PENDING" else "")
        if said != self._said:
            self._said = said
            self.notes.append(self._describe(record))
        return slurm_outcome(record, self.job_id)

    def _describe(self, record: SlurmRecord) -> str:
        where = f"Slurm job {record.slurm_job_id} (remote job {self.job_id})"
        if record.state == "PENDING":
            return f"{where} is PENDING: {record.reason or 'no reason given'}"
        return f"{where} is {record.state}"

    def take_notes(self) -> list[str]:
        """Where the job stands (its state, its pending reason) since the last call."""
        notes, self.notes = self.notes, []
        return notes

    def take_warnings(self) -> list[str]:
        """The failed queries since the last call."""
        warnings, self.warnings = self.warnings, []
        return warnings


class SlurmMonitor(JobMonitor):
    """
    A :class:`~ssh_jobs_provider.protocol.monitor.JobMonitor` whose job's end is Slurm's record.

    The job directory's poll still carries the log (``sbatch --output``) and tells a directory
    removed or taken over; whether the job has ended, and how, is Slurm's answer, fed with
    :meth:`feed_slurm` before each :meth:`feed_status`. A tick's Slurm query runs after its log
    reads, so an end first seen in a tick is acted on in the next one (asked at once): its log
    is then read after the end, and no last line is lost.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slurm = SlurmJobView(self.paths.job_id)
        #: Slurm's outcome, known since an earlier tick: the job's log has been read after it.
        self._slurm_outcome: Outcome | None = None
        #: Slurm's outcome first seen this tick.
        self._slurm_seen: Outcome | None = None

    def feed_slurm(self, record: SlurmRecord | None) -> None:
        """This tick's Slurm record of the job (``None``: the answer did not carry one)."""
        if record is None or self._slurm_seen is not None:
            return
        self._slurm_seen = self.slurm.feed(record)

    def feed_status(self, status: JobStatus, now: float) -> MonitorUpdate:
        update = super().feed_status(status, now)
        update.progress.extend(self.slurm.take_notes())
        update.notes[:0] = self.slurm.take_warnings()
        if self._slurm_seen is not None and self._slurm_outcome is None and update.outcome is None:
            self._slurm_outcome = self._slurm_seen
            update.more_now = True
        return update

    def _terminal(self, status: JobStatus, now: float) -> JobStatus | None:
        if status.state in (JobState.MISSING, JobState.FOREIGN):
            return super()._terminal(status, now)
        # No pid, no exit code in the directory: those are the detached wrapper's, not Slurm's.
        return status if self._slurm_outcome is not None else None

    def _outcome(self, status: JobStatus) -> Outcome:
        if self._slurm_outcome is not None and status.state not in (JobState.MISSING, JobState.FOREIGN):
            return self._slurm_outcome
        return super()._outcome(status)


def slurm_job_status(status: JobStatus, record: SlurmRecord | None) -> JobStatus:
    """
    An earlier try's Slurm job as :func:`~ssh_jobs_provider.protocol.reattach.decide` reads a
    detached one: Slurm's record in place of the pid and exit code its directory never has.

    A job Slurm still has (``PENDING``, ``RUNNING``, ...) counts as running (re-attached, never
    submitted again); an ended one as exited with its exit code (none for a job Slurm ended:
    a fresh job then); one Slurm never queued as pending (a fresh job). A query that failed
    says nothing, and raises: deciding on it could queue a second copy of a running job.
    """
    if status.state in (JobState.MISSING, JobState.FOREIGN) or status.removed or record is None:
        # A removed directory's record carries the exit code Slurm gave (sh/slurm.sh: slurm_record_end).
        return status
    if record.state == "error":
        raise RemoteJobProtocolError(f"Could not ask Slurm about an earlier try's job: {record.reason}")
    if record.state in ACTIVE_STATES:
        return replace(status, state=JobState.RUNNING)
    outcome = slurm_outcome(record, "")
    if outcome is None:
        return replace(status, state=JobState.PENDING)
    return replace(status, state=JobState.EXITED, exit_code=outcome.exit_code)
