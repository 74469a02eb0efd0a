"""
Many triggers in one event loop (as in a triggerer) against one real sshd: they share one
connection and one exec per tick. Counts come from the sshd log and the socket table.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

from ssh_jobs_provider.operators.remote_steps import handed_over_lines
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.triggers.host_session import HostSession
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import submit_jobs, trigger_for
from support.logs import capture_logs
from support.report import report
from support.runner import collect_events, remote_lines, run_triggers, watch_async, while_running
from support.sshd import use_connection

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A trigger of these tests: one batch polls up to 50 jobs, so a command may take longer.
shared_trigger = functools.partial(trigger_for, command_timeout=20.0)


def ticking_job(index: int, lines: int, pause: float) -> str:
    return f"for i in $(seq 1 {lines}); do echo job{index} line $i; sleep {pause}; done\n"


@contextmanager
def socket_sampler(port: int) -> Iterator[list[int]]:
    """Sample established TCP connections to ``port`` every 0.1 s (the socket table, not our counters)."""
    samples: list[int] = []
    stop = threading.Event()

    def established() -> int:
        connections = psutil.net_connections(kind="tcp")
        return sum(
            1 for c in connections if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )

    # Start from a quiet table: the submit connection may take a moment to be torn down.
    deadline = time.monotonic() + 5
    while established() and time.monotonic() < deadline:
        time.sleep(0.05)

    def sample() -> None:
        while not stop.is_set():
            samples.append(established())
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)


def job_log(paths: RemoteJobPaths) -> list[str]:
    with open(paths.log_file, encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HostSession, "linger", 0.2)


@pytest.mark.load
def test_fifty_triggers_share_one_connection_and_one_exec_per_tick(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    jobs = 50
    all_paths = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(i, 16, 0.5) for i in range(jobs)])
    triggers = [shared_trigger(ssh_conn, p, poll_interval=1.0, cleanup_policy="always") for p in all_paths]
    before = sshd.counts()
    started = time.monotonic()
    with socket_sampler(sshd.port) as samples:
        events = asyncio.run(run_triggers(triggers))
    elapsed = time.monotonic() - started
    after = sshd.wait_for_counts(accepted=before["accepted"] + 1)

    assert all(e["status"] == "success" and e["cleaned_up"] is True for e in events), events[:3]
    handshakes = after["accepted"] - before["accepted"]
    execs = after["sessions"] - before["sessions"]
    ticks = math.ceil(elapsed / 1.0)
    report(
        f"{jobs} triggers, one loop: handshakes={handshakes} peak_tcp={max(samples)} "
        f"execs={execs} over {elapsed:.1f}s (~{ticks} ticks of 1s)"
    )
    assert handshakes == 1
    assert max(samples) == 1
    # Per tick: one poll exec for all 50 jobs, plus at most one batch removing the jobs that
    # ended in it; never one exec per job.
    assert execs <= 2 * ticks + 2
    assert execs < jobs
    assert all(not __import__("os").path.exists(p.job_dir) for p in all_paths)


class RecordingTrigger(SSHRemoteJobTrigger):
    """Keeps the lines it emits, so that each trigger's own output can be checked."""

    def _emit(self, delivery: Any) -> None:
        self.emitted = [*getattr(self, "emitted", []), *delivery.lines]
        super()._emit(delivery)


def test_every_trigger_gets_exactly_its_own_lines(sshd, ssh_conn: str, remote_base_dir: str) -> None:
    all_paths = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(i, 5, 0.3) for i in range(12)])
    triggers = [
        RecordingTrigger(**shared_trigger(ssh_conn, p, poll_interval=0.5).serialize()[1]) for p in all_paths
    ]
    events = asyncio.run(run_triggers(triggers))

    for index, (trigger, event) in enumerate(zip(triggers, events, strict=True)):
        assert event["status"] == "success"
        assert trigger.emitted == [f"job{index} line {i}" for i in range(1, 6)]


@pytest.mark.load
def test_sshd_restart_with_fifty_triggers_reconnects_once_for_all(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    jobs = 50
    all_paths = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(i, 14, 0.5) for i in range(jobs)])
    triggers = [shared_trigger(ssh_conn, p, poll_interval=1.0, max_reconnect_attempts=6) for p in all_paths]
    before = sshd.counts()

    def outage() -> None:
        time.sleep(2.5)
        sshd.stop()
        time.sleep(2.0)
        sshd.start()

    events = while_running(outage, lambda: asyncio.run(run_triggers(triggers)))
    after = sshd.counts()

    assert all(e["status"] == "success" for e in events), [e for e in events if e["status"] != "success"][:2]
    handshakes = after["accepted"] - before["accepted"]
    report(f"sshd restart under {jobs} triggers: handshakes={handshakes} (one reconnect wave, no herd)")
    assert 2 <= handshakes <= 3, (
        "one connection before the restart, one (rarely two) after: not one per trigger"
    )
    assert after["connections"] - before["connections"] < 10


