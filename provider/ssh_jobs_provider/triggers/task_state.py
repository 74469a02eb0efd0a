"""
What Airflow says, from the triggerer, about the task instance of a trigger that is being
cancelled: whether it is still deferred, and in which try. A trigger's ``on_kill`` spares its job
only while the same try is deferred (Airflow 3.3 cancels a trigger that moved to another
triggerer the way it cancels one for a user's action); a later try that is deferred means the
try of this trigger was stopped.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Seconds ``on_kill`` waits for each of Airflow's answers about the task.
TASK_STATE_WAIT_SECONDS = 10.0
#: The XCom in which each try of the operator records its try number before it defers.
TRY_XCOM_KEY = "ssh_remote_job_try"


async def task_now(ti: Any, job_id: str, log: Any) -> tuple[str | None, int | None]:
    """
    The state of task instance ``ti`` (a trigger's, or ``None``) as Airflow has it now and, when
    it is deferred, the try that deferred; ``None`` for what cannot be told.
    """
    if ti is None:
        return None, None
    try:
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

        map_index = ti.map_index if ti.map_index is not None and ti.map_index >= 0 else None
        states = await asyncio.wait_for(
            asyncio.to_thread(
                RuntimeTaskInstance.get_task_states,
                dag_id=ti.dag_id,
                map_index=map_index,
                task_ids=[ti.task_id],
                run_ids=[ti.run_id],
            ),
            TASK_STATE_WAIT_SECONDS,
        )
    except Exception as error:  # cannot tell: take the cancel as the user's, as Airflow says
        log.debug("Could not read the state of the task of remote job %s: %s", job_id, error)
        return None, None
    key = ti.task_id if map_index is None else f"{ti.task_id}_{map_index}"
    found = (states.get(ti.run_id) or {}).get(key)
    state = None if found is None else str(getattr(found, "value", found))
    if state != "deferred":
        return state, None
    try:
        return state, await asyncio.wait_for(asyncio.to_thread(deferred_try, ti), TASK_STATE_WAIT_SECONDS)
    except Exception as error:
        log.debug("Could not read the try of the task of remote job %s: %s", job_id, error)
        return state, None


def deferred_try(ti: Any) -> int | None:
    """
    The try number of task instance ``ti`` while it is deferred, as the try that deferred
    recorded it (the XCom :data:`TRY_XCOM_KEY`), or ``None`` where it did not (a deferral made
    before this provider recorded it).

    Airflow's task API does not tell the triggerer a task instance's try number, but a try's
    XComs are cleared when the next try starts: the one there is the deferred try's own.
    """
    from airflow.sdk.execution_time.xcom import XCom

    value = XCom.get_one(
        key=TRY_XCOM_KEY,
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=ti.map_index if ti.map_index is not None else -1,
    )
    return value if isinstance(value, int) and not isinstance(value, bool) else None
