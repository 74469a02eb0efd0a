"""
Which earlier job a new try of a durable task takes over, as pure code.

A try of an ``SSHRemoteJobOperator`` with ``durable=True`` first looks for the job of an
earlier try of the same task instance (in the same *cycle*: a cleared task starts a new one):

- recorded in Airflow's task state store (Airflow >= 3.3), where every try of the cycle keeps
  the :class:`JobRecord` of the job it watches (its own, written *before* that job was
  submitted, so a worker that died between the submit and ``defer()`` left its job findable;
  or the earlier one it took over), with its submit token and, once a try learned it, its
  outcome;
- else by name: job ids are derived from the task instance and the try number, so the jobs of
  earlier tries are known without any store, but not their tokens.

Only a job whose token this try holds is taken over (:func:`decide`): a directory of the same
name without a proven token may be another deployment's, or another run's of the same ids, and
is only reported. What the host says about a proven job then decides: a running job is
re-attached, a job that succeeded is not run again, anything else gets a fresh job. The host
is asked with one script (:func:`build_lookup_script`), whose ``lookup_job`` answers like a poll, or
with the job's ``.ended`` record once its directory was removed.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ssh_jobs_provider.protocol.answers import JobState, JobStatus
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.scripts import as_whole, quote, script_prelude

#: The task state store key of a durable task's jobs.
STATE_KEY = "ssh_remote_job"
#: The key, in the stored value, of every try's record (by try number, as a string).
TRIES_KEY = "tries"


@dataclass(frozen=True)
class JobRecord:
    """
    A try's job, as the task state store keeps it.

    :param job_id: the job's id
    :param base_dir: its base dir
    :param token: its submit token
    :param try_number: the try that submitted it
    :param outcome: ``"success"``, ``"skipped"`` or ``"failed"`` once a try learned it
    :param exit_code: the job's exit code, with the outcome
    """

    job_id: str
    base_dir: str
    token: str
    try_number: int
    outcome: str | None = None
    exit_code: int | None = None

    @property
    def paths(self) -> RemoteJobPaths:
        return RemoteJobPaths(job_id=self.job_id, base_dir=self.base_dir)

    def to_value(self) -> dict[str, Any]:
        """The JSON value stored (``None`` fields left out: the store refuses ``None`` values)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_value(cls, value: Any) -> JobRecord | None:
        """The record a stored value holds, or ``None`` for anything else (never raises)."""
        if not isinstance(value, Mapping):
            return None
        try:
            record = cls(
                job_id=str(value["job_id"]),
                base_dir=str(value["base_dir"]),
                token=str(value["token"]),
                try_number=int(value["try_number"]),
                outcome=None if value.get("outcome") is None else str(value["outcome"]),
                exit_code=None if value.get("exit_code") is None else int(value["exit_code"]),
            )
            record.paths  # noqa: B018  (validates the id and the base dir)
            validate_token(record.token)
        except (KeyError, TypeError, ValueError):
            return None
        return record


def cycle_start(try_number: int, max_tries: int | None, retries: int) -> int:
    """
    The first try of the task instance's current cycle.

    Airflow sets ``max_tries`` to ``retries`` for the first run and to ``try_number +
    retries`` when a task is cleared, so the cycle's first try is ``max_tries - retries + 1``.
    A cleared task must run a fresh job, so earlier cycles are never looked at.
    """
    if max_tries is None:
        return try_number
    return min(try_number, max(1, max_tries - retries + 1))


def records_of(value: Any) -> dict[int, JobRecord]:
    """
    The jobs a stored value holds, by the try that watched each (its own job, or the earlier
    one it took over); the single record that earlier versions stored counts as its own try's.
    Records that do not validate are left out (never raises).
    """
    if not isinstance(value, Mapping):
        return {}
    tries = value.get(TRIES_KEY)
    if not isinstance(tries, Mapping):
        record = JobRecord.from_value(value)
        return {} if record is None else {record.try_number: record}
    found = {}
    for key, item in tries.items():
        try:
            watcher = int(key)
        except (TypeError, ValueError):
            continue
        record = JobRecord.from_value(item)
        # A try watches its own job or an earlier try's, never a later one's.
        if record is not None and 1 <= record.try_number <= watcher:
            found[watcher] = record
    return found


def store_value(records: Mapping[int, JobRecord]) -> dict[str, Any]:
    """
    The value to store for ``records`` (by watching try, at least one): every try's under
    :data:`TRIES_KEY`, and the latest try's at the top level, where earlier versions of this
    provider stored (and read) their one record.
    """
    latest = records[max(records)]
    return {
        **latest.to_value(),
        TRIES_KEY: {str(watcher): record.to_value() for watcher, record in sorted(records.items())},
    }


class Resume(enum.Enum):
    """What a new try does with the job of an earlier one."""

    FRESH = "fresh"  # submit a job of its own
    REATTACH = "reattach"  # watch the earlier job (its whole log, from byte 0) to its end
    DONE = "done"  # the earlier job succeeded (or was skipped) and is gone: end the same way


def decide(status: JobStatus, skip_codes: Container[int], recorded: bool) -> Resume:
    """
    What the host's answer about an earlier try's job means for this try.

    :param recorded: the job came from the task state store, with its token, and the host's
        answer is about the directory that carries that token. A job found by name only
        (``False``) is never taken over, whatever its state: nothing proves it is this task
        instance's.
    """
    if not recorded:
        return Resume.FRESH
    if status.state is JobState.RUNNING:
        return Resume.REATTACH
    # PENDING (a directory without a recorded pid, seconds after its submit) never started its
    # command: its submit was cut short. Taking it over would wait for a job that never comes.
    succeeded = status.state is JobState.EXITED and (status.exit_code == 0 or status.exit_code in skip_codes)
    if succeeded:
        return Resume.DONE if status.removed else Resume.REATTACH
    return Resume.FRESH


def lookup_entries(records: Sequence[JobRecord]) -> list[PollEntry]:
    """The entries :func:`build_lookup_script` answers for (parse with ``parse_batch_output``)."""
    return [PollEntry(record.paths, 0, 0, token=record.token) for record in records]


def build_lookup_script(records: Sequence[JobRecord]) -> str:
    """Script that says what became of each job: entry ``i`` answers with ``key=i``."""
    calls = "".join(
        f"lookup_job {key} {quote(record.paths.job_dir)} {quote(record.token)}\n"
        for key, record in enumerate(records)
    )
    return as_whole(script_prelude() + calls + 'echo "$answer_tag end"\n')
