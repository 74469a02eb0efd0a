"""
A triggerer that stalls loses its triggers to another, and must not kill their jobs when it wakes.

A triggerer whose heartbeat lapses (a long pause, a frozen VM; here: SIGSTOP) counts as dead,
and another triggerer takes over its triggers. When the stalled one goes on, Airflow 3.3
cancels the triggers it no longer owns the way it cancels a trigger for a user's action,
which runs the trigger's ``on_kill``. The task is still deferred then, and its job is watched
by the other triggerer: it must run on. One deployment (HA triggerers with a fast failover:
a heartbeat every 2 s, silent for 10 s counted as dead), one sshd, a 4-way fan-out of 40 s
jobs; each job appends a line to a ``launches`` file when it starts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import HA_ENV, TRIGGERER_DEAD_AFTER, launch_counts, merged_by_time, start_sshd, wait_until

from harness.airflow_deploy import AirflowDeployment, TaskInstance
from harness.remote_jobs import kill_running_jobs
from support.report import report

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

DAG_ID = "triggerer_pause_fanout"
CONN_ID = "ssh_pause"
FAN_OUT = 4
LINES = 40
#: Long enough for the other triggerer to count the paused one dead and take its triggers.
PAUSE_SECONDS = TRIGGERER_DEAD_AFTER + 8
LINE = re.compile(r"^pause shard (\d+) line (\d+)$")
SPARED_TEXT = "the task is still deferred (watched by another triggerer): not killing it"

DAG_TEXT = """\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: Airflow's scheduler sometimes fails a resumed deferred task itself (a known race).
with DAG(dag_id={dag_id!r}, schedule=None, catchup=False,
         default_args={{"retries": 2, "retry_delay": timedelta(seconds=1)}}):
    SSHRemoteJobOperator.partial(
        task_id="shard", ssh_conn_id={conn_id!r}, remote_base_dir={base_dir!r}, cleanup="always",
        poll_interval=1,
    ).expand(command={commands!r})
"""


@dataclass
class PauseResult:
    state: str
    tis: list[TaskInstance]
    launches: dict[str, int]
    logs: dict[int, list[str]]
    triggerer_output: str
    moved: int


def commands(launches: Path) -> list[str]:
    return [
        f'echo "pause {i}" >> {launches}\nfor n in $(seq 1 {LINES}); do echo "pause shard {i} line $n"; sleep 1; done\n'
        for i in range(FAN_OUT)
    ]


@pytest.fixture(scope="module")
def paused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PauseResult]:
    base = tmp_path_factory.mktemp("pause")
    remote, launches = base / "remote-jobs", base / "launches"
    sshd = start_sshd(base / "sshd")
    deployment = AirflowDeployment(base / "airflow", env={**sshd.airflow_env(CONN_ID), **HA_ENV})
    deployment.add_dag_file(
        f"{DAG_ID}.py",
        DAG_TEXT.format(dag_id=DAG_ID, conn_id=CONN_ID, base_dir=str(remote), commands=commands(launches)),
    )
    try:
        deployment.start()
        deployment.wait_for_dags([DAG_ID])
        run_id = deployment.trigger(DAG_ID)

        def all_deferred_and_running() -> bool:
            tis = deployment.task_instances(DAG_ID, run_id)
            return (
                len(tis) == FAN_OUT
                and all(ti.state == "deferred" for ti in tis)
                and sum(launch_counts(launches).values()) >= FAN_OUT
            )

        wait_until("every task deferred with its job running", 180, all_deferred_and_running, deployment)
        second = deployment.add_triggerer()
        deployment.pause_component("triggerer")
        try:
            wait_until(
                "the other triggerer to take over every trigger",
                PAUSE_SECONDS + 30,
                lambda: deployment.triggers_by_triggerer().get(second, 0) == FAN_OUT,
                deployment,
            )
            moved = deployment.triggers_by_triggerer().get(second, 0)
        finally:
            deployment.resume_component("triggerer")
        state = deployment.wait_for_run(DAG_ID, run_id, 240)
        tis = deployment.task_instances(DAG_ID, run_id)
        logs = {
            ti.map_index: [
                line.event
                for n in range(1, ti.try_number + 1)
                for line in merged_by_time(deployment.task_log_files(DAG_ID, run_id, ti, n))
            ]
            for ti in tis
        }
        yield PauseResult(
            state, tis, launch_counts(launches), logs, deployment.component_output("triggerer"), moved
        )
    finally:
        try:
            deployment.stop()
        finally:
            kill_running_jobs(remote)
            sshd.stop()


def test_a_stalled_triggerer_does_not_kill_the_jobs_it_lost(paused: PauseResult) -> None:
    spared = sum(SPARED_TEXT in " ".join(lines) for lines in paused.logs.values())
    report(
        f"e2e triggerer paused {PAUSE_SECONDS}s: {paused.moved}/{FAN_OUT} triggers moved; jobs per task "
        f"{sorted(paused.launches.values())}; tasks whose job the woken triggerer spared: {spared}"
    )
    assert paused.moved == FAN_OUT
    assert paused.state == "success", [(ti.map_index, ti.state) for ti in paused.tis]
    assert sorted(paused.launches.values()) == [1] * FAN_OUT, paused.launches


def test_every_line_of_every_job_reached_its_task_log(paused: PauseResult) -> None:
    for index, lines in paused.logs.items():
        numbers = sorted({int(m.group(2)) for line in lines if (m := LINE.match(line.strip()))})
        assert numbers == list(range(1, LINES + 1)), f"shard {index}: {numbers}"
