"""
SSHRemoteJobOperator with ``scheduler="slurm"``: a real sshd whose sessions are the login node
of a real single-node Slurm cluster, the operator's real life cycle (execute, the trigger in an
event loop, execute_complete), and Slurm's own record read back.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from pathlib import Path
from typing import Any

import pytest

from harness.remote_jobs import job_dirs
from ssh_jobs_provider._compat import TaskDeferralTimeout
from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.operators.remote_steps import handed_over_lines
from ssh_jobs_provider.protocol.slurm_options import SlurmOptionError
from ssh_jobs_provider.triggers.host_session import HostSession
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import make_operator
from support.logs import capture_logs
from support.report import report
from support.runner import (
    StandInStateStore,
    StandInTaskInstance,
    context_for,
    run_operator,
    run_to_its_event,
    run_triggers,
    submit,
)
from support.slurm import SlurmCallLog, SlurmCluster
from support.sshd import BaseSSHServer, use_connection
from support.waiting import wait_until

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_conn(slurm_sshd: BaseSSHServer, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_connection(monkeypatch, slurm_sshd, "ssh_slurm")


@pytest.fixture(autouse=True)
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HostSession, "linger", 0.2)


def slurm_jobs(cluster: SlurmCluster, base: str) -> dict[str, str]:
    """Slurm job id -> state, for the jobs whose log is under ``base``."""
    out = cluster.run(["squeue", "-h", "-t", "all", "-O", "JobID:|,State:|,STDOUT:|"])
    found = {}
    for line in out.splitlines():
        job, state, stdout = ([*line.split("|"), "", "", ""])[:3]
        if stdout.startswith(base):
            found[job] = state
    return found


def recreated(trigger: Any) -> SSHRemoteJobTrigger:
    """The trigger as the triggerer re-creates it from its serialized form."""
    classpath, kwargs = trigger.serialize()
    module_name, _, class_name = classpath.rpartition(".")
    made = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    assert isinstance(made, SSHRemoteJobTrigger)
    return made


@pytest.mark.parametrize("submit_from", ["worker", "triggerer"])
def test_job_runs_through_slurm_with_its_output_and_outcome(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str, submit_from: str
) -> None:
    op = make_operator(
        slurm_conn,
        remote_base_dir,
        command="#!/bin/sh\n#SBATCH --comment=from-script\necho on $SLURM_JOB_PARTITION; echo done\n",
        scheduler="slurm",
        scheduler_options={"time": "5", "job_name": "airflow-test"},
        submit_from=submit_from,
        cleanup="always",
    )
    result = run_operator(op)
    assert result.outcome == "success", result.error
    assert [line for line in result.trigger_lines if line in ("on debug", "done")] == ["on debug", "done"]
    assert result.event is not None and "COMPLETED with exit code 0" in str(result.event["message"])
    assert list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["COMPLETED"]
    assert job_dirs(Path(remote_base_dir)) == []


def test_failed_job_fails_the_task_with_its_exit_code(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str
) -> None:
    op = make_operator(slurm_conn, remote_base_dir, command="echo failing; exit 7", scheduler="slurm")
    result = run_operator(op)
    assert result.outcome == "failed"
    assert "failed with exit code 7" in str(result.error)
    assert "failing" in result.trigger_lines


def test_skip_code_skips_but_a_cancel_never_does(slurm_conn: str, remote_base_dir: str) -> None:
    op = make_operator(
        slurm_conn, remote_base_dir, command="exit 99", scheduler="slurm", skip_on_exit_code=99
    )
    assert run_operator(op).outcome == "skipped"


def test_bad_options_fail_before_anything_reaches_the_host(
    slurm_conn: str, slurm_sshd: BaseSSHServer, remote_base_dir: str
) -> None:
    before = slurm_sshd.counts().get("accepted", 0)
    op = make_operator(slurm_conn, remote_base_dir, scheduler="slurm", scheduler_options={"time": "soon"})
    with pytest.raises(SlurmOptionError, match="'time'"):
        op.execute(context_for(StandInTaskInstance()))  # type: ignore[arg-type]
    assert slurm_sshd.counts().get("accepted", 0) == before
    with pytest.raises(ValueError, match="scheduler='pbs'"):
        make_operator(slurm_conn, remote_base_dir, scheduler="pbs")


@pytest.mark.parametrize("submit_from", ["worker", "triggerer"])
def test_refused_sbatch_names_the_option(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str, submit_from: str
) -> None:
    op = make_operator(
        slurm_conn,
        remote_base_dir,
        scheduler="slurm",
        scheduler_options={"partition": "gpux"},
        submit_from=submit_from,
    )
    if submit_from == "worker":
        with pytest.raises(RemoteJobError) as refused:
            run_operator(op)
        error: BaseException | None = refused.value
    else:
        result = run_operator(op)
        assert result.outcome == "failed"
        error = result.error
    assert isinstance(error, RemoteJobError)
    assert "scheduler_options['partition'] (given: 'gpux')" in str(error)
    assert not Path(remote_base_dir, op.task_id).exists()
    assert not any(Path(remote_base_dir).glob("af_*"))


def test_on_kill_in_the_triggerer_leaves_the_job_cancelled(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str
) -> None:
    op = make_operator(slurm_conn, remote_base_dir, command="echo started; sleep 300", scheduler="slurm")
    ti = StandInTaskInstance()
    deferred = submit(op, ti)
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["RUNNING"], 30, "RUNNING"
    )
    trigger = recreated(deferred.trigger)

    async def watch_then_kill() -> None:
        task = asyncio.ensure_future(run_to_its_event(trigger, 60))
        await asyncio.sleep(1.0)
        task.cancel()
        await trigger.on_kill()

    asyncio.run(watch_then_kill())
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["CANCELLED"], 30, "CANCELLED"
    )


def test_worker_on_kill_leaves_the_job_cancelled(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str
) -> None:
    op = make_operator(slurm_conn, remote_base_dir, command="sleep 300", scheduler="slurm")
    submit(op, StandInTaskInstance())
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["RUNNING"], 30, "RUNNING"
    )
    op.on_kill()
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["CANCELLED"], 30, "CANCELLED"
    )


def test_durable_retry_reattaches_to_the_running_slurm_job(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str
) -> None:
    command = "echo first line; sleep 4; echo last line"
    store = StandInStateStore()
    first_try = StandInTaskInstance(max_tries=2, state_store=store)
    op = make_operator(slurm_conn, remote_base_dir, command=command, scheduler="slurm", retries=2)
    submit(op, first_try)
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["RUNNING"], 30, "RUNNING"
    )
    # The first try's worker died while the job ran; the retry takes it over.
    retry = first_try.next_try()
    again = make_operator(slurm_conn, remote_base_dir, command=command, scheduler="slurm", retries=2)
    result = run_operator(again, retry)
    assert result.outcome == "success", result.error
    assert [line for line in result.trigger_lines if line.endswith(" line")] == ["first line", "last line"]
    assert list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["COMPLETED"]


@pytest.mark.parametrize("fan_out", [20, pytest.param(200, marks=[pytest.mark.slow, pytest.mark.load])])
def test_a_fan_out_from_the_triggerer_is_one_login_and_one_squeue_per_tick(
    slurm_conn: str,
    slurm_sshd: BaseSSHServer,
    slurm_cluster: SlurmCluster,
    slurm_calls: SlurmCallLog,
    remote_base_dir: str,
    fan_out: int,
) -> None:
    ops = [
        make_operator(
            slurm_conn,
            remote_base_dir,
            task_id=f"shard{index}",
            command=f"echo shard {index} starting; sleep 2; echo shard {index} done; exit {index % 3}",
            scheduler="slurm",
            submit_from="triggerer",
            cleanup="always",
            poll_interval=1,
            command_timeout=60,
        )
        for index in range(fan_out)
    ]
    triggers = [
        recreated(submit(op, StandInTaskInstance(task_id=f"shard{i}")).trigger) for i, op in enumerate(ops)
    ]
    before = slurm_sshd.counts()
    started = time.monotonic()
    with capture_logs() as logs:
        payloads = asyncio.run(run_triggers(triggers, timeout=300))
    seconds = time.monotonic() - started
    after = slurm_sshd.counts()
    logins = after.get("accepted", 0) - before.get("accepted", 0)
    execs = after.get("sessions", 0) - before.get("sessions", 0)
    squeues = slurm_calls.calls("squeue")
    report(
        f"Slurm fan-out of {fan_out} from the triggerer: {seconds:.0f}s, {logins} login(s), {execs} exec(s), "
        f"{len(squeues)} squeue (up to {max(slurm_calls.ids_per_squeue(), default=0)} jobs each), "
        f"{len(slurm_calls.calls('sacct'))} sacct, {len(slurm_calls.calls('sbatch'))} sbatch"
    )
    assert logins == 1
    assert [p["exit_code"] for p in payloads] == [index % 3 for index in range(fan_out)]
    assert [p["status"] for p in payloads] == ["success" if i % 3 == 0 else "failed" for i in range(fan_out)]
    # Every job's two lines reached the task logs, once each.
    logged = [e["event"] for e in logs if str(e.get("event", "")).startswith("shard ")]
    lines = sorted(logged + [line for payload in payloads for line in handed_over_lines(payload)])
    assert lines == sorted(f"shard {i} {word}" for i in range(fan_out) for word in ("starting", "done"))
    states = sorted(slurm_jobs(slurm_cluster, remote_base_dir).values())
    assert states.count("COMPLETED") == len(range(0, fan_out, 3))
    assert states.count("FAILED") == fan_out - states.count("COMPLETED")
    assert job_dirs(Path(remote_base_dir)) == []
    # One exec per tick (sshd counts them), and in it at most one squeue for all the jobs.
    assert 1 <= len(squeues) <= execs
    assert max(slurm_calls.ids_per_squeue()) >= min(fan_out, 100)
    assert len(slurm_calls.calls("sbatch")) == fan_out


def test_deferral_timeout_cancels_the_slurm_job(
    slurm_conn: str, slurm_cluster: SlurmCluster, remote_base_dir: str
) -> None:
    op = make_operator(slurm_conn, remote_base_dir, command="sleep 300", scheduler="slurm", timeout=1)
    ti = StandInTaskInstance(state_store=StandInStateStore())
    submit(op, ti)
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["RUNNING"], 30, "RUNNING"
    )
    # What a worker runs when the scheduler times the deferral out.
    fresh = make_operator(slurm_conn, remote_base_dir, command="sleep 300", scheduler="slurm", timeout=1)
    with pytest.raises(TaskDeferralTimeout):
        fresh.resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(ti))
    wait_until(
        lambda: list(slurm_jobs(slurm_cluster, remote_base_dir).values()) == ["CANCELLED"], 30, "CANCELLED"
    )
