"""
``durable=True`` against a real sshd: the next try of a task instance takes over the job of an
earlier one instead of starting another, in the cases the retries of a real deployment meet,
and only a job it can prove to be its own, with the submit token the task state store kept.

The task instance and its state store are stand-ins (the real ones are exercised by the e2e
tests); the host, its jobs, the records of removed jobs and every script are real. Each job
appends its name to a ``launches`` file when it starts: the host itself counts the runs. A
"foreign" job is one that another deployment with the same DAG, task and run ids (a staging
and a production instance sharing a host and a base directory) submitted under the same name,
with a token of its own.
"""

from __future__ import annotations

import asyncio
import importlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider._compat import AirflowSkipException, TaskDeferralTimeout
from ssh_jobs_provider.operators.job_records import job_paths, remember
from ssh_jobs_provider.protocol.reattach import STATE_KEY, JobRecord, records_of
from ssh_jobs_provider.triggers.host_session import HostSession
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import make_operator
from support.logs import capture_logs
from support.runner import (
    StandInStateStore,
    StandInTaskInstance,
    collect_events,
    context_for,
    remote_lines,
    run_operator,
    run_to_its_event,
    submit,
    watch,
)
from support.waiting import wait_until

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


def pid_of(job_dir: str | Path) -> int:
    return int(Path(job_dir, "pid").read_text())


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie only waits to be reaped)."""
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout
    return bool(state.strip()) and not state.strip().startswith("Z")


def wait_for_the_wrapper_to_exit(job_dir: str | Path) -> None:
    """
    Wait until the job's wrapper is gone, not only its exit record written: the wrapper may
    still be writing in its directory (the record's fallback copy on a full disk, a file of an
    older wrapper), so removing the directory sooner can race it.
    """
    wait_until(
        lambda: Path(job_dir, "exit_code").exists() and not alive(pid_of(job_dir)),
        10,
        "the job's wrapper to exit",
    )


def messages(logs: list[dict[str, Any]], level: str) -> str:
    return "\n".join(str(entry["event"]) for entry in logs if entry.get("log_level") == level)


def foreign_job(ssh_conn: str, base_dir: str, command: str, try_number: int) -> Path:
    """Another deployment's job of the same ids, under the name of try ``try_number``: its own token."""
    theirs = StandInTaskInstance(try_number=try_number, max_tries=RETRIES)
    deferred = submit(make_operator(ssh_conn, base_dir, command, retries=RETRIES, durable=False), theirs)
    job_dir = Path(deferred.trigger.job_dir)
    wait_until(lambda: (job_dir / "pid").exists(), 10, "the foreign job to start")
    return job_dir


def test_a_worker_that_died_before_deferring_leaves_a_job_the_retry_re_attaches(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=8, pause=0.4)
    ti = first_try()
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
    # Each try still keeps its job's token, for a worker that resumes it after a deferral timeout.
    assert ti.state_store is not None and sorted(records_of(ti.state_store.get(STATE_KEY))) == [1, 2]


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


async def watch_until_cut(trigger: SSHRemoteJobTrigger, proxy: Any) -> dict[str, Any]:
    """Watch for a second, then cut every connection through ``proxy`` and keep it refusing:
    the trigger's event (a lost watch)."""
    task = asyncio.ensure_future(run_to_its_event(trigger))
    await asyncio.sleep(1.0)
    proxy.refuse_all(True)
    proxy.cut_all()
    return (await task)[1]


def test_a_lost_watch_leaves_the_job_running_for_the_retry_to_re_attach(sshd, proxy, tmp_path: Path) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=10, pause=0.4)
    kwargs = {"retries": RETRIES, "max_reconnect_attempts": 0, "poll_interval": 0.5}
    ti = first_try()
    op = make_operator("ssh_proxy", str(tmp_path / "jobs"), command, **kwargs)
    trigger = rebuilt(submit(op, ti).trigger)

    payload = asyncio.run(watch_until_cut(trigger, proxy))
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


