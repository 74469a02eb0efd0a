"""
The poll verb: one job's state and a window of its log, asked in a batch. Pure code.

Its builders write the polls of a batch in either form, its parser (:func:`poll_result`) reads
one ``poll`` answer; the batch (:mod:`~ssh_jobs_provider.protocol.batch`) frames them.

What a poll costs the host is decided by the processes it starts, not by the reading itself
(a few small files per job cost microseconds; a fork and exec costs a millisecond). So the
polls of a batch run either

- in ONE ``perl`` process for all jobs (``perl/poll.pl``, fed by :func:`perl_poll_lines`): no
  process per job at all; or
- in POSIX ``sh`` only (:func:`sh_poll_calls`), in three phases (``poll_state``,
  ``poll_sizes``, ``poll_answer`` in ``sh/lib.sh``): builtins for every job's state, one ``ls``
  for the log sizes of up to :data:`SIZES_PER_LS` jobs, and a ``tail | head`` only for a job
  whose log grew.

Both answer alike, byte for byte, with the same order of probes (one conformance suite feeds
both the same fixtures). Which one a host gets is its :data:`POLL_INTERPRETERS` setting;
``"auto"`` asks the host once (:func:`~ssh_jobs_provider.protocol.batch.build_probe_script`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError, status_from_fields
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.scripts import by_base_dir, perl_source, quote

#: How the polls of a batch run: ``"auto"`` (perl when the host has a working one, else sh),
#: ``"perl"`` or ``"sh"``.
POLL_INTERPRETERS = ("auto", "perl", "sh")
#: Log sizes found by one ``ls`` in the sh polls: well inside any host's ``ARG_MAX``.
SIZES_PER_LS = 200


@dataclass(frozen=True)
class PollEntry:
    """
    Ask for one job's state and the log window ``[offset, offset + max_bytes)``.

    It also records how much of the log has been delivered, so a re-created trigger resumes
    at the right byte.

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


def poll_program() -> str:
    """The text of ``perl/poll.pl`` shipped with the package."""
    return perl_source("poll.pl")


def perl_poll_lines(polls: Sequence[tuple[int, PollEntry]]) -> str:
    """The records of ``perl/poll.pl`` for ``polls`` (batch key, entry)."""
    # Tab-separated, the directory last: a base dir may hold tabs or spaces, never a newline.
    return "".join(
        f"{key}\t{e.offset}\t{e.max_bytes}\t{e.delivered}\t{e.token}\t{e.paths.job_dir}\n" for key, e in polls
    )


def sh_poll_calls(polls: Sequence[tuple[int, PollEntry]]) -> str:
    """The calls of the sh polls for ``polls`` (batch key, entry): every state, the sizes, the answers."""
    states = [f"poll_state {key} {quote(e.paths.job_dir)} {quote(e.token)}\n" for key, e in polls]
    sizes = [
        f"poll_sizes {quote(base)} {quote(' '.join(f'{key}:{e.paths.job_id}' for key, e in members))}\n"
        for base, members in by_base_dir(polls, lambda e: f"{e.paths.job_id}/stdout.log", SIZES_PER_LS)
    ]
    answers = [
        f"poll_answer {key} {quote(e.paths.job_dir)} {e.offset} {e.max_bytes} {e.delivered}\n"
        for key, e in polls
    ]
    return "".join(states + sizes + answers)


def poll_result(fields: dict[str, str], data: bytes, entry: PollEntry) -> JobStatus:
    """
    One ``poll`` answer of a batch: its header's ``fields`` and its log window ``data``.

    :raises RemoteJobProtocolError: the answer does not fit what ``entry`` asked for
    """
    if len(data) > entry.max_bytes:
        # A window larger than asked for is not an answer to this entry: trusting it could
        # emit log bytes twice or skip the ones in between.
        raise RemoteJobProtocolError(
            f"Answer for {entry.paths.job_id} has {len(data)} log bytes, more than the "
            f"{entry.max_bytes} asked for"
        )
    return status_from_fields(fields, data)
