"""
``durable=True`` in the worker: find the job of an earlier try, ask the host about it, and keep
the task state store up to date. The decisions are :mod:`ssh_jobs_provider.protocol.reattach`'s.

The store is Airflow's task state store (``context["task_state_store"]``, Airflow >= 3.3).
Without it (Airflow 3.1/3.2) the earlier tries' jobs are found by name, and only a running one
is taken over. Store failures never fail a task: they are logged, and the try goes on as a
non-durable one would.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, replace
from typing import Any

from ssh_jobs_provider._compat import AirflowSkipException
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError, parse_batch_output
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, make_job_id
from ssh_jobs_provider.protocol.reattach import (
    STATE_KEY,
    JobRecord,
    Resume,
    build_lookup_script,
    cycle_start,
    decide,
    lookup_entries,
)


@dataclass(frozen=True)
class EarlierJob:
    """An earlier try's job, what the host says about it, and what this try does with it."""

    record: JobRecord
    status: JobStatus | None
    #: It came from the task state store (with its token).
    recorded: bool
    resume: Resume = Resume.FRESH


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


def retry_follows(context: Any, retries: int | None) -> bool:
    """Whether Airflow retries this task instance if this try fails (as its ``handle_failure`` decides)."""
    ti = context["ti"]
    # What the API server told this try (Airflow 3.3 weighs a retry policy in too), when known.
    server = getattr(ti, "_ti_context_from_server", None)
    if getattr(server, "should_retry", None) is not None:
        return bool(server.should_retry)  # type: ignore[union-attr]
    max_tries = getattr(ti, "max_tries", None)
    return bool(retries) and max_tries is not None and ti.try_number <= max_tries


def earlier_records(context: Any, base_dir: str, retries: int, log: Any) -> list[tuple[JobRecord, bool]]:
    """
    The jobs of this cycle's earlier tries, each with whether it came from the task state store:
    the stored one first (with its token and outcome), then every earlier try's by name, newest
    first (a store that cannot be read, or a record one try could not write, misses none).
    """
    ti = context["ti"]
    first = cycle_start(ti.try_number, getattr(ti, "max_tries", None), retries)
    if ti.try_number <= first:
        return []
    by_name = [JobRecord(job_id_of(ti, n), base_dir, "", n) for n in range(ti.try_number - 1, first - 1, -1)]
    record = None
    store = state_store(context)
    if store is not None:
        try:
            record = JobRecord.from_value(store.get(STATE_KEY))
        except Exception as error:  # the store is down: the names still find running jobs
            log.warning(
                "Could not read the task state store (%s): looking for earlier jobs by name only.", error
            )
        if record is not None and not (
            first <= record.try_number < ti.try_number and record.base_dir == base_dir
        ):
            record = None
    if record is None:
        return [(r, False) for r in by_name]
    return [(record, True), *((r, False) for r in by_name if r.job_id != record.job_id)]


def ask_host(hook: SSHHook, records: list[tuple[JobRecord, bool]], timeout: float) -> list[EarlierJob]:
    """What the host says about each job, over one connection (errors propagate)."""
    jobs = [record for record, _ in records]
    entries = lookup_entries(jobs)
    with hook.connect_with(hook.settings) as client:
        _, stdout, _ = hook.run_script(client, build_lookup_script(jobs), timeout=timeout)
    results = parse_batch_output(stdout, entries)
    found = []
    for key, (record, recorded) in enumerate(records):
        result = results[key]
        if isinstance(result, RemoteJobProtocolError):
            raise result
        assert isinstance(result, JobStatus)
        found.append(EarlierJob(record, result, recorded))
    return found


