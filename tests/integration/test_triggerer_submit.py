"""
``submit_from="triggerer"`` against a real sshd: ``execute()`` opens no connection, the
triggers of a fan-out submit over the one connection of their host session, a re-created or
re-sent submit re-attaches, and every failure reads as in worker mode.

Each job appends its name to a ``launches`` file when it starts, so "started exactly once"
is counted by the host itself, not by our answers.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.sshd import generate_ed25519_key
from ssh_jobs_provider._compat import TaskDeferred
from ssh_jobs_provider.exceptions import FAN_OUT_HINT, RemoteJobError
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.triggers.host_session import HostSession
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import make_operator
from support.report import report
from support.runner import StandInTaskInstance, context_for, run_operator, submit
from support.sshd import use_connection
from support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HostSession, "linger", 0.2)


def counted_job(launches: Path, name: str, lines: int = 3, pause: float = 0.3) -> str:
    return (
        f"echo {name} >> {launches}\nfor i in $(seq 1 {lines}); do echo {name} line $i; sleep {pause}; done\n"
    )


class RecordingTrigger(SSHRemoteJobTrigger):
    """Keeps what it delivers to the task log: its lines and warnings, and the submit's answer."""

    def _emit(self, delivery: Any) -> None:
        self.lines = [*getattr(self, "lines", []), *delivery.lines]
        self.warnings = [*getattr(self, "warnings", []), *delivery.warnings]
        super()._emit(delivery)

    def _report_submit(self, status: Any) -> None:
        self.reattached = status.launched is False
        super()._report_submit(status)


def rebuilt(trigger: SSHRemoteJobTrigger) -> RecordingTrigger:
    """The trigger as the triggerer re-creates it from the metadata database (recording)."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert getattr(importlib.import_module(module), name) is SSHRemoteJobTrigger
    return RecordingTrigger(**kwargs)


def deferrals(ops: list[SSHRemoteJobOperator]) -> list[tuple[StandInTaskInstance, TaskDeferred]]:
    out = []
    for index, op in enumerate(ops):
        ti = StandInTaskInstance(map_index=index)
        out.append((ti, submit(op, ti)))
    return out


async def run_all(triggers: list[RecordingTrigger], timeout: float = 120) -> list[dict[str, Any]]:
    """Run the triggers in one loop, as the triggerer does; each one's single event."""

    async def one(trigger: RecordingTrigger) -> dict[str, Any]:
        events = [event async for event in trigger.run()]
        assert len(events) == 1
        return events[0].payload

    return await asyncio.wait_for(asyncio.gather(*(one(t) for t in triggers)), timeout)


def complete(
    op: SSHRemoteJobOperator, ti: StandInTaskInstance, payload: dict[str, Any]
) -> BaseException | None:
    try:
        op.execute_complete(context_for(ti), event=payload)  # type: ignore[arg-type]
    except Exception as error:
        return error
    return None


def test_a_fan_out_submitted_from_the_triggerer_costs_one_login(sshd, ssh_conn: str, tmp_path: Path) -> None:
    fan_out, launches = 40, tmp_path / "launches"
    base = str(tmp_path / "jobs")
    ops = [
        make_operator(
            ssh_conn,
            base,
            counted_job(launches, f"shard{i}"),
            submit_from="triggerer",
            cleanup="always",
            poll_interval=1.0,
        )
        for i in range(fan_out)
    ]
    before = sshd.counts()
    deferred = deferrals(ops)
    assert sshd.counts() == before, "execute() must not open any SSH connection"

    triggers = [rebuilt(d.trigger) for _, d in deferred]
    started = time.monotonic()
    payloads = asyncio.run(run_all(triggers))
    elapsed = time.monotonic() - started
    after = sshd.wait_for_counts(accepted=before["accepted"] + 1)
    errors = [complete(op, ti, p) for op, (ti, _), p in zip(ops, deferred, payloads, strict=True)]

    assert errors == [None] * fan_out
    for index, (trigger, payload) in enumerate(zip(triggers, payloads, strict=True)):
        assert trigger.lines == [f"shard{index} line {n}" for n in (1, 2, 3)]
        assert payload["launched"] is True and payload["pid"]
    assert sorted(launches.read_text().split()) == sorted(f"shard{i}" for i in range(fan_out))
    xcoms = [ti.xcom["ssh_remote_job"] for ti, _ in deferred]
    assert all(x["pid"] and x["remote_host"] == sshd.host for x in xcoms)
    handshakes = after["accepted"] - before["accepted"]
    execs = after["sessions"] - before["sessions"]
    report(f"triggerer submit x{fan_out}: handshakes={handshakes} execs={execs} in {elapsed:.1f}s")
    assert handshakes == 1
    # The probe, then one exec per tick (submits, polls and cleanups together), never one per job.
    assert execs <= elapsed / 1.0 + 4
    # No job directory is left; each removed job leaves its record in .ssh-jobs-ended/ (a line).
    assert [p.name for p in Path(base).iterdir()] == [".ssh-jobs-ended"]
    assert len(list((Path(base) / ".ssh-jobs-ended").iterdir())) == fan_out


