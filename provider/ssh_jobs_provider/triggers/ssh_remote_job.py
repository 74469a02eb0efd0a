"""
:class:`SSHRemoteJobTrigger`: watches one detached remote job from the triggerer.

The trigger is three thin layers:

- :class:`~ssh_jobs_provider.utils.job_monitor.JobMonitor` (pure) decides what to poll and
  what an answer means;
- a :class:`ScriptRunner` says where the SSH connection comes from and how a script is
  run on it (:class:`DedicatedConnection`: one connection held for the whole watch);
- :meth:`SSHRemoteJobTrigger.run` ties them together with the reconnect budget.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import AsyncIterator
from typing import Any, Protocol

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ssh_jobs_provider.exceptions import FAN_OUT_HINT, is_transient_connect_error
from ssh_jobs_provider.hooks.ssh import SSHHookAsync
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, BackoffPolicy
from ssh_jobs_provider.utils.job_monitor import JobMonitor, MonitorUpdate, Outcome
from ssh_jobs_provider.utils.remote_job import (
    RemoteJobPaths,
    RemoteJobProtocolError,
    build_kill_script,
    parse_simple_state,
)

#: Upper bound on back-to-back log reads before the trigger yields to its poll interval
#: while the job is still running (the final drain after exit is not bounded by this).
MAX_READS_PER_TICK = 16


class ScriptRunner(Protocol):
    """Runs protocol scripts for one trigger; how and over which connection is its business."""

    async def run_script(self, script: str, timeout: float) -> tuple[int, bytes, bytes]: ...

    async def reset(self) -> None:
        """Forget the current connection (it failed); the next script reconnects."""

    async def close(self) -> None: ...


class DedicatedConnection:
    """One asyncssh connection, opened lazily and held until closed or reset."""

    def __init__(self, hook: SSHHookAsync) -> None:
        self._hook = hook
        self._conn: Any = None
        self.connects = 0

    async def run_script(self, script: str, timeout: float) -> tuple[int, bytes, bytes]:
        if self._conn is None:
            self._conn = await self._hook.get_conn()
            self.connects += 1
        return await self._hook.run_script_on(self._conn, script, timeout)

    async def reset(self) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.close()
        try:
            await asyncio.wait_for(conn.wait_closed(), 5)
        except Exception:
            pass


class SSHRemoteJobTrigger(BaseTrigger):
    """
    Watch a detached remote job over ONE held SSH connection and stream its log.

    Each poll is a single exec that returns the job's state and the next piece of its log.
    Log lines are written to the trigger's log (the task log) while the job runs; after the
    job ends the log is drained to the last byte before the one final event is yielded.
    A connection-level failure (``OSError``, ``asyncssh.Error``, timeouts) drops the
    connection and reconnects with jittered exponential backoff; after
    ``max_reconnect_attempts`` consecutive failures the trigger ends with an error event.
    The failure count resets only after a full successful poll.

    :param ssh_conn_id: Airflow connection id of type ``ssh``
    :param remote_host: host instead of the connection's
    :param job_id: the job's id
    :param job_dir: the job's directory on the remote host
    :param log_file: the job's log file (informational; always ``<job_dir>/stdout.log``)
    :param exit_code_file: the job's exit code file (informational)
    :param remote_os: ``"posix"`` (the only supported value)
    :param poll_interval: seconds between polls while the job runs
    :param log_chunk_size: most log bytes read per poll
    :param log_offset: log bytes already delivered
    :param command_timeout: seconds allowed for each remote command
    :param max_reconnect_attempts: consecutive connection failures tolerated
    """

    def __init__(
        self,
        ssh_conn_id: str,
        remote_host: str | None,
        job_id: str,
        job_dir: str,
        log_file: str,
        exit_code_file: str,
        remote_os: str = "posix",
        poll_interval: float = 5,
        log_chunk_size: int = 65536,
        log_offset: int = 0,
        command_timeout: float = 30.0,
        max_reconnect_attempts: int = 5,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.remote_host = remote_host
        self.job_id = job_id
        self.job_dir = job_dir
        self.log_file = log_file
        self.exit_code_file = exit_code_file
        self.remote_os = remote_os
        self.poll_interval = poll_interval
        self.log_chunk_size = log_chunk_size
        self.log_offset = log_offset
        self.command_timeout = command_timeout
        self.max_reconnect_attempts = max_reconnect_attempts
        self.backoff: BackoffPolicy = DEFAULT_BACKOFF
        self._runner: ScriptRunner | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ssh_conn_id": self.ssh_conn_id,
                "remote_host": self.remote_host,
                "job_id": self.job_id,
                "job_dir": self.job_dir,
                "log_file": self.log_file,
                "exit_code_file": self.exit_code_file,
                "remote_os": self.remote_os,
                "poll_interval": self.poll_interval,
                "log_chunk_size": self.log_chunk_size,
                "log_offset": self.log_offset,
                "command_timeout": self.command_timeout,
                "max_reconnect_attempts": self.max_reconnect_attempts,
            },
        )

    # ------------------------------------------------------------------ seams

    @property
    def paths(self) -> RemoteJobPaths:
        base_dir, job_id = posixpath.split(self.job_dir.rstrip("/"))
        return RemoteJobPaths(job_id=job_id, base_dir=base_dir)

    def _make_hook(self) -> SSHHookAsync:
        # One connect attempt per call: the trigger's own budget governs reconnects.
        return SSHHookAsync(ssh_conn_id=self.ssh_conn_id, host=self.remote_host, conn_retry_attempts=1)

    def make_runner(self) -> ScriptRunner:
        """Where this trigger's connection comes from (override to share connections)."""
        return DedicatedConnection(self._make_hook())

    # ------------------------------------------------------------------ events

    def _event(self, outcome: Outcome, log_offset: int) -> TriggerEvent:
        return TriggerEvent(
            {
                "job_id": self.job_id,
                "job_dir": self.job_dir,
                "log_file": self.log_file,
                "exit_code_file": self.exit_code_file,
                "remote_os": self.remote_os,
                "status": outcome.status,
                "done": True,
                "exit_code": outcome.exit_code,
                "log_chunk": "",
                "log_offset": log_offset,
                "message": outcome.message,
            }
        )

    def _emit(self, update: MonitorUpdate) -> None:
        for line in update.lines:
            self.log.info("%s", line)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> AsyncIterator[TriggerEvent]:
        loop = asyncio.get_running_loop()
        monitor = JobMonitor(self.paths, self.log_offset, self.log_chunk_size, started_at=loop.time())
        runner = self._runner = self.make_runner()
        try:
            outcome = await self._watch(monitor, runner)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.log.exception("Watching remote job %s failed", self.job_id)
            outcome = Outcome("error", None, f"Watching remote job {self.job_id} failed: {error}")
        finally:
            await runner.close()
        self.log_offset = monitor.log_offset
        yield self._event(outcome, monitor.log_offset)

    async def _watch(self, monitor: JobMonitor, runner: ScriptRunner) -> Outcome:
        loop = asyncio.get_running_loop()
        failures = 0
        reads_this_tick = 0
        while True:
            try:
                status, stdout, stderr = await runner.run_script(monitor.poll_script(), self.command_timeout)
                update = monitor.feed(stdout, loop.time())
            except RemoteJobProtocolError as error:
                raise RemoteJobProtocolError(
                    f"{error} (exit status {status}, stderr: {stderr[:500]!r})"
                ) from None
            except Exception as error:
                if not is_transient_connect_error(error):
                    raise
                failures += 1
                await runner.reset()
                if failures > self.max_reconnect_attempts:
                    return Outcome(
                        "error",
                        None,
                        f"Lost the SSH connection while watching remote job {self.job_id} and could not "
                        f"restore it after {self.max_reconnect_attempts} reconnect attempt(s) "
                        f"({type(error).__name__}: {error}). The job may still be running in {self.job_dir}. "
                        f"{FAN_OUT_HINT}",
                    )
                delay = self.backoff.delay(failures)
                self.log.warning(
                    "SSH poll of job %s failed (%d/%d): %s: %s; reconnecting in %.1fs",
                    self.job_id,
                    failures,
                    self.max_reconnect_attempts,
                    type(error).__name__,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            # A full poll succeeded: only now is the reconnect budget restored.
            failures = 0
            self._emit(update)
            self.log_offset = monitor.log_offset
            if update.outcome is not None:
                return update.outcome
            if update.more_now and (monitor.finishing or reads_this_tick < MAX_READS_PER_TICK):
                reads_this_tick += 1
                continue
            reads_this_tick = 0
            await asyncio.sleep(self.poll_interval)

    # ------------------------------------------------------------------ user kill

    async def on_kill(self) -> None:
        """A user cleared or marked the deferred task: stop the remote job's whole process group."""
        hook = SSHHookAsync(ssh_conn_id=self.ssh_conn_id, host=self.remote_host, conn_retry_attempts=3)
        conn = await hook.get_conn()
        try:
            _, stdout, _ = await hook.run_script_on(conn, build_kill_script(self.paths), self.command_timeout)
            self.log.info("Remote job %s: kill %s", self.job_id, parse_simple_state(stdout, "kill"))
        finally:
            conn.close()
