"""
What a Slurm submit answers, and what a refused one tells the user. Pure code.

Apart from :mod:`~ssh_jobs_provider.protocol.slurm` (which builds the scripts, and which the
batch module imports) because this reads answers, as :mod:`~ssh_jobs_provider.protocol.answers` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, SubmitRefused, find_header
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.slurm import option_name


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
    """The submit's answer; raises :class:`~ssh_jobs_provider.protocol.answers.SubmitRefused` on a refusal."""
    fields, rest = find_header(output, "submit")
    if fields.get("error"):
        detail = rest.decode("utf-8", errors="replace").strip().splitlines()
        raise SubmitRefused(fields["error"], detail[0] if detail else "no reason given")
    slurm_job_id = fields.get("slurm", "")
    if slurm_job_id and not slurm_job_id.isdigit():
        raise SubmitRefused("io", f"sbatch answered a job id that is not a number: {slurm_job_id!r}")
    return SlurmSubmitted(slurm_job_id, fields.get("launched") == "1", fields.get("os") or None)


#: The refusal codes of a Slurm submit (the others are a detached submit's too: unsafe, foreign, ...).
SLURM_REFUSALS = frozenset({"sbatch", "noslurm"})

#: What a refusal's words say about which option to fix (sbatch's messages, lower-cased).
_REFUSAL_HINTS = (
    ("partition", ("partition",)),
    ("time", ("time limit", "timelimit", "time_limit")),
    ("gres", ("gres", "generic resource", "gpu")),
    ("account", ("account",)),
    ("qos", ("qos",)),
    ("mem", ("memory", "mem ")),
    ("nodes", ("node count", "nodes")),
    ("cpus-per-task", ("cpu count", "cpus")),
    ("constraint", ("feature", "constraint")),
    ("reservation", ("reservation",)),
)


def refusal_message(
    paths: RemoteJobPaths, refused: SubmitRefused, options: Mapping[str, object] | None
) -> str:
    """What a refused sbatch tells the user: sbatch's words, and the ``scheduler_options`` entry to fix."""
    nothing = "Nothing was queued and nothing was left behind."
    if refused.code == "noslurm":
        return (
            f"Could not submit remote job {paths.job_id} to Slurm: {refused.detail}. Make the Slurm commands "
            "available to non-interactive logins (e.g. PATH in ~/.ssh/environment or the site's profile), "
            f"or use scheduler=None. {nothing}"
        )
    given = {option_name(key): key for key in (options or {}) if isinstance(key, str) and len(key) > 1}
    words = refused.detail.lower()
    for name, clues in _REFUSAL_HINTS:
        if any(clue in words for clue in clues):
            if name in given:
                key = given[name]
                value = (options or {})[key]
                fix = f"Fix scheduler_options[{key!r}] (given: {value!r})"
            else:
                fix = f"Set scheduler_options[{name.replace('-', '_')!r}] (or the script's #SBATCH line)"
            return f"Slurm refused remote job {paths.job_id}: {refused.detail}. {fix}. {nothing}"
    return (
        f"Slurm refused remote job {paths.job_id}: {refused.detail}. Check scheduler_options "
        f"({', '.join(sorted(given)) or 'none given'}) against the site's partitions and limits. {nothing}"
    )
