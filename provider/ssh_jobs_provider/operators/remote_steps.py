"""
The operator's remote steps in the worker: what a submit answer means, and the final kill
and cleanup. Kept apart from the operator class so that each reads on its own.
"""

from __future__ import annotations

from typing import Any

from ssh_jobs_provider import metrics
from ssh_jobs_provider.exceptions import (
    RemoteJobError,
    SSHAuthenticationError,
    SSHConnectError,
    SSHHostKeyError,
)
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.job_spec import JobSpec
from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError, parse_simple_state
from ssh_jobs_provider.protocol.batch import build_cleanup_script
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.kill import build_kill_script, parse_kill_answer
from ssh_jobs_provider.protocol.refusals import POSIX_HINT, refusal_message
from ssh_jobs_provider.protocol.slurm import (
    build_slurm_cancel_script,
    build_slurm_submit_script,
    parse_slurm_submit_output,
    slurm_submit_status,
)
from ssh_jobs_provider.protocol.slurm_options import SLURM_REFUSALS, SlurmSpec
from ssh_jobs_provider.protocol.slurm_options import refusal_message as slurm_refusal_message
from ssh_jobs_provider.protocol.submit import SubmitRefused, build_submit_script, parse_submit_output
from ssh_jobs_provider.retry import RetryPolicy

# --------------------------------------------------------------------------- hooks


#: The XCom that holds the job (:func:`job_xcom`).
XCOM_KEY = "ssh_remote_job"


def job_xcom(
    paths: RemoteJobPaths, host: str | None, pid: int | None, exit_code: int | None = None
) -> dict[str, Any]:
    """
    The operator's XCom ``ssh_remote_job``: the job's ``job_id``, ``job_dir``, ``log_file``,
    ``exit_code_file``, ``pid_file``, ``remote_os``, ``remote_host`` and ``pid`` once it is
    submitted, and its ``exit_code`` too once it has ended.
    """
    job: dict[str, Any] = {**paths.as_dict(), "remote_host": host, "pid": pid}
    if exit_code is not None:
        job["exit_code"] = exit_code
    return job


def push_job(context: Any, paths: RemoteJobPaths, host: Any, pid: Any, exit_code: Any = None) -> None:
    """Push :func:`job_xcom` as XCom :data:`XCOM_KEY` of the task instance in ``context``."""
    context["ti"].xcom_push(key=XCOM_KEY, value=job_xcom(paths, host, pid, exit_code))


def job_hook(spec: JobSpec, attempts: int) -> SSHHook:
    """The worker's hook for ``spec``'s host, with ``attempts`` connect attempts."""
    return SSHHook(
        ssh_conn_id=spec.ssh_conn_id,
        remote_host=spec.remote_host or "",
        conn_timeout=spec.conn_timeout,
        banner_timeout=spec.banner_timeout,
        conn_retry_attempts=attempts,
    )


# --------------------------------------------------------------------------- submit answers


def submit_script(spec: JobSpec, paths: RemoteJobPaths, token: str) -> str:
    """The worker's submit of ``spec``'s job: detached, or queued with sbatch (``scheduler="slurm"``)."""
    environment = dict(spec.environment)
    if spec.slurm is not None:
        arguments = spec.slurm.arguments
        return build_slurm_submit_script(paths, spec.command, environment, token, spec.working_dir, arguments)
    return build_submit_script(paths, spec.command, environment, token, spec.working_dir)


def submit_answer(
    paths: RemoteJobPaths, status: int, stdout: bytes, stderr: bytes, slurm: SlurmSpec | None = None
) -> JobStatus:
    """The submit script's answer, or a :class:`RemoteJobError` that says what to change."""
    try:
        if slurm is not None:
            return slurm_submit_status(parse_slurm_submit_output(stdout))
        return parse_submit_output(stdout)
    except SubmitRefused as refused:
        if slurm is not None and refused.code in SLURM_REFUSALS:
            raise RemoteJobError(slurm_refusal_message(paths, refused, slurm.options)) from None
        raise RemoteJobError(refusal_message(paths, refused)) from None
    except RemoteJobProtocolError:
        detail = stderr.decode("utf-8", errors="replace").strip()[:2000]
        raise RemoteJobError(
            f"The remote host did not run the submit script (exit status {status}): {detail or 'no output'}. "
            + POSIX_HINT
        ) from None


