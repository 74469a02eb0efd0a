"""
``durable=True`` in the worker: find the job of an earlier try, ask the host about it, and keep
the task state store up to date. The decisions are :mod:`ssh_jobs_provider.protocol.reattach`'s.

The store is Airflow's task state store (``context["task_state_store"]``, Airflow >= 3.3). Every
try of the cycle keeps there the job it watches, with its submit token, durable or not: a later
try proves its earlier tries' jobs with those tokens, and a worker that resumes the same try
(a deferral timeout) kills its job with it. Without the store (Airflow 2.11 to 3.2), or for a try
whose record is missing, the earlier jobs are found by name only: they are reported when they
run, never taken over. Store failures never fail a task: they are logged, and the try goes on
as a non-durable one would.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, replace
from typing import Any

from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.job_spec import JobSpec
from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError, parse_batch_output
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, make_job_id, validate_token
from ssh_jobs_provider.protocol.reattach import (
    STATE_KEY,
    JobRecord,
    Resume,
    build_lookup_script,
    cycle_start,
    decide,
    lookup_entries,
    records_of,
    store_value,
)
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG
from ssh_jobs_provider.protocol.slurm import slurm_section
from ssh_jobs_provider.protocol.slurm_state import parse_slurm_states, slurm_job_status


@dataclass(frozen=True)
class EarlierJob:
    """An earlier try's job, what the host says about it, and what this try does with it."""

    record: JobRecord
    status: JobStatus | None
    #: It came from the task state store, with its token (else: found by name, never taken over).
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


def event_paths(event: dict[str, Any], context: Any, base_dir: str) -> RemoteJobPaths:
    """The job a trigger event speaks of: this task instance's own (of any try so far)."""
    paths = RemoteJobPaths.from_job_dir(str(event["job_dir"]), base_dir)
    if paths.job_id not in own_job_ids(context["ti"]) or event["job_id"] != paths.job_id:
        expected = job_paths(context["ti"], base_dir)
        raise RemoteJobError(
            f"Refusing a trigger event for job {event['job_id']!r} in {event['job_dir']!r}: this task "
            f"instance's job is {expected.job_id!r} in {expected.job_dir!r}. Nothing was killed or removed."
        )
    return paths


def retry_follows(context: Any, retries: int | None) -> bool:
    """Whether Airflow retries this task instance if this try fails (as its ``handle_failure`` decides)."""
    ti = context["ti"]
    # What the API server told this try (Airflow 3.3 weighs a retry policy in too), when known.
    server = getattr(ti, "_ti_context_from_server", None)
    if getattr(server, "should_retry", None) is not None:
        return bool(server.should_retry)  # type: ignore[union-attr]
    max_tries = getattr(ti, "max_tries", None)
    return bool(retries) and max_tries is not None and ti.try_number <= max_tries


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


def earlier_records(
    context: Any, base_dir: str, retries: int, stored: dict[int, JobRecord] | None
) -> list[tuple[JobRecord, bool]]:
    """
    The jobs of this cycle's earlier tries, each with whether it came from the task state store
    (with its token): the stored ones first, newest try first, then every earlier try's job that
    has no record, by name (reported if it runs, never taken over).
    """
    ti = context["ti"]
    first = cycle_start(ti.try_number, getattr(ti, "max_tries", None), retries)
    if ti.try_number <= first:
        return []
    proven: dict[str, JobRecord] = {}
    for watcher in sorted(stored or {}, reverse=True):
        record = (stored or {})[watcher]
        if (
            first <= record.try_number <= watcher < ti.try_number
            and record.base_dir == base_dir
            and record.job_id == job_id_of(ti, record.try_number)
        ):
            proven.setdefault(record.job_id, record)
    by_name = [
        JobRecord(job_id_of(ti, n), base_dir, "", n)
        for n in range(ti.try_number - 1, first - 1, -1)
        if job_id_of(ti, n) not in proven
    ]
    return [(r, True) for r in proven.values()] + [(r, False) for r in by_name]


