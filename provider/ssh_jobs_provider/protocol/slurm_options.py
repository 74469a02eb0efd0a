"""
The ``scheduler_options`` of a job through Slurm: validated into sbatch arguments before
anything runs remotely, and named again when sbatch refuses the job. Pure code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.submit import SubmitRefused

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
    refusal then names the option (:func:`refusal_message`).
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
