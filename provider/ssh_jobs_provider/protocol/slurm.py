"""
Jobs through Slurm (``scheduler="slurm"``): the sbatch options, the submit, the one state
query of a tick, and the cancel, as scripts built from ``sh/slurm.sh``. Pure code.

A Slurm job keeps the job directory of a detached one (token, command, ``stdout.log``), plus
``batch.sh`` (the command as the batch script, given an interpreter line when it has none) and
``slurm_job`` (the id sbatch answered). Its log is ``sbatch --output``, so it streams into the
task log exactly as a detached job's does; its outcome is Slurm's record of it
(:mod:`~ssh_jobs_provider.protocol.slurm_state`), not a file the job wrote. The job directory
must be on a file system the compute nodes share with the login node (``remote_base_dir``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.scripts import as_whole, job_files, script_prelude, shell_source
from ssh_jobs_provider.protocol.submit import sh_submit_steps

#: The schedulers a job can go through besides the default, detached process (``None``).
SCHEDULERS = ("slurm",)

#: sbatch options the provider sets itself (the job's log, where it runs, how sbatch answers),
#: or that would change what one task means (an array is many jobs; --wait blocks the login).
RESERVED_OPTIONS = {
    "output": "the job's output goes to its log file, which streams into the task log",
    "error": "the job's errors go to its log file, which streams into the task log",
    "input": "the job reads no input",
    "open-mode": "the log is opened in append mode",
    "chdir": "set remote_working_dir instead",
    "parsable": "the provider reads sbatch's answer itself",
    "wrap": "the command is the batch script",
    "array": "one task is one Slurm job (job arrays are not supported yet)",
    "wait": "the triggerer waits, not the login node",
    "test-only": "the job must really be submitted",
    "export-file": "set environment instead",
}

#: An sbatch long option name: ``cpus-per-task``; ``cpus_per_task`` is accepted for Python's sake.
_OPTION_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")
#: sbatch's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or unlimited.
_TIME = re.compile(r"\d+(?::\d{1,2}){0,2}|\d+-\d+(?::\d{1,2}){0,2}|unlimited|infinite", re.IGNORECASE)
#: A memory size: a number and an optional unit.
_MEMORY = re.compile(r"\d+[KMGT]?B?", re.IGNORECASE)
#: Options whose value must be a positive whole number.
_COUNTS = frozenset({"cpus-per-task", "ntasks", "ntasks-per-node", "gpus-per-task", "cpus-per-gpu", "nice"})
#: Options whose value is a time.
_TIMES = frozenset({"time", "time-min"})
#: Options whose value is a memory size.
_MEMORIES = frozenset({"mem", "mem-per-cpu", "mem-per-gpu"})


class SlurmOptionError(ValueError):
    """A ``scheduler_options`` entry sbatch cannot take; the message names the entry and the fix."""


def validate_scheduler(scheduler: str | None) -> str | None:
    """``scheduler`` as given, if it is one this provider knows (``None``: a detached process)."""
    if scheduler is None or scheduler in SCHEDULERS:
        return scheduler
    raise ValueError(
        f"scheduler={scheduler!r} is not supported: use None (a detached process, the default) or "
        f"one of {', '.join(repr(name) for name in SCHEDULERS)}."
    )


def option_name(key: object) -> str:
    """The sbatch option a ``scheduler_options`` key stands for (``cpus_per_task`` -> ``cpus-per-task``)."""
    if not isinstance(key, str) or not _OPTION_NAME.fullmatch(key.lower()) or len(key) < 2:
        raise SlurmOptionError(
            f"scheduler_options key {key!r} is not an sbatch long option name: give it without dashes, "
            "e.g. 'partition', 'time', 'cpus_per_task' (single-letter options such as 'p' are not accepted: "
            "use their long names)."
        )
    return key.lower().replace("_", "-")


def sbatch_arguments(options: Mapping[str, object] | None) -> tuple[str, ...]:
    """
    The sbatch arguments for ``scheduler_options``, validated; raises :class:`SlurmOptionError`.

    Each entry becomes ``--name=value``; ``True`` gives ``--name`` alone (``{"exclusive": True}``),
    ``False`` and ``None`` leave the option out. A value is a string or a whole number, on one
    line. What sbatch itself knows best (a partition's name, a site's limits) is left to it: a
    refusal then names the option (:func:`~ssh_jobs_provider.protocol.slurm_answers.refusal_message`).
    """
    if options is None:
        return ()
    if not isinstance(options, Mapping):
        raise SlurmOptionError(
            f"scheduler_options must be a dict of sbatch options, e.g. {{'partition': 'gpu', 'time': '02:00:00'}}; "
            f"got {type(options).__name__}."
        )
    arguments: list[str] = []
    for key, value in options.items():
        name = option_name(key)
        if name in RESERVED_OPTIONS:
            raise SlurmOptionError(
                f"scheduler_options[{key!r}] cannot be set: {RESERVED_OPTIONS[name]}. Remove it."
            )
        if value is None or value is False:
            continue
        if value is True:
            arguments.append(f"--{name}")
            continue
        arguments.append(f"--{name}={_option_value(key, name, value)}")
    return tuple(arguments)


@dataclass(frozen=True)
class SlurmSpec:
    """
    A job's way through Slurm, validated once.

    :param options: ``scheduler_options`` as given (the messages name them)
    :param arguments: the sbatch arguments they make (:func:`sbatch_arguments`)
    """

    options: Mapping[str, object]
    arguments: tuple[str, ...]

    @classmethod
    def from_options(cls, options: Mapping[str, object] | None) -> SlurmSpec:
        """Validate ``scheduler_options`` (raises :class:`SlurmOptionError` naming the entry)."""
        arguments = sbatch_arguments(options)
        return cls(dict(options or {}), arguments)


def _option_value(key: str, name: str, value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise SlurmOptionError(
            f"scheduler_options[{key!r}] must be a string, a whole number or True, not {type(value).__name__} ({value!r})."
        )
    if not text or any(char in text for char in "\0\n\r"):
        raise SlurmOptionError(f"scheduler_options[{key!r}] must be one non-empty line, got {value!r}.")
    if name in _TIMES and not _TIME.fullmatch(text):
        raise SlurmOptionError(
            f"scheduler_options[{key!r}] = {value!r} is not a Slurm time: use minutes, 'MM:SS', "
            "'HH:MM:SS' or 'D-HH:MM:SS' (e.g. '02:00:00')."
        )
    if name in _MEMORIES and not _MEMORY.fullmatch(text):
        raise SlurmOptionError(
            f"scheduler_options[{key!r}] = {value!r} is not a memory size: use a number with an optional "
            "unit K, M, G or T (e.g. '4G')."
        )
    if name in _COUNTS and not (text.isdigit() and (int(text) > 0 or name == "nice")):
        raise SlurmOptionError(f"scheduler_options[{key!r}] = {value!r} must be a positive whole number.")
    return text


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def slurm_launch(arguments: Sequence[str]) -> str:
    """The launch of a Slurm job (see :func:`~ssh_jobs_provider.protocol.submit.sh_submit_steps`): sbatch it."""
    return f"  slurm_launch {' '.join(_q(a) for a in arguments)}\n"


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
    :func:`~ssh_jobs_provider.protocol.slurm_answers.parse_slurm_submit_output`.

    :param arguments: from :func:`sbatch_arguments`
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
    :param arguments: from :func:`sbatch_arguments`
    """

    key: int
    paths: RemoteJobPaths
    token: str
    files: tuple[tuple[str, str], ...]
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
    bases = "".join(f"check_base_once {_q(base)}\n" for base in sorted({c.paths.base_dir for c in calls}))
    body = [
        f"(\numask 077\nbatch_key={int(call.key)}\n"
        + sh_submit_steps(call.paths, call.token, call.files, slurm_launch(call.arguments), "submitted")
        + f")\nsubmit_ended $? {int(call.key)} {_q(call.paths.job_dir)}\n"
        for call in calls
    ]
    # The detached submits of the same batch (if any) answer their own: submitted_keys starts empty again.
    return head + bases + "".join(body) + "answer_submits\nsubmitted_keys=\n"