def submit_job(
    hook: SSHHook,
    paths: RemoteJobPaths,
    script: str,
    *,
    command_timeout: float,
    max_timeout: float,
    log: Any,
    slurm: SlurmSpec | None = None,
) -> JobStatus:
    """
    Connect once and submit; if the reply is lost, reconnect and submit again.

    Re-submitting is safe: the job directory is keyed by the task instance and the wrapper
    claims it atomically, so a second submit re-attaches instead of launching. The allowance
    for a reply doubles after each timeout, up to ``max_timeout``.
    """
    timeouts = iter(min(max_timeout, command_timeout * 2**n) for n in range(1000))
    tries = 0

    def attempt() -> JobStatus:
        nonlocal tries
        tries += 1
        if tries > 1:
            metrics.submit_retried(hook.remote_host)
        # ONE connect per attempt, retried by this loop only: a server refusing every
        # connection sees at most conn_retry_attempts of them from one submit.
        with hook.script_session() as remote:
            status, stdout, stderr = remote.run(script, timeout=next(timeouts))
        if status == 0 and not stdout.strip() and not stderr.strip():
            # No answer at all, yet success: a reply lost on the way (seen once under load).
            # Sent again, the submit re-attaches if the job had started.
            raise EOFError(f"the submit of remote job {paths.job_id} got no answer. {POSIX_HINT}")
        if status < 0 and not stdout.strip():
            # The session ended without an exit status (paramiko's -1; asyncssh's -SIGNAL): its
            # shell was killed by a signal, or the session was torn down (seen over a shared
            # login through a bastion). Whether the job started is unknown: a lost reply too,
            # not a refusal.
            raise EOFError(
                f"the submit of remote job {paths.job_id} ended without an exit status or an answer "
                "(its session was cut, or its shell killed by a signal)"
            )
        parsed = submit_answer(paths, status, stdout, stderr, slurm)
        if slurm is not None:
            queued = (
                parse_slurm_submit_output(stdout).slurm_job_id or "(still being queued by a re-sent submit)"
            )
            log.info("Remote job %s is Slurm job %s", paths.job_id, queued)
        if parsed.remote_os:
            log.info("Remote OS: %s", parsed.remote_os)
        metrics.submitted(hook.remote_host)
        return parsed

    try:
        return hook.call_with_retries(attempt, f"Submit of remote job {paths.job_id}", log=log)
    except SSHConnectError:
        log.error(
            "Could not connect to %s to submit remote job %s (conn_retry_attempts=%d).",
            hook.remote_host,
            paths.job_id,
            hook.conn_retry_attempts,
        )
        raise


def report_submit(paths: RemoteJobPaths, host: str | None, status: JobStatus, log: Any) -> None:
    """What the worker's submit did, for the task log."""
    if status.launched is False:
        log.warning(
            "Remote job %s was already started by an earlier submit whose reply was lost: "
            "re-attaching to it instead of launching a second one.",
            paths.job_id,
        )
    log.info("Remote job %s on %s: %s (pid %s)", paths.job_id, host, status.state.value, status.pid)
    log.info("Job directory: %s", paths.job_dir)


def handed_over_lines(event: dict[str, Any]) -> list[str]:
    """The job's last lines a trigger event carries (``log_chunk``), split only at newlines."""
    chunk = str(event.get("log_chunk") or "")
    return chunk.removesuffix("\n").split("\n") if chunk else []


def refuse_after_kill(killed: bool, paths: RemoteJobPaths) -> None:
    """
    Refuse to submit once the task was killed: Airflow can let ``execute()`` run on for a moment
    after ``on_kill`` (seen when the scheduler failed a resumed task and its worker process ran
    ``execute`` again), and a job submitted then would run with nobody watching it.
    """
    if killed:
        raise RemoteJobError(
            f"The task was killed before it submitted (or took over) remote job {paths.job_id}: not doing so now. "
            "A retry of the task submits (or takes over) its job."
        )


def announce_triggerer_submit(paths: RemoteJobPaths, log: Any) -> None:
    """Say that the triggerer submits the job (``submit_from="triggerer"``)."""
    log.info(
        "Remote job %s will be submitted by the triggerer over its shared connection "
        "(submit_from='triggerer'); job directory: %s",
        paths.job_id,
        paths.job_dir,
    )


# --------------------------------------------------------------------------- kill and cleanup


class _NotOurs(RemoteJobError):
    """A kill or cleanup found a directory this task instance does not own: never retried."""


def _worth_retrying(error: BaseException) -> bool:
    # Broader than the connect rule (is_retryable) on purpose: a failed rm -rf may pass later.
    # Not retried: credentials, host keys, and a directory that is not ours.
    return not isinstance(error, (SSHAuthenticationError, SSHHostKeyError, _NotOurs))


