"""The host session's asyncio loop with an injected connector and a local /bin/sh as the remote."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from unittest import mock

from ssh_jobs_provider.exceptions import SSHAuthenticationError
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.protocol.batch import build_probe_script
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import build_submit_script
from ssh_jobs_provider.retry import BackoffPolicy, RetryPolicy
from ssh_jobs_provider.triggers.host_session import HostSession, JobWatch
from ssh_jobs_provider.triggers.poll_scheduler import SUBMITS_PER_BATCH
from ssh_jobs_provider.triggers.watch import SUBMIT_TICK, next_tick
from support.protocol import run_sh

SETTINGS = SSHConnectionSettings.from_connection(None, host="remote.example", username="u")
FAST = RetryPolicy(3, BackoffPolicy(initial=0.01, maximum=0.02))


async def local_shell(conn: Any, script: str, timeout: float) -> tuple[int, bytes, bytes]:
    """The remote host is this machine's /bin/sh: the real scripts, no SSH."""
    process = await asyncio.create_subprocess_exec(
        "/bin/sh",
        "-s",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(script.encode()), timeout)
    return process.returncode or 0, out, err


class FakeConnection:
    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


def watch_job(tmp_path: Path, command: str, connector: Any) -> tuple[list[str], list[str], Any, int]:
    """Start a real job on the local shell, watch it through a session with ``connector``;
    return its log lines, warnings, outcome, and the connections the session opened."""
    token = new_job_token()
    paths = RemoteJobPaths("job", str(tmp_path / "jobs"))
    run_sh(build_submit_script(paths, command, {}, token))
    monitor = JobMonitor(paths, 0, 4096, started_at=0.0, token=token)
    watch = JobWatch(monitor=monitor, poll_interval=0.05, command_timeout=10.0, max_reconnect_attempts=3)

    async def scenario() -> tuple[list[str], list[str], Any, int]:
        session = HostSession(SETTINGS, connector, local_shell, FAST)
        session.watch(watch)
        lines: list[str] = []
        warnings: list[str] = []
        while True:
            delivery = await asyncio.wait_for(watch.next_delivery(), 30)
            lines += delivery.lines
            warnings += delivery.warnings
            if delivery.outcome is not None:
                session.unwatch(watch)
                return lines, warnings, delivery.outcome, session.connects

    return asyncio.run(scenario())


def test_an_error_no_retry_can_fix_ends_the_watch_at_once(tmp_path: Path) -> None:
    connects: list[int] = []

    async def refuse(settings: SSHConnectionSettings) -> Any:
        connects.append(1)
        raise SSHAuthenticationError("denied")

    lines, _, outcome, _ = watch_job(tmp_path, "sleep 5", refuse)

    assert (outcome.status, lines, len(connects)) == ("error", [], 1)
    assert "denied" in outcome.message


def test_a_dropped_connection_is_reopened_once_and_the_log_arrives_whole(tmp_path: Path) -> None:
    connects: list[int] = []

    async def flaky(settings: SSHConnectionSettings) -> Any:
        connects.append(1)
        if len(connects) == 1:
            raise OSError("connection reset")
        return FakeConnection()

    lines, warnings, outcome, opened = watch_job(tmp_path, "echo one\nsleep 0.3\necho two\n", flaky)

    assert (outcome.status, outcome.exit_code, lines) == ("success", 0, ["one", "two"])
    assert len(connects) == 2 and opened == 1
    assert len(warnings) == 1 and "connection reset" in warnings[0]


def test_the_first_batch_on_a_perl_host_carries_a_whole_fan_outs_submits(tmp_path: Path) -> None:
    """The probe that finds perl comes before the first batch is cut: no sh-sized first batch."""
    fan_out = SUBMITS_PER_BATCH + 150
    scripts: list[str] = []

    async def recording_shell(conn: Any, script: str, timeout: float) -> tuple[int, bytes, bytes]:
        scripts.append(script)
        return await local_shell(conn, script, timeout)

    async def connect(settings: SSHConnectionSettings) -> Any:
        return FakeConnection()

    watches = []
    for index in range(fan_out):
        token = new_job_token()
        paths = RemoteJobPaths(f"fan{index:04d}x", str(tmp_path / "jobs"))
        monitor = JobMonitor(paths, 0, 4096, started_at=0.0, token=token)
        files = job_files("true\n", {}, None, token)
        watches.append(JobWatch(monitor, 0.5, 60.0, 3, submit_files=files))

    async def scenario() -> None:
        session = HostSession(SETTINGS, connect, recording_shell, FAST)
        # Submits are due at the next whole second: register them all at one clock reading (the
        # loop's clock held while they register, which runs nothing else), so that a busy machine
        # does not spread them over two ticks.
        loop = asyncio.get_running_loop()
        await asyncio.sleep(next_tick(loop.time(), SUBMIT_TICK) - loop.time() + 0.01)
        with mock.patch.object(loop, "time", return_value=loop.time()):
            for watch in watches:
                session.watch(watch)
        for watch in watches:
            while (await asyncio.wait_for(watch.next_delivery(), 60)).submitted is None:
                pass
        for watch in watches:
            session.unwatch(watch)

    asyncio.run(scenario())

    probe, first_batch = scripts[0], scripts[1]
    assert probe == build_probe_script()
    assert sum(f"fan{index:04d}x" in first_batch for index in range(fan_out)) == fan_out