def test_without_a_store_a_lost_watch_kills_the_job_the_retry_could_not_prove(
    sshd, proxy, tmp_path: Path
) -> None:
    """Airflow 3.1/3.2: the retry would start a job of its own, so the lost one must not run on."""
    launches = tmp_path / "launches"
    kwargs = {"retries": RETRIES, "max_reconnect_attempts": 0, "poll_interval": 0.5}
    ti = first_try(store=False)
    op = make_operator("ssh_proxy", str(tmp_path / "jobs"), job(launches, lines=60, pause=0.2), **kwargs)
    deferred = submit(op, ti)
    trigger = rebuilt(deferred.trigger)

    payload = asyncio.run(watch_until_cut(trigger, proxy))
    assert payload["watch_lost"] is True
    proxy.refuse_all(False)
    resumed = make_operator("ssh_proxy", str(tmp_path / "jobs"), "true", **kwargs)
    with pytest.raises(Exception, match="failed: ") as failed:
        resumed.execute_complete(context_for(ti), event=payload, **deferred.kwargs)  # type: ignore[arg-type]

    assert "left running" not in str(failed.value)
    exit_code = Path(trigger.exit_code_file)
    wait_until(exit_code.exists, 15, "the job to be killed")
    assert exit_code.read_text().split()[0] == "143"


# --------------------------------------------------------------------------- proven jobs only


