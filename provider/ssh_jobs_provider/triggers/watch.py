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

The watch also decides what each answer or failure means for it: its ``on_*`` methods (one per
kind of answer, one per kind of failed batch) make the transition, set when it is due next,
and return a :class:`Decision`, which tells the scheduler what to hand to the trigger and
whether to unregister the watch. The scheduler decides none of this itself; it reads the
phase only to shape the next batch (a submit, a poll or a cleanup).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ssh_jobs_provider.job_spec import CleanupPolicy
from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import EntryResult
from ssh_jobs_provider.protocol.cleanup import CleanupResult, CleanupState
from ssh_jobs_provider.protocol.monitor import JobMonitor, Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.slurm_options import SlurmSpec
from ssh_jobs_provider.protocol.submit import SubmitRefused
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, RetryBudget, RetryPolicy, Waits
from ssh_jobs_provider.triggers.delivery import Delivery, lost_outcome, not_submitted_outcome, refused_outcome

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


class Action(Enum):
    """What the scheduler does with a watch after one of its decisions."""

    #: Nothing to hand over now; the watch is due again at its ``next_due`` (a cleanup to retry).
    WAIT = "wait"
    #: Hand the delivery (lines, warnings) to the trigger; the watch is due again at its ``next_due``.
    DELIVER = "deliver"
    #: Hand the final delivery (the outcome) to the trigger and unregister the watch (``finished``).
    FINISH = "finish"


