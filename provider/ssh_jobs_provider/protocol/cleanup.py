"""
The cleanup verb: remove finished jobs' directories, asked in a batch. Pure code.

A :class:`CleanupEntry` removes one job's directory, if it is the SSH user's and carries the
entry's token: ``cleanup_jobs`` in ``sh/lib.sh``, one ``ls`` and two ``rm`` for up to
:data:`CLEANUPS_PER_CALL` directories (:func:`cleanup_calls`). Its answer, ``cleanup key=K
state=S``, is read by :func:`cleanup_result`; the batch
(:mod:`~ssh_jobs_provider.protocol.batch`) frames it. A single cleanup is a batch of one
(:func:`~ssh_jobs_provider.protocol.batch.build_cleanup_script`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.scripts import by_base_dir, quote

#: Job directories removed by one ``cleanup_jobs`` call (a few processes for all of them); a job
#: directory holds about 15 files, so its ``rm`` stays well inside any host's ``ARG_MAX``.
CLEANUPS_PER_CALL = 100


@dataclass(frozen=True)
class CleanupEntry:
    """
    Remove one finished job's directory (a direct child of its base dir, by construction).

    :param paths: the job's paths
    :param token: the submit's token; the directory is only removed when it carries it
    """

    paths: RemoteJobPaths
    token: str = ""

    def __post_init__(self) -> None:
        validate_token(self.token, required=False)


class CleanupState(str, Enum):
    """What the cleanup of one job directory found and did: the ``state=`` of its answer."""

    REMOVED = "removed"
    #: There was no directory (any more).
    ABSENT = "absent"
    #: Still there: its job's end is not recorded, or the removal failed part of the way.
    FAILED = "failed"
    #: Not this job's directory (another token, or not the SSH user's): left alone.
    FOREIGN = "foreign"
    #: A reap's only: the job runs by now (or Slurm still has it): left alone.
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> CleanupState:
        """The state an answer names; a missing or unknown one counts as ``failed``."""
        return next((state for state in cls if state.value == text), cls.FAILED)


@dataclass(frozen=True)
class CleanupResult:
    """
    The answer of one cleanup entry.

    :param state: what the cleanup found and did; its text (``"removed"``) is taken as well
    """

    state: CleanupState

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", CleanupState(self.state))


def cleanup_calls(cleanups: Sequence[tuple[int, CleanupEntry]]) -> str:
    """The ``cleanup_jobs`` calls for ``cleanups`` (batch key, entry): one per base dir and chunk."""
    calls = []
    for base, members in by_base_dir(cleanups, lambda e: e.paths.job_id, CLEANUPS_PER_CALL):
        triples = " ".join(f"{key}:{e.paths.job_id}:{e.token}" for key, e in members)
        calls.append(f"cleanup_jobs {quote(base)} {quote(triples)}\n")
    return "".join(calls)


def cleanup_result(fields: dict[str, str]) -> CleanupResult:
    """One ``cleanup`` answer of a batch, from its header's ``fields``."""
    return CleanupResult(CleanupState.parse(fields.get("state", "")))
