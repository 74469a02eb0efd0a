"""
What a watching trigger is handed (:class:`Delivery`), and the texts of the final outcomes a
watch decides on (:mod:`~ssh_jobs_provider.triggers.watch`). Pure code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssh_jobs_provider.exceptions import FAN_OUT_HINT
from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import BatchNotAnswered
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.monitor import Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.refusals import POSIX_HINT, refusal_message
from ssh_jobs_provider.protocol.slurm_options import SLURM_REFUSALS, SlurmSpec
from ssh_jobs_provider.protocol.slurm_options import refusal_message as slurm_refusal_message
from ssh_jobs_provider.protocol.submit import SubmitRefused


@dataclass
class Delivery:
    """
    What a watching trigger receives: log lines, warnings, and at the end its result.

    :param lines: log lines for the task log
    :param warnings: warnings for the task log (failed polls, a cleanup refused)
    :param progress: where the job stands, for the task log at info level (a Slurm job's state)
    :param log_offset: the log offset after these lines
    :param outcome: the final outcome (the last delivery only)
    :param cleaned_up: ``True``/``False`` once a requested cleanup ran or gave up; ``None`` if none was requested
    :param submitted: the answer of the job's submit (the delivery of the batch that submitted it)
    """

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Where the job stands, for the task log at info level (a Slurm job's state, once per change).
    progress: list[str] = field(default_factory=list)
    log_offset: int = 0
    outcome: Outcome | None = None
    #: ``True``/``False`` once a requested cleanup ran or gave up; ``None`` if none was requested.
    cleaned_up: bool | None = None
    #: The answer of the job's submit, in the delivery of the batch that submitted it.
    submitted: JobStatus | None = None


def refused_outcome(
    job: RemoteJobPaths, refused: SubmitRefused, slurm: SlurmSpec | None, sent_before: bool
) -> Outcome:
    """
    The outcome of a submit the host refused (before anything ran; what it created was removed
    again). Refused at its first send, nothing ran; refused when sent again (``sent_before``),
    an earlier send whose answer was lost may have started the job: it is killed like a lost one.
    """
    if slurm is not None and refused.code in SLURM_REFUSALS:
        message = slurm_refusal_message(job, refused, slurm.options)
    else:
        message = refusal_message(job, refused)
    return Outcome(OutcomeStatus.ERROR, None, message, never_started=not sent_before)


def not_submitted_outcome(job: RemoteJobPaths, failures: int, sent: bool, error: BaseException) -> Outcome:
    """
    The outcome of a submit the triggerer could not get answered after ``failures`` attempts;
    ``sent``: one of them reached the host (the job may have started).
    """
    if sent:
        started = (
            f"The submit reached the host but its answer did not come back: the job may have started "
            f"in {job.job_dir}."
        )
    else:
        started = "No job was started."
    hint = POSIX_HINT if isinstance(error, RemoteJobProtocolError) else FAN_OUT_HINT
    return Outcome(
        OutcomeStatus.ERROR,
        None,
        f"Could not submit remote job {job.job_id} ({failures} failed attempt(s); "
        f"{type(error).__name__}: {error}). {started} {hint}",
        never_started=not sent,
    )


def lost_outcome(job: RemoteJobPaths, failures: int, reconnects: int, error: BaseException) -> Outcome:
    """
    The outcome of a job whose polls failed ``failures`` times in a row, its whole budget of
    ``reconnects`` reconnect attempts: it may still be running.
    """
    if isinstance(error, BatchNotAnswered):
        lost = (
            f"The host stopped answering the polls of remote job {job.job_id}: "
            f"{failures} batches in a row were answered for no job ({error})."
        )
    else:
        lost = (
            f"Lost the SSH connection while watching remote job {job.job_id} and could not restore "
            f"it after {reconnects} reconnect attempt(s) ({type(error).__name__}: {error})."
        )
    return Outcome(
        OutcomeStatus.ERROR,
        None,
        f"{lost} The job may still be running in {job.job_dir}. {FAN_OUT_HINT}",
        watch_lost=True,
    )
