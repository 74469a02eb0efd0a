"""
``durable=True`` against a real sshd: the next try of a task instance takes over the job of an
earlier one instead of starting another, in the cases the retries of a real deployment meet.

The task instance and its state store are stand-ins (the real ones are exercised by the e2e
tests); the host, its jobs, the records of removed jobs and every script are real. Each job
appends its name to a ``launches`` file when it starts: the host itself counts the runs.
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import pytest

from ssh_jobs_provider._compat import AirflowSkipException
from ssh_jobs_provider.protocol.reattach import STATE_KEY
from ssh_jobs_provider.triggers.host_session import HostSession
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import make_operator, wait_until
from support.runner import (
    StandInStateStore,
    StandInTaskInstance,
    context_for,
    run_operator,
    run_to_its_event,
    submit,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RETRIES = 2


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HostSession, "linger", 0.2)


def job(launches: Path, lines: int = 3, pause: float = 0.3, exit_code: int = 0) -> str:
    return (
        f"echo run >> {launches}\n"
        f"for i in $(seq 1 {lines}); do echo line $i; sleep {pause}; done\n"
        f"exit {exit_code}\n"
    )


def first_try(store: bool = True) -> StandInTaskInstance:
    return StandInTaskInstance(max_tries=RETRIES, state_store=StandInStateStore() if store else None)


def runs(launches: Path) -> int:
    return len(launches.read_text().split()) if launches.exists() else 0


def rebuilt(trigger: SSHRemoteJobTrigger) -> SSHRemoteJobTrigger:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


@pytest.mark.parametrize("store", [True, False], ids=["task-state-store", "by-name"])
def test_a_worker_that_died_before_deferring_leaves_a_job_the_retry_re_attaches(
    sshd, ssh_conn: str, tmp_path: Path, store: bool
) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=8, pause=0.4)
    ti = first_try(store)
    submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    # The worker died here: its trigger never ran. The job runs on.
    wait_until(lambda: runs(launches) == 1, 10, "the first try's job to start")

    retry = run_operator(
        make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try()
    )

    assert retry.outcome == "success", retry.error
    assert runs(launches) == 1
    # The new try's log holds the job's whole output, from its first line.
    assert [line for line in retry.trigger_lines if line.startswith("line ")] == [
        f"line {n}" for n in range(1, 9)
    ]
    assert retry.event is not None and "_t1_" in retry.event["job_id"]
    assert retry.ti.xcom["ssh_remote_job"]["pid"]


def test_a_retry_after_the_job_succeeded_and_was_removed_does_not_run_it_again(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    command = job(launches)
    ti = first_try()
    op = make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES, cleanup="always")
    deferred = submit(op, ti)
    # The trigger runs the job to its end and removes its directory, but the try is failed
    # before its execute_complete runs (as the scheduler race does): nothing recorded the outcome.
    _, payload = asyncio.run(run_to_its_event(rebuilt(deferred.trigger)))
    assert payload["status"] == "success" and payload["cleaned_up"] is True
    assert "outcome" not in ti.state_store.get(STATE_KEY)  # type: ignore[union-attr]

    retry = run_operator(
        make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try()
    )

    assert retry.outcome == "success", retry.error
    assert runs(launches) == 1
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == [".ssh-jobs-ended"]


def test_a_retry_after_a_recorded_success_needs_no_connection(sshd, ssh_conn: str, tmp_path: Path) -> None:
    launches = tmp_path / "launches"
    command = job(launches, exit_code=99)
    ti = first_try()
    kwargs = {"retries": RETRIES, "skip_on_exit_code": 99}
    first = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, **kwargs), ti)
    assert first.outcome == "skipped"
    before = sshd.counts()["accepted"]

    op = make_operator(ssh_conn, str(tmp_path / "jobs"), command, **kwargs)
    with pytest.raises(AirflowSkipException):
        op.execute(context_for(ti.next_try()))  # type: ignore[arg-type]
    assert runs(launches) == 1
    assert sshd.counts()["accepted"] == before


def test_a_failed_job_is_replaced_by_a_fresh_one(sshd, ssh_conn: str, tmp_path: Path) -> None:
    launches, mark = tmp_path / "launches", tmp_path / "failed-once"
    command = f"echo run >> {launches}\nif [ ! -e {mark} ]; then touch {mark}; exit 3; fi\necho fine\n"
    ti = first_try()
    first = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    assert first.outcome == "failed"

    retry = run_operator(
        make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try()
    )

    assert retry.outcome == "success", retry.error
    assert runs(launches) == 2
    assert retry.event is not None and "_t2_" in retry.event["job_id"]


def test_a_cleared_task_starts_a_fresh_job_even_beside_a_running_one(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=4, pause=0.3)
    ti = first_try()
    submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    wait_until(lambda: runs(launches) == 1, 10, "the first job to start")

    # Cleared: Airflow sets max_tries to try_number + retries, and the next try starts a cycle.
    cleared = ti.next_try()
    cleared.max_tries = ti.try_number + RETRIES
    again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), cleared)

    assert again.outcome == "success", again.error
    assert runs(launches) == 2
    assert again.event is not None and "_t2_" in again.event["job_id"]


def test_without_a_store_a_job_that_succeeded_is_run_again(sshd, ssh_conn: str, tmp_path: Path) -> None:
    """Airflow 3.1/3.2: the fallback takes over running jobs only (a documented limit)."""
    launches = tmp_path / "launches"
    command = job(launches, lines=1, pause=0)
    ti = first_try(store=False)
    first = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    assert first.outcome == "success"

    retry = run_operator(
        make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try()
    )

    assert retry.outcome == "success"
    assert runs(launches) == 2


def test_durable_false_starts_a_job_per_try(sshd, ssh_conn: str, tmp_path: Path) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=6, pause=0.3)
    ti = first_try()
    kwargs = {"retries": RETRIES, "durable": False}
    submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, **kwargs), ti)
    wait_until(lambda: runs(launches) == 1, 10, "the first job to start")

    retry = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, **kwargs), ti.next_try())

    assert retry.outcome == "success"
    assert runs(launches) == 2
    assert ti.state_store is not None and ti.state_store.values == {}


def test_a_triggerer_submit_re_sent_after_its_job_was_removed_does_not_run_it_again(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    op = make_operator(
        ssh_conn, str(tmp_path / "jobs"), job(launches), submit_from="triggerer", cleanup="always"
    )
    ti = first_try()
    trigger = submit(op, ti).trigger
    _, first = asyncio.run(run_to_its_event(rebuilt(trigger)))
    assert first["status"] == "success" and first["cleaned_up"] is True

    # The triggerer died before the event reached the database: the trigger is created again.
    _, again = asyncio.run(run_to_its_event(rebuilt(trigger)))

    assert runs(launches) == 1
    assert again["status"] == "success" and again["exit_code"] == 0
    assert "was not run again" in again["message"]


def test_a_lost_watch_leaves_the_job_running_for_the_retry_to_re_attach(sshd, proxy, tmp_path: Path) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=10, pause=0.4)
    kwargs = {"retries": RETRIES, "max_reconnect_attempts": 0, "poll_interval": 0.5}
    ti = first_try()
    op = make_operator("ssh_proxy", str(tmp_path / "jobs"), command, **kwargs)
    trigger = rebuilt(submit(op, ti).trigger)

    async def watch_until_cut() -> dict:
        task = asyncio.ensure_future(run_to_its_event(trigger))
        await asyncio.sleep(1.0)
        proxy.refuse_all(True)
        proxy.cut_all()
        return (await task)[1]

    payload = asyncio.run(watch_until_cut())
    assert payload["watch_lost"] is True
    with pytest.raises(Exception, match="left running: the next try re-attaches"):
        op.execute_complete(context_for(ti), event=payload)  # type: ignore[arg-type]
    proxy.refuse_all(False)

    retry = run_operator(make_operator("ssh_proxy", str(tmp_path / "jobs"), command, **kwargs), ti.next_try())

    assert retry.outcome == "success", retry.error
    assert runs(launches) == 1
    assert [line for line in retry.trigger_lines if line.startswith("line ")] == [
        f"line {n}" for n in range(1, 11)
    ]
