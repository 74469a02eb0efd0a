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
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ssh_jobs_provider._compat import AirflowSkipException, TaskDeferred
from ssh_jobs_provider.operators.remote_steps import handed_over_lines
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.logs import capture_logs

T = TypeVar("T")


@dataclass
class StandInTaskInstance:
    """The task-instance fields the operator uses; XCom pushes are recorded."""

    dag_id: str = "test_dag"
    task_id: str = "remote_job"
    run_id: str = "manual__2026-01-01T00:00:00+00:00"
    map_index: int = -1
    try_number: int = 1
    #: As Airflow sets it: ``retries`` for the first run, ``try_number + retries`` when cleared.
    max_tries: int | None = None
    xcom: dict[str, Any] = field(default_factory=dict)
    #: Airflow >= 3.3's task state store of this task instance (``None``: an older Airflow).
    state_store: StandInStateStore | None = None

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def next_try(self) -> StandInTaskInstance:
        """The same task instance's next try (its state store carried over, as Airflow does)."""
        return replace(self, try_number=self.try_number + 1, xcom={})


class StandInStateStore:
    """The ``get``/``set``/``delete`` of Airflow's task state store, kept in memory (JSON values)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    def set(self, key: str, value: Any, **_: Any) -> None:
        self.values[key] = json.dumps(value)

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


@dataclass
class RunResult:
    outcome: str  # "success", "failed", "skipped"
    error: BaseException | None
    event: dict[str, Any] | None
    trigger_lines: list[str]
    trigger_logs: list[dict[str, Any]]
    ti: StandInTaskInstance
    #: What ``execute_complete`` returned (Airflow pushes it as XCom ``return_value``).
    value: Any = None

    @property
    def remote_output(self) -> str:
        return "\n".join(self.trigger_lines)


def context_for(ti: StandInTaskInstance) -> dict[str, Any]:
    context: dict[str, Any] = {"ti": ti, "task_instance": ti}
    if ti.state_store is not None:
        context["task_state_store"] = ti.state_store
    return context


def submit(op: SSHRemoteJobOperator, ti: StandInTaskInstance) -> TaskDeferred:
    """Run ``execute``; return the deferral it must end with."""
    try:
        op.execute(context_for(ti))  # type: ignore[arg-type]
    except TaskDeferred as deferred:
        return deferred
    raise AssertionError("execute() returned without deferring")


async def collect_events(trigger: SSHRemoteJobTrigger, events: list[Any]) -> None:
    """Run ``trigger`` to its end, appending each event it yields (those before a cancel stay)."""
    async for event in trigger.run():
        events.append(event)


async def run_trigger(
    trigger: SSHRemoteJobTrigger, timeout: float = 120
) -> tuple[list[dict[str, Any]], list[Any]]:
    """Run a trigger to completion; return its captured log entries and every event it yielded."""
    events: list[Any] = []
    with capture_logs() as logs:
        await asyncio.wait_for(collect_events(trigger, events), timeout)
    return logs, events


async def run_to_its_event(
    trigger: SSHRemoteJobTrigger, timeout: float = 120
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run a trigger that must yield exactly one event: its captured log entries, and the payload."""
    logs, events = await run_trigger(trigger, timeout)
    assert len(events) == 1, f"trigger must yield exactly one event, got {events}"
    return logs, events[0].payload


async def watch_async(trigger: SSHRemoteJobTrigger, timeout: float = 120) -> tuple[list[str], dict[str, Any]]:
    """
    Run a trigger that must yield exactly one event: the job's lines as the task log gets them
    (those the trigger logged, then the last ones its event hands to the worker), and its payload.
    """
    logs, payload = await run_to_its_event(trigger, timeout)
    return remote_lines(logs) + handed_over_lines(payload), payload


def watch(trigger: SSHRemoteJobTrigger, timeout: float = 120) -> tuple[list[str], dict[str, Any]]:
    """:func:`watch_async` in an event loop of its own."""
    return asyncio.run(watch_async(trigger, timeout))


async def run_triggers(triggers: list[SSHRemoteJobTrigger], timeout: float = 120) -> list[Any]:
    """Run triggers concurrently in this loop, like the triggerer does; each one's last payload."""
    events: list[list[Any]] = [[] for _ in triggers]
    await asyncio.wait_for(
        asyncio.gather(*(collect_events(t, e) for t, e in zip(triggers, events, strict=True))), timeout
    )
    return [found[-1].payload if found else None for found in events]


def remote_lines(logs: list[dict[str, Any]]) -> list[str]:
    """The info-level lines the trigger logged, i.e. the remote job's output."""
    return [entry["event"] for entry in logs if entry.get("log_level") == "info"]


def run_operator(
    op: SSHRemoteJobOperator, ti: StandInTaskInstance | None = None, timeout: float = 120
) -> RunResult:
    ti = ti or StandInTaskInstance()
    try:
        op.execute(context_for(ti))  # type: ignore[arg-type]
    except TaskDeferred as raised:
        deferred = raised
    except AirflowSkipException as error:  # ended in execute(), e.g. like an earlier try's job
        return RunResult("skipped", error, None, [], [], ti)
    else:
        return RunResult("success", None, None, [], [], ti)
    trigger = deferred.trigger
    assert isinstance(trigger, SSHRemoteJobTrigger)
    # Round-trip through serialization, exactly as the triggerer recreates it.
    classpath, kwargs = trigger.serialize()
    module_name, _, class_name = classpath.rpartition(".")
    trigger = getattr(importlib.import_module(module_name), class_name)(**kwargs)
    logs, payload = asyncio.run(run_to_its_event(trigger, timeout))
    method = getattr(op, deferred.method_name)
    outcome, error, value = "success", None, None
    with capture_logs() as worker_logs:
        try:
            # As Airflow resumes the task: the deferral's kwargs, and the event.
            value = method(context_for(ti), **(deferred.kwargs or {}), event=payload)
        except AirflowSkipException as skipped:
            outcome, error = "skipped", skipped
        except Exception as failure:
            outcome, error = "failed", failure
    # What the task log gets: the lines the trigger logged, then the last ones its event handed
    # over, which the worker writes first thing on resuming.
    handed = handed_over_lines(payload)
    written = remote_lines(worker_logs)[: len(handed)]
    assert written == handed, f"the worker must write the lines the event handed over: {written} != {handed}"
    return RunResult(outcome, error, payload, remote_lines(logs) + written, logs, ti, value)


def while_running(background: Callable[[], None], work: Callable[[], T]) -> T:
    """Return ``work()``, run while ``background()`` (an outage, say) runs in a thread; wait for both."""
    thread = threading.Thread(target=background)
    thread.start()
    try:
        return work()
    finally:
        thread.join()