def test_max_sessions_2_with_twenty_triggers(sshd_factory, monkeypatch, remote_base_dir: str) -> None:
    server = sshd_factory(max_sessions=2)
    use_connection(monkeypatch, server, "ssh_two")
    all_paths = submit_jobs("ssh_two", remote_base_dir, [ticking_job(i, 4, 0.3) for i in range(20)])
    before = server.counts()
    events = asyncio.run(run_triggers([shared_trigger("ssh_two", p, poll_interval=0.5) for p in all_paths]))
    after = server.counts()

    assert all(e["status"] == "success" for e in events)
    assert after["accepted"] - before["accepted"] == 1
    for paths in all_paths:
        assert len(job_log(paths)) == 4


def test_a_cancelled_trigger_leaves_the_shared_connection_healthy(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    all_paths = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(i, 8, 0.3) for i in range(6)])
    before = sshd.counts()

    async def main() -> list[Any]:
        triggers = [shared_trigger(ssh_conn, p, poll_interval=0.3) for p in all_paths]
        events: list[list[Any]] = [[] for _ in triggers]
        tasks = [asyncio.create_task(collect_events(t, e)) for t, e in zip(triggers, events, strict=True)]
        await asyncio.sleep(1.0)
        tasks[0].cancel()  # mid-poll: the task was cleared, or timed out
        await asyncio.gather(*tasks, return_exceptions=True)
        await triggers[0].cleanup()
        return [found[-1].payload if found else None for found in events]

    events = asyncio.run(main())
    after = sshd.counts()
    assert events[0] is None
    assert all(e is not None and e["status"] == "success" for e in events[1:])
    assert after["accepted"] - before["accepted"] == 1


def test_recreated_trigger_resumes_the_log_at_the_right_byte(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    """A triggerer restart: the trigger is cancelled, then re-created from its serialized form."""
    (paths,) = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(7, 20, 0.15)])
    first = shared_trigger(ssh_conn, paths, poll_interval=0.3)
    _, kwargs = first.serialize()

    async def first_half() -> list[str]:
        with capture_logs() as logs:
            task = asyncio.create_task(collect_events(first, []))
            await asyncio.sleep(1.2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await first.cleanup()
        return remote_lines(logs)

    before_restart = asyncio.run(first_half())
    after_restart, event = asyncio.run(watch_async(SSHRemoteJobTrigger(**kwargs)))

    expected = [f"job7 line {i}" for i in range(1, 21)]
    assert 0 < len(before_restart) < 20
    assert before_restart + after_restart == expected, "no line repeated or lost across the restart"
    assert event["status"] == "success"


async def run_like_the_triggerer(trigger: SSHRemoteJobTrigger) -> None:
    """One trigger as Airflow's triggerer runs it: to its end or cancellation, then ``cleanup()``."""
    try:
        await collect_events(trigger, [])
    finally:
        await trigger.cleanup()


def test_a_triggerer_shutting_down_records_every_triggers_offset_and_each_resumes_exactly(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    """
    A graceful triggerer stop ends its event loop: ``asyncio.run`` cancels every task at once,
    the shared session's among them, while each leaving trigger still has its offset to record.
    """
    jobs = submit_jobs(ssh_conn, remote_base_dir, [ticking_job(i, 30, 0.1) for i in range(5)])
    first = [shared_trigger(ssh_conn, paths, poll_interval=0.3) for paths in jobs]
    kwargs = [trigger.serialize()[1] for trigger in first]

    async def until_the_loop_ends() -> None:
        for trigger in first:
            asyncio.create_task(run_like_the_triggerer(trigger))  # noqa: RUF006 (cancelled by asyncio.run)
        await asyncio.sleep(1.5)
        # Returning ends asyncio.run: it cancels the triggers and the session in one pass.

    with capture_logs() as logs:
        asyncio.run(until_the_loop_ends())
    before = lines_of_each(remote_lines(logs), 5)
    with capture_logs() as logs:
        payloads = asyncio.run(run_triggers([SSHRemoteJobTrigger(**k) for k in kwargs]))
    after = lines_of_each(remote_lines(logs) + [line for p in payloads for line in handed_over_lines(p)], 5)

    for index in range(5):
        expected = [f"job{index} line {n}" for n in range(1, 31)]
        assert 0 < len(before[index]) < 30, before[index]
        assert before[index] + after[index] == expected, f"job{index}: repeated or lost across the stop"


def lines_of_each(lines: list[str], jobs: int) -> list[list[str]]:
    """The lines of ``job0`` to ``job<jobs-1>``, each job's in the order given."""
    return [[line for line in lines if line.startswith(f"job{index} ")] for index in range(jobs)]