def test_without_a_store_a_retry_leaves_a_running_earlier_job_alone_and_says_why(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """Airflow 3.1/3.2 keep no token: the job of try 1's name may be another deployment's."""
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    theirs = foreign_job(ssh_conn, base, job(launches, lines=30, pause=0.2), try_number=1)
    # This deployment's try 1 was refused (the directory is not its), and its retry comes.
    ours = first_try(store=False).next_try()

    with capture_logs() as logs:
        retry = run_operator(
            make_operator(ssh_conn, base, job(launches), retries=RETRIES, cleanup="always"), ours
        )

    assert retry.outcome == "success", retry.error
    assert retry.event is not None and "_t2_" in retry.event["job_id"]
    assert runs(launches) == 2  # theirs, and this try's own
    warning = messages(logs, "warning")
    assert str(theirs) in warning and "cannot prove" in warning and "no task state store" in warning
    # Neither watched to its end, killed nor removed.
    assert alive(pid_of(theirs)) and not (theirs / "exit_code").exists()


def test_a_retry_does_not_adopt_a_same_named_job_whose_token_the_store_does_not_hold(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """Airflow 3.3, try 3: try 2 left no record (its store write failed), and its name runs another's job."""
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    ti = first_try()
    first = run_operator(make_operator(ssh_conn, base, job(launches, exit_code=3), retries=RETRIES), ti)
    assert first.outcome == "failed"
    theirs = foreign_job(ssh_conn, base, job(launches, lines=30, pause=0.2), try_number=2)
    third = ti.next_try().next_try()

    with capture_logs() as logs:
        retry = run_operator(
            make_operator(ssh_conn, base, job(launches), retries=RETRIES, cleanup="always"), third
        )

    assert retry.outcome == "success", retry.error
    assert retry.event is not None and "_t3_" in retry.event["job_id"]
    assert runs(launches) == 3
    warning = messages(logs, "warning")
    assert str(theirs) in warning and "holds no submit token for it" in warning
    assert alive(pid_of(theirs)) and not (theirs / "exit_code").exists()


def test_a_recorded_job_whose_directory_now_carries_another_token_is_not_adopted(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """Try 1's job is gone and another deployment's job of the same name runs there: not try 1's."""
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    ti = first_try()
    submit(
        make_operator(ssh_conn, base, job(launches, lines=1, pause=0), retries=RETRIES, cleanup="always"), ti
    )
    mine = job_paths(ti, base)
    wait_for_the_wrapper_to_exit(mine.job_dir)
    subprocess.run(["rm", "-rf", mine.job_dir], check=True)
    theirs = foreign_job(ssh_conn, base, job(launches, lines=30, pause=0.2), try_number=1)

    with capture_logs() as logs:
        retry = run_operator(make_operator(ssh_conn, base, job(launches), retries=RETRIES), ti.next_try())

    assert retry.outcome == "success", retry.error
    assert retry.event is not None and "_t2_" in retry.event["job_id"]
    assert "carries another submit's token" in messages(logs, "info")
    assert alive(pid_of(theirs))


@pytest.mark.parametrize("taken", [1, 2], ids=["try-1-s-job", "try-2-s-job"])
def test_try_3_re_attaches_to_an_earlier_try_s_job_with_the_token_the_store_kept(
    sshd, ssh_conn: str, tmp_path: Path, taken: int
) -> None:
    """
    Every try's token is kept, not only the latest try's: the job of try ``taken`` still runs,
    the other earlier try's job failed, and try 3 watches, and would kill, the running one with
    its own token.
    """
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    running, failing = job(launches, lines=8, pause=0.3), job(launches, lines=1, pause=0, exit_code=3)
    ti = first_try()
    tries = [ti, ti.next_try()]
    for number, current in enumerate(tries, 1):
        if number == taken:  # its worker died before deferring: the job runs on
            submit(make_operator(ssh_conn, base, running, retries=RETRIES, durable=False), current)
        else:
            op = make_operator(ssh_conn, base, failing, retries=RETRIES, durable=False)
            assert run_operator(op, current).outcome == "failed"
    records = records_of(ti.state_store.get(STATE_KEY))  # type: ignore[union-attr]
    assert sorted(records) == [1, 2]

    deferred = submit(make_operator(ssh_conn, base, running, retries=RETRIES), tries[1].next_try())

    trigger = deferred.trigger
    assert trigger.job_id == records[taken].job_id
    assert trigger.job_token == records[taken].token  # proven, and carried to every kill and cleanup
    # The token (and the pid the host reported, for the final XCom) travel back to execute_complete.
    assert deferred.kwargs is not None and deferred.kwargs["job_token"] == records[taken].token
    assert isinstance(deferred.kwargs["job_pid"], int)
    _, payload = asyncio.run(run_to_its_event(rebuilt(trigger)))
    assert payload["status"] == "success" and payload["exit_code"] == 0
    assert runs(launches) == 2


def test_a_timeout_kills_only_the_job_this_try_took_over_with_its_token(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """Try 2 took over try 1's job; another deployment's job runs under try 2's own name."""
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    command = job(launches, lines=60, pause=0.2)
    ti = first_try()
    submit(make_operator(ssh_conn, base, command, retries=RETRIES), ti)
    first_dir = Path(job_paths(ti, base).job_dir)
    wait_until((first_dir / "pid").exists, 10, "try 1's job to start")
    mine = pid_of(first_dir)
    theirs = foreign_job(ssh_conn, base, command, try_number=2)
    second = ti.next_try()
    deferred = submit(make_operator(ssh_conn, base, command, retries=RETRIES, timeout=1), second)
    assert deferred.trigger.job_id == job_paths(ti, base).job_id

    # What a worker runs when the scheduler times the deferral out: a fresh operator, no event.
    fresh = make_operator(ssh_conn, base, command, retries=RETRIES, timeout=1)
    with pytest.raises(TaskDeferralTimeout):
        fresh.resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(second))

    wait_until(lambda: not alive(mine), 15, "try 1's job to be killed")
    assert alive(pid_of(theirs)), "another deployment's job under this try's name was killed"


@pytest.mark.parametrize("source", ["deferral", "store"])
def test_a_resumed_worker_kills_with_the_token_and_leaves_a_replaced_directory_alone(
    sshd, ssh_conn: str, tmp_path: Path, source: str
) -> None:
    """
    The job's directory was replaced by another deployment's of the same name: the kill, with
    the token the deferral carried back (or, from an older deferral, the store's), refuses it.
    """
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    ti = first_try()
    deferred = submit(make_operator(ssh_conn, base, job(launches, lines=1, pause=0), retries=RETRIES), ti)
    mine = job_paths(ti, base)
    wait_for_the_wrapper_to_exit(mine.job_dir)
    subprocess.run(["rm", "-rf", mine.job_dir], check=True)
    theirs = foreign_job(ssh_conn, base, job(launches, lines=60, pause=0.2), try_number=1)
    event = {
        "job_id": mine.job_id,
        "job_dir": mine.job_dir,
        "status": "error",
        "done": True,
        "exit_code": None,
        "message": "Lost the SSH connection",
    }

    # A worker that resumes the try: a fresh operator, the event and the deferral's kwargs.
    fresh = make_operator(ssh_conn, base, "true", cleanup="always")
    kwargs = deferred.kwargs if source == "deferral" else {}
    with capture_logs() as logs, pytest.raises(Exception, match="Lost the SSH connection"):
        fresh.execute_complete(context_for(ti), event=event, **kwargs)  # type: ignore[arg-type]

    assert "is not this task instance's" in messages(logs, "error")
    assert alive(pid_of(theirs)) and theirs.is_dir()


def test_without_a_store_a_timeout_touches_nothing_it_cannot_prove(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """Airflow 3.1/3.2: a worker resumed by a deferral timeout does not know the token."""
    launches, base = tmp_path / "launches", str(tmp_path / "jobs")
    ti = first_try(store=False)
    deferred = submit(make_operator(ssh_conn, base, job(launches, lines=60, pause=0.2), timeout=1), ti)
    pid = pid_of(deferred.trigger.job_dir)

    fresh = make_operator(ssh_conn, base, "true", timeout=1)
    with capture_logs() as logs, pytest.raises(TaskDeferralTimeout):
        fresh.resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(ti))

    error = messages(logs, "error")
    assert "REMOTE JOB NOT KILLED" in error and deferred.trigger.job_dir in error
    assert alive(pid)


# --------------------------------------------------------------------------- execute() run again in one try
# Airflow runs a task from the start again, with the same try number, when its resumption fails
# early (seen in the e2e: "Dag not found during start up" after a slow DAG import, then
# UP_FOR_RESCHEDULE, then execute() once more). Whatever ``durable`` says, one try runs one job.


@pytest.mark.parametrize("durable", [True, False])
def test_execute_run_again_after_the_job_succeeded_and_was_removed_does_not_run_it_again(
    sshd, ssh_conn: str, tmp_path: Path, durable: bool
) -> None:
    launches = tmp_path / "launches"
    ti = first_try()
    op = make_operator(ssh_conn, str(tmp_path / "jobs"), job(launches), cleanup="always", durable=durable)
    deferred = submit(op, ti)
    _, payload = asyncio.run(run_to_its_event(rebuilt(deferred.trigger)))
    assert payload["status"] == "success" and payload["cleaned_up"] is True

    again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), job(launches), durable=durable), ti)

    assert again.outcome == "success", again.error
    assert runs(launches) == 1


