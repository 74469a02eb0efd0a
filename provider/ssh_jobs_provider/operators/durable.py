"""
The worker's take-over of a job submitted before: an earlier try's (``durable=True``), or this
very try's when Airflow runs its ``execute()`` a second time. It asks the host about the job
and keeps the task state store (:mod:`~ssh_jobs_provider.operators.job_records`) up to date;
the decisions are :mod:`ssh_jobs_provider.protocol.reattach`'s.

Without the store (Airflow 2.11 to 3.2), or for a try whose record is missing, the earlier
jobs are found by name only: they are reported when they run, never taken over.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, replace
from typing import Any

from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.job_spec import JobSpec
from ssh_jobs_provider.operators.job_records import (
    job_id_of,
    job_paths,
    own_job_ids,
    read_records,
    remember,
    unproven_reason,
    watched_record,
)
from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import parse_batch_output
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.reattach import (
    JobRecord,
    Resume,
    build_lookup_script,
    cycle_start,
    decide,
    lookup_entries,
)
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG
from ssh_jobs_provider.protocol.slurm_state import parse_slurm_states, slurm_job_status, slurm_section


@dataclass(frozen=True)
class EarlierJob:
    """An earlier try's job, what the host says about it, and what this try does with it."""

    record: JobRecord
    status: JobStatus | None
    #: It came from the task state store, with its token (else: found by name, never taken over).
    recorded: bool
    resume: Resume = Resume.FRESH
    #: The try whose ``execute()``, run again, found this job it had recorded (see
    #: :func:`rejoin_own_job`); ``None``: an earlier try's job, taken over.
    rejoined_by: int | None = None

    @property
    def log_start(self) -> tuple[bool, int]:
        """
        Where the log of the try that watches this job starts, as the trigger's ``from_start``
        and ``resume_after``. A try that takes an earlier try's job over shows its whole output,
        and a re-created trigger of it resumes at the host's record only beyond what the earlier
        try had delivered; a try that finds its own job again goes on where its log left off; a
        try that finds again a job it had taken over shows the whole output again (the host's
        record cannot tell the two tries' deliveries apart).
        """
        if self.rejoined_by is not None:
            return (False, 0) if self.record.try_number == self.rejoined_by else (True, 0)
        return False, 0 if self.status is None else self.status.delivered


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
    What the host says about each job, over one connection, retried as a submit is (the lookup
    only reads; other errors propagate); with ``slurm``, what Slurm says of it, asked in the same
    exec, in place of its directory's pid and exit code.
    """
    jobs = [record for record, _ in records]
    entries = lookup_entries(jobs)
    script = build_lookup_script(jobs)
    if slurm:
        script += slurm_section([(key, record.paths) for key, record in enumerate(jobs)])

    def lookup() -> bytes:
        # Read-only: asked again after a lost connection or reply, the host answers the same.
        with hook.script_session() as remote:
            return remote.run(script, timeout=timeout)[1]

    stdout = hook.call_with_retries(lookup, "Lookup of this task instance's recorded jobs")
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
    The job submitted before that this ``execute()`` takes over (re-attaches to, or ends like:
    :attr:`EarlierJob.resume`): this very try's (see :func:`rejoin_own_job`), else, with
    ``spec.durable``, an earlier try's; else ``None``, after recording this try's job ``paths``
    and ``token`` before it is submitted, durable or not: a worker that dies before ``defer()``
    then leaves it for the next try, and one that resumes this try (a deferral timeout) finds
    its token. ``hook`` asks the host, only when there is such a job to ask about.
    """
    ti = context["ti"]
    stored = read_records(context, log)
    own = rejoin_own_job(spec, context, stored, hook)
    if own is not None:
        return own
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


def rejoin_own_job(
    spec: JobSpec, context: Any, stored: dict[int, JobRecord] | None, hook: SSHHook
) -> EarlierJob | None:
    """
    The job this very try recorded before, when its ``execute()`` runs again: Airflow re-runs a
    task from the start when its resumption fails early (e.g. "Dag not found during start up",
    a DAG file that took too long to import on a loaded worker), with the same try number. That
    job is this try's, whatever the host says of it: watched again when it runs or ended (a
    failure included), ended like when it succeeded and is gone, and submitted again under its
    own token only when it never started (``FRESH``: the submit then re-attaches if it had). Never
    a second job for one try, ``durable`` or not.
    """
    ti = context["ti"]
    record = (stored or {}).get(ti.try_number)
    if record is None or record.base_dir != spec.base_dir or record.job_id not in own_job_ids(ti):
        return None
    (job,) = ask_host(hook, [(record, True)], spec.command_timeout, spec.slurm is not None)
    assert job.status is not None
    if job.status.state is JobState.FOREIGN:
        return None  # another submit's directory: this try's own submit then says so, and stops
    resume = decide(job.status, spec.skip_on_exit_code, recorded=True)
    if resume is Resume.FRESH and (job.status.state is JobState.EXITED or job.status.removed):
        resume = (
            Resume.REATTACH
        )  # it ran (and failed, or vanished): this try's outcome, not a reason to run again
    if resume is Resume.FRESH and record.job_id != job_id_of(ti, ti.try_number):
        return None  # an earlier try's job it had taken over, gone: this try submits its own
    return replace(job, resume=resume, rejoined_by=ti.try_number)


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
    follows = "its whole output follows"
    if job.rejoined_by == record.try_number:  # this try's own job, found again
        what = f"is this try's, {'ended' if status.state is JobState.EXITED else status.state.value}: watching it again"
        follows = "its output goes on where this try's log left it"
    return (f"Remote job {record.job_id} of try {record.try_number} {what}; {follows}.", skipped, code)


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
