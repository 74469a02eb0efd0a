"""
One SSH connection per host for the whole triggerer, with batched polls.

Every :class:`~ssh_jobs_provider.triggers.ssh_remote_job.SSHRemoteJobTrigger` in an event
loop that reaches the same server with the same credentials and host-key rules shares
ONE :class:`HostSession`. The session holds one asyncssh connection and runs one poll
loop: at each tick it sends ONE exec covering every job that is due (state, log window,
delivered-offset bookkeeping, and cleanups of finished jobs), splits the answer, and
feeds each job's :class:`~ssh_jobs_provider.utils.job_monitor.JobMonitor`.

- Ticks are aligned on a grid of each job's ``poll_interval``, so jobs with the same
  interval are polled together however they arrived.
- Only one channel is open at a time on the connection, so ``MaxSessions`` is never
  approached by monitoring.
- A failed batch drops the connection once for everybody and reconnects after ONE
  jittered backoff (no thundering herd); each job in the failed batch spends one unit of
  its own ``max_reconnect_attempts`` budget, which a successful answer restores.
- The session outlives any single trigger: a cancelled trigger just leaves. The
  connection closes after :attr:`HostSession.linger` seconds without watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from ssh_jobs_provider.exceptions import FAN_OUT_HINT
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.retry import DEFAULT_RETRY, RetryPolicy
from ssh_jobs_provider.utils.batch_poll import (
    CleanupEntry,
    CleanupResult,
    Entry,
    PollEntry,
    build_batch_script,
    parse_batch_output,
)
from ssh_jobs_provider.utils.job_monitor import JobMonitor, Outcome
from ssh_jobs_provider.utils.remote_job import JobStatus, RemoteJobProtocolError

log = logging.getLogger(__name__)

Connector = Callable[[SSHConnectionSettings], Awaitable[Any]]
ScriptRunner = Callable[[Any, str, float], Awaitable[tuple[int, bytes, bytes]]]

#: Jobs due within this many seconds of each other share a batch.
COALESCE_SECONDS = 0.05
#: Log bytes one batch may carry in all; every job still gets at least MIN_WINDOW.
MAX_BATCH_BYTES = 8 * 1024 * 1024
MIN_WINDOW = 4096
#: Seconds allowed for recording the delivered offsets of triggers that left early.
RECORD_TIMEOUT_SECONDS = 30.0


@dataclass
class Delivery:
    """What a watching trigger receives: log lines, warnings, and at the end its result."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    log_offset: int = 0
    outcome: Outcome | None = None
    #: ``True``/``False`` once a requested cleanup ran or gave up; ``None`` if none was requested.
    cleaned_up: bool | None = None


@dataclass(eq=False)
class JobWatch:
    """One trigger's registration with a session."""

    monitor: JobMonitor
    poll_interval: float
    command_timeout: float
    max_reconnect_attempts: int
    cleanup: str = "never"
    cleanup_retries: int = 3
    failures: int = 0
    next_due: float = 0.0
    delivered: int = 0
    active: bool = True
    final_outcome: Outcome | None = None
    cleanup_attempts: int = 0
    queue: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.delivered = self.monitor.log_offset

    async def next_delivery(self) -> Delivery:
        return await self.queue.get()

    def record_delivered(self, offset: int) -> None:
        """The trigger has written the log up to ``offset`` to the task log."""
        self.delivered = max(self.delivered, offset)

    def wants_cleanup(self, outcome: Outcome) -> bool:
        if outcome.status not in ("success", "failed"):
            return False  # the job may still be running: the operator kills before cleaning
        return self.cleanup == "always" or (self.cleanup == "on_success" and outcome.status == "success")


def _next_tick(now: float, interval: float) -> float:
    """The next instant on the ``interval`` grid, so equal intervals share ticks."""
    return (math.floor(now / interval) + 1) * interval


