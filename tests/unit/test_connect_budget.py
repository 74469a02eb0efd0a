"""
One loop owns the attempts: connections counted on a loopback listener that refuses them all.

The listener accepts each TCP connection and closes it at once, before any SSH banner: what
``sshd`` does past ``MaxStartups``. No sshd is needed; only 127.0.0.1 is reached.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from ssh_jobs_provider.exceptions import SSHAuthenticationError, SSHConnectError
from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync
from ssh_jobs_provider.job_spec import JobSpec
from ssh_jobs_provider.operators import ssh_remote_job as operator_module
from ssh_jobs_provider.operators.remote_steps import submit_job
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.submit import build_submit_script
from ssh_jobs_provider.retry import BackoffPolicy
from support.logs import capture_logs

FAST = BackoffPolicy(initial=0.001, maximum=0.002)
CONN_ID = "ssh_refusing"


class RefusingListener:
    """Accepts every connection on 127.0.0.1 and closes it at once; counts them."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.1)
        self.port = self._socket.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._socket.accept()
            except OSError:  # the accept timeout too: check for stop
                continue
            self.accepted += 1
            client.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


def loopback_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, port: int, **extra: object) -> None:
    """Airflow connection ``conn_id`` to ``127.0.0.1:port``, with no host key check."""
    connection = {
        "conn_type": "ssh",
        "host": "127.0.0.1",
        "port": port,
        "login": "nobody",
        "extra": {"no_host_key_check": True, **extra},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> Iterator[RefusingListener]:
    listener = RefusingListener()
    loopback_connection(monkeypatch, CONN_ID, listener.port, look_for_keys=False)
    try:
        yield listener
    finally:
        listener.close()


def fast_operator(**kwargs: object) -> SSHRemoteJobOperator:
    op = SSHRemoteJobOperator(task_id="job", ssh_conn_id=CONN_ID, command="true", **kwargs)
    op.ssh_hook.backoff = FAST
    return op


PATHS = RemoteJobPaths(job_id="af_budget_test", base_dir="/tmp/airflow-ssh-jobs")


@pytest.mark.parametrize("attempts", [1, 3])
def test_one_submit_makes_at_most_conn_retry_attempts_connections(
    refusing: RefusingListener, attempts: int
) -> None:
    op = fast_operator(conn_retry_attempts=attempts)
    with pytest.raises(SSHConnectError, match=rf"after {attempts} attempt\(s\)") as info:
        submit_job(
            op.ssh_hook,
            PATHS,
            build_submit_script(PATHS, "true", {}, new_job_token()),
            command_timeout=op.command_timeout,
            max_timeout=600,
            log=op.log,
        )
    assert refusing.accepted == attempts
    assert info.value.final, "nothing above the submit may retry it again"


@pytest.mark.parametrize("attempts", [1, 4])
def test_sync_hook_connect_makes_exactly_its_attempts(refusing: RefusingListener, attempts: int) -> None:
    hook = SSHHook(ssh_conn_id=CONN_ID, conn_retry_attempts=attempts, backoff=FAST)
    with pytest.raises(SSHConnectError, match=rf"after {attempts} attempt\(s\)"):
        hook.get_conn()
    assert refusing.accepted == attempts


@pytest.mark.parametrize("attempts", [1, 4])
def test_async_hook_connect_makes_exactly_its_attempts(refusing: RefusingListener, attempts: int) -> None:
    hook = SSHHookAsync(ssh_conn_id=CONN_ID, conn_retry_attempts=attempts, backoff=FAST)
    with pytest.raises(SSHConnectError, match=rf"after {attempts} attempt\(s\)"):
        asyncio.run(hook.get_conn())
    assert refusing.accepted == attempts


def test_connect_with_is_one_attempt_that_a_loop_may_retry(refusing: RefusingListener) -> None:
    hook = SSHHook(ssh_conn_id=CONN_ID)
    with pytest.raises(SSHConnectError) as info:
        hook.connect_with(hook.settings)
    assert refusing.accepted == 1
    assert not info.value.final
    assert "attempt(s)" not in str(info.value), "the loop's final error counts the attempts"


def test_nothing_listening_is_retried_and_named_as_well(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there now
    loopback_connection(monkeypatch, "ssh_nothing", port)
    with pytest.raises(SSHConnectError, match=r"after 2 attempt\(s\): ConnectionRefusedError"):
        SSHHook(ssh_conn_id="ssh_nothing", conn_retry_attempts=2, backoff=FAST).get_conn()


def test_connect_timeout_still_bounds_the_tcp_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    # A listening socket that never accepts: the SYN queue fills and connects hang.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        loopback_connection(monkeypatch, "ssh_hang", port, conn_timeout=1)
        started = time.monotonic()
        with pytest.raises(SSHConnectError):
            SSHHook(ssh_conn_id="ssh_hang", conn_retry_attempts=1).get_conn()
        assert time.monotonic() - started < 10
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --------------------------------------------------------------------------- cleanup attempts


def cleanup_error(logs: list[dict[str, object]]) -> str:
    errors = [str(entry["event"]) for entry in logs if entry.get("log_level") == "error"]
    assert len(errors) == 1, errors
    return errors[0]


def test_cleanup_log_counts_the_attempts_really_made(
    refusing: RefusingListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_hook = operator_module.job_hook

    def fast_hook(spec: JobSpec, attempts: int) -> SSHHook:
        hook = make_hook(spec, attempts)
        hook.backoff = FAST
        return hook

    monkeypatch.setattr(operator_module, "job_hook", fast_hook)
    op = SSHRemoteJobOperator(task_id="job", ssh_conn_id=CONN_ID, command="true", cleanup_retries=3)
    op._token = new_job_token()  # a cleanup always carries the job's token
    with capture_logs() as logs:
        op._finish_remote(op.job_spec(), PATHS, kill=False, remove=True)
    assert "cleanup failed after 3 attempt(s)" in cleanup_error(logs)
    assert refusing.accepted == 3


def test_cleanup_stopped_by_a_credential_error_says_one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def rejected(self: SSHHook, settings: object) -> None:
        calls.append(1)
        raise SSHAuthenticationError("Authentication to nobody@h:22 failed (denied). Not retried")

    monkeypatch.setattr(SSHHook, "connect_with", rejected)
    monkeypatch.setenv("AIRFLOW_CONN_SSH_DENIED", json.dumps({"conn_type": "ssh", "host": "h"}))
    op = SSHRemoteJobOperator(task_id="job", ssh_conn_id="ssh_denied", command="true", cleanup_retries=3)
    op._token = new_job_token()
    with capture_logs() as logs:
        op._finish_remote(op.job_spec(), PATHS, kill=True, remove=True)
    message = cleanup_error(logs)
    assert "kill and cleanup failed after 1 attempt(s)" in message
    assert "SSHAuthenticationError" in message
    assert calls == [1]


def test_a_kill_or_cleanup_without_the_job_token_touches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that does not know the token cannot prove the directory is its job's: no connection."""
    calls = []
    monkeypatch.setattr(SSHHook, "connect_with", lambda self, settings: calls.append(1))
    monkeypatch.setenv("AIRFLOW_CONN_SSH_NO_TOKEN", json.dumps({"conn_type": "ssh", "host": "h"}))
    op = SSHRemoteJobOperator(task_id="job", ssh_conn_id="ssh_no_token", command="true")
    with capture_logs() as logs:
        op._finish_remote(op.job_spec(), PATHS, kill=True, remove=True)
    message = cleanup_error(logs)
    assert "REMOTE JOB NOT KILLED" in message and "does not know the submit token" in message
    assert PATHS.job_dir in message
    assert calls == []