@pytest.mark.parametrize("durable", [True, False])
def test_execute_run_again_while_the_job_runs_watches_that_job(
    sshd, ssh_conn: str, tmp_path: Path, durable: bool
) -> None:
    launches = tmp_path / "launches"
    command = job(launches, lines=6, pause=0.4)
    ti = first_try()
    first = submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, durable=durable), ti)
    wait_until(lambda: runs(launches) == 1, 10, "the job to start")

    again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command, durable=durable), ti)

    assert again.outcome == "success", again.error
    assert runs(launches) == 1
    assert again.event is not None and again.event["job_dir"] == first.trigger.job_dir
    assert [line for line in again.trigger_lines if line.startswith("line ")] == [
        f"line {n}" for n in range(1, 7)
    ]


def test_execute_run_again_after_the_job_failed_and_was_removed_fails_with_its_exit_code(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    ti = first_try()
    op = make_operator(ssh_conn, str(tmp_path / "jobs"), job(launches, exit_code=7), cleanup="always")
    deferred = submit(op, ti)
    _, payload = asyncio.run(run_to_its_event(rebuilt(deferred.trigger)))
    assert payload["exit_code"] == 7 and payload["cleaned_up"] is True

    again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), job(launches, exit_code=7)), ti)

    assert again.outcome == "failed"
    assert "7" in str(again.error)
    assert runs(launches) == 1


def test_execute_run_again_before_its_submit_ran_submits_under_the_recorded_token(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    launches = tmp_path / "launches"
    ti = first_try()
    # The first execute() recorded its job, then died before the submit reached the host.
    token = "0123456789abcdef0123456789abcdef"
    paths = job_paths(ti, str(tmp_path / "jobs"))
    remember(context_for(ti), {}, JobRecord(paths.job_id, paths.base_dir, token, 1), RETRIES, None)

    again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), job(launches)), ti)

    assert again.outcome == "success", again.error
    assert runs(launches) == 1
    assert records_of(ti.state_store.get(STATE_KEY))[1].token == token  # type: ignore[union-attr]


