"""
The submit and the cancel of jobs through Slurm (``scheduler="slurm"``), built from
``sh/slurm.sh``, and the submit's answer parsed. Pure code.

The options are validated by :mod:`~ssh_jobs_provider.protocol.slurm_options`; the one state
query of a tick is built and read by :mod:`~ssh_jobs_provider.protocol.slurm_state`.

A Slurm job keeps the job directory of a detached one (token, command, ``stdout.log``), plus
``batch.sh`` (the command as the batch script, given an interpreter line when it has none) and
``slurm_job`` (the id sbatch answered). Its log is ``sbatch --output``, so it streams into the
task log exactly as a detached job's does; its outcome is Slurm's record of it
(:mod:`~ssh_jobs_provider.protocol.slurm_state`), not a file the job wrote. The job directory
must be on a file system the compute nodes share with the login node (``remote_base_dir``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, find_header
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.scripts import as_whole, job_files, quote, script_prelude, shell_source
from ssh_jobs_provider.protocol.submit import SubmitEntry, SubmitRefused, sh_submit_steps, submit_refusal


def slurm_launch(arguments: Sequence[str]) -> str:
    """The launch of a Slurm job (see :func:`~ssh_jobs_provider.protocol.submit.sh_submit_steps`): sbatch it."""
    return f"  slurm_launch {' '.join(quote(a) for a in arguments)}\n"


def build_slurm_submit_script(
    paths: RemoteJobPaths,
    command: str,
    environment: Mapping[str, str],
    token: str,
    working_dir: str | None,
    arguments: Sequence[str],
) -> str:
    """
    Script that creates the job directory and submits the job with sbatch, idempotently.

    The same checks and files as a detached submit (:func:`~ssh_jobs_provider.protocol.submit.build_submit_script`);
    a re-sent submit finds the job claimed and answers the id recorded then, instead of
    queueing a second job. A refused sbatch removes what this submit created and answers
    ``submit error=sbatch`` with sbatch's own words. Parse with
    :func:`~ssh_jobs_provider.protocol.slurm.parse_slurm_submit_output`.

    :param arguments: from :func:`~ssh_jobs_provider.protocol.slurm_options.sbatch_arguments`
    """
    files = job_files(command, environment, working_dir, token)
    return as_whole(
        "umask 077\n"
        + script_prelude()
        + shell_source("submit.sh")
        + shell_source("slurm.sh")
        + sh_submit_steps(paths, token, files, slurm_launch(arguments), "slurm_submitted")
    )


@dataclass(frozen=True)
class SlurmSubmitCall:
    """
    One Slurm submit in a tick's batch (the triggerer submits).

    :param key: the batch entry's key
    :param paths: the job's paths
    :param token: the submit's token
    :param files: the job's files (:func:`~ssh_jobs_provider.protocol.scripts.job_files`)
    :param arguments: from :func:`~ssh_jobs_provider.protocol.slurm_options.sbatch_arguments`
    """

    key: int
    paths: RemoteJobPaths
    token: str
    files: tuple[tuple[str, str], ...]
    arguments: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlurmSubmitEntry(SubmitEntry):
    """
    A batch's :class:`~ssh_jobs_provider.protocol.submit.SubmitEntry` whose job is queued with
    ``sbatch`` (``scheduler="slurm"``) instead of started detached (:func:`slurm_batch_submits`).

    :param arguments: the sbatch arguments (:func:`~ssh_jobs_provider.protocol.slurm_options.sbatch_arguments`)
    """

    arguments: tuple[str, ...] = ()


def slurm_batch_submits(calls: Sequence[SlurmSubmitCall]) -> str:
    """
    The lines of a batch that submit ``calls`` with sbatch, before the batch's polls.

    Each in a subshell of its own, as the detached submits of a batch (a refusal ends that one
    only, framed ``submit key=K error=sbatch``); then one ``submit key=K launched=0|1`` line per
    submit that was not refused, and the batch's poll of each job follows. Needs the prelude
    before it. Always in ``sh``, whatever runs the polls: each submit is an ``sbatch`` process
    anyway.
    """
    if not calls:
        return ""
    head = shell_source("submit.sh") + shell_source("slurm.sh") + "whoami_uid\nsubmitted_keys=\n"
    bases = "".join(f"check_base_once {quote(base)}\n" for base in sorted({c.paths.base_dir for c in calls}))
    body = [
        f"(\numask 077\nbatch_key={int(call.key)}\n"
        + sh_submit_steps(call.paths, call.token, call.files, slurm_launch(call.arguments), "submitted")
        + f")\nsubmit_ended $? {int(call.key)} {quote(call.paths.job_dir)}\n"
        for call in calls
    ]
    # The detached submits of the same batch (if any) answer their own: submitted_keys starts empty again.
    return head + bases + "".join(body) + "answer_submits\nsubmitted_keys=\n"


def build_slurm_cancel_script(paths: RemoteJobPaths, token: str) -> str:
    """
    Script that scancels the job's Slurm job, if its directory carries ``token``.

    Answers like the kill script (parse with :func:`~ssh_jobs_provider.protocol.kill.parse_kill_answer`):
    ``cancelled``, ``not-started``, ``missing``, ``foreign`` or ``failed``.
    """
    validate_token(token)
    return as_whole(
        script_prelude() + shell_source("slurm.sh") + f"slurm_cancel {quote(paths.job_dir)} {quote(token)}\n"
    )


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class SlurmSubmitted:
    """
    A submit's answer.

    :param slurm_job_id: the id Slurm gave the job (``""``: a re-sent submit found the job
        claimed by one still running sbatch)
    :param launched: this submit queued the job (``False``: it re-attached to the one queued before)
    :param remote_os: ``uname -s`` of the login node
    """

    slurm_job_id: str
    launched: bool
    remote_os: str | None = None


def slurm_submit_status(answer: SlurmSubmitted) -> JobStatus:
    """A submit's answer as the operator reads a detached submit's: queued (pending), no pid."""
    return JobStatus(JobState.PENDING, launched=answer.launched, remote_os=answer.remote_os)


def parse_slurm_submit_output(output: bytes) -> SlurmSubmitted:
    """The submit's answer; raises :class:`~ssh_jobs_provider.protocol.submit.SubmitRefused` on a refusal."""
    fields, rest = find_header(output, "submit")
    refusal = submit_refusal(fields, rest)
    if refusal is not None:
        raise refusal
    slurm_job_id = fields.get("slurm", "")
    if slurm_job_id and not slurm_job_id.isdigit():
        raise SubmitRefused("io", f"sbatch answered a job id that is not a number: {slurm_job_id!r}")
    return SlurmSubmitted(slurm_job_id, fields.get("launched") == "1", fields.get("os") or None)