def slurm_states_call(jobs: Sequence[tuple[int, RemoteJobPaths]]) -> str:
    """
    The line that asks Slurm about ``jobs`` (``(key, paths)``) in one squeue (and one sacct for
    those squeue no longer shows). Needs the prelude and ``sh/slurm.sh`` before it; answers are
    parsed by :func:`~ssh_jobs_provider.protocol.slurm_state.parse_slurm_states`.
    """
    if not jobs:
        return ""
    return "slurm_states " + " ".join(f"{int(key)} {_q(paths.job_dir)}" for key, paths in jobs) + "\n"


def build_slurm_states_script(jobs: Sequence[tuple[int, RemoteJobPaths]], tag: str) -> str:
    """A whole script asking Slurm about ``jobs``: for a tick that polls nothing else."""
    return as_whole(
        script_prelude(tag) + shell_source("slurm.sh") + slurm_states_call(jobs) + 'echo "$answer_tag end"\n'
    )


def slurm_section(jobs: Sequence[tuple[int, RemoteJobPaths]]) -> str:
    """
    What a tick's batch script gets appended for its Slurm jobs: run after the batch's own
    ``end`` line (its parser stops there), in the same shell, so ``$answer_tag`` is the batch's tag.
    """
    if not jobs:
        return ""
    return as_whole(shell_source("slurm.sh") + slurm_states_call(jobs) + 'echo "$answer_tag slurm-end"\n')


def build_slurm_cancel_script(paths: RemoteJobPaths, token: str) -> str:
    """
    Script that scancels the job's Slurm job, if its directory carries ``token``.

    Answers like the kill script (parse with :func:`~ssh_jobs_provider.protocol.kill.parse_kill_answer`):
    ``cancelled``, ``not-started``, ``missing``, ``foreign`` or ``failed``.
    """
    validate_token(token)
    return as_whole(
        script_prelude() + shell_source("slurm.sh") + f"slurm_cancel {_q(paths.job_dir)} {_q(token)}\n"
    )