def watched_until_it_leaves(trigger: SSHRemoteJobTrigger, lines: int) -> list[str]:
    """
    Run ``trigger`` as the triggerer does until it logged ``lines`` of the job's output, then
    make it leave (a triggerer stopped, a trigger moved): it records on the host how far its log
    got. The lines it logged.
    """

    async def until_it_leaves() -> list[str]:
        with capture_logs() as logs:
            task = asyncio.create_task(collect_events(trigger, []))
            deadline = asyncio.get_running_loop().time() + 60
            while len(remote_lines(logs)) < lines and not task.done():
                assert asyncio.get_running_loop().time() < deadline, "the trigger logged too little"
                await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await trigger.cleanup()
        return [line for line in remote_lines(logs) if line.startswith("line ")]

    return asyncio.run(until_it_leaves())


def test_a_take_over_whose_trigger_is_re_created_repeats_no_line_of_its_own_log(
    sshd, ssh_conn: str, tmp_path: Path
) -> None:
    """
    A retry took an earlier try's job over and streams its whole output; its triggerer is then
    lost. The re-created trigger resumes where the host recorded this try's log, not at the
    first line (the earlier try's record, which is older and shorter, does not count).
    """
    launches = tmp_path / "launches"
    command = job(launches, lines=40, pause=0.15)
    ti = first_try()
    first = submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    earlier_log = watched_until_it_leaves(rebuilt(first.trigger), 3)  # then try 1 failed
    retry = submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try())
    assert isinstance(retry.trigger, SSHRemoteJobTrigger)
    assert not retry.trigger.from_start and retry.trigger.resume_after > 0

    before_loss = watched_until_it_leaves(rebuilt(retry.trigger), len(earlier_log) + 3)
    after_loss, payload = watch(rebuilt(retry.trigger))

    assert payload["status"] == "success" and runs(launches) == 1
    assert before_loss[0] == "line 1" and len(before_loss) > len(earlier_log)
    retry_log = before_loss + [line for line in after_loss if line.startswith("line ")]
    assert retry_log == [f"line {n}" for n in range(1, 41)], "the retry's log: whole, once"


def test_execute_run_again_goes_on_where_its_log_left_off(sshd, ssh_conn: str, tmp_path: Path) -> None:
    """Its own job, found again: the lines its log already has do not come twice."""
    launches = tmp_path / "launches"
    command = job(launches, lines=30, pause=0.15)
    ti = first_try()
    first = submit(make_operator(ssh_conn, str(tmp_path / "jobs"), command), ti)
    before = watched_until_it_leaves(rebuilt(first.trigger), 3)  # then its resumption failed early

    with capture_logs() as logs:
        again = run_operator(make_operator(ssh_conn, str(tmp_path / "jobs"), command), ti)

    assert again.outcome == "success", again.error
    assert runs(launches) == 1
    assert before + [line for line in again.trigger_lines if line.startswith("line ")] == [
        f"line {n}" for n in range(1, 31)
    ]
    assert "its output goes on where this try's log left it" in messages(logs, "info")


def test_a_retry_s_lookup_of_the_earlier_job_is_tried_again_after_a_refused_connection(
    sshd, proxy, tmp_path: Path
) -> None:
    """The lookup only reads: a connection refused on the way costs a retry, not the try."""
    launches = tmp_path / "launches"
    command = job(launches, lines=4, pause=0.3)
    ti = first_try()
    submit(make_operator("ssh_proxy", str(tmp_path / "jobs"), command, retries=RETRIES), ti)
    wait_until(lambda: runs(launches) == 1, 10, "the first try's job to start")  # its worker died here
    refused_before = proxy.refused_total
    proxy.refuse_new(1)

    retry = run_operator(
        make_operator("ssh_proxy", str(tmp_path / "jobs"), command, retries=RETRIES), ti.next_try()
    )

    assert proxy.refused_total == refused_before + 1
    assert retry.outcome == "success", retry.error
    assert runs(launches) == 1
