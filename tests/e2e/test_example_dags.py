"""
``dag.test()`` on every example DAG the package ships (the DAGs the docs quote).

``airflow dags test`` runs each task in a task process and the trigger in line, against a
real sshd. It ignores the operator's ``timeout`` and SIGTERM, so every run is bounded by a
hard timeout that stops its whole process group (SIGINT, then SIGKILL). The three run at
the same time: each spends most of its time waiting on its remote jobs.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import EXAMPLE_DAGS

from harness.airflow_deploy import AirflowDeployment, airflow_command
from harness.processes import spawn_in_new_session, terminate_tree
from harness.remote_jobs import job_dirs
from harness.sshd import SSHServer

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

DAGS_TEST_TIMEOUT = 180.0
FAN_OUT = 2
TRIGGER_IN_LINE = "[DAG TEST] running trigger in line"
EXAMPLE_DAG_IDS = (
    "example_ssh_remote_job_fanout",
    "example_ssh_remote_job_environment",
    "example_ssh_remote_job_skip",
)
#: The example skip DAG skips unless this file exists on the (here: local) remote host.
INCOMING_FLAG = Path("/tmp/incoming.flag")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory, module_sshd: SSHServer) -> AirflowDeployment:
    """A migrated AIRFLOW_HOME with the example DAGs; its servers are never started."""
    base = tmp_path_factory.mktemp("dags-test")
    home = AirflowDeployment(
        base / "airflow",
        dag_files=[EXAMPLE_DAGS],
        env={
            **module_sshd.airflow_env("ssh_default"),
            "SSH_JOBS_EXAMPLE_BASE_DIR": str(base / "remote-jobs"),
            "SSH_JOBS_EXAMPLE_FAN_OUT": str(FAN_OUT),
        },
    )
    home.prepare()
    home.migrate()
    # Stored once up front: `dags test` runs started together would otherwise race to
    # create the same DAG rows (IntegrityError).
    reserialized = home.run_cli(["dags", "reserialize"], timeout=DAGS_TEST_TIMEOUT)
    assert reserialized.returncode == 0, reserialized.stdout[-4000:]
    return home


@dataclass(frozen=True)
class DagsTestResult:
    returncode: int | None  # None: stopped after DAGS_TEST_TIMEOUT
    output: str


@pytest.fixture(scope="module")
def dags_tests(airflow_home: AirflowDeployment) -> dict[str, DagsTestResult]:
    """``airflow dags test`` of every example DAG, run side by side, each bounded."""
    outputs = {dag_id: airflow_home.output_dir / f"dags-test-{dag_id}.out" for dag_id in EXAMPLE_DAG_IDS}
    running: dict[str, subprocess.Popen[bytes]] = {}
    finished: dict[str, int] = {}
    try:
        for dag_id, output in outputs.items():
            command = [*airflow_command(), "dags", "test", dag_id]
            running[dag_id] = spawn_in_new_session(command, output=output, env=airflow_home.environment())
        deadline = time.monotonic() + DAGS_TEST_TIMEOUT
        for dag_id, proc in running.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                finished[dag_id] = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for proc in running.values():
            # Stops a run that is still going; after a normal exit, whatever it left behind.
            terminate_tree(proc, first_signal=signal.SIGINT)
    return {
        dag_id: DagsTestResult(finished.get(dag_id), output.read_text(errors="replace"))
        for dag_id, output in outputs.items()
    }


def dags_test_output(dags_tests: dict[str, DagsTestResult], dag_id: str) -> str:
    result = dags_tests[dag_id]
    assert result.returncode is not None, (
        f"still running after {DAGS_TEST_TIMEOUT}s:\n{result.output[-4000:]}"
    )
    assert result.returncode == 0, result.output[-4000:]
    assert TRIGGER_IN_LINE in result.output, "the task should have deferred to its trigger"
    return result.output


def task_states(home: AirflowDeployment, dag_id: str) -> list[tuple[str, int, str]]:
    with closing(sqlite3.connect(f"file:{home.database_path}?mode=ro", uri=True)) as connection:
        rows = connection.execute(
            "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? ORDER BY task_id, map_index",
            (dag_id,),
        ).fetchall()
    return [(str(task_id), int(map_index), str(state)) for task_id, map_index, state in rows]


def remote_jobs_left(home: AirflowDeployment, dag_id: str) -> list[Path]:
    base_dir = Path(home.extra_env["SSH_JOBS_EXAMPLE_BASE_DIR"])
    return [path for path in job_dirs(base_dir) if f"_{dag_id}_" in path.name]


def assert_in_order(text: str, *parts: str) -> None:
    position = -1
    for part in parts:
        found = text.find(part, position + 1)
        assert found > position, f"{part!r} missing or out of order in:\n{text[-4000:]}"
        position = found


def test_fanout_example(airflow_home: AirflowDeployment, dags_tests: dict[str, DagsTestResult]) -> None:
    dag_id = "example_ssh_remote_job_fanout"
    output = dags_test_output(dags_tests, dag_id)
    assert task_states(airflow_home, dag_id) == [("shard", index, "success") for index in range(FAN_OUT)]
    for index in range(FAN_OUT):
        assert_in_order(output, f"shard {index} starting on", f"shard {index} done")
    assert remote_jobs_left(airflow_home, dag_id) == []


def test_environment_example_renders_the_script_and_passes_values_literally(
    airflow_home: AirflowDeployment, dags_tests: dict[str, DagsTestResult]
) -> None:
    dag_id = "example_ssh_remote_job_environment"
    output = dags_test_output(dags_tests, dag_id)
    assert task_states(airflow_home, dag_id) == [("report", -1, "success")]
    assert_in_order(
        output,
        "title: Nightly report for 20",  # {{ ds }} rendered by Airflow
        "greeting: it's $HOME, not expanded",  # reached the script byte for byte
        "run: manual__",
        "step extract ok",
        "step transform ok",
        "step load ok",
    )
    assert remote_jobs_left(airflow_home, dag_id) == []


def test_skip_example(airflow_home: AirflowDeployment, dags_tests: dict[str, DagsTestResult]) -> None:
    dag_id = "example_ssh_remote_job_skip"
    output = dags_test_output(dags_tests, dag_id)
    if INCOMING_FLAG.exists():
        # Someone left the flag on this machine: the job has work to do and succeeds.
        assert task_states(airflow_home, dag_id) == [("maybe_process", -1, "success")]
        assert "processing" in output
    else:
        assert task_states(airflow_home, dag_id) == [("maybe_process", -1, "skipped")]
        assert_in_order(output, "nothing to do", "exited with skip code 99")
    assert remote_jobs_left(airflow_home, dag_id) == []