def test_a_re_created_trigger_re_attaches_and_starts_no_second_job(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    op = make_operator(
        ssh_conn, str(tmp_path / "jobs"), counted_job(launches, "once", lines=6), submit_from="triggerer"
    )
    ti = StandInTaskInstance()
    trigger = submit(op, ti).trigger
    assert isinstance(trigger, SSHRemoteJobTrigger)

    async def first_life() -> None:
        # The triggerer stops (or dies) once the job runs: the trigger is cancelled.
        task = asyncio.ensure_future(rebuilt(trigger).run().__anext__())
        await asyncio.to_thread(wait_until, lambda: launches.exists(), 20, "the job to start")
        await asyncio.sleep(0.5)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(first_life())
    second = rebuilt(trigger)
    (payload,) = asyncio.run(run_all([second]))

    assert launches.read_text().split() == ["once"]
    assert payload["status"] == "success" and payload["launched"] is False
    assert second.reattached
    # It resumed where the first one had delivered to, and the job's output is whole.
    assert second.lines[-1] == "once line 6"
    assert complete(op, ti, payload) is None


def test_a_lost_submit_answer_is_sent_again_and_starts_one_job(sshd, proxy, tmp_path: Path) -> None:
    launches, base = tmp_path / "launches", tmp_path / "jobs"
    op = make_operator(
        "ssh_proxy", str(base), counted_job(launches, "lost"), submit_from="triggerer", command_timeout=5
    )
    ti = StandInTaskInstance()
    trigger = rebuilt(submit(op, ti).trigger)
    job_dir = Path(trigger.job_dir)

    def lose_the_answer_once_the_job_runs() -> None:
        # The batch carrying the submit reached the host: hold its answer back (the link's
        # latency gives the time to) until the job runs, its wrapper having claimed it; then
        # lose it. The re-send must then re-attach. Cut at once, the re-send could come before
        # the first wrapper claims the job and launch a second one, which leaves at once: one
        # job still, but answered "launched" either way.
        wait_until(job_dir.exists, 30, "the submit to reach the host", interval=0.002)
        proxy.blackhole(True)
        proxy.set_latency(0)
        try:
            wait_until(launches.exists, 30, "the job to start")
            proxy.cut_all()
        finally:
            proxy.blackhole(False)

    proxy.set_latency(0.15)
    cutter = threading.Thread(target=lose_the_answer_once_the_job_runs)
    cutter.start()
    try:
        (payload,) = asyncio.run(run_all([trigger]))
    finally:
        cutter.join()

    assert any("failed (1/" in w for w in trigger.warnings), trigger.warnings
    assert payload["status"] == "success" and payload["launched"] is False
    assert trigger.lines == [f"lost line {n}" for n in (1, 2, 3)]
    assert launches.read_text().split() == ["lost"]
    assert complete(op, ti, payload) is None


def test_a_refused_submit_reads_as_in_worker_mode_and_leaves_nothing(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o775)
    with pytest.raises(RemoteJobError) as raised:
        run_operator(make_operator(ssh_conn, str(shared), "echo never\n"))  # refused in execute()
    worker = str(raised.value)

    triggerer = run_operator(
        make_operator(ssh_conn, str(shared), "echo never\n", submit_from="triggerer")
    ).error

    assert isinstance(triggerer, RemoteJobError)
    assert "StrictModes" in worker and "chmod go-w" in worker
    assert worker in str(triggerer)
    assert list(shared.iterdir()) == []


def test_a_host_that_refuses_every_connection_fails_the_task_without_a_job(
    sshd, proxy, tmp_path: Path
) -> None:
    base = tmp_path / "jobs"
    op = make_operator(
        "ssh_proxy", str(base), "echo never\n", submit_from="triggerer", max_reconnect_attempts=1
    )
    proxy.refuse_all(True)

    result = run_operator(op)

    assert isinstance(result.error, RemoteJobError)
    assert "was not started" in str(result.error) and "No job was started" in str(result.error)
    assert FAN_OUT_HINT in str(result.error)
    assert not base.exists()


def test_bad_credentials_fail_at_once_with_the_fix_and_without_a_job(
    sshd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger_ed25519"
    generate_ed25519_key(stranger)
    conn = use_connection(monkeypatch, sshd, "ssh_stranger", key_file=str(stranger))
    base = tmp_path / "jobs"

    result = run_operator(make_operator(conn, str(base), "echo never\n", submit_from="triggerer"))

    assert isinstance(result.error, RemoteJobError), result.error
    assert "was not started" in str(result.error)
    assert "key_file" in str(result.error) or "login" in str(result.error)
    assert not base.exists()
    assert sshd.counts()["accepted"] == 0
