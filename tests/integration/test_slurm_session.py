"""
The triggerer's host session watching Slurm jobs: one batch per tick for every job, one squeue
in it, each job's log streamed and its outcome taken from Slurm. The "remote host" is this
machine's ``/bin/sh`` with the test run's real Slurm cluster (no SSH: the SSH side is the same
as for detached jobs, and tests/integration/test_slurm_operator.py covers it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import Outcome
from ssh_jobs_provider.protocol.slurm import build_slurm_submit_script, parse_slurm_submit_output
from ssh_jobs_provider.protocol.slurm_state import SlurmMonitor
from ssh_jobs_provider.retry import BackoffPolicy, RetryPolicy
from ssh_jobs_provider.triggers.host_session import HostSession, JobWatch
from support.slurm import SlurmCallLog, SlurmCluster, run_sh_slurm

pytestmark = pytest.mark.slurm

SETTINGS = SSHConnectionSettings.from_connection(None, host="login.example", username="u")
FAST = RetryPolicy(3, BackoffPolicy(initial=0.01, maximum=0.02))


class LocalConnection:
    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


async def connect(settings: SSHConnectionSettings) -> Any:
    return LocalConnection()


def local_login_node(execs: list[str]) -> Any:
    """A runner that feeds each script to this machine's /bin/sh, recording each exec."""

    async def run(conn: Any, script: str, timeout: float) -> tuple[int, bytes, bytes]:
        execs.append(script)
        process = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-s",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(script.encode()), timeout)
        return process.returncode or 0, out, err

    return run


def test_one_session_watches_many_slurm_jobs_with_one_squeue_per_tick(
    slurm_cluster: SlurmCluster, slurm_calls: SlurmCallLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {**slurm_cluster.env, "PATH": slurm_calls.path}.items():
        monkeypatch.setenv(name, value)
    base = tmp_path / "jobs"
    commands = [
        "echo one; sleep 1; echo two",
        "echo failing; exit 4",
        "#!/bin/sh\nkill -TERM $$\n",
        "echo held",
    ]
    watches = []
    for index, command in enumerate(commands):
        token = new_job_token()
        paths = RemoteJobPaths(f"job{index}", str(base))
        options = ("--hold",) if command == "echo held" else ()
        script = build_slurm_submit_script(paths, command, {}, token, None, options)
        slurm_id = parse_slurm_submit_output(run_sh_slurm(slurm_cluster, script)).slurm_job_id
        monitor = SlurmMonitor(paths, 0, 4096, started_at=0.0, token=token)
        watch = JobWatch(monitor=monitor, poll_interval=0.2, command_timeout=20.0, max_reconnect_attempts=3)
        watches.append((watch, slurm_id))
    execs: list[str] = []

    async def scenario() -> list[tuple[list[str], list[str], Outcome]]:
        session = HostSession(SETTINGS, connect, local_login_node(execs), FAST)
        for watch, _ in watches:
            session.watch(watch)

        async def follow(watch: JobWatch) -> tuple[list[str], list[str], Outcome]:
            lines: list[str] = []
            notes: list[str] = []
            while True:
                delivery = await watch.next_delivery()
                lines += delivery.lines
                notes += delivery.progress
                if notes and "PENDING: JobHeldUser" in notes[-1] and len(notes) == 1:
                    held = watches[3][1]
                    await asyncio.to_thread(slurm_cluster.run, ["scontrol", "release", held])
                if delivery.outcome is not None:
                    session.unwatch(watch)
                    return lines, notes, delivery.outcome

        return await asyncio.wait_for(asyncio.gather(*(follow(w) for w, _ in watches)), 120)

    results = asyncio.run(scenario())
    (ok_lines, _, ok), (failed_lines, _, failed), (_, _, signalled), (held_lines, held_notes, held) = results
    assert (ok.status, ok.exit_code, ok_lines) == ("success", 0, ["one", "two"])
    assert (failed.status, failed.exit_code, failed_lines) == ("failed", 4, ["failing"])
    assert (signalled.status, signalled.exit_code) == ("failed", None)
    assert "SIGTERM (15)" in signalled.message
    assert (held.status, held_lines) == ("success", ["held"])
    assert held_notes[0].endswith("is PENDING: JobHeldUser")
    assert sum("PENDING: JobHeldUser" in note for note in held_notes) == 1
    # One exec per tick (plus the probe), and at most one squeue in each.
    squeues = slurm_calls.calls("squeue")
    assert 1 <= len(squeues) <= len(execs)
    assert max(slurm_calls.ids_per_squeue()) == len(commands)
    assert slurm_calls.calls("sacct") == []
