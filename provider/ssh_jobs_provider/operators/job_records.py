"""
What the task state store keeps of a task instance's remote jobs, and which job is which try's.

The store is Airflow's task state store (``context["task_state_store"]``, Airflow >= 3.3). Every
try of the cycle keeps there the job it watches, with its submit token (its own job, or an
earlier try's that it took over): a later try proves its earlier tries' jobs with those tokens,
a worker that resumes the same try (a deferral timeout) kills its job with it, and a try whose
``execute()`` runs a second time finds the job it already submitted. Store failures never fail a
task: they are logged, and the try goes on as without a store.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ssh_jobs_provider.protocol.identity import RemoteJobPaths, make_job_id, validate_token
from ssh_jobs_provider.protocol.reattach import STATE_KEY, JobRecord, cycle_start, records_of, store_value


def state_store(context: Any) -> Any:
    """The task state store of this task instance, or ``None`` (Airflow < 3.3)."""
    getter = getattr(context, "get", None)
    return getter("task_state_store") if getter else None


def job_id_of(ti: Any, try_number: int) -> str:
    """The job id of try ``try_number`` of task instance ``ti``."""
    map_index = ti.map_index if ti.map_index is not None else -1
    return make_job_id(ti.dag_id, ti.task_id, ti.run_id, map_index, try_number)


def job_paths(ti: Any, base_dir: str, try_number: int | None = None) -> RemoteJobPaths:
    """The job of try ``try_number`` (default: the current one) of task instance ``ti``."""
    return RemoteJobPaths(job_id=job_id_of(ti, try_number or ti.try_number), base_dir=base_dir)


def own_job_ids(ti: Any) -> set[str]:
    """The job ids of every try of ``ti`` so far: an event may name any of them."""
    return {job_id_of(ti, n) for n in range(1, ti.try_number + 1)}


def read_records(context: Any, log: Any) -> dict[int, JobRecord] | None:
    """
    Every try's job as the task state store holds it, by the try that watched it; ``None``
    without a store (Airflow < 3.3) or when it cannot be read (logged).
    """
    store = state_store(context)
    if store is None:
        return None
    try:
        return records_of(store.get(STATE_KEY))
    except Exception as error:  # the store is down: nothing earlier can be proven this task's
        log.warning(
            "Could not read the task state store (%s): no earlier try's job can be proven to be this task "
            "instance's.",
            error,
        )
        return None


def unproven_reason(context: Any, stored: dict[int, JobRecord] | None) -> str:
    """Why a job found by name has no token this try can prove it with."""
    if state_store(context) is None:
        return "this Airflow has no task state store to keep its submit token (Airflow 3.3 and later keep it)"
    if stored is None:
        return "the task state store, which keeps the submit tokens, could not be read"
    return "the task state store holds no submit token for it"


def remember(
    context: Any, stored: dict[int, JobRecord] | None, record: JobRecord, retries: int, log: Any
) -> None:
    """
    Store ``record`` as the job this try watches, beside the earlier tries' of the cycle
    (``stored``, as read at the start of this try), when there is a store.
    """
    store = state_store(context)
    if store is None:
        return
    ti = context["ti"]
    first = cycle_start(ti.try_number, getattr(ti, "max_tries", None), retries)
    # Earlier cycles' records are never looked at again: they are not kept.
    records = {watcher: kept for watcher, kept in (stored or {}).items() if first <= watcher < ti.try_number}
    records[ti.try_number] = record
    try:
        store.set(STATE_KEY, store_value(records))
    except Exception as error:  # never fail the task for it: it only loses its durability
        log.warning("Could not record remote job %s in the task state store: %s", record.job_id, error)


def watched_record(context: Any, log: Any) -> JobRecord | None:
    """The job this try watches, as the task state store has it (with its token), or ``None``."""
    ti = context["ti"]
    record = (read_records(context, log) or {}).get(ti.try_number)
    if record is None or record.job_id not in own_job_ids(ti):
        return None
    return record


def watched_job(context: Any, base_dir: str, log: Any) -> tuple[RemoteJobPaths, str]:
    """
    The job this try watched (its own, or the one it took over) and its token, for a worker that
    resumes the try without an event (a deferral timeout): as the task state store has them; else
    this try's own job, with no token (nothing is then killed or removed).
    """
    record = watched_record(context, log)
    if record is None:
        return job_paths(context["ti"], base_dir), ""
    return record.paths, record.token


def token_of(
    context: Any, paths: RemoteJobPaths, deferred_token: str, submitted: tuple[RemoteJobPaths, str], log: Any
) -> str:
    """
    The submit token of job ``paths`` in a worker that resumes a try: the one the try deferred
    with, else the one of the job this process ``submitted`` (or took over) when it is that job,
    else the task state store's; ``""`` when none is known, and then nothing is killed or removed.
    """
    if deferred_token:
        return validate_token(deferred_token)
    submitted_paths, submitted_token = submitted
    if submitted_token and submitted_paths == paths:
        return submitted_token
    record = watched_record(context, log)
    return record.token if record is not None and record.job_id == paths.job_id else ""


def remember_outcome(context: Any, job_id: str, outcome: str, exit_code: int | None, log: Any) -> None:
    """Add the outcome to every stored record of job ``job_id`` (a later try then knows it)."""
    store = state_store(context)
    if store is None:
        return
    try:
        records = records_of(store.get(STATE_KEY))
        if any(record.job_id == job_id for record in records.values()):
            records = {
                watcher: replace(record, outcome=outcome, exit_code=exit_code)
                if record.job_id == job_id
                else record
                for watcher, record in records.items()
            }
            store.set(STATE_KEY, store_value(records))
    except Exception as error:
        log.warning(
            "Could not record the outcome of remote job %s in the task state store: %s", job_id, error
        )