def find_earlier_job(
    context: Any,
    base_dir: str,
    retries: int,
    skip_codes: Container[int],
    hook: SSHHook,
    timeout: float,
    log: Any,
) -> EarlierJob | None:
    """
    The earlier try's job this try takes over (re-attaches to, or ends like), or ``None``.

    Asks the host over one connection, and only when there is an earlier job to ask about; an
    outcome already in the store needs no connection at all.
    """
    records = earlier_records(context, base_dir, retries, log)
    if not records:
        return None
    first, recorded = records[0]
    if recorded and first.outcome in ("success", "skipped"):
        return EarlierJob(first, None, recorded, Resume.DONE)
    for job in ask_host(hook, records, timeout):
        assert job.status is not None
        resume = decide(job.status, skip_codes, job.recorded)
        if resume is not Resume.FRESH:
            return replace(job, resume=resume)
    return None


def take_over_or_remember(op: Any, context: Any, paths: RemoteJobPaths, token: str) -> bool:
    """
    Take over an earlier try's job (``True``), or record this try's job ``paths`` before it is
    submitted (``False``): a worker that dies before ``defer()`` then leaves it for the next try.
    """
    if take_over_earlier_job(op, context):
        return True
    remember(context, JobRecord(paths.job_id, paths.base_dir, token, context["ti"].try_number), op.log)
    return False


def take_over_earlier_job(op: Any, context: Any) -> bool:
    """
    Re-attach operator ``op`` to (or end it like) an earlier try's job; ``False``: this try
    needs a job of its own.
    """
    found = find_earlier_job(
        context,
        op._base_dir(),
        op.retries or 0,
        op.skip_on_exit_code,
        op._hook(op.conn_retry_attempts),
        op.command_timeout,
        op.log,
    )
    if found is None:
        return False
    record, status = found.record, found.status
    if found.resume is Resume.DONE:
        code = record.exit_code if status is None else status.exit_code
        skipped = record.outcome == "skipped" or code in op.skip_on_exit_code
        if op.do_xcom_push:
            op._push_job(context, record.paths, op.remote_host, None)
        op.log.info(
            "Remote job %s of try %d already %s (exit code %s): not running it again. Its output is in the "
            "log of try %d.",
            record.job_id,
            record.try_number,
            "ended with a skip code" if skipped else "succeeded",
            code,
            record.try_number,
        )
        if skipped:
            raise AirflowSkipException(f"Remote job {record.job_id} exited with skip code {code}")
        return True
    assert status is not None
    if status.state is JobState.EXITED:
        ended = "ended with a skip code" if status.exit_code in op.skip_on_exit_code else "succeeded"
        what = f"already {ended} (exit code {status.exit_code}): not running it again"
    else:
        what = f"is still {status.state.value}: re-attaching to it instead of starting another"
    op.log.info(
        "Remote job %s of try %d %s; its whole output follows.", record.job_id, record.try_number, what
    )
    op._paths, op._token = record.paths, record.token
    if op.do_xcom_push:
        op._push_job(context, record.paths, op.remote_host, status.pid)
    op._defer(op._trigger(record.paths, log_offset=0, from_start=True))
    return True


def remember(context: Any, record: JobRecord, log: Any) -> None:
    """Store this try's job in the task state store (before it is submitted), when there is one."""
    store = state_store(context)
    if store is None:
        return
    try:
        store.set(STATE_KEY, record.to_value())
    except Exception as error:  # never fail the task for it: it only loses its durability
        log.warning("Could not record remote job %s in the task state store: %s", record.job_id, error)


def remember_outcome(context: Any, job_id: str, outcome: str, exit_code: int | None, log: Any) -> None:
    """Add the outcome to the stored record of job ``job_id`` (a later try then knows it)."""
    store = state_store(context)
    if store is None:
        return
    try:
        record = JobRecord.from_value(store.get(STATE_KEY))
        if record is not None and record.job_id == job_id:
            store.set(STATE_KEY, replace(record, outcome=outcome, exit_code=exit_code).to_value())
    except Exception as error:
        log.warning(
            "Could not record the outcome of remote job %s in the task state store: %s", job_id, error
        )
