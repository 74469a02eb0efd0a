"""
Fan-outs through Slurm on a real Airflow deployment: two 50-way ``.expand()`` runs with
``scheduler="slurm"``, one submitting from the workers, one from the triggerer, each against
an sshd of its own playing a login node of the test run's real Slurm cluster.

What must hold: every task succeeds with exactly its own output in its log; Slurm recorded
every job COMPLETED (one job per try); no job directory is left; the triggerer's fan-out is
one login; the login node runs at most one ``squeue`` per SSH exec (the wrappers on its PATH
record every Slurm call, so this does not rely on the code under test).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import start_sshd

from harness.airflow_deploy import AirflowDeployment, TaskInstance
from harness.remote_jobs import job_dirs
from harness.slurm import SlurmCallLog, SlurmCluster
from harness.sshd import SSHServer
from support.report import report

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow, pytest.mark.slurm]

FAN_OUT = 50
RUN_TIMEOUT = 600.0
OUTPUT_LINE = re.compile(r"^slurm shard (\d+) line (\d+) on (\S+)$")
#: dag_id -> submit_from
DAGS = {"e2e_slurm_worker": "worker", "e2e_slurm_triggerer": "triggerer"}

DAG_TEXT = """\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

COMMANDS = [
    f"#!/bin/sh\\necho slurm shard {{i}} line 1 on $SLURM_JOB_PARTITION\\nsleep 30\\n"
    f"echo slurm shard {{i}} line 2 on $SLURM_JOB_PARTITION\\n"
    for i in range({fan_out})
]

with DAG(
    dag_id="{dag_id}",
    schedule=None,
    catchup=False,
    max_active_tasks={fan_out},
    default_args={{"retries": 2, "retry_delay": timedelta(seconds=1)}},
):
    SSHRemoteJobOperator.partial(
        task_id="shard",
        ssh_conn_id={conn_id!r},
        remote_base_dir={base_dir!r},
        scheduler="slurm",
        scheduler_options={{"time": "10", "job_name": "{dag_id}"}},
        cleanup="always",
        poll_interval=1,
        max_active_tis_per_dag={fan_out},
        submit_from={submit_from!r},
    ).expand(command=COMMANDS)
"""


@dataclass
class SlurmRun:
    state: str
    tis: list[TaskInstance]
    logs: dict[int, list[str]]
    jobs_dir: Path
    counts: dict[str, int]
    calls: SlurmCallLog
    slurm_states: list[str]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, slurm_cluster: SlurmCluster) -> dict[str, SlurmRun]:
    base = tmp_path_factory.mktemp("slurm-e2e")
    servers: dict[str, SSHServer] = {}
    call_logs = {dag_id: SlurmCallLog(base / f"{dag_id}-calls") for dag_id in DAGS}
    env: dict[str, str] = {}
    try:
        for dag_id in DAGS:
            servers[dag_id] = start_sshd(
                base / f"{dag_id}-sshd",
                max_startups="10:30:100",
                session_env={**slurm_cluster.env, "PATH": call_logs[dag_id].path},
            )
            env.update(servers[dag_id].airflow_env(f"ssh_{dag_id}"))
        deployment = AirflowDeployment(base / "airflow", env=env)
        for dag_id, submit_from in DAGS.items():
            deployment.add_dag_file(
                f"{dag_id}.py",
                DAG_TEXT.format(
                    dag_id=dag_id,
                    fan_out=FAN_OUT,
                    conn_id=f"ssh_{dag_id}",
                    base_dir=str(base / f"{dag_id}-jobs"),
                    submit_from=submit_from,
                ),
            )
        try:
            started = time.monotonic()
            deployment.start()
            deployment.wait_for_dags(list(DAGS))
            before = {dag_id: server.counts() for dag_id, server in servers.items()}
            run_ids = {dag_id: deployment.trigger(dag_id) for dag_id in DAGS}
            states = {
                dag_id: deployment.wait_for_run(dag_id, run_ids[dag_id], RUN_TIMEOUT) for dag_id in DAGS
            }
            report(f"e2e Slurm fan-outs ({FAN_OUT} x {len(DAGS)}): {time.monotonic() - started:.0f}s")
            result = {}
            for dag_id in DAGS:
                after = servers[dag_id].counts()
                tis = deployment.task_instances(dag_id, run_ids[dag_id])
                logs = {
                    ti.map_index: deployment.task_log(dag_id, run_ids[dag_id], ti, ti.try_number).events()
                    for ti in tis
                }
                names = slurm_cluster.run(["squeue", "-h", "-t", "all", "-n", dag_id, "-o", "%T"]).split()
                result[dag_id] = SlurmRun(
                    states[dag_id],
                    tis,
                    logs,
                    base / f"{dag_id}-jobs",
                    {name: after[name] - before[dag_id][name] for name in after},
                    call_logs[dag_id],
                    names,
                )
            return result
        finally:
            deployment.stop()
    finally:
        for server in servers.values():
            server.stop()


@pytest.mark.parametrize("dag_id", DAGS)
def test_every_task_succeeds_with_its_own_output(runs: dict[str, SlurmRun], dag_id: str) -> None:
    run = runs[dag_id]
    assert run.state == "success"
    assert [ti.map_index for ti in run.tis] == list(range(FAN_OUT))
    assert {ti.state for ti in run.tis} == {"success"}
    for ti in run.tis:
        lines = [m.groups() for event in run.logs[ti.map_index] if (m := OUTPUT_LINE.match(event.strip()))]
        assert lines == [(str(ti.map_index), "1", "debug"), (str(ti.map_index), "2", "debug")], ti


@pytest.mark.parametrize("dag_id", DAGS)
def test_slurm_ran_one_job_per_task_and_none_is_left(runs: dict[str, SlurmRun], dag_id: str) -> None:
    run = runs[dag_id]
    tries = sum(ti.try_number for ti in run.tis)
    assert run.slurm_states.count("COMPLETED") == FAN_OUT
    # A retry (the scheduler race) re-attaches to its Slurm job instead of queueing another.
    assert FAN_OUT <= len(run.slurm_states) <= tries
    assert len(run.calls.calls("sbatch")) == len(run.slurm_states)
    assert job_dirs(run.jobs_dir) == []


@pytest.mark.parametrize("dag_id", DAGS)
def test_one_squeue_per_exec_for_all_the_jobs(runs: dict[str, SlurmRun], dag_id: str) -> None:
    run = runs[dag_id]
    squeues = run.calls.calls("squeue")
    widest = max(run.calls.ids_per_squeue(), default=0)
    report(
        f"e2e Slurm {dag_id}: {run.counts['accepted']} login(s), {run.counts['sessions']} exec(s), "
        f"{len(squeues)} squeue (up to {widest} jobs in one), {len(run.calls.calls('sacct'))} sacct"
    )
    assert 1 <= len(squeues) <= run.counts["sessions"]
    # The watches of the fan-out are asked about together (tasks defer over some seconds; each
    # job runs 30 s, so many are watched at once).
    assert widest >= 10
    if DAGS[dag_id] == "triggerer":
        assert run.counts["accepted"] <= 2  # one login (one more only after a scheduler race)