class HostSession:
    """
    The shared connection and poll loop for one server identity in one event loop.

    :param settings: connection settings shared by every watcher of this session
    :param connector: opens one connection (a single attempt)
    :param runner: runs a script on a connection: ``(conn, script, timeout) -> (status, out, err)``
    :param retry: which failures of a batch are retried (``retry_on``) and the waits before
        reconnecting (``backoff``); the number of attempts is each watch's own
        ``max_reconnect_attempts``, so the policy's ``attempts`` is not used here
    """

    #: Seconds the connection stays open after the last watcher left.
    linger: float = 10.0

    _registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, HostSession]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        settings: SSHConnectionSettings,
        connector: Connector,
        runner: ScriptRunner,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.settings = settings
        self._connector = connector
        self._runner = runner
        self._retry = retry
        self._backoff = retry.backoff
        self._watches: list[JobWatch] = []
        self._changed = asyncio.Event()
        self._conn: Any = None
        self._failures = 0
        self._backoff_until = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Offsets of watchers that left early (cancelled), still to be recorded remotely.
        self._records: list[tuple[PollEntry, asyncio.Future[bool]]] = []
        self.connects = 0
        self.batches = 0

    # ------------------------------------------------------------------ registry

    @classmethod
    def for_settings(
        cls, settings: SSHConnectionSettings, connector: Connector, runner: ScriptRunner
    ) -> HostSession:
        """The live session for this loop and server identity, created on first use."""
        loop = asyncio.get_running_loop()
        sessions = cls._registry.setdefault(loop, {})
        key = settings.identity()
        session = sessions.get(key)
        if session is None or session._closed:
            session = sessions[key] = cls(settings, connector, runner)
        return session

    @classmethod
    def sessions(cls) -> list[HostSession]:
        """Live sessions of the running loop (for diagnostics and tests)."""
        return list(cls._registry.get(asyncio.get_running_loop(), {}).values())

    # ------------------------------------------------------------------ watchers

    def watch(self, watch: JobWatch) -> JobWatch:
        """Register a job; its first poll comes at its next grid tick."""
        loop = asyncio.get_running_loop()
        watch.next_due = _next_tick(loop.time(), watch.poll_interval)
        self._watches.append(watch)
        self._changed.set()
        self._ensure_running()
        return watch

    def record_offset(self, watch: JobWatch) -> asyncio.Future[bool]:
        """
        Record on the remote host how much of ``watch``'s log was delivered, in the next batch.

        Used when a trigger leaves before its job ended (triggerer shutdown, task cleared), so
        that a re-created trigger resumes exactly there. The future resolves to ``True`` once
        recorded, ``False`` if the batch failed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        entry = PollEntry(
            watch.monitor.paths, offset=0, max_bytes=0, delivered=watch.delivered, token=watch.monitor.token
        )
        self._records.append((entry, future))
        self._changed.set()
        self._ensure_running()
        return future

    def _ensure_running(self) -> None:
        if self._task is not None and not self._task.done():
            return
        loop = asyncio.get_running_loop()
        # Start the loop in an empty context: created from a trigger, it would otherwise
        # inherit that trigger's log context, and session-wide messages would land in that
        # one task's log.
        self._task = contextvars.Context().run(
            loop.create_task, self._run(), name=f"ssh-jobs session {self.settings.address}"
        )

    def unwatch(self, watch: JobWatch) -> None:
        """Leave the session (normal end or cancellation); safe to call twice."""
        watch.active = False
        if watch in self._watches:
            self._watches.remove(watch)
        self._changed.set()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._records:
                    await self._flush_records()
                    continue
                if not self._watches:
                    if not await self._wait_for_change(self.linger) and not (self._watches or self._records):
                        return
                    continue
                now = loop.time()
                due = [w for w in self._watches if w.next_due <= now + COALESCE_SECONDS]
                if not due or now < self._backoff_until:
                    earliest = min(w.next_due for w in self._watches)
                    await self._wait_for_change(max(earliest, self._backoff_until) - now)
                    continue
                await self._poll(due)
        except asyncio.CancelledError:
            # The event loop is shutting down (triggerer stop, or `dags test` ending): close
            # without waiting for the server's goodbye, whose reader task is cancelled too.
            self._abort_connection()
            raise
        except Exception as error:  # a bug here must not leave triggers waiting forever
            log.exception("SSH host session for %s failed", self.settings.address)
            for watch in list(self._watches):
                self._finish(
                    watch, Outcome("error", None, f"Internal error in the SSH host session: {error}")
                )
        finally:
            self._closed = True
            for _, future in self._records:
                if not future.done():
                    future.set_result(False)
            await self._drop_connection()

    async def _wait_for_change(self, timeout: float) -> bool:
        self._changed.clear()
        # asyncio.wait, not wait_for: on Python < 3.12 wait_for can swallow a cancellation
        # that arrives as the event is set, and the session would then outlive its loop's
        # shutdown by a whole linger period.
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=max(0.0, timeout))
        finally:
            waiter.cancel()
        return bool(done)

    # ------------------------------------------------------------------ one batch

    async def _flush_records(self) -> None:
        records, self._records = self._records, []
        entries: list[Entry] = [entry for entry, _ in records]
        try:
            conn = await self._connection()
            await self._runner(conn, build_batch_script(entries), RECORD_TIMEOUT_SECONDS)
            ok = True
        except asyncio.CancelledError:
            raise
        except Exception as error:  # best effort: a lost record only means repeated lines
            log.warning("Could not record delivered log offsets on %s: %s", self.settings.address, error)
            await self._drop_connection()
            ok = False
        for _, future in records:
            if not future.done():
                future.set_result(ok)

    def _entries(self, due: list[JobWatch]) -> list[Entry]:
        entries: list[Entry] = []
        budget = MAX_BATCH_BYTES
        for watch in due:
            if watch.final_outcome is not None:
                entries.append(CleanupEntry(watch.monitor.paths, token=watch.monitor.token))
                continue
            window = max(min(watch.monitor.chunk_size, budget), min(watch.monitor.chunk_size, MIN_WINDOW))
            budget = max(0, budget - window)
            entries.append(watch.monitor.poll_entry(max_bytes=window, delivered=watch.delivered))
        return entries

    async def _poll(self, due: list[JobWatch]) -> None:
        loop = asyncio.get_running_loop()
        entries = self._entries(due)
        timeout = max(w.command_timeout for w in due)
        try:
            conn = await self._connection()
            _, stdout, _ = await self._runner(conn, build_batch_script(entries), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if not self._retry.retry_on(error):
                for watch in due:
                    if watch.final_outcome is not None:  # only its cleanup was pending
                        self._finish(watch, watch.final_outcome, cleaned_up=False)
                    else:
                        self._finish(watch, Outcome("error", None, f"Watching remote job failed: {error}"))
                return
            await self._on_batch_failure(due, error)
            return
        self.batches += 1
        self._failures = 0
        now = loop.time()
        results = parse_batch_output(stdout, entries)
        for key, watch in enumerate(due):
            if watch.active:
                self._apply(watch, results[key], now)

    def _apply(self, watch: JobWatch, result: Any, now: float) -> None:
        if isinstance(result, RemoteJobProtocolError):
            self._count_failure(watch, result)
            watch.next_due = now + watch.poll_interval
            return
        watch.failures = 0
        if isinstance(result, CleanupResult):
            self._after_cleanup(watch, result, now)
            return
        assert isinstance(result, JobStatus)
        update = watch.monitor.feed_status(result, now)
        delivery = Delivery(lines=update.lines, log_offset=watch.monitor.log_offset)
        if update.outcome is None:
            watch.next_due = now if update.more_now else _next_tick(now, watch.poll_interval)
            watch.queue.put_nowait(delivery)
            return
        if watch.wants_cleanup(update.outcome):
            watch.final_outcome = update.outcome
            watch.next_due = now  # clean up in the very next batch, over this connection
            watch.queue.put_nowait(delivery)
            return
        delivery.outcome = update.outcome
        self._complete(watch, delivery)

    def _after_cleanup(self, watch: JobWatch, result: CleanupResult, now: float) -> None:
        assert watch.final_outcome is not None
        watch.cleanup_attempts += 1
        if result.state in ("removed", "absent"):
            self._finish(watch, watch.final_outcome, cleaned_up=True)
        elif result.state == "foreign":
            # Not this job's directory any more: retrying cannot change that, and neither the
            # trigger nor the operator may remove it.
            job_dir = watch.monitor.paths.job_dir
            delivery = Delivery(
                warnings=[f"Not removing {job_dir}: it no longer carries this job's token."],
                log_offset=watch.monitor.log_offset,
                outcome=dataclasses.replace(watch.final_outcome, leave_remote=True),
                cleaned_up=False,
            )
            self._complete(watch, delivery)
        elif watch.cleanup_attempts >= watch.cleanup_retries:
            self._finish(watch, watch.final_outcome, cleaned_up=False)
        else:
            watch.next_due = now + self._backoff.delay(watch.cleanup_attempts)

    async def _on_batch_failure(self, due: list[JobWatch], error: BaseException) -> None:
        loop = asyncio.get_running_loop()
        self._failures += 1
        await self._drop_connection()
        delay = self._backoff.delay(self._failures)
        self._backoff_until = loop.time() + delay
        log.warning(
            "SSH batch poll of %d job(s) on %s failed (%s: %s); reconnecting in %.1fs",
            len(due),
            self.settings.address,
            type(error).__name__,
            error,
            delay,
        )
        for watch in due:
            if watch.active:
                self._count_failure(watch, error, delay)

    def _count_failure(self, watch: JobWatch, error: BaseException, delay: float | None = None) -> None:
        watch.failures += 1
        if watch.final_outcome is not None and watch.failures > watch.cleanup_retries:
            # The job's outcome is known and its log delivered: only the cleanup is stuck.
            # Report the real outcome and leave the cleanup to the operator.
            self._finish(watch, watch.final_outcome, cleaned_up=False)
            return
        if watch.failures > watch.max_reconnect_attempts:
            job = watch.monitor.paths
            self._finish(
                watch,
                Outcome(
                    "error",
                    None,
                    f"Lost the SSH connection while watching remote job {job.job_id} and could not restore it "
                    f"after {watch.max_reconnect_attempts} reconnect attempt(s) ({type(error).__name__}: {error}). "
                    f"The job may still be running in {job.job_dir}. {FAN_OUT_HINT}",
                ),
            )
            return
        retry = f"; retrying in {delay:.1f}s" if delay is not None else ""
        watch.queue.put_nowait(
            Delivery(
                warnings=[
                    f"SSH poll of job {watch.monitor.paths.job_id} failed "
                    f"({watch.failures}/{watch.max_reconnect_attempts}): {type(error).__name__}: {error}{retry}"
                ],
                log_offset=watch.monitor.log_offset,
            )
        )

    def _finish(self, watch: JobWatch, outcome: Outcome, cleaned_up: bool | None = None) -> None:
        """End ``watch`` with its one final delivery."""
        self._complete(
            watch, Delivery(log_offset=watch.monitor.log_offset, outcome=outcome, cleaned_up=cleaned_up)
        )

    def _complete(self, watch: JobWatch, delivery: Delivery) -> None:
        self.unwatch(watch)
        watch.queue.put_nowait(delivery)

    # ------------------------------------------------------------------ connection

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._connector(self.settings)
            self.connects += 1
        return self._conn

    def _abort_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.wait_closed(), 5)
