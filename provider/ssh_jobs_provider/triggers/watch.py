"""
One watched job, as the shared host session sees it: its registration, the phase it is in,
and what it receives. Pure code, used by
:class:`~ssh_jobs_provider.triggers.poll_scheduler.PollScheduler`.

A watch goes through the phases of :class:`Phase`, and only by the transitions of
:data:`TRANSITIONS` (every one of them is in that table; :meth:`Watch.advance` refuses any
other)::

    SUBMITTING --submitted--> WATCHING --job_ended--> DRAINING
    WATCHING, DRAINING --cleanup_wanted--> CLEANING
    any phase but DONE --finished--> DONE

``finished`` leads from every phase to ``DONE``: the one final delivery of an outcome.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ssh_jobs_provider.exceptions import FAN_OUT_HINT
from ssh_jobs_provider.job_spec import CleanupPolicy
from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import PollEntry
from ssh_jobs_provider.protocol.monitor import JobMonitor, Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.refusals import POSIX_HINT
from ssh_jobs_provider.protocol.slurm import SlurmSpec
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, BackoffPolicy, RetryBudget, RetryPolicy

#: Seconds between the ticks that carry submits: the triggers of a fan-out arrive over some
#: seconds, and each tick's exec carries every submit that arrived since the last one.
SUBMIT_TICK = 1.0
#: Seconds a line handed to the trigger's logger may take to reach the task log. Airflow 3's
#: triggerer writes a trigger's log in its parent process, after a trip over a socket: a
#: triggerer killed outright loses what is still on the way. So the host records a log offset
#: as delivered (where a re-created trigger resumes) only this long after it was handed over:
#: after such a kill, the last seconds' lines may come twice, and none is lost.
LOG_WRITE_SECONDS = 2.0


class Phase(Enum):
    """Where a watched job stands."""

    #: The triggerer still has to get the job's submit answered (re-sent until it is).
    SUBMITTING = "submitting"
    #: Polled until it ends.
    WATCHING = "watching"
    #: Ended; the rest of its log is still being read.
    DRAINING = "draining"
    #: Outcome known and log delivered; its directory is being removed.
    CLEANING = "cleaning"
    #: Its outcome was delivered; no longer registered.
    DONE = "done"


class Event(Enum):
    """What moves a watch from one phase to the next."""

    SUBMITTED = "submitted"
    JOB_ENDED = "job_ended"
    CLEANUP_WANTED = "cleanup_wanted"
    FINISHED = "finished"


#: Every transition a watch may make: (phase, event) -> the next phase.
TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    (Phase.SUBMITTING, Event.SUBMITTED): Phase.WATCHING,
    (Phase.WATCHING, Event.JOB_ENDED): Phase.DRAINING,
    (Phase.WATCHING, Event.CLEANUP_WANTED): Phase.CLEANING,
    (Phase.DRAINING, Event.CLEANUP_WANTED): Phase.CLEANING,
    **{(phase, Event.FINISHED): Phase.DONE for phase in Phase if phase is not Phase.DONE},
}


class WatchStateError(RuntimeError):
    """A transition that :data:`TRANSITIONS` does not allow: a bug, never a remote condition."""


@dataclass
class Delivery:
    """
    What a watching trigger receives: log lines, warnings, and at the end its result.

    :param lines: log lines for the task log
    :param warnings: warnings for the task log (failed polls, a cleanup refused)
    :param progress: where the job stands, for the task log at info level (a Slurm job's state)
    :param log_offset: the log offset after these lines
    :param outcome: the final outcome (the last delivery only)
    :param cleaned_up: ``True``/``False`` once a requested cleanup ran or gave up; ``None`` if none was requested
    :param submitted: the answer of the job's submit (the delivery of the batch that submitted it)
    """

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Where the job stands, for the task log at info level (a Slurm job's state, once per change).
    progress: list[str] = field(default_factory=list)
    log_offset: int = 0
    outcome: Outcome | None = None
    #: ``True``/``False`` once a requested cleanup ran or gave up; ``None`` if none was requested.
    cleaned_up: bool | None = None
    #: The answer of the job's submit, in the delivery of the batch that submitted it.
    submitted: JobStatus | None = None


@dataclass(eq=False)
class Watch:
    """
    One job's registration: its monitor, its budgets, and where it stands.

    :param monitor: the job's :class:`~ssh_jobs_provider.protocol.monitor.JobMonitor`
    :param poll_interval: seconds between polls while the job runs
    :param command_timeout: seconds a batch with this job may take
    :param max_reconnect_attempts: consecutive failed polls tolerated
    :param cleanup: when the job directory is removed (:class:`~ssh_jobs_provider.job_spec.CleanupPolicy`)
    :param cleanup_retries: attempts for the cleanup before leaving it to the operator
    :param next_due: clock reading of the next poll
    :param delivered: log bytes recorded on the host as delivered: handed to the trigger's
        logger at least :data:`LOG_WRITE_SECONDS` ago (see :meth:`record_delivered`)
    :param final_outcome: the outcome, while the cleanup is pending (:attr:`Phase.CLEANING`)
    :param submit_files: the job's files while the triggerer still has to submit it
        (:func:`~ssh_jobs_provider.protocol.scripts.job_files`); ``None`` once submitted, or
        for a job the worker submitted
    :param submit_sent: a batch carrying the submit reached the host (its answer may be lost):
        the job may have started
    :param slurm: the job goes through Slurm (``scheduler="slurm"``): how it is queued; ``None``:
        a detached process
    """

    monitor: JobMonitor
    poll_interval: float
    command_timeout: float
    max_reconnect_attempts: int
    cleanup: CleanupPolicy = CleanupPolicy.NEVER
    cleanup_retries: int = 3
    next_due: float = 0.0
    delivered: int = 0
    final_outcome: Outcome | None = None
    submit_files: tuple[tuple[str, str], ...] | None = None
    submit_sent: bool = False
    slurm: SlurmSpec | None = None
    #: Where the job stands: set from ``submit_files`` when the watch is made, then changed by
    #: :meth:`advance` only.
    phase: Phase = field(init=False)
    #: Polls (or submits) failed in a row, against ``max_reconnect_attempts``; a success resets it.
    polls: RetryBudget = field(init=False)
    #: Cleanups tried, against ``cleanup_retries`` attempts.
    cleanups: RetryBudget = field(init=False)
    #: Log bytes handed to the trigger's logger, perhaps not yet in the task log.
    handed_over: int = field(init=False)
    #: (clock reading, offset) of the hand-overs not yet old enough to count as delivered.
    _unsettled: deque[tuple[float, int]] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.budget_with(DEFAULT_BACKOFF)
        self.delivered = self.handed_over = self.monitor.log_offset
        self.phase = Phase.SUBMITTING if self.submit_files is not None else Phase.WATCHING

    def advance(self, event: Event) -> Phase:
        """Make the transition ``event`` leads to from the current phase (see :data:`TRANSITIONS`)."""
        try:
            self.phase = TRANSITIONS[self.phase, event]
        except KeyError:
            raise WatchStateError(f"A watch in phase {self.phase.name} cannot take {event.name}") from None
        return self.phase

    def budget_with(self, backoff: BackoffPolicy) -> None:
        """Fresh budgets for the polls and the cleanups, waiting ``backoff`` after a failure."""
        self.polls = RetryBudget(self.max_reconnect_attempts, backoff)
        self.cleanups = RetryPolicy(self.cleanup_retries, backoff).budget()

    @property
    def failures(self) -> int:
        """Polls (or submits) failed in a row."""
        return self.polls.failures

    @property
    def active(self) -> bool:
        """Still registered: its outcome has not been delivered."""
        return self.phase is not Phase.DONE

    @property
    def submitting(self) -> bool:
        return self.phase is Phase.SUBMITTING

    @property
    def cleaning(self) -> bool:
        return self.phase is Phase.CLEANING

    def record_delivered(self, offset: int, now: float) -> None:
        """The trigger has handed the log up to ``offset`` to its logger (at clock reading ``now``)."""
        if offset > self.handed_over:
            self.handed_over = offset
            self._unsettled.append((now, offset))

    def settled(self, now: float) -> int:
        """The log bytes to record as delivered at ``now``: those handed over long enough ago."""
        while self._unsettled and self._unsettled[0][0] + LOG_WRITE_SECONDS <= now:
            self.delivered = max(self.delivered, self._unsettled.popleft()[1])
        return self.delivered

    def wants_cleanup(self, outcome: Outcome) -> bool:
        if outcome.status not in (OutcomeStatus.SUCCESS, OutcomeStatus.FAILED):
            return False  # the job may still be running: the operator kills before cleaning
        return CleanupPolicy(self.cleanup).removes(outcome.status is OutcomeStatus.SUCCESS)

    def offset_record(self) -> PollEntry:
        """
        An entry that only records how far the log was delivered, for a trigger that leaves while
        its triggerer lives on (a graceful stop, a trigger moved): all it handed over counts.
        """
        return PollEntry(self.monitor.paths, 0, 0, delivered=self.handed_over, token=self.monitor.token)


def next_tick(now: float, interval: float) -> float:
    """The next instant on the ``interval`` grid, so equal intervals share ticks."""
    return (math.floor(now / interval) + 1) * interval


def submit_failed(watch: Watch, error: BaseException) -> Outcome:
    """The outcome of a submit the triggerer could not get answered."""
    job = watch.monitor.paths
    if watch.submit_sent:
        started = (
            f"The submit reached the host but its answer did not come back: the job may have started "
            f"in {job.job_dir}."
        )
    else:
        started = "No job was started."
    hint = POSIX_HINT if isinstance(error, RemoteJobProtocolError) else FAN_OUT_HINT
    return Outcome(
        OutcomeStatus.ERROR,
        None,
        f"Could not submit remote job {job.job_id} ({watch.failures} failed attempt(s); "
        f"{type(error).__name__}: {error}). {started} {hint}",
        never_started=not watch.submit_sent,
    )
