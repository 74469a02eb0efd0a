"""
The batch of one poll tick: polls and cleanups of many jobs in ONE remote script. Pure code.

A batch is the shared prelude (``sh/process.sh``, ``sh/lib.sh``), a call per entry and an
``end`` line; entry ``i`` answers with ``key=i`` (parsed by
:func:`~ssh_jobs_provider.protocol.answers.parse_batch_output`):

- a :class:`PollEntry` reports one job's state, records how much of its log has been
  delivered (so a re-created trigger resumes at the right byte), and carries up to
  ``max_bytes`` log bytes from ``offset``;
- a :class:`SubmitEntry` is a poll entry that first submits its job (idempotently, as the
  worker's submit does: :mod:`~ssh_jobs_provider.protocol.submit`), so the triggerer can start
  jobs over its one connection; it answers with a ``submit`` header, then its poll. A perl
  batch runs its submits and its polls in the same one perl process;
- a :class:`CleanupEntry` removes one finished job's directory, if it is the SSH user's and
  carries the entry's token (``cleanup_jobs`` in ``sh/lib.sh``: one ``ls`` and two ``rm`` for up to
  :data:`CLEANUPS_PER_CALL` directories; ``cleanup_job`` for one directory at a time).

What a poll costs the host is decided by the processes it starts, not by the reading itself
(a few small files per job cost microseconds; a fork and exec costs a millisecond). So the
polls of a batch run either

- in ONE ``perl`` process for all jobs (``perl/poll.pl``): no process per job at all; or
- in POSIX ``sh`` only, in three phases (``poll_state``, ``poll_sizes``, ``poll_answer`` in ``sh/lib.sh``): builtins for
  every job's state, one ``ls`` for the log sizes of up to :data:`SIZES_PER_LS` jobs, and a
  ``tail | head`` only for a job whose log grew.

Both answer alike, byte for byte in the fields that matter, with the same order of probes.
Which one a host gets is its :data:`POLL_INTERPRETERS` setting; ``"auto"`` asks the host once,
with :func:`build_probe_script`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import groupby

from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, as_whole, perl_source, script_prelude
from ssh_jobs_provider.protocol.slurm import SlurmSubmitCall, slurm_batch_submits
from ssh_jobs_provider.protocol.submit import SubmitCall, perl_call, submit_calls
from ssh_jobs_provider.protocol.submit import perl_program as submit_program

#: How the polls of a batch run: ``"auto"`` (perl when the host has a working one, else sh),
#: ``"perl"`` or ``"sh"``.
POLL_INTERPRETERS = ("auto", "perl", "sh")
#: Log sizes found by one ``ls`` in the sh polls: well inside any host's ``ARG_MAX``.
SIZES_PER_LS = 200
#: Job directories removed by one ``cleanup_jobs`` call (a few processes for all of them); a job
#: directory holds about 15 files, so its ``rm`` stays well inside any host's ``ARG_MAX``.
CLEANUPS_PER_CALL = 100


@dataclass(frozen=True)
class PollEntry:
    """
    Ask for one job's state and the log window ``[offset, offset + max_bytes)``.

    :param paths: the job's paths
    :param offset: the first log byte wanted
    :param max_bytes: most log bytes wanted (``0``: the state only)
    :param delivered: log bytes known to be in the task log, recorded remotely for a resume
    :param token: the submit's token, checked against the job directory's (``""``: not checked)
    """

    paths: RemoteJobPaths
    offset: int
    max_bytes: int
    delivered: int = 0
    #: The submit's token, checked against the job directory's (``""``: not checked).
    token: str = ""

    def __post_init__(self) -> None:
        if self.offset < 0 or self.max_bytes < 0 or self.delivered < 0:
            raise ValueError(f"Invalid poll window: {self}")
        validate_token(self.token, required=False)


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
class SubmitEntry(PollEntry):
    """
    Submit one job, then poll it like a :class:`PollEntry` (its log from ``offset``).

    Sent again until answered: a submit that finds the job directory claimed by a wrapper
    carrying ``token`` re-attaches (``launched=0``) instead of launching a second job.

    :param files: the job's files besides ``run.sh``
        (:func:`~ssh_jobs_provider.protocol.scripts.job_files`)
    """

    files: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_token(self.token)
        if not self.files:
            raise ValueError(f"A submit of {self.paths.job_id} needs the job's files.")


@dataclass(frozen=True)
class SlurmSubmitEntry(SubmitEntry):
    """
    A :class:`SubmitEntry` whose job is queued with ``sbatch`` (``scheduler="slurm"``) instead
    of started detached (:func:`~ssh_jobs_provider.protocol.slurm.slurm_batch_submits`).

    :param arguments: the sbatch arguments (:func:`~ssh_jobs_provider.protocol.slurm.sbatch_arguments`)
    """

    arguments: tuple[str, ...] = ()


Entry = PollEntry | CleanupEntry


def perl_program() -> str:
    """The text of ``perl/poll.pl`` shipped with the package."""
    return perl_source("poll.pl")


def build_batch_script(entries: Sequence[Entry], tag: str = PROTOCOL_TAG, interpreter: str = "sh") -> str:
    """
    One script for all ``entries``; entry ``i`` answers with ``key=i``.

    :param tag: the tag its answers start with; a batch that carries log bytes should use a
        fresh :func:`~ssh_jobs_provider.protocol.scripts.batch_tag`, and parse the answer with
        the same one
    :param interpreter: ``"perl"`` or ``"sh"``: what runs the polls (see the module's text);
        resolve ``"auto"`` first, with :func:`build_probe_script`
    """
    if interpreter not in ("perl", "sh"):
        raise ValueError(f"A batch runs its polls in 'perl' or 'sh', not {interpreter!r}.")
    polls = [(key, e) for key, e in enumerate(entries) if isinstance(e, PollEntry)]
    cleanups = [(key, e) for key, e in enumerate(entries) if isinstance(e, CleanupEntry)]
    submits = [
        (key, e) for key, e in polls if isinstance(e, SubmitEntry) and not isinstance(e, SlurmSubmitEntry)
    ]
    queued = [
        SlurmSubmitCall(key, e.paths, e.token, e.files, e.arguments)
        for key, e in polls
        if isinstance(e, SlurmSubmitEntry)
    ]
    # Cleanups first (they free space), then the submits, then the polls of every job, the
    # new ones included: their first log bytes come in the same answer.
    # The Slurm submits are sh whatever runs the polls: each is an sbatch process anyway.
    calls = (
        _cleanups(cleanups)
        + slurm_batch_submits(queued)
        + submit_calls(
            [SubmitCall(key, e.paths, e.token, e.files) for key, e in submits],
            interpreter,
            _perl_polls(polls) if interpreter == "perl" else _sh_polls(polls),
        )
    )
    # dd re-blocks the many small writes of the calls into 64 KiB writes: the answer then
    # travels in a few large SSH packets instead of hundreds of tiny ones, which is what
    # the triggerer (and sshd) would otherwise spend most of their CPU on.
    return as_whole(
        script_prelude(tag) + "{\n" + calls + 'echo "$answer_tag end"\n' + "} | dd obs=65536 2>/dev/null\n"
    )


def build_cleanup_script(paths: RemoteJobPaths, token: str = "") -> str:
    """
    Script that removes the job directory and nothing else.

    ``paths`` is validated on construction (job id is one plain path component, base dir
    absolute and normalised), so the directory removed is always a direct child of the
    base directory; it is only removed when it is the SSH user's and, with ``token``, carries it.
    """
    return build_batch_script([CleanupEntry(paths, token=token)])


def build_probe_script() -> str:
    """
    Script that tells whether the host runs the perl polls: answers ``probe state=perl`` or
    ``state=sh`` (parse with :func:`~ssh_jobs_provider.protocol.answers.parse_simple_state`).

    It runs the real programs (the submits' and the polls') on no entries, so a perl too old or
    too broken to compile them counts as no perl at all.
    """
    return as_whole(
        f"answer_tag={PROTOCOL_TAG}\n"
        "if command -v perl >/dev/null 2>&1 && "
        + perl_call('"$answer_tag" "" >/dev/null 2>&1', "polls\n", submit_program())
        + 'then echo "$answer_tag probe state=perl"; else echo "$answer_tag probe state=sh"; fi\n'
    )


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def _by_base_dir(
    items: Sequence[tuple[int, Entry]], name: Callable[[Entry], str], size: int
) -> Iterator[tuple[str, list[tuple[int, Entry]]]]:
    """The entries per base dir, in chunks of at most ``size``, sorted by ``name`` as `ls` sorts."""
    ordered = sorted(items, key=lambda item: (item[1].paths.base_dir, name(item[1]).encode()))
    for base, group in groupby(ordered, key=lambda item: item[1].paths.base_dir):
        members = list(group)
        for start in range(0, len(members), size):
            yield base, members[start : start + size]


def _cleanups(cleanups: list[tuple[int, CleanupEntry]]) -> str:
    calls = []
    for base, members in _by_base_dir(cleanups, lambda e: e.paths.job_id, CLEANUPS_PER_CALL):
        triples = " ".join(f"{key}:{e.paths.job_id}:{e.token}" for key, e in members)
        calls.append(f"cleanup_jobs {_q(base)} {_q(triples)}\n")
    return "".join(calls)


def _perl_polls(polls: list[tuple[int, PollEntry]]) -> str:
    # Tab-separated, the directory last: a base dir may hold tabs or spaces, never a newline.
    return "".join(
        f"{key}\t{e.offset}\t{e.max_bytes}\t{e.delivered}\t{e.token}\t{e.paths.job_dir}\n" for key, e in polls
    )


def _sh_polls(polls: list[tuple[int, PollEntry]]) -> str:
    states = [f"poll_state {key} {_q(e.paths.job_dir)} {_q(e.token)}\n" for key, e in polls]
    sizes = [
        f"poll_sizes {_q(base)} {_q(' '.join(f'{key}:{e.paths.job_id}' for key, e in members))}\n"
        for base, members in _by_base_dir(polls, lambda e: f"{e.paths.job_id}/stdout.log", SIZES_PER_LS)
    ]
    answers = [
        f"poll_answer {key} {_q(e.paths.job_dir)} {e.offset} {e.max_bytes} {e.delivered}\n"
        for key, e in polls
    ]
    return "".join(states + sizes + answers)