def finish_remote(
    hook: SSHHook,
    paths: RemoteJobPaths,
    token: str,
    *,
    kill: bool,
    remove: bool,
    attempts: int,
    command_timeout: float,
    log: Any,
    slurm: bool = False,
) -> None:
    """
    Kill and/or remove the job over one connection, ``attempts`` times if needed (a Slurm job,
    ``slurm``, is killed with ``scancel``, wherever it runs).

    Never raises: the task's outcome is decided by the job, not by its cleanup. If every
    attempt fails the log says which directory is left behind and why.

    :param token: the submit's token: the scripts touch the directory only when it carries it.
        Without one (``""``: a worker that resumes a try on Airflow < 3.3 after a deferral
        timeout does not know it) nothing is sent: a directory of the same name may be another
        deployment's, and the log says what is left behind.
    """
    verbs = (["kill"] if kill else []) + (["cleanup"] if remove else [])
    if not verbs:
        return
    if not token:
        metrics.cleanup_failed(hook.remote_host)
        log.error(
            "REMOTE JOB NOT %s on %s: this worker does not know the submit token of remote job %s, so it cannot "
            "prove that %s is this task instance's (a directory of the same name may be another deployment's) "
            "and touches nothing: %s. Airflow 3.3 and later keep the token in the task state store; here, "
            "check the job on the host (airflow-ssh-jobs status) and kill or remove it by hand.",
            "KILLED" if kill else "CLEANED UP",
            hook.remote_host,
            paths.job_id,
            paths.job_dir,
            "; ".join(_left_behind(paths, verbs)),
        )
        return
    validate_token(token)
    kill_script = build_slurm_cancel_script(paths, token) if slurm else build_kill_script(paths, token)
    scripts = [
        (verb, kill_script if verb == "kill" else build_cleanup_script(paths, token)) for verb in verbs
    ]
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        with hook.script_session() as remote:
            while scripts:
                verb, script = scripts[0]
                status, stdout, stderr = remote.run(script, timeout=command_timeout)
                try:
                    state = parse_simple_state(stdout, verb)
                except RemoteJobProtocolError as error:
                    raise RemoteJobError(f"{verb} failed (exit status {status}): {stderr[:500]!r}") from error
                if verb == "cleanup" and state == "failed":
                    raise RemoteJobError(f"rm -rf could not remove {paths.job_dir}: {stderr[:500]!r}")
                _report(paths, verb, state, stdout, log)
                scripts.pop(0)

    retry = RetryPolicy(attempts, hook.backoff, _worth_retrying)
    try:
        hook.call_with_retries(attempt, f"Cleanup of {paths.job_dir}", log=log, retry=retry)
    except _NotOurs as error:
        log.error("%s Nothing was killed or removed.", error)
    except Exception as error:  # reported loudly below, never raised
        left = [verb for verb, _ in scripts]
        metrics.cleanup_failed(hook.remote_host)
        consequences = _left_behind(paths, left)
        log.error(
            "REMOTE JOB NOT CLEANED UP on %s: %s failed after %d attempt(s) (%s: %s); %s. "
            "Remove it by hand, or run a TTL reaper (e.g. systemd-tmpfiles) on the host.",
            hook.remote_host,
            " and ".join(left),
            tries,
            type(error).__name__,
            error,
            "; ".join(consequences),
        )


def _left_behind(paths: RemoteJobPaths, verbs: list[str]) -> list[str]:
    """What a kill and/or cleanup that did not happen leaves on the host."""
    consequences = []
    if "kill" in verbs:
        consequences.append(f"the job may still be running (pid file {paths.pid_file})")
    if "cleanup" in verbs:
        consequences.append(f"directory left behind: {paths.job_dir}")
    return consequences


def _report(paths: RemoteJobPaths, verb: str, state: str, stdout: bytes, log: Any) -> None:
    """Log what a kill or cleanup did; raise :class:`_NotOurs` for a directory not ours."""
    if state == "foreign":
        raise _NotOurs(f"Remote job directory {paths.job_dir} is not this task instance's ({verb} refused).")
    if verb == "kill":
        answer = parse_kill_answer(stdout)
        if answer.state == "survived":
            log.error(
                "Remote job %s: processes %s survived SIGTERM and SIGKILL; check them on the host.",
                paths.job_id,
                list(answer.survivors),
            )
            return
        state = answer.describe()
    log.info("Remote job %s: %s -> %s", paths.job_id, verb, state)
