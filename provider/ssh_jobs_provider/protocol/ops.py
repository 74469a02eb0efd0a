"""
Operations on a whole base dir: list its job directories, pick the ones to reap, remove them. Pure code.

The listing is ONE script (``list_jobs`` in ``sh/ops.sh``): for every direct child named like a job id
it reports when the directory was created and last active, then answers with the poll's own
probes (``poll_job`` in ``sh/lib.sh``), so a job's state is told exactly as the trigger tells it.
Which directories a reaper removes is decided here, from those answers and the host's clock
(:func:`select_reapable`); the removal re-checks that each job is not running and then uses
the protocol's cleanup (``cleanup_job``: only a directory of the SSH user's that carries the token read
by the listing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ssh_jobs_provider.protocol.answers import (
    JobState,
    RemoteJobProtocolError,
    header_fields,
    status_from_fields,
)
from ssh_jobs_provider.protocol.batch import parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, is_made_job_id, validate_base_dir
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, as_whole, quote, script_prelude, shell_source

#: States whose directory may be reaped once old enough: the job is over, or never started.
REAPABLE_STATES = frozenset({JobState.EXITED, JobState.VANISHED, JobState.PENDING})
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(?:([0-9]+)([smhdw]))")


@dataclass(frozen=True)
class JobDirectory:
    """
    One job directory as the listing found it.

    :param name: its name, a job id (a direct child of the base dir)
    :param state: the job's state, as a poll tells it
    :param exit_code: the exit code, once the job ended
    :param pid: the wrapper's pid, once recorded
    :param log_size: bytes in ``stdout.log``
    :param created: when the directory was created (its token written), seconds since the epoch
    :param active: the last change of the directory, its log or its exit code (same clock)
    :param token: the token recorded in it (kept for the removal, never shown)
    """

    name: str
    state: JobState
    exit_code: int | None = None
    pid: int | None = None
    log_size: int = 0
    created: int | None = None
    active: int | None = None
    token: str = field(default="", repr=False)

    @property
    def state_text(self) -> str:
        """``running``, ``exited N``, ``vanished``, ``pending`` or ``foreign``."""
        if self.state is JobState.EXITED:
            return f"exited {self.exit_code}"
        return self.state.value


@dataclass(frozen=True)
class Listing:
    """
    What the listing script answered.

    :param now: the host's clock when it ran, seconds since the epoch
    :param directories: the job directories, in the order the host listed them
    """

    now: int
    directories: tuple[JobDirectory, ...]


def parse_age(text: str) -> int:
    """
    Seconds in an age such as ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or ``1d12h``.

    :raises ValueError: naming the accepted forms
    """
    cleaned = text.strip().lower()
    if not cleaned or _AGE.sub("", cleaned) != "":
        raise ValueError(
            f"Invalid age {text!r}: give a number with a unit, s, m, h, d or w, e.g. 7d, 12h, 30m or 1d12h."
        )
    seconds = sum(int(number) * _UNITS[unit] for number, unit in _AGE.findall(cleaned))
    if seconds <= 0:
        raise ValueError(f"Invalid age {text!r}: it must be longer than 0 seconds, e.g. 7d.")
    return seconds


def build_listing_script(base_dir: str) -> str:
    """The ONE script that lists ``base_dir``'s job directories and their states (read-only)."""
    base = validate_base_dir(base_dir)
    return as_whole(script_prelude() + shell_source("ops.sh") + f"list_jobs {quote(base)}\n")


def parse_listing(output: bytes) -> Listing:
    """
    The listing script's answer.

    :raises RemoteJobProtocolError: the answer is not the listing's (no clock line)
    """
    now: int | None = None
    entries: dict[str, dict[str, str]] = {}
    polls: dict[str, dict[str, str]] = {}
    marker = f"{PROTOCOL_TAG} "
    for raw in output.decode("utf-8", errors="replace").splitlines():
        if not raw.startswith(marker):
            continue
        verb, _, rest = raw[len(marker) :].partition(" ")
        fields = header_fields(rest)
        if verb == "now":
            now = _int(fields.get("at"))
        elif verb == "entry":
            entries[fields.get("key", "")] = fields
        elif verb == "poll":
            polls[fields.get("key", "")] = fields
    if now is None:
        raise RemoteJobProtocolError(f"No listing in the remote answer: {output[:200]!r}")
    directories = []
    for key, entry in entries.items():
        status = status_from_fields(polls.get(key, {"state": "missing"}))
        directories.append(
            JobDirectory(
                name=entry.get("name", ""),
                state=status.state,
                exit_code=status.exit_code,
                pid=status.pid,
                log_size=status.log_size,
                created=_int(entry.get("created")),
                active=_int(entry.get("active")),
                token=entry.get("token", ""),
            )
        )
    return Listing(now, tuple(directories))


def select_reapable(directories: Iterable[JobDirectory], now: int, older_than: int) -> list[JobDirectory]:
    """
    The directories a reaper removes: named like a job id, the job not running, inactive longer
    than ``older_than`` seconds at ``now`` (the host's clock). A directory whose age is unknown
    is kept.

    :param directories: from :func:`parse_listing`
    :param now: the host's clock, seconds since the epoch
    :param older_than: seconds since the last activity (directory, log or exit code change)
    """
    return [
        d
        for d in directories
        if is_made_job_id(d.name)
        and d.state in REAPABLE_STATES
        and d.active is not None
        and now - d.active > older_than
    ]


def reap_entries(base_dir: str, directories: Sequence[JobDirectory]) -> list[CleanupEntry]:
    """One cleanup entry per directory, carrying the token the listing read."""
    return [CleanupEntry(RemoteJobPaths(d.name, base_dir), token=d.token) for d in directories]


def build_reap_script(entries: Sequence[CleanupEntry]) -> str:
    """
    Script that removes each entry's directory (``cleanup_job``), unless its job is running by now
    (a Slurm job: while Slurm still has it); answers as a batch (:func:`parse_reap_output`).
    """
    calls = "".join(
        f"reap_job {key} {quote(e.paths.job_dir)} {quote(e.token)}\n" for key, e in enumerate(entries)
    )
    # slurm.sh for slurm_job_active: a Slurm job's directory is kept while Slurm still has the job.
    return as_whole(
        script_prelude()
        + shell_source("ops.sh")
        + shell_source("slurm.sh")
        + calls
        + 'echo "$answer_tag end"\n'
    )


def parse_reap_output(output: bytes, entries: Sequence[CleanupEntry]) -> list[str]:
    """
    Per entry: ``removed``, ``absent``, ``running`` (left alone), ``foreign`` (not the SSH user's
    or not the listed job's: left alone), ``failed``, or ``unknown`` (no answer).
    """
    results = parse_batch_output(output, entries)
    return [
        result.state.value if isinstance(result, CleanupResult) else "unknown"
        for _, result in sorted(results.items())
    ]


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None
