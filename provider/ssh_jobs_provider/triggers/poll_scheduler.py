"""
What the shared host session decides, as pure code: no asyncio, no sockets, the clock passed in.

:class:`PollScheduler` holds every job watched over one connection. The session's loop asks it
which watches are due (:meth:`PollScheduler.due`) and for the batch entries of those
(:meth:`PollScheduler.entries`), runs the batch however it likes, and hands back either the
parsed answers (:meth:`PollScheduler.apply`) or the failure (:meth:`PollScheduler.batch_error`,
which decides between a reconnect and the end of the jobs). Each of those returns the :class:`Delivery` objects to hand
to the watching triggers: log lines, warnings, and at the end the one final outcome.

- Ticks are aligned on a grid of each job's ``poll_interval``, so jobs with the same interval
  are polled together however they arrived.
- A batch carries at most :data:`MAX_BATCH_BYTES` of log in all; every job still gets at least
  :data:`MIN_WINDOW` bytes, so a noisy job cannot starve the others.
- A failed batch costs every job in it one unit of its own ``max_reconnect_attempts`` budget,
  which a successful answer restores; the whole session waits one jittered backoff (ONE
  reconnect for everybody, no thundering herd).
- A finished job whose cleanup is wanted stays registered, and its next entry is the cleanup.
- A job the triggerer submits (``submit_files``) is due at the next :data:`SUBMIT_TICK`; its
  entry is a :class:`~ssh_jobs_provider.protocol.batch.SubmitEntry` until the host answered
  it, re-sent after a failure (the submit is idempotent). At most ``submits_per_batch``
  submits (:data:`SUBMITS_PER_BATCH`; :data:`SUBMITS_PER_PERL_BATCH` once the host is known to
  run them in perl) carrying at most :data:`SUBMIT_BATCH_BYTES` of job files go in one batch;
  the others are due at once, in the next.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from ssh_jobs_provider.exceptions import FAN_OUT_HINT, is_retryable
from ssh_jobs_provider.protocol.answers import (
    BatchNotAnswered,
    CleanupResult,
    EntryResult,
    JobStatus,
    RemoteJobProtocolError,
    SubmitRefused,
)
from ssh_jobs_provider.protocol.batch import CleanupEntry, Entry, SlurmSubmitEntry, SubmitEntry
from ssh_jobs_provider.protocol.monitor import Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.refusals import refusal_message
from ssh_jobs_provider.protocol.slurm_answers import SLURM_REFUSALS
from ssh_jobs_provider.protocol.slurm_answers import refusal_message as slurm_refusal_message
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, BackoffPolicy, RetryBudget
from ssh_jobs_provider.triggers.watch import (
    SUBMIT_TICK,
    Delivery,
    Event,
    Phase,
    Watch,
    next_tick,
    submit_failed,
)

__all__ = [
    "SUBMITS_PER_PERL_BATCH",
    "SUBMIT_TICK",
    "Deliveries",
    "Delivery",
    "PollScheduler",
    "Watch",
    "next_tick",
]

#: Jobs due within this many seconds of each other share a batch.
COALESCE_SECONDS = 0.05
#: Log bytes one batch may carry in all; every job still gets at least MIN_WINDOW.
MAX_BATCH_BYTES = 8 * 1024 * 1024
MIN_WINDOW = 4096
#: Most submits in one batch run in sh: each starts a few dozen processes on the host (~20-50
#: ms in all), so a batch of this many stays well inside any command_timeout.
SUBMITS_PER_BATCH = 100
#: Most submits in one batch run by one perl process: each costs it well under a millisecond
#: and the one fork of its wrapper, so a whole fan-out starts in one exec.
SUBMITS_PER_PERL_BATCH = 2000
#: Most bytes of job files (commands, environments) one batch carries: the script travels on
#: the session's standard input and is parsed whole by the remote shell before it runs.
SUBMIT_BATCH_BYTES = 8 * 1024 * 1024


Deliveries = list[tuple[Watch, Delivery]]


class PollScheduler:
    """
    The watches of one host session and what every answer means for them.

    :param backoff: the session's reconnect backoff after a failed batch
    :param retry_on: which failures of a batch are worth a reconnect (the others end every job in it)
    """

    def __init__(
        self,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
        retry_on: Callable[[BaseException], bool] = is_retryable,
    ) -> None:
        self.backoff = backoff
        self.retry_on = retry_on
        # A dict for its order and its O(1) removal: thousands of jobs may end in one tick.
        self._watches: dict[Watch, None] = {}
        #: The session's failed batches in a row: never exhausted (each job has its own budget),
        #: only its waits count.
        self.reconnects = RetryBudget(math.inf, backoff)
        self.backoff_until = 0.0
        #: Most submits in one batch: the session raises it once its host runs them in perl.
        self.submits_per_batch = SUBMITS_PER_BATCH

    @property
    def failures(self) -> int:
        """Batches failed in a row."""
        return self.reconnects.failures

    # ------------------------------------------------------------------ membership

    @property
    def watches(self) -> list[Watch]:
        """The registered watches, in the order they came."""
        return list(self._watches)

    @property
    def watched(self) -> int:
        """How many watches are registered."""
        return len(self._watches)

    @property
    def idle(self) -> bool:
        """Nothing is watched."""
        return not self._watches

    def add(self, watch: Watch, now: float) -> None:
        """Register a job; its first poll (or its submit) comes at its next grid tick."""
        interval = min(SUBMIT_TICK, watch.poll_interval) if watch.submitting else watch.poll_interval
        watch.next_due = next_tick(now, interval)
        watch.budget_with(self.backoff)
        self._watches[watch] = None

    def remove(self, watch: Watch) -> None:
        """Leave (normal end or cancellation); safe to call twice."""
        if watch.active:
            watch.advance(Event.FINISHED)
        self._watches.pop(watch, None)

    # ------------------------------------------------------------------ timing

    def due(self, now: float) -> list[Watch]:
        """The watches to poll now: none while the session backs off after a failure."""
        if now < self.backoff_until:
            return []
        due, submits, carried = [], 0, 0
        for w in self._watches:
            if w.next_due <= now + COALESCE_SECONDS:
                if w.submitting:
                    size = sum(len(content) for _, content in w.submit_files or ())
                    if submits and (submits >= self.submits_per_batch or carried + size > SUBMIT_BATCH_BYTES):
                        continue  # still due: in the next batch, at once
                    submits, carried = submits + 1, carried + size
                due.append(w)
        return due

    def next_wake(self) -> float:
        """When something is due next (the end of a backoff counts); ``inf`` without watches."""
        if not self._watches:
            return math.inf
        return max(min(w.next_due for w in self._watches), self.backoff_until)

    # ------------------------------------------------------------------ one batch

    def entries(self, due: list[Watch], now: float) -> list[Entry]:
        """
        The batch for ``due`` at clock reading ``now``: a cleanup for finished jobs, a log window
        for the others (recording the log offset each has settled as delivered).
        """
        entries: list[Entry] = []
        budget = MAX_BATCH_BYTES
        for watch in due:
            monitor = watch.monitor
            if watch.cleaning:
                entries.append(CleanupEntry(monitor.paths, token=monitor.token))
                continue
            window = max(min(monitor.chunk_size, budget), min(monitor.chunk_size, MIN_WINDOW))
            budget = max(0, budget - window)
            entry = monitor.poll_entry(max_bytes=window, delivered=watch.settled(now))
            if watch.submitting and watch.submit_files is not None:
                fields = (entry.paths, entry.offset, entry.max_bytes, entry.delivered, entry.token)
                slurm = watch.slurm  # a Slurm job is queued with sbatch, not started detached
                entry = (
                    SubmitEntry(*fields, watch.submit_files)
                    if slurm is None
                    else SlurmSubmitEntry(*fields, watch.submit_files, slurm.arguments)
                )
            entries.append(entry)
        return entries

    @staticmethod
    def timeout(due: list[Watch]) -> float:
        """A batch may take as long as the most patient of its jobs allows."""
        return max(w.command_timeout for w in due)

    def apply(self, due: list[Watch], results: dict[int, EntryResult], now: float) -> Deliveries:
        """The batch was answered: feed each watch its own result."""
        self.reconnects = self.reconnects.reset()
        out: Deliveries = []
        for key, watch in enumerate(due):
            if watch.active:
                sent_before = watch.submit_sent
                if watch.submitting:
                    watch.submit_sent = True  # even an answer cut short means the script ran
                out.extend(self._apply(watch, results[key], now, sent_before))
        return out

    def batch_error(
        self, due: list[Watch], error: BaseException, now: float, sent: bool = True
    ) -> tuple[float | None, Deliveries]:
        """
        The batch raised ``error``: a reconnect after a backoff when that can help, else the end of
        every job in it. Returns the backoff delay (``None``: no reconnect) and the deliveries.

        :param sent: the batch reached the host (the error came while running it, not while
            connecting): the submits in it may have started their jobs
        """
        if sent:
            for watch in due:
                if watch.submitting:
                    watch.submit_sent = True
        # A batch the host did not answer at all failed as a batch: retried like a lost
        # connection, never taken for something each of its jobs did.
        if not (isinstance(error, BatchNotAnswered) or self.retry_on(error)):
            return None, self.batch_broken(due, error)
        return self.batch_failed(due, error, now)

    def batch_failed(self, due: list[Watch], error: BaseException, now: float) -> tuple[float, Deliveries]:
        """
        The connection failed under the batch (worth a reconnect): back off, count it per job.

        Returns the backoff delay and the deliveries (warnings, or final errors for the jobs whose
        budget is used up).
        """
        self.reconnects = self.reconnects.increment(error)
        delay = self.reconnects.delay()
        self.backoff_until = now + delay
        out: Deliveries = []
        for watch in due:
            if watch.active:
                out.extend(self._count_failure(watch, error, delay))
        return delay, out

    def batch_broken(self, due: list[Watch], error: BaseException) -> Deliveries:
        """The batch failed in a way a retry cannot fix: end every job in it."""
        out: Deliveries = []
        for watch in due:
            if watch.cleaning and watch.final_outcome is not None:  # only its cleanup was pending
                out.append(self._finish(watch, watch.final_outcome, cleaned_up=False))
            elif watch.submitting:
                out.append(self._finish(watch, submit_failed(watch, error)))
            else:
                out.append(
                    self._finish(
                        watch, Outcome(OutcomeStatus.ERROR, None, f"Watching remote job failed: {error}")
                    )
                )
        return out

    def abandon(self, error: BaseException) -> Deliveries:
        """The session itself broke (a bug): end every job with an error instead of a hang."""
        return [
            self._finish(
                w, Outcome(OutcomeStatus.ERROR, None, f"Internal error in the SSH host session: {error}")
            )
            for w in self.watches
        ]

    # ------------------------------------------------------------------ one answer

    def _apply(self, watch: Watch, result: EntryResult, now: float, sent_before: bool = False) -> Deliveries:
        if isinstance(result, SubmitRefused):
            # Refused before anything ran, and what it created removed again: final.
            if watch.slurm is not None and result.code in SLURM_REFUSALS:
                message = slurm_refusal_message(watch.monitor.paths, result, watch.slurm.options)
            else:
                message = refusal_message(watch.monitor.paths, result)
            # Refused at its first send: nothing ran. Refused when sent again, an earlier send
            # (whose answer was lost) may have started the job: it is then killed like a lost one.
            return [
                self._finish(
                    watch, Outcome(OutcomeStatus.ERROR, None, message, never_started=not sent_before)
                )
            ]
        if isinstance(result, RemoteJobProtocolError):
            watch.next_due = now + (SUBMIT_TICK if watch.submitting else watch.poll_interval)
            return self._count_failure(watch, result)
        watch.polls = watch.polls.reset()
        if isinstance(result, CleanupResult):
            return self._after_cleanup(watch, result, now)
        assert isinstance(result, JobStatus)
        submitted = None
        if watch.submitting:
            watch.submit_files, submitted = None, result
            watch.advance(Event.SUBMITTED)
            watch.monitor.submitted(now)
        update = watch.monitor.feed_status(result, now)
        delivery = Delivery(
            lines=update.lines,
            warnings=update.notes,
            progress=update.progress,
            log_offset=watch.monitor.log_offset,
            submitted=submitted,
        )
        if update.outcome is None:
            if watch.monitor.finishing and watch.phase is Phase.WATCHING:
                watch.advance(Event.JOB_ENDED)
            watch.next_due = now if update.more_now else next_tick(now, watch.poll_interval)
            return [(watch, delivery)]
        if watch.wants_cleanup(update.outcome):
            watch.final_outcome = update.outcome
            watch.advance(Event.CLEANUP_WANTED)
            watch.next_due = now  # clean up in the very next batch, over this connection
            return [(watch, delivery)]
        delivery.outcome = update.outcome
        return [self._complete(watch, delivery)]

    def _after_cleanup(self, watch: Watch, result: CleanupResult, now: float) -> Deliveries:
        outcome = watch.final_outcome
        assert outcome is not None
        if result.state in ("removed", "absent"):
            return [self._finish(watch, outcome, cleaned_up=True)]
        if result.state == "foreign":
            # Not this job's directory any more: retrying cannot change that, and neither the
            # trigger nor the operator may remove it.
            delivery = Delivery(
                warnings=[
                    f"Not removing {watch.monitor.paths.job_dir}: it no longer carries this job's token."
                ],
                log_offset=watch.monitor.log_offset,
                outcome=dataclasses.replace(outcome, leave_remote=True),
                cleaned_up=False,
            )
            return [self._complete(watch, delivery)]
        watch.cleanups = watch.cleanups.increment(f"cleanup {result.state}")
        if watch.cleanups.is_exhausted():
            return [self._finish(watch, outcome, cleaned_up=False)]
        watch.next_due = now + watch.cleanups.delay()
        return []

    def _count_failure(self, watch: Watch, error: BaseException, delay: float | None = None) -> Deliveries:
        watch.polls = watch.polls.increment(error)
        if watch.cleaning and watch.final_outcome is not None:
            # The job's outcome is known and its log delivered: only the cleanup is left, and
            # only its budget counts. Once spent, report the real outcome and leave the cleanup
            # to the operator; a lost connection never turns a finished job into a lost one.
            if watch.polls.is_exhausted() or watch.polls.failures > watch.cleanup_retries:
                return [self._finish(watch, watch.final_outcome, cleaned_up=False)]
        elif watch.polls.is_exhausted() and watch.submitting:
            return [self._finish(watch, submit_failed(watch, error))]
        elif watch.polls.is_exhausted():
            job = watch.monitor.paths
            if isinstance(error, BatchNotAnswered):
                lost = (
                    f"The host stopped answering the polls of remote job {job.job_id}: "
                    f"{watch.failures} batches in a row were answered for no job ({error})."
                )
            else:
                lost = (
                    f"Lost the SSH connection while watching remote job {job.job_id} and could not restore "
                    f"it after {watch.max_reconnect_attempts} reconnect attempt(s) ({type(error).__name__}: "
                    f"{error})."
                )
            return [
                self._finish(
                    watch,
                    Outcome(
                        OutcomeStatus.ERROR,
                        None,
                        f"{lost} The job may still be running in {job.job_dir}. {FAN_OUT_HINT}",
                        watch_lost=True,
                    ),
                )
            ]
        retry = f"; retrying in {delay:.1f}s" if delay is not None else ""
        warning = (
            f"SSH poll of job {watch.monitor.paths.job_id} failed "
            f"({watch.polls.describe()}): {type(error).__name__}: {error}{retry}"
        )
        return [(watch, Delivery(warnings=[warning], log_offset=watch.monitor.log_offset))]

    def _finish(
        self, watch: Watch, outcome: Outcome, cleaned_up: bool | None = None
    ) -> tuple[Watch, Delivery]:
        """End ``watch`` with its one final delivery."""
        delivery = Delivery(log_offset=watch.monitor.log_offset, outcome=outcome, cleaned_up=cleaned_up)
        return self._complete(watch, delivery)

    def _complete(self, watch: Watch, delivery: Delivery) -> tuple[Watch, Delivery]:
        self.remove(watch)
        return watch, delivery
