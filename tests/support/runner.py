"""
Drive an SSHRemoteJobOperator through its real life cycle without a scheduler.

``execute`` runs for real and raises ``TaskDeferred``; the trigger it deferred to runs for
real in an asyncio loop (as in the triggerer); its event goes to ``execute_complete``.
Only the task instance is a stand-in: it carries the identity fields the operator reads
and records XCom pushes. The full scheduler/triggerer path is covered by the e2e tests.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass, field
from typing import Any

import structlog.testing
from airflow.sdk.exceptions import AirflowSkipException, TaskDeferred

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger


@dataclass
class StandInTaskInstance:
    """The task-instance fields the operator uses; XCom pushes are recorded."""

    dag_id: str = "test_dag"
    task_id: str = "remote_job"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    map_index: int = -1
    try_number: int = 1
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


@dataclass
class RunResult:
    outcome: str  # "success", "failed", "skipped"
    error: BaseException | None
    event: dict[str, Any] | None
    trigger_lines: list[str]
    trigger_logs: list[dict[str, Any]]
    ti: StandInTaskInstance

    @property
    def remote_output(self) -> str:
        return "\n".join(self.trigger_lines)


def context_for(ti: StandInTaskInstance) -> dict[str, Any]:
    return {"ti": ti, "task_instance": ti}


def submit(op: SSHRemoteJobOperator, ti: StandInTaskInstance) -> TaskDeferred:
    """Run ``execute``; return the deferral it must end with."""
    try:
        op.execute(context_for(ti))  # type: ignore[arg-type]
    except TaskDeferred as deferred:
        return deferred
    raise AssertionError("execute() returned without deferring")


async def run_trigger(
    trigger: SSHRemoteJobTrigger, timeout: float = 120
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run a trigger to completion; return its captured log entries and every event it yielded."""
    events: list[Any] = []

    async def consume() -> None:
        async for event in trigger.run():
            events.append(event)

    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(consume(), timeout)
    return logs, events


def remote_lines(logs: list[dict[str, Any]]) -> list[str]:
    """The info-level lines the trigger logged, i.e. the remote job's output."""
    return [entry["event"] for entry in logs if entry.get("log_level") == "info"]


def run_operator(
    op: SSHRemoteJobOperator, ti: StandInTaskInstance | None = None, timeout: float = 120
) -> RunResult:
    ti = ti or StandInTaskInstance()
    deferred = submit(op, ti)
    trigger = deferred.trigger
    assert isinstance(trigger, SSHRemoteJobTrigger)
    # Round-trip through serialization, exactly as the triggerer recreates it.
    classpath, kwargs = trigger.serialize()
    module_name, _, class_name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    logs, events = asyncio.run(run_trigger(trigger, timeout))
    assert len(events) == 1, f"trigger must yield exactly one event, got {events}"
    payload = events[0].payload
    method = getattr(op, deferred.method_name)
    try:
        method(context_for(ti), event=payload)
    except AirflowSkipException as error:
        return RunResult("skipped", error, payload, remote_lines(logs), logs, ti)
    except Exception as error:
        return RunResult("failed", error, payload, remote_lines(logs), logs, ti)
    return RunResult("success", None, payload, remote_lines(logs), logs, ti)
