"""
One SSH connection per host for the whole triggerer, with batched polls: the asyncio side.

Every :class:`~ssh_jobs_provider.triggers.ssh_remote_job.SSHRemoteJobTrigger` in an event
loop that reaches the same server with the same credentials and host-key rules shares
ONE :class:`HostSession`. The session holds one asyncssh connection and runs one loop: at
each tick it sends ONE exec covering every job that is due, and hands the answer to the
:class:`~ssh_jobs_provider.triggers.poll_scheduler.PollScheduler`, which decides what it
means for each job (pure code, tested without a network). This module only owns the
connection, the waiting, and the queues the triggers read from.

- Only one channel is open at a time on the connection, so ``MaxSessions`` is never
  approached by monitoring.
- A failed batch drops the connection once for everybody and reconnects after ONE
  jittered backoff (no thundering herd).
- The session outlives any single trigger: a cancelled trigger just leaves. The
  connection closes after :attr:`HostSession.linger` seconds without watchers.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

from ssh_jobs_provider import metrics
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.protocol.answers import RemoteJobProtocolError, parse_simple_state
from ssh_jobs_provider.protocol.batch import (
    BatchNotAnswered,
    Entry,
    batch_not_answered,
    build_batch_script,
    build_probe_script,
    parse_batch_output,
)
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, batch_tag
from ssh_jobs_provider.protocol.slurm_state import SlurmMonitor, parse_slurm_states, slurm_section
from ssh_jobs_provider.retry import DEFAULT_RETRY, RetryPolicy
from ssh_jobs_provider.triggers.poll_scheduler import (
    SUBMITS_PER_BATCH,
    SUBMITS_PER_PERL_BATCH,
    Deliveries,
    Delivery,
    PollScheduler,
    Watch,
)

__all__ = ["Delivery", "HostSession", "JobWatch"]

log = logging.getLogger(__name__)

Connector = Callable[[SSHConnectionSettings], Awaitable[Any]]
ScriptRunner = Callable[[Any, str, float], Awaitable[tuple[int, bytes, bytes]]]

#: Seconds allowed for recording the delivered offsets of triggers that left early.
RECORD_TIMEOUT_SECONDS = 30.0
#: Seconds allowed for asking the host, once per session, what can run its polls.
PROBE_TIMEOUT_SECONDS = 30.0
#: When the event loop shuts down: seconds between looks for more leaving triggers' offset
#: records, then for the batch that records them (Airflow's triggerer escalates a stop > 10 s).
SHUTDOWN_GATHER_SECONDS = 0.2
SHUTDOWN_RECORD_SECONDS = 4.0


@dataclass(eq=False)
class JobWatch(Watch):
    """One trigger's registration: a :class:`Watch` and the queue its deliveries arrive on."""

    queue: asyncio.Queue[Delivery] = field(default_factory=asyncio.Queue)

    async def next_delivery(self) -> Delivery:
        return await self.queue.get()


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
        self.scheduler = PollScheduler(retry.backoff, retry.retry_on)
        self._changed = asyncio.Event()
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Offsets of watchers that left early (cancelled), still to be recorded remotely.
        self._records: list[tuple[PollEntry, asyncio.Future[bool]]] = []
        self.connects = 0
        self.batches = 0
        #: What runs the polls on the host (``"perl"`` or ``"sh"``), once known.
        self.interpreter: str | None = None

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
        self.scheduler.add(watch, asyncio.get_running_loop().time())
        metrics.watching(self.settings.host, self.scheduler.watched)
        self._changed.set()
        self._ensure_running()
        return watch

    def unwatch(self, watch: JobWatch) -> None:
        """Leave the session (normal end or cancellation); safe to call twice."""
        self.scheduler.remove(watch)
        metrics.watching(self.settings.host, self.scheduler.watched)
        self._changed.set()

    def record_offset(self, watch: JobWatch) -> asyncio.Future[bool]:
        """
        Record on the remote host how much of ``watch``'s log was delivered, in the next batch.

        Used when a trigger leaves before its job ended (triggerer shutdown, task cleared), so
        that a re-created trigger resumes exactly there. The future resolves to ``True`` once
        recorded, ``False`` if the batch failed.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            # Ended (its loop shut down): restarted now, it would outlive the event loop.
            future.set_result(False)
            return future
        self._records.append((watch.offset_record(), future))
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

    @staticmethod
    def _deliver(deliveries: Deliveries) -> None:
        for watch, delivery in deliveries:
            cast(JobWatch, watch).queue.put_nowait(delivery)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if self._records:
                    await self._flush_records()
                    continue
                if self.scheduler.idle:
                    if not await self._wait_for_change(self.linger) and (
                        self.scheduler.idle and not self._records
                    ):
                        return
                    continue
                now = loop.time()
                due = self.scheduler.due(now)
                if not due:
                    await self._wait_for_change(self.scheduler.next_wake() - now)
                    continue
                await self._poll(due)
        except asyncio.CancelledError:
            # The event loop is shutting down (triggerer stop, or `dags test` ending): asyncio
            # cancels the triggers with this task, and each one leaving asks for its offset
            # record. Record them in one last batch, else the next triggerer repeats their lines.
            try:
                await self._record_on_shutdown()
            finally:  # then close without waiting for the server's goodbye (its reader is cancelled)
                self._abort_connection()
            raise
        except Exception as error:  # a bug here must not leave triggers waiting forever
            log.exception("SSH host session for %s failed", self.settings.address)
            self._deliver(self.scheduler.abandon(error))
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

    async def _record_on_shutdown(self) -> None:
        """The last offset records, in a bounded time: the event loop is going away."""
        if self._conn is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_RECORD_SECONDS
        # The triggers cancelled in the same pass run their `finally` after this task's turn, on
        # a busy loop over some time: gather until no more come, to record them in one batch.
        gathered = -1
        while len(self._records) != gathered and loop.time() < deadline - 1:
            gathered = len(self._records)
            await asyncio.sleep(SHUTDOWN_GATHER_SECONDS)
        while self._records and self._conn is not None and loop.time() < deadline:
            with contextlib.suppress(Exception):  # TimeoutError too: best effort, as ever
                await asyncio.wait_for(self._flush_records(), deadline - loop.time())

    async def _flush_records(self) -> None:
        records, self._records = self._records, []
        entries: list[Entry] = [entry for entry, _ in records]
        try:
            conn = await self._connection()
            await self._runner(conn, self._batch_script(entries), RECORD_TIMEOUT_SECONDS)
            ok = True
        except asyncio.CancelledError:
            # Cut off (the loop shutting down, or the shutdown's own deadline): kept for a
            # later batch. Sending one twice is harmless: the host keeps the largest offset.
            self._records[:0] = records
            raise
        except Exception as error:  # best effort: a lost record only means repeated lines
            log.warning("Could not record delivered log offsets on %s: %s", self.settings.address, error)
            await self._drop_connection()
            ok = False
        for _, future in records:
            if not future.done():
                future.set_result(ok)

    async def _poll(self, due: list[Watch]) -> None:
        loop = asyncio.get_running_loop()
        first_on_host = self.interpreter is None
        try:
            conn = await self._connection()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._batch_failed(due, error, sent=False)
            return
        if first_on_host:
            # The probe has just set how many submits a batch carries (twenty times more in
            # perl): the first tick of a fan-out takes them all, not the sh-sized share.
            due = self.scheduler.due(loop.time()) or due
        entries = self.scheduler.entries(due, loop.time())
        tag = batch_tag()
        sent = False
        # The Slurm jobs of the tick: ONE squeue for all of them, in the same exec, after the polls.
        slurm_jobs = [
            (key, watch.monitor.paths)
            for key, watch in enumerate(due)
            if isinstance(watch.monitor, SlurmMonitor) and not watch.cleaning
        ]
        try:
            script = self._batch_script(entries, tag) + slurm_section(slurm_jobs)
            started = loop.time()
            # From here on the script may reach the host, and its submits start their jobs,
            # whatever becomes of the answer.
            sent = True
            _, stdout, stderr = await self._runner(conn, script, self.scheduler.timeout(due))
            results = parse_batch_output(stdout, entries, tag)
            if batch_not_answered(results):
                raise BatchNotAnswered(len(entries), stderr)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._batch_failed(due, error, sent)
            return
        self.batches += 1
        if slurm_jobs:
            records = parse_slurm_states(stdout, tag)
            for key, _ in slurm_jobs:
                cast(SlurmMonitor, due[key].monitor).feed_slurm(records.get(key))
        metrics.batch_polled(self.settings.host, (loop.time() - started) * 1000, self.scheduler.watched)
        self._deliver(self.scheduler.apply(due, results, loop.time()))

    async def _batch_failed(self, due: list[Watch], error: Exception, sent: bool) -> None:
        """A batch that was not answered: back off (or give up) as the scheduler decides."""
        metrics.batch_failed(self.settings.host, self.scheduler.watched)
        loop = asyncio.get_running_loop()
        delay, deliveries = self.scheduler.batch_error(due, error, loop.time(), sent=sent)
        if isinstance(error, BatchNotAnswered):
            # The connection is as good as it was; what runs the polls may not be (a perl
            # that broke since it was probed): asked again before the next batch.
            self.interpreter = None
        elif delay is not None:
            await self._drop_connection()
        if delay is not None:
            log.warning(
                "SSH batch poll of %d job(s) on %s failed (%s: %s); %s in %.1fs",
                len(due),
                self.settings.address,
                type(error).__name__,
                error,
                "asking again" if isinstance(error, BatchNotAnswered) else "reconnecting",
                delay,
            )
        self._deliver(deliveries)

    def _batch_script(self, entries: list[Entry], tag: str = PROTOCOL_TAG) -> str:
        assert self.interpreter is not None  # resolved by _connection()
        return build_batch_script(entries, tag, self.interpreter)

    # ------------------------------------------------------------------ connection

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self._connector(self.settings)
            self.connects += 1
        if self.interpreter is None:
            self.interpreter = await self._probe_interpreter(self._conn)
            # One perl process submits a whole fan-out in well under a second; sh takes turns.
            perl = self.interpreter == "perl"
            self.scheduler.submits_per_batch = SUBMITS_PER_PERL_BATCH if perl else SUBMITS_PER_BATCH
        return self._conn

    async def _probe_interpreter(self, conn: Any) -> str:
        """
        What runs the polls: the setting, or for ``"auto"`` what the host has, asked once.

        Asked in an exec of its own, once per session and not per batch: a host's tools do not
        change under a watch, and a batch that carried both programs would cost the host the
        parsing of both at every tick.
        """
        if self.settings.poll_interpreter != "auto":
            return self.settings.poll_interpreter
        _, stdout, _ = await self._runner(conn, build_probe_script(), PROBE_TIMEOUT_SECONDS)
        try:
            found = parse_simple_state(stdout, "probe")
        except RemoteJobProtocolError:
            found = "sh"  # an odd answer: POSIX sh is what every host that answers at all has
        interpreter = found if found in ("perl", "sh") else "sh"
        log.info("Polls of jobs on %s run in %s", self.settings.address, interpreter)
        return interpreter

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