@dataclass(frozen=True)
class Decision:
    """
    What a watch decided about an answer or a failure: what the scheduler does next.

    :param action: what to do with the watch
    :param delivery: what to hand to the trigger (``None`` for :attr:`Action.WAIT` only)
    """

    action: Action
    delivery: Delivery | None = None


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

    def budget_with(self, backoff: Waits) -> None:
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

    @property
    def files_to_submit(self) -> tuple[tuple[str, str], ...]:
        """The job files its submit carries while it is :attr:`Phase.SUBMITTING`; none after."""
        return self.submit_files or ()

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

    # ------------------------------------------------------------------ what an answer means

    def on_sent(self) -> bool:
        """
        A batch with its entry reached the host (even an answer cut short means the script ran):
        a submit in it may have started the job. Returns whether an earlier batch had reached it.
        """
        sent_before = self.submit_sent
        if self.phase is Phase.SUBMITTING:
            self.submit_sent = True
        return sent_before

    def on_answer(self, result: EntryResult, now: float) -> Decision:
        """The host answered its entry of a batch with ``result`` (at clock reading ``now``)."""
        sent_before = self.on_sent()
        if isinstance(result, SubmitRefused):
            return self.on_refused(result, sent_before)
        if isinstance(result, RemoteJobProtocolError):
            return self.on_entry_error(result, now)
        if isinstance(result, CleanupResult):
            return self.on_cleanup(result, now)
        return self.on_status(result, now)

    def on_refused(self, refused: SubmitRefused, sent_before: bool) -> Decision:
        """Its submit was refused (``sent_before``: an earlier send reached the host): final."""
        return self.finish(refused_outcome(self.monitor.paths, refused, self.slurm, sent_before))

    def on_submitted(self, now: float) -> Phase:
        """The host answered its submit at ``now``: its job files are dropped, and it is watched."""
        self.submit_files = None
        self.monitor.submitted(now)
        return self.advance(Event.SUBMITTED)

    def on_status(self, status: JobStatus, now: float) -> Decision:
        """
        A poll (or a submit and its first poll) answered ``status`` at ``now``: log lines, and the
        next poll; once the job ended and its log is drained, its cleanup next or its outcome.
        """
        self.polls = self.polls.reset()
        submitted = None
        if self.phase is Phase.SUBMITTING:
            submitted = status
            self.on_submitted(now)
        update = self.monitor.feed_status(status, now)
        delivery = Delivery(
            lines=update.lines,
            warnings=update.notes,
            progress=update.progress,
            log_offset=self.monitor.log_offset,
            submitted=submitted,
        )
        if update.outcome is None:
            if self.monitor.finishing and self.phase is Phase.WATCHING:
                self.advance(Event.JOB_ENDED)
            self.next_due = now if update.more_now else next_tick(now, self.poll_interval)
            return Decision(Action.DELIVER, delivery)
        if self.wants_cleanup(update.outcome):
            self.final_outcome = update.outcome
            self.advance(Event.CLEANUP_WANTED)
            self.next_due = now  # clean up in the very next batch, over this connection
            return Decision(Action.DELIVER, delivery)
        delivery.outcome = update.outcome
        return Decision(Action.FINISH, delivery)

    def on_cleanup(self, result: CleanupResult, now: float) -> Decision:
        """Its cleanup answered ``result`` at ``now``: the outcome, or a later attempt."""
        self.polls = self.polls.reset()
        outcome = self._held_outcome()
        if result.state in (CleanupState.REMOVED, CleanupState.ABSENT):
            return self.finish(outcome, cleaned_up=True)
        if result.state is CleanupState.FOREIGN:
            # Not this job's directory any more: retrying cannot change that, and neither the
            # trigger nor the operator may remove it.
            delivery = Delivery(
                warnings=[
                    f"Not removing {self.monitor.paths.job_dir}: it no longer carries this job's token."
                ],
                log_offset=self.monitor.log_offset,
                outcome=dataclasses.replace(outcome, leave_remote=True),
                cleaned_up=False,
            )
            return Decision(Action.FINISH, delivery)
        self.cleanups = self.cleanups.increment(f"cleanup {result.state.value}")
        if self.cleanups.is_exhausted():
            return self.finish(outcome, cleaned_up=False)
        self.next_due = now + self.cleanups.delay()
        return Decision(Action.WAIT)

    # ------------------------------------------------------------------ what a failure means

    def on_entry_error(self, error: RemoteJobProtocolError, now: float) -> Decision:
        """Its answer in a batch answered at ``now`` is missing or cannot be understood: a failed poll."""
        self.next_due = now + (SUBMIT_TICK if self.phase is Phase.SUBMITTING else self.poll_interval)
        return self._failed(error)

    def on_batch_failed(self, error: BaseException, delay: float) -> Decision:
        """Its batch failed in a way a reconnect may fix, which comes after ``delay`` seconds."""
        return self._failed(error, delay)

    def on_batch_broken(self, error: BaseException) -> Decision:
        """Its batch failed in a way a retry cannot fix: its outcome now."""
        if self.phase is Phase.CLEANING:  # only its cleanup was pending
            return self.finish(self._held_outcome(), cleaned_up=False)
        if self.phase is Phase.SUBMITTING:
            return self.finish(submit_failed(self, error))
        return self.finish(Outcome(OutcomeStatus.ERROR, None, f"Watching remote job failed: {error}"))

    def on_session_error(self, error: BaseException) -> Decision:
        """The host session itself broke (a bug): an error outcome instead of a hang."""
        return self.finish(
            Outcome(OutcomeStatus.ERROR, None, f"Internal error in the SSH host session: {error}")
        )

    def finish(self, outcome: Outcome, cleaned_up: bool | None = None) -> Decision:
        """Its one final delivery: ``outcome``, and whether a requested cleanup was done."""
        delivery = Delivery(log_offset=self.monitor.log_offset, outcome=outcome, cleaned_up=cleaned_up)
        return Decision(Action.FINISH, delivery)

    def _failed(self, error: BaseException, delay: float | None = None) -> Decision:
        """One more failed poll (or submit, or cleanup): a warning, or the outcome once the budget is spent."""
        self.polls = self.polls.increment(error)
        exhausted = self.polls.is_exhausted()
        if self.phase is Phase.CLEANING:
            # The job's outcome is known and its log delivered: only the cleanup is left, and
            # only its budget counts. Once spent, report the real outcome and leave the cleanup
            # to the operator; a lost connection never turns a finished job into a lost one.
            if exhausted or self.polls.failures > self.cleanup_retries:
                return self.finish(self._held_outcome(), cleaned_up=False)
        elif exhausted and self.phase is Phase.SUBMITTING:
            return self.finish(submit_failed(self, error))
        elif exhausted:
            return self.finish(
                lost_outcome(self.monitor.paths, self.failures, self.max_reconnect_attempts, error)
            )
        retry = f"; retrying in {delay:.1f}s" if delay is not None else ""
        warning = (
            f"SSH poll of job {self.monitor.paths.job_id} failed "
            f"({self.polls.describe()}): {type(error).__name__}: {error}{retry}"
        )
        return Decision(Action.DELIVER, Delivery(warnings=[warning], log_offset=self.monitor.log_offset))

    def _held_outcome(self) -> Outcome:
        """The outcome it holds while its cleanup is pending (:attr:`Phase.CLEANING`)."""
        assert self.final_outcome is not None, "a watch holds its outcome while it cleans up"
        return self.final_outcome


def next_tick(now: float, interval: float) -> float:
    """The next instant on the ``interval`` grid, so equal intervals share ticks."""
    return (math.floor(now / interval) + 1) * interval


def submit_failed(watch: Watch, error: BaseException) -> Outcome:
    """The outcome of a submit the triggerer could not get answered."""
    return not_submitted_outcome(watch.monitor.paths, watch.failures, watch.submit_sent, error)
