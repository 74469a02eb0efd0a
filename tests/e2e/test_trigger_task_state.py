"""
What a trigger's ``on_kill`` asks Airflow about its task, asked from a real triggerer.

The trigger's ``on_kill`` spares its job only while the *same try* is still deferred (a trigger
that moved to another triggerer is cancelled like one a user cancelled). The state comes from
Airflow's task API, the deferred try from the XCom each try of the operator writes right before
it defers (Airflow clears a try's XComs when the next one starts). This test runs a probe
operator that writes that XCom as the operator does and defers to a probe trigger (a module of
its own, on the worker's and triggerer's ``PYTHONPATH``), which asks with
:func:`~ssh_jobs_provider.triggers.task_state.task_now` while its task is deferred and fires the
answer. Try 1 then fails, so that try 2 asks again. One deployment, no sshd.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from e2e_support import merged_by_time

from harness.airflow_deploy import AirflowDeployment
from support.report import report

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

DAG_ID = "trigger_task_state_probe"

PROBE_MODULE = """\
from __future__ import annotations

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ProbeTrigger(BaseTrigger):
    def serialize(self):
        return ("task_state_probe.ProbeTrigger", {})

    async def run(self):
        import asyncio

        from ssh_jobs_provider.triggers.task_state import task_now

        # A busy API server may not answer in time: ask until it does (on_kill asks once).
        for _ in range(30):
            state, try_number = await task_now(self.task_instance, "probe", self.log)
            if state is not None:
                break
            await asyncio.sleep(1)
        yield TriggerEvent({"state": state, "try": try_number})
"""

DAG_TEXT = f"""\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, BaseOperator
from task_state_probe import ProbeTrigger

from ssh_jobs_provider.triggers.task_state import TRY_XCOM_KEY


class Probe(BaseOperator):
    def execute(self, context):
        context["ti"].xcom_push(key=TRY_XCOM_KEY, value=context["ti"].try_number)
        self.defer(trigger=ProbeTrigger(), method_name="answered")

    def answered(self, context, event=None):
        print(f"probe answer: {{event}} in try {{context['ti'].try_number}}")
        if context["ti"].try_number == 1:
            raise RuntimeError("try 1 fails, so that try 2 asks too")


with DAG(dag_id={DAG_ID!r}, schedule=None, catchup=False,
         default_args={{"retries": 1, "retry_delay": timedelta(seconds=1)}}):
    Probe(task_id="probe")
"""


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """The run's state, and the probe's answer in each try (the lines of its task log)."""
    base = tmp_path_factory.mktemp("task-state")
    modules = base / "modules"
    modules.mkdir()
    (modules / "task_state_probe.py").write_text(PROBE_MODULE)
    path = os.pathsep.join(p for p in (str(modules), os.environ.get("PYTHONPATH", "")) if p)
    deployment = AirflowDeployment(base / "airflow", env={"PYTHONPATH": path})
    deployment.add_dag_file(f"{DAG_ID}.py", DAG_TEXT)
    try:
        deployment.start()
        deployment.wait_for_dags([DAG_ID])
        run_id = deployment.trigger(DAG_ID)
        state = deployment.wait_for_run(DAG_ID, run_id, 240)
        (ti,) = deployment.task_instances(DAG_ID, run_id)
        found = [
            line.event.strip()
            for n in range(1, ti.try_number + 1)
            for line in merged_by_time(deployment.task_log_files(DAG_ID, run_id, ti, n))
            if "probe answer" in line.event
        ]
        yield state, found
    finally:
        deployment.stop()


def test_a_triggerer_learns_which_try_of_its_task_is_deferred(answers: tuple[str, list[str]]) -> None:
    state, found = answers
    report(f"e2e trigger task state: run {state}; {found}")
    assert found == [
        "probe answer: {'state': 'deferred', 'try': 1} in try 1",
        "probe answer: {'state': 'deferred', 'try': 2} in try 2",
    ]
    assert state == "success"
