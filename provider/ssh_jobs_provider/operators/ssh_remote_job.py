"""
:class:`SSHRemoteJobOperator`: submit a detached job over SSH, then watch it from the triggerer.

The worker does the short parts with the paramiko hook: the submit, and at the end a kill when
the watch was lost, or a cleanup the trigger could not do; watching, log streaming and normally
the cleanup happen in :class:`~ssh_jobs_provider.triggers.ssh_remote_job.SSHRemoteJobTrigger`.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ssh_jobs_provider._compat import AirflowException, AirflowSkipException, BaseOperator
from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.job_spec import (
    CleanupPolicy,
    JobSpec,
    SubmitFrom,
    TriggerSubmit,
    check_remote_os,
    check_scheduler,
    exit_codes,
    require_positive,
)
from ssh_jobs_provider.operators import durable, remote_steps
from ssh_jobs_provider.operators.job_records import job_paths, remember_outcome, token_of, watched_job
from ssh_jobs_provider.operators.remote_steps import XCOM_KEY, finish_remote, job_hook, push_job, submit_job
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.last_lines import validate_line_count
from ssh_jobs_provider.protocol.reattach import Resume
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from ssh_jobs_provider.triggers.task_state import TRY_XCOM_KEY

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["XCOM_KEY", "SSHRemoteJobOperator"]
TRIGGER_FAIL_METHOD = "__fail__"
#: Longest wait for one submit reply, however often it was doubled after timeouts.
MAX_SUBMIT_TIMEOUT = 600.0

_EVENT_KEYS = ("job_id", "job_dir", "status", "done")


class SSHRemoteJobOperator(BaseOperator):
    """
    Run a command detached on a remote host over SSH and watch it from the triggerer.

    The worker submits the job over one SSH login (it runs under ``setsid``
    with its output in a log file and its exit code written atomically when it ends), pushes
    the job's identity to XCom and defers. In the triggerer, all triggers reaching the same
    server share one connection and one batched poll per tick; the trigger streams the log
    into the task log, removes the job directory when ``cleanup`` asks for it, and fires once
    the job has ended and its log is fully read. The task then succeeds on exit code 0, is
    skipped on a ``skip_on_exit_code``, and fails otherwise. One try runs one job: a submit
    whose reply was lost, or an ``execute()`` that Airflow runs again, re-attaches to it.

    :param ssh_conn_id: Airflow connection id of type ``ssh`` (templated)
    :param command: shell text to run, as in a ``.sh`` file (templated; ``.sh``/``.bash``
        files are rendered). Runs with ``bash`` when the host has it, else ``/bin/sh``; a
        ``#!`` first line picks the interpreter.
    :param remote_host: host instead of the connection's (templated)
    :param environment: variables for the command (templated); values reach it literally,
        byte for byte (no ``$VAR`` expansion)
    :param remote_base_dir: absolute directory under which job directories are created
        (templated; default ``/tmp/airflow-ssh-jobs``). It is created with mode 700 when
        missing; when it exists, it and every directory above it must be owned by the SSH
        user or root and not writable by group or others unless sticky (as sshd's
        ``StrictModes``), else the submit is refused before anything runs.
    :param remote_working_dir: directory the command runs in (templated): an absolute path or
        ``~/...``; default: the SSH user's home directory, as with ``ssh host command``
    :param poll_interval: seconds between polls while the job runs (default 5)
    :param log_chunk_size: most log bytes read per poll (default 65536)
    :param timeout: seconds the job may run before the task fails and the job is killed
        (``None``: no limit)
    :param cleanup: when to remove the job directory: ``"never"`` (default), ``"on_success"``
        or ``"always"``
    :param remote_os: ``"auto"`` (default) or ``"posix"``; ``"windows"`` is not supported
    :param skip_on_exit_code: exit code(s) that skip the task instead of failing it
    :param conn_timeout: seconds allowed for the TCP connect of the worker's connections (submit,
        kill, cleanup); default: the connection's ``conn_timeout`` extra, else 10. The trigger
        uses the connection's extras.
    :param banner_timeout: seconds allowed for the server's banner on the worker's connections
        (default 30)
    :param conn_retry_attempts: attempts to connect and submit, retrying refusals before
        authentication and lost submit replies with jittered exponential backoff (default 5)
    :param cleanup_retries: attempts for the cleanup, first in the trigger, then (if the trigger
        could not) in the worker, and for the kill after a lost watch (default 3)
    :param command_timeout: seconds allowed for each remote command; the submit's allowance
        doubles after each timeout (default 30)
    :param max_reconnect_attempts: consecutive failed polls the trigger tolerates before it
        gives up on the job (default 5); the count resets after each successful poll
    :param submit_from: where the job is submitted: ``"worker"`` (default: over a connection of
        the worker's own, then the task defers) or ``"triggerer"`` (the task defers at once
        without any SSH connection from the worker, and the triggerer submits over the one
        connection it shares for the host: a whole fan-out then costs ONE SSH login). The
        command and environment then travel in the trigger's arguments, stored in the metadata
        database, and may hold at most about 40 KB together (as JSON).
    :param durable: a retry takes over the job of an earlier try instead of starting another
        (default ``True``, as KubernetesPodOperator's): a running job is re-attached (the new
        try's log shows its whole output), a job that succeeded is not run again, a failed one
        is replaced by a fresh job; a cleared task always starts a fresh job. Only a job whose
        token the task state store (Airflow >= 3.3) kept is taken over. ``False``: none is.
    :param scheduler: ``None`` (default): run detached on the host; ``"slurm"``: queue the command
        with ``sbatch`` from a cluster's login node, its outcome Slurm's record (HPC clusters page)
    :param scheduler_options: sbatch options (templated), e.g. ``{"partition": "gpu"}``: each
        entry becomes ``--name=value`` (``True``: ``--name``)
    :param return_last_lines: the task's return value: the job's last this many output lines
        (default 0: none; at most 1000 lines and 64 KiB, the oldest dropped first)
    """

    template_fields: Sequence[str] = (
        "command",
        "environment",
        "remote_host",
        "remote_base_dir",
        "remote_working_dir",
        "ssh_conn_id",
        "scheduler_options",
    )
    template_ext: Sequence[str] = (".sh", ".bash")
    template_fields_renderers = {"command": "bash", "environment": "python"}
    ui_color = "#dfe9f3"

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        command: str,
        remote_host: str | None = None,
        environment: dict[str, str] | None = None,
        remote_base_dir: str | None = None,
        poll_interval: float = 5,
        log_chunk_size: int = 65536,
        timeout: float | None = None,
        cleanup: str = "never",
        remote_os: str = "auto",
        skip_on_exit_code: int | Container[int] | None = None,
        conn_timeout: float | None = None,
        banner_timeout: float = 30.0,
        conn_retry_attempts: int = 5,
        cleanup_retries: int = 3,
        command_timeout: float = 30.0,
        max_reconnect_attempts: int = 5,
        remote_working_dir: str | None = None,
        submit_from: str = "worker",
        durable: bool = True,
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        return_last_lines: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        SubmitFrom.parse(submit_from)
        check_scheduler(scheduler, scheduler_options)
        check_remote_os(remote_os)
        CleanupPolicy.parse(cleanup)
        require_positive("poll_interval", poll_interval)
        require_positive("command_timeout", command_timeout)
        require_positive("banner_timeout", banner_timeout)
        require_positive("log_chunk_size", log_chunk_size, 1024, strict=False)
        require_positive("conn_retry_attempts", conn_retry_attempts, 1, strict=False)
        require_positive("cleanup_retries", cleanup_retries, 1, strict=False)
        require_positive("max_reconnect_attempts", max_reconnect_attempts, 0, strict=False)
        if timeout is not None:
            require_positive("timeout", timeout)
        if conn_timeout is not None:
            require_positive("conn_timeout", conn_timeout)
        self.ssh_conn_id = ssh_conn_id
        self.command = command
        self.remote_host = remote_host
        self.environment = environment
        self.remote_base_dir = remote_base_dir
        self.poll_interval = poll_interval
        self.log_chunk_size = int(log_chunk_size)
        self.timeout = timeout
        self.cleanup = cleanup
        self.remote_os = remote_os
        self.skip_on_exit_code = exit_codes(skip_on_exit_code)
        self.conn_timeout = conn_timeout
        self.banner_timeout = banner_timeout
        self.conn_retry_attempts = int(conn_retry_attempts)
        self.cleanup_retries = int(cleanup_retries)
        self.command_timeout = float(command_timeout)
        self.max_reconnect_attempts = int(max_reconnect_attempts)
        self.remote_working_dir = remote_working_dir
        self.submit_from = submit_from
        self.durable = bool(durable)
        self.scheduler, self.scheduler_options = scheduler, scheduler_options
        self.return_last_lines = validate_line_count(return_last_lines)
        self._paths: RemoteJobPaths | None = None
        self._token = ""  # this try's submit token, known in the worker process that submitted
        self._deferred_token, self._deferred_pid = "", None  # what a resumed worker got back

    def job_spec(self, for_submit: bool = True) -> JobSpec:
        """This task's job, from the rendered arguments (``ValueError`` naming one to fix; see
        :meth:`JobSpec.render <ssh_jobs_provider.job_spec.JobSpec.render>` for ``for_submit``)."""
        return JobSpec.render(
            for_submit=for_submit,
            command=self.command,
            environment=self.environment,
            remote_base_dir=self.remote_base_dir,
            remote_working_dir=self.remote_working_dir,
            ssh_conn_id=self.ssh_conn_id,
            remote_host=self.remote_host,
            poll_interval=self.poll_interval,
            log_chunk_size=self.log_chunk_size,
            timeout=self.timeout,
            cleanup=CleanupPolicy.parse(self.cleanup),
            skip_on_exit_code=self.skip_on_exit_code,
            conn_timeout=self.conn_timeout,
            banner_timeout=self.banner_timeout,
            conn_retry_attempts=self.conn_retry_attempts,
            cleanup_retries=self.cleanup_retries,
            command_timeout=self.command_timeout,
            max_reconnect_attempts=self.max_reconnect_attempts,
            submit_from=SubmitFrom.parse(self.submit_from),
            durable=self.durable,
            retries=self.retries or 0,
            scheduler=self.scheduler,
            scheduler_options=self.scheduler_options,
            return_last_lines=self.return_last_lines,
        )

    @cached_property
    def ssh_hook(self) -> SSHHook:
        """The hook used to submit (connect attempts: ``conn_retry_attempts``)."""
        return job_hook(self.job_spec(for_submit=False), self.conn_retry_attempts)

    def execute(self, context: Context) -> None:
        """Validate, submit the job (here, or from the triggerer) and defer to the trigger."""
        spec = self.job_spec()
        paths = job_paths(context["ti"], spec.base_dir)
        remote_steps.refuse_after_kill(getattr(self, "_killed", False), paths)
        token = new_job_token()
        submit = spec.trigger_submit() if spec.submit_from is SubmitFrom.TRIGGERER else None
        earlier = durable.take_over_or_remember(spec, context, paths, token, self.ssh_hook, self.log)
        if earlier is not None and earlier.resume is Resume.FRESH:  # this try's, never started
            token = earlier.record.token
        elif earlier is not None:
            self._go_on_with(context, spec, earlier)  # a job submitted before, running or ended
            return
        script = remote_steps.submit_script(spec, paths, token)
        if submit is not None:
            remote_steps.announce_triggerer_submit(paths, self.log)
            self._token = token
            self._defer(context, spec, paths, token, submit=submit)
            return
        # Known from here on, so that on_kill during the submit finds the job.
        self._paths, self._token = paths, token

        status = submit_job(
            self.ssh_hook,
            paths,
            script,
            command_timeout=spec.command_timeout,
            max_timeout=MAX_SUBMIT_TIMEOUT,
            log=self.log,
            slurm=spec.slurm,
        )
        remote_steps.report_submit(paths, self.ssh_hook.remote_host, status, self.log)
        if self.do_xcom_push:
            push_job(context, paths, self.ssh_hook.remote_host, status.pid)
        self._defer(context, spec, paths, token, pid=status.pid)

    def _go_on_with(self, context: Context, spec: JobSpec, earlier: durable.EarlierJob) -> None:
        """Re-attach to an earlier try's job, or end like it (it succeeded, or ended with a skip code)."""
        record, done = earlier.record, earlier.resume is Resume.DONE
        message, skipped, code = durable.describe_take_over(earlier, spec.skip_on_exit_code)
        self.log.info("%s", message)
        pid = None if done or earlier.status is None else earlier.status.pid  # only of a job that may run
        if self.do_xcom_push:  # a job that ended: with its exit code
            push_job(context, record.paths, spec.remote_host, pid, code if done else None)
        if done:
            if skipped:
                raise AirflowSkipException(f"Remote job {record.job_id} exited with skip code {code}")
            return
        self._paths, self._token = record.paths, record.token
        self._defer(context, spec, record.paths, record.token, log_start=earlier.log_start, pid=pid)

    def _defer(
        self,
        context: Context,
        spec: JobSpec,
        paths: RemoteJobPaths,
        token: str,
        *,
        log_offset: int = 0,
        submit: TriggerSubmit | None = None,
        log_start: tuple[bool, int] = (False, 0),
        pid: int | None = None,
    ) -> None:
        """Defer to the trigger that watches job ``paths`` (with ``submit``: submits it first)."""
        watch = spec.watch_spec(paths, token, log_offset=log_offset, submit=submit, log_start=log_start)
        # Which try is deferred, for the on_kill of an earlier try's trigger (a try's XComs are
        # cleared when the next one starts).
        context["ti"].xcom_push(key=TRY_XCOM_KEY, value=context["ti"].try_number)
        # Token and pid reach the resumed worker in next_kwargs, not in the event (the triggerer logs it).
        self.defer(
            trigger=SSHRemoteJobTrigger.from_spec(watch),
            method_name="execute_complete",
            kwargs={"job_token": token, "job_pid": pid},
            timeout=timedelta(seconds=spec.timeout) if spec.timeout else None,
        )

    # ------------------------------------------------------------------ completion

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, job_token: str = "", job_pid: Any = None
    ) -> str | None:
        """Called when the trigger fires (with the watched job's token): clean up, set the outcome."""
        if not event or any(key not in event for key in _EVENT_KEYS):
            raise AirflowException(f"Invalid event from SSHRemoteJobTrigger: {event!r}")
        spec = self.job_spec(for_submit=False)
        paths = durable.event_paths(event, context, spec.base_dir)
        submitted = (self._paths or job_paths(context["ti"], spec.base_dir), self._token)
        self._token = token_of(context, paths, job_token or self._deferred_token, submitted, self.log)
        self._paths = paths
        if not event.get("done", True):
            # Only an older trigger would send an intermediate event; keep watching.
            self._defer(context, spec, paths, self._token, log_offset=int(event.get("log_offset", 0)))
            return None
        for line in remote_steps.handed_over_lines(event):
            self.log.info("%s", line)
        exit_code = event.get("exit_code")
        message = str(event.get("message", ""))
        self.log.info("%s", message)
        if self.do_xcom_push:  # with the exit code, and the pid (of a trigger's submit: known only now)
            pid = event.get("pid") or job_pid or self._deferred_pid
            push_job(context, paths, event.get("remote_host"), pid, exit_code)

        if event.get("never_started"):
            # Refused or never sent: no job ran and nothing was left behind.
            raise RemoteJobError(f"Remote job {paths.job_id} was not started: {message}")
        if event.get("leave_remote"):
            # The directory is not this task instance's any more: touch nothing.
            raise RemoteJobError(f"Remote job {paths.job_id} failed: {message}")
        if event["status"] == "error" or exit_code is None:
            if event.get("watch_lost") and durable.left_for_the_next_try(spec, context, paths, self.log):
                # The next try re-attaches to it: killing it would throw its work away.
                raise RemoteJobError(f"{message} It is left running: the next try re-attaches to it.")
            # We lost track of the job: make sure it is not left running unwatched.
            self._finish_remote(spec, paths, kill=True, remove=spec.cleanup.removes(succeeded=False))
            raise RemoteJobError(f"Remote job {paths.job_id} failed: {message}")

        succeeded = exit_code == 0
        if spec.durable:
            remember_outcome(context, paths.job_id, spec.outcome_of(exit_code), exit_code, self.log)
        if event.get("cleaned_up"):
            self.log.info("Remote job directory %s was removed by the trigger", paths.job_dir)
        else:
            # The trigger could not clean up (or was not asked to): try from here.
            self._finish_remote(spec, paths, kill=False, remove=spec.cleanup.removes(succeeded))
        if exit_code in spec.skip_on_exit_code:
            raise AirflowSkipException(f"Remote job {paths.job_id} exited with skip code {exit_code}")
        if not succeeded:
            raise AirflowException(f"Remote job {paths.job_id} failed with exit code {exit_code}")
        self.log.info("Remote job %s succeeded", paths.job_id)
        return "\n".join(event.get("last_lines") or []) if spec.return_last_lines else None

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """On a deferral timeout (or a crashed trigger), kill the remote job before failing."""
        # Taken here, so that a subclass's execute_complete(context, event) is called as before.
        kwargs = dict(next_kwargs or {})
        self._deferred_token = str(kwargs.pop("job_token", "") or "")
        self._deferred_pid = kwargs.pop("job_pid", None)
        if next_method == TRIGGER_FAIL_METHOD:
            # The job this try watched, with its token (Airflow >= 3.3: else nothing is touched).
            spec = self.job_spec(for_submit=False)
            paths, self._token = watched_job(context, spec.base_dir, self.log)
            self._paths = paths
            self.log.error("Watching remote job %s ended abnormally; stopping the remote job", paths.job_id)
            self._finish_remote(spec, paths, kill=True, remove=spec.cleanup.removes(succeeded=False))
        return super().resume_execution(next_method, kwargs, context)

    def on_kill(self) -> None:
        """The task was killed while in the worker: stop every process of the remote job."""
        self._killed = True  # Airflow may let execute() go on for a moment: it must not submit then
        if self._paths is None:
            self.log.info("No remote job was submitted by this task instance; nothing to kill.")
            return
        self._finish_remote(self.job_spec(for_submit=False), self._paths, kill=True, remove=False)

    def _finish_remote(self, spec: JobSpec, paths: RemoteJobPaths, kill: bool, remove: bool) -> None:
        """Kill and/or remove the job (see :func:`~ssh_jobs_provider.operators.remote_steps.finish_remote`)."""
        finish_remote(
            job_hook(spec, attempts=1),
            paths,
            self._token,
            kill=kill,
            remove=remove,
            attempts=spec.cleanup_retries,
            command_timeout=spec.command_timeout,
            log=self.log,
            slurm=spec.slurm is not None,
        )
