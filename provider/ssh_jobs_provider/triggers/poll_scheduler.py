"""
What the shared host session decides, as pure code: no asyncio, no sockets, the clock passed in.

:class:`PollScheduler` holds every job watched over one connection. The session's loop asks it
which watches are due (:meth:`PollScheduler.due`) and for the batch entries of those
(:meth:`PollScheduler.entries`), runs the batch however it likes, and hands back either the
parsed answers (:meth:`PollScheduler.apply`) or the failure (:meth:`PollScheduler.batch_error`,
which decides between a reconnect and the end of the jobs). Each of those returns the :class:`Delivery` objects to hand
to the watching triggers: log lines, warnings, and at the end the one final outcome.

What an answer or a failure means for one job is decided by its
:class:`~ssh_jobs_provider.triggers.watch.Watch` (its ``on_*`` methods return a
:class:`~ssh_jobs_provider.triggers.watch.Decision`); the scheduler keeps the time, the batch's
shape and the session's backoff, and does what each watch decided.

- Ticks are aligned on a grid of each job's ``poll_interval``, so jobs with the same interval
  are polled together however they arrived.
- A batch carries at most :data:`MAX_BATCH_BYTES` of log in all; every job still gets at least
  :data:`MIN_WINDOW` bytes, so a noisy job cannot starve the others.
- A failed batch costs every job in it one unit of its own ``max_reconnect_attempts`` budget,
  which a successful answer restores; the whole session waits one jittered backoff (ONE
  reconnect for everybody, no thundering herd).
- A finished job whose cleanup is wanted stays registered, and its next entry is the cleanup.
- A job the triggerer submits (phase ``SUBMITTING``) is due at the next :data:`SUBMIT_TICK`;
  its entry is a :class:`~ssh_jobs_provider.protocol.submit.SubmitEntry` until the host answered
  it, re-sent after a failure (the submit is idempotent). At most ``submits_per_batch``
  submits (:data:`SUBMITS_PER_BATCH`; :data:`SUBMITS_PER_PERL_BATCH` once the host is known to
  run them in perl) carrying at most :data:`SUBMIT_BATCH_BYTES` of job files go in one batch;
  the others are due at once, in the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ssh_jobs_provider.exceptions import is_retryable
from ssh_jobs_provider.protocol.batch import BatchNotAnswered, Entry, EntryResult
from ssh_jobs_provider.protocol.cleanup import CleanupEntry
from ssh_jobs_provider.protocol.slurm import SlurmSubmitEntry
from ssh_jobs_provider.protocol.submit import SubmitEntry
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, RetryBudget, Waits
from ssh_jobs_provider.triggers.watch import (
    SUBMIT_TICK,
    Action,
    Decision,
    Delivery,
    Event,
    Phase,
    Watch,
    next_tick,
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
        backoff: Waits = DEFAULT_BACKOFF,
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
        submitting = watch.phase is Phase.SUBMITTING
        interval = min(SUBMIT_TICK, watch.poll_interval) if submitting else watch.poll_interval
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
                if w.phase is Phase.SUBMITTING:
                    size = sum(len(content) for _, content in w.files_to_submit)
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
            if watch.phase is Phase.CLEANING:
                entries.append(CleanupEntry(monitor.paths, token=monitor.token))
                continue
            window = max(min(monitor.chunk_size, budget), min(monitor.chunk_size, MIN_WINDOW))
            budget = max(0, budget - window)
            entry = monitor.poll_entry(max_bytes=window, delivered=watch.settled(now))
            if watch.phase is Phase.SUBMITTING:
                fields = (entry.paths, entry.offset, entry.max_bytes, entry.delivered, entry.token)
                files, slurm = watch.files_to_submit, watch.slurm
                entry = (  # a Slurm job is queued with sbatch, not started detached
                    SubmitEntry(*fields, files)
                    if slurm is None
                    else SlurmSubmitEntry(*fields, files, slurm.arguments)
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
                out.extend(self._perform(watch, watch.on_answer(results[key], now)))
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
                watch.on_sent()
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
                out.extend(self._perform(watch, watch.on_batch_failed(error, delay)))
        return delay, out

    def batch_broken(self, due: list[Watch], error: BaseException) -> Deliveries:
        """The batch failed in a way a retry cannot fix: end every job in it."""
        return [delivery for watch in due for delivery in self._perform(watch, watch.on_batch_broken(error))]

    def abandon(self, error: BaseException) -> Deliveries:
        """The session itself broke (a bug): end every job with an error instead of a hang."""
        return [delivery for w in self.watches for delivery in self._perform(w, w.on_session_error(error))]

    # ------------------------------------------------------------------ one decision

    def _perform(self, watch: Watch, decision: Decision) -> Deliveries:
        """Do what ``watch`` decided: hand over its delivery, if any; unregister it once it finished."""
        if decision.action is Action.FINISH:
            self.remove(watch)
        return [] if decision.delivery is None else [(watch, decision.delivery)]
