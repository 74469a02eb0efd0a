"""
:class:`SSHRemoteJobTrigger`: watches one detached remote job from the triggerer.

The trigger itself is thin. What a poll answer means is decided by
:class:`~ssh_jobs_provider.protocol.monitor.JobMonitor` (pure code); where the connection
comes from and how polls are issued is the business of
:class:`~ssh_jobs_provider.triggers.host_session.HostSession`, which every trigger of the
triggerer that reaches the same server shares: one connection, one batched exec per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ssh_jobs_provider._compat import TRIGGER_LOG_WRITTEN_APART
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.ssh import SSHHookAsync
from ssh_jobs_provider.job_spec import WatchSpec
from ssh_jobs_provider.protocol.answers import JobStatus
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.kill import build_kill_script, parse_kill_answer
from ssh_jobs_provider.protocol.last_lines import LastLines
from ssh_jobs_provider.protocol.monitor import JobMonitor, Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.slurm import build_slurm_cancel_script
from ssh_jobs_provider.protocol.slurm_state import SlurmMonitor
from ssh_jobs_provider.triggers.host_session import Delivery, HostSession, JobWatch
from ssh_jobs_provider.triggers.log_hand_over import LogHandOver
from ssh_jobs_provider.triggers.task_state import task_now

#: Seconds ``cleanup()`` waits for the delivered offset of a trigger that left early: as long
#: as a session shutting down takes to record it (``host_session.SHUTDOWN_RECORD_SECONDS``).
OFFSET_RECORD_WAIT_SECONDS = 5.0
#: Seconds ``on_kill`` waits for the server to acknowledge the close.
KILL_CLOSE_WAIT_SECONDS = 5.0
#: Connect attempts of ``on_kill`` (a user acted: worth a couple of retries, not many).
KILL_CONNECT_ATTEMPTS = 3


class SSHRemoteJobTrigger(BaseTrigger):
    """
    Watch a detached remote job and stream its log into the task log.

    All triggers of a triggerer that reach the same server with the same credentials share
    one SSH connection and one batched poll per tick (see
    :class:`~ssh_jobs_provider.triggers.host_session.HostSession`). Log lines are written to
    this trigger's log (the task log) while the job runs; after the job ends its log is
    drained to the last byte, its directory is removed over the same connection when
    ``cleanup_policy`` asks for it, and then the one final event is yielded. A connection-level
    failure (see :func:`~ssh_jobs_provider.exceptions.is_retryable`: refused or
    lost connections, ``OSError``, timeouts, refused channels) drops the shared connection and
    reconnects with jittered exponential backoff; after ``max_reconnect_attempts``
    consecutive failed polls this trigger ends with an error event. Its count resets only
    after a successful poll. A re-created trigger (triggerer restart) resumes the log at the
    byte the previous one had delivered, recorded on the remote host at every poll.

    :param ssh_conn_id: Airflow connection id of type ``ssh``
    :param remote_host: host instead of the connection's
    :param job_id: the job's id
    :param job_dir: the job's directory on the remote host
    :param log_file: the job's log file (informational; always ``<job_dir>/stdout.log``)
    :param exit_code_file: the job's exit code file (informational)
    :param remote_os: ``"posix"`` (the only supported value)
    :param poll_interval: seconds between polls while the job runs
    :param log_chunk_size: most log bytes read per poll (a batch also caps the bytes of all
        its jobs together, giving each at least a few KiB)
    :param log_offset: log bytes already delivered
    :param command_timeout: seconds allowed for each remote command (a batch poll allows the
        largest value among its jobs)
    :param max_reconnect_attempts: consecutive failed polls tolerated
    :param cleanup_policy: remove the job directory from here once the log is drained:
        ``"never"`` (default), ``"on_success"`` or ``"always"`` (for jobs that exited)
    :param cleanup_retries: attempts for that cleanup before leaving it to the operator
    :param job_token: the submit's token: the trigger only watches, kills or removes a job
        directory that carries it (``""``: not checked, for triggers serialized before tokens)
    :param remote_base_dir: the operator's base dir; ``job_dir`` must be its direct child named
        ``job_id`` (``None``: the parent of ``job_dir``, for triggers serialized before it)
    :param submit: ``{"command": ..., "environment": {...}, "working_dir": ...}`` when the
        trigger submits the job itself (the operator's ``submit_from="triggerer"``): it is sent
        in the first batch of the host session, and again until answered (idempotent, with
        ``job_token``, which is then required); ``None``: the worker submitted it
    :param from_start: stream the log from ``log_offset`` even if the host records that an
        earlier watcher delivered more: a new try that re-attached to an earlier try's job
        shows its whole output
    :param resume_after: log bytes the host had recorded as delivered (to an earlier try's log)
        when this try took the job over: a re-created trigger of this try resumes at the host's
        record only beyond them, so that a triggerer lost while it streamed the whole output
        again repeats only its last seconds (``0``: any record counts)
    :param scheduler: ``"slurm"``: the job goes through Slurm (queued with ``sbatch`` when this
        trigger submits it, its end read from Slurm's record, cancelled with ``scancel``);
        ``None`` (default): a detached process
    :param scheduler_options: the operator's ``scheduler_options`` (sbatch options)
    :param return_last_lines: how many of the last output lines this trigger delivered its final
        event carries (``last_lines``; bounded, see :mod:`ssh_jobs_provider.protocol.last_lines`)
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
        cleanup_policy: str = "never",
        cleanup_retries: int = 3,
        job_token: str = "",
        remote_base_dir: str | None = None,
        submit: dict[str, Any] | None = None,
        from_start: bool = False,
        resume_after: int = 0,
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        return_last_lines: int = 0,
    ) -> None:
        super().__init__()
        # Validated here, where the operator creates the trigger: bad input fails in execute(),
        # before anything was sent.
        arguments = locals()  # exactly this signature's parameters, by name
        self.spec = WatchSpec.from_kwargs(
            **{name: arguments[name] for name in WatchSpec.__dataclass_fields__}
        )
        self._paths = self.spec.paths
        self._slurm = self.spec.slurm
        self._submit_files = None if self.spec.submit is None else self.spec.submit.files(job_token)
        #: The submit's answer, once this trigger submitted the job; the host, once known.
        self._submitted: JobStatus | None = None
        self._host = remote_host
        #: Log bytes delivered so far (the spec keeps where the watch started).
        self.log_offset = log_offset
        self._last_lines = LastLines(return_last_lines)
        #: The job's output on its way to the task log (its last lines in the final event).
        self._log_hand_over = LogHandOver()
        #: It yielded its final event (and lingers in cleanup(), see there).
        self._fired = False

    def __getattr__(self, name: str) -> Any:
        # Each argument reads as an attribute of the trigger too (``trigger.job_id``), as Airflow's
        # own triggers do; the spec holds the one copy.
        spec = self.__dict__.get("spec")
        if spec is not None and name in WatchSpec.__dataclass_fields__:
            return spec.as_kwargs()[name]  # plain values, as serialized
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_spec(cls, spec: WatchSpec) -> SSHRemoteJobTrigger:
        """The trigger of ``spec`` (what the operator defers to)."""
        return cls(**spec.as_kwargs())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # With the log delivered so far: a trigger serialized again resumes there.
        kwargs = {**self.spec.as_kwargs(), "log_offset": self.log_offset}
        return (f"{type(self).__module__}.{type(self).__qualname__}", kwargs)

    # ------------------------------------------------------------------ seams

    @property
    def paths(self) -> RemoteJobPaths:
        return self._paths

    def _make_hook(self, attempts: int = 1) -> SSHHookAsync:
        # One connect attempt per call by default: the reconnect budget governs retries.
        return SSHHookAsync(
            ssh_conn_id=self.spec.ssh_conn_id,
            remote_host=self.spec.remote_host or "",
            conn_retry_attempts=attempts,
        )

    def make_session(self, settings: SSHConnectionSettings, hook: SSHHookAsync) -> HostSession:
        """The shared session this trigger polls through."""
        return HostSession.for_settings(settings, hook.connect_with, hook.run_script)

    # ------------------------------------------------------------------ events

    def _event(self, outcome: Outcome, log_offset: int, cleaned_up: bool | None) -> TriggerEvent:
        submitted = self._submitted
        return TriggerEvent(
            {
                "job_id": self.spec.job_id,
                "job_dir": self.spec.job_dir,
                "log_file": self.spec.log_file,
                "exit_code_file": self.spec.exit_code_file,
                "remote_os": self.spec.remote_os,
                "status": OutcomeStatus(outcome.status).value,
                "done": True,
                "exit_code": outcome.exit_code,
                "log_chunk": "".join(f"{line}\n" for line in self._log_hand_over.handed_over),
                "log_offset": log_offset,
                "message": outcome.message,
                "cleaned_up": cleaned_up,
                "leave_remote": outcome.leave_remote,
                "never_started": outcome.never_started,
                "watch_lost": outcome.watch_lost,
                # Known when this trigger submitted the job: for the operator's XCom.
                "pid": submitted.pid if submitted else None,
                "launched": submitted.launched if submitted else None,
                "remote_host": self._host,
                "last_lines": self._last_lines.lines if self.spec.return_last_lines else None,
            }
        )

    def _emit(self, delivery: Delivery) -> None:
        if delivery.submitted is not None:
            self._report_submit(delivery.submitted)
        now = asyncio.get_running_loop().time()
        # The job's last lines travel in the final event (see log_hand_over).
        self._log_lines(self._log_hand_over.lines_to_log(delivery, now))
        self._last_lines.add(delivery.lines)
        for warning in delivery.warnings:
            self.log.warning("%s", warning)
        for news in delivery.progress:
            self.log.info("%s", news)
        if delivery.warnings or delivery.progress:
            self._log_hand_over.logged(now)

    def _log_lines(self, lines: list[str]) -> None:
        for line in lines:
            self.log.info("%s", line)

    def _report_submit(self, status: JobStatus) -> None:
        self._submitted = status
        if status.launched is False:
            self.log.warning(
                "Remote job %s was already started by an earlier submit (a re-created trigger, or a "
                "submit whose answer was lost): re-attaching to it instead of launching a second one.",
                self.spec.job_id,
            )
        if status.remote_os:
            self.log.info("Remote OS: %s", status.remote_os)
        if self._slurm is not None:
            # No pid on the login node: where it stands is Slurm's answer, in the next lines.
            self.log.info("Remote job %s on %s: queued with sbatch", self.spec.job_id, self._host)
        else:
            self.log.info(
                "Remote job %s on %s: %s (pid %s)",
                self.spec.job_id,
                self._host,
                status.state.value,
                status.pid,
            )
        self.log.info("Job directory: %s", self.spec.job_dir)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> AsyncIterator[TriggerEvent]:
        loop = asyncio.get_running_loop()
        # A Slurm job's end is Slurm's record, asked in the same batch (SlurmMonitor).
        monitor = (JobMonitor if self._slurm is None else SlurmMonitor)(
            self.paths,
            self.log_offset,
            self.spec.log_chunk_size,
            started_at=loop.time(),
            token=self.spec.job_token,
            resume=not self.spec.from_start,
            resume_after=self.spec.resume_after,
        )
        hook = self._make_hook()
        try:
            settings = await hook.get_settings()
            self._host = settings.host
            session = self.make_session(settings, hook)
        except Exception as error:  # the connection cannot even be read: one final event
            self.log.exception("Cannot watch remote job %s", self.spec.job_id)
            verb = "submit" if self.spec.submit is not None else "watch"
            # Not "never started": a re-created trigger cannot know whether its submit was sent.
            outcome = Outcome(
                OutcomeStatus.ERROR, None, f"Cannot {verb} remote job {self.spec.job_id}: {error}"
            )
            yield self._event(outcome, self.log_offset, None)
            return
        watch = session.watch(
            JobWatch(
                monitor=monitor,
                poll_interval=self.spec.poll_interval,
                command_timeout=self.spec.command_timeout,
                max_reconnect_attempts=self.spec.max_reconnect_attempts,
                cleanup=self.spec.cleanup_policy,
                cleanup_retries=self.spec.cleanup_retries,
                submit_files=self._submit_files,
                slurm=self._slurm,
            )
        )
        finished = False
        try:
            while True:
                delivery = await watch.next_delivery()
                self._emit(delivery)
                watch.record_delivered(delivery.log_offset, loop.time())
                self.log_offset = delivery.log_offset
                if delivery.outcome is not None:
                    finished = True
                    break
        finally:
            session.unwatch(watch)
            if not finished:
                # Leaving early (cancelled): record where the log stands so that a
                # re-created trigger resumes at that byte; cleanup() waits for it.
                self._offset_recorded = session.record_offset(watch)
        if self._submitted is not None and self._submitted.pid is None and monitor.wrapper_pid:
            # The submit answered before the wrapper recorded its pid; a poll brought it.
            self._submitted = dataclasses.replace(self._submitted, pid=monitor.wrapper_pid)
        # Lines logged just before the event may not reach the task log yet (see log_hand_over):
        # they get a moment to be written before the trigger ends.
        settle = self._log_hand_over.seconds_before_event(loop.time())
        if settle > 0:
            try:
                await asyncio.sleep(settle)
            except asyncio.CancelledError:
                self._log_lines(self._log_hand_over.leaving())  # the event will not carry them
                raise
        yield self._event(delivery.outcome, delivery.log_offset, delivery.cleaned_up)
        self._fired = True  # the triggerer took the event (it asks for more only then)

    async def cleanup(self) -> None:
        """
        Wait (briefly) for the delivered-offset record of a trigger that left early; after an
        event, stay while the lines logged last may still be on their way to the task log.
        """
        recorded = getattr(self, "_offset_recorded", None)
        if recorded is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(recorded), OFFSET_RECORD_WAIT_SECONDS)
        if self._fired and TRIGGER_LOG_WRITTEN_APART:
            # Airflow 3 closes this trigger's log file once cleanup() returns: see log_hand_over.
            # The triggerer's cancel ends the wait, quietly: nothing of this trigger is left.
            linger = self._log_hand_over.seconds_to_linger(asyncio.get_running_loop().time())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(linger)

    # ------------------------------------------------------------------ user kill

    async def _task_now(self) -> tuple[str | None, int | None]:
        """What Airflow says now of this trigger's task: its state, and the try that deferred."""
        return await task_now(getattr(self, "task_instance", None), self.spec.job_id, self.log)

    async def on_kill(self) -> None:
        """A user cleared or marked the deferred task: stop every process of the remote job."""
        state, deferred_try = await self._task_now()
        own_try = getattr(getattr(self, "task_instance", None), "try_number", None)
        known = deferred_try is not None and own_try is not None
        if state == "deferred" and (not known or deferred_try == own_try):
            # Airflow (3.3) cancels a trigger that moved to another triggerer (a lapsed heartbeat,
            # two triggerers claiming it at once) the way it cancels one for a user's action. The
            # same try still waits on its job then: another triggerer watches it, so it must run on.
            spared = (
                "Remote job %s: the task is still deferred (watched by another triggerer): not killing it."
            )
            if known:
                self.log.info(spared, self.spec.job_id)
            else:
                self.log.warning(
                    spared
                    + " The deferred try did not record its number (an earlier build of this provider): "
                    "if it is a later try (the task was cleared), kill this job on the host.",
                    self.spec.job_id,
                )
            return
        if state == "deferred":
            # A later try is deferred (the task was cleared, and ran again): this try was stopped.
            self.log.info(
                "Remote job %s: the task is deferred in try %s, not in this trigger's try %s: killing the job.",
                self.spec.job_id,
                deferred_try,
                own_try,
            )
        hook = self._make_hook(attempts=KILL_CONNECT_ATTEMPTS)
        conn = await hook.get_conn()
        try:
            if self._slurm is not None:
                script = build_slurm_cancel_script(self.paths, self.spec.job_token)
            else:
                script = build_kill_script(self.paths, self.spec.job_token)
            _, stdout, _ = await hook.run_script(conn, script, self.spec.command_timeout)
            answer = parse_kill_answer(stdout)
            if answer.survivors:
                self.log.error(
                    "Remote job %s: processes %s survived SIGKILL", self.spec.job_id, list(answer.survivors)
                )
            else:
                self.log.info("Remote job %s: kill %s", self.spec.job_id, answer.describe())
        finally:
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), KILL_CLOSE_WAIT_SECONDS)