def ask_host(
    hook: SSHHook, records: list[tuple[JobRecord, bool]], timeout: float, slurm: bool = False
) -> list[EarlierJob]:
    """
    What the host says about each job, over one connection (errors propagate); with ``slurm``,
    what Slurm says of it, asked in the same exec, in place of its directory's pid and exit code.
    """
    jobs = [record for record, _ in records]
    entries = lookup_entries(jobs)
    script = build_lookup_script(jobs)
    if slurm:
        script += slurm_section([(key, record.paths) for key, record in enumerate(jobs)])
    with hook.script_session() as remote:
        _, stdout, _ = remote.run(script, timeout=timeout)
    results = parse_batch_output(stdout, entries)
    queued = parse_slurm_states(stdout, PROTOCOL_TAG) if slurm else {}
    found = []
    for key, (record, recorded) in enumerate(records):
        result = results[key]
        if isinstance(result, RemoteJobProtocolError):
            raise result
        assert isinstance(result, JobStatus)
        if slurm:
            result = slurm_job_status(result, queued.get(key))
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
    stored: dict[int, JobRecord] | None,
    slurm: bool = False,
) -> EarlierJob | None:
    """
    The earlier try's job this try takes over (re-attaches to, or ends like), or ``None``.

    Only a job recorded with its token in the task state store is taken over. Asks the host
    over one connection, and only when there is an earlier job to ask about; an outcome already
    in the store needs no connection at all. An earlier try's job found by name only is reported
    when it still runs, and left alone.
    """
    records = earlier_records(context, base_dir, retries, stored)
    if not records:
        return None
    first, recorded = records[0]
    if recorded and first.outcome in ("success", "skipped"):
        return EarlierJob(first, None, recorded, Resume.DONE)
    taken = None
    for job in ask_host(hook, records, timeout, slurm):
        assert job.status is not None
        if not job.recorded:
            _report_unproven(job, unproven_reason(context, stored), log)
            continue
        if job.status.state is JobState.FOREIGN:
            log.info(
                "The job directory of try %d, %s, carries another submit's token: it is not this task "
                "instance's job (another deployment's, or an earlier run's of the same ids), and is left alone.",
                job.record.try_number,
                job.record.paths.job_dir,
            )
            continue
        resume = decide(job.status, skip_codes, job.recorded)
        if taken is None and resume is not Resume.FRESH:
            taken = replace(job, resume=resume)
    return taken


def _report_unproven(job: EarlierJob, why: str, log: Any) -> None:
    """Say that a job of an earlier try's name runs, and why this try leaves it alone."""
    assert job.status is not None
    if job.status.state not in (JobState.RUNNING, JobState.PENDING):
        return
    log.warning(
        "Remote job %s (the job directory of try %d, %s) is %s, but this try cannot prove that it is this task "
        "instance's: %s. It may be another deployment's job of the same name, so it is not re-attached, killed "
        "or removed, and this try starts a job of its own. If it is this task's job, two copies now run: "
        "kill the older one on the host (airflow-ssh-jobs status lists it).",
        job.record.job_id,
        job.record.try_number,
        job.record.paths.job_dir,
        job.status.state.value,
        why,
    )


def take_over_or_remember(
    spec: JobSpec, context: Any, paths: RemoteJobPaths, token: str, hook: SSHHook, log: Any
) -> EarlierJob | None:
    """
    With ``spec.durable``, the earlier try's job this try takes over (re-attaches to, or ends
    like: :attr:`EarlierJob.resume`); else ``None``, after recording this try's job ``paths`` and
    ``token`` before it is submitted, durable or not: a worker that dies before ``defer()`` then
    leaves it for the next try, and one that resumes this try (a deferral timeout) finds its token.
    ``hook`` asks the host, only when an earlier try's job needs asking about.
    """
    ti = context["ti"]
    # The first try of a cycle has no earlier try whose record it must keep or look at.
    first = cycle_start(ti.try_number, getattr(ti, "max_tries", None), spec.retries)
    stored = read_records(context, log) if ti.try_number > first else {}
    if spec.durable:
        found = find_earlier_job(
            context,
            spec.base_dir,
            spec.retries,
            spec.skip_on_exit_code,
            hook,
            spec.command_timeout,
            log,
            stored,
            slurm=spec.slurm is not None,
        )
        if found is not None:
            if found.resume is Resume.REATTACH:
                # This try now watches that job: a worker that resumes this try kills it with its token.
                remember(context, stored, found.record, spec.retries, log)
            return found
    remember(
        context, stored, JobRecord(paths.job_id, paths.base_dir, token, ti.try_number), spec.retries, log
    )
    return None


def describe_take_over(job: EarlierJob, skip_codes: Container[int]) -> tuple[str, bool, int | None]:
    """What the log says of a take-over, whether the earlier job ended with a skip code, and its
    exit code (the host's when it answered, else the store's)."""
    record, status = job.record, job.status
    code = record.exit_code if status is None else status.exit_code
    skipped = record.outcome == "skipped" or code in skip_codes
    if job.resume is Resume.DONE:
        what = "ended with a skip code" if skipped else "succeeded"
        return (
            f"Remote job {record.job_id} of try {record.try_number} already {what} (exit code {code}): not "
            f"running it again. Its output is in the log of try {record.try_number}.",
            skipped,
            code,
        )
    assert status is not None
    if status.state is JobState.EXITED:
        ended = "ended with a skip code" if skipped else "succeeded"
        what = f"already {ended} (exit code {status.exit_code}): not running it again"
    else:
        what = f"is still {status.state.value}: re-attaching to it instead of starting another"
    return (
        f"Remote job {record.job_id} of try {record.try_number} {what}; its whole output follows.",
        skipped,
        code,
    )


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


def left_for_the_next_try(spec: JobSpec, context: Any, paths: RemoteJobPaths, log: Any) -> bool:
    """
    Whether job ``paths``, whose watch was lost, is left running for the next try to re-attach
    to: with ``spec.durable``, when a retry follows and can prove the job its task instance's
    (the task state store keeps it, with its token, for this try).
    """
    if not (spec.durable and retry_follows(context, spec.retries)):
        return False
    record = watched_record(context, log)
    return record is not None and record.job_id == paths.job_id


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
