"""
The kill verb, in one place: the script that stops every process of one job (``sh/kill.sh``),
and its answer, parsed. Pure code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssh_jobs_provider.protocol.answers import find_header
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, job_marker, validate_token
from ssh_jobs_provider.protocol.scripts import (
    KILL_GRACE_SECONDS,
    as_whole,
    quote,
    script_prelude,
    shell_source,
)


def build_kill_script(paths: RemoteJobPaths, token: str = "", grace_seconds: int = KILL_GRACE_SECONDS) -> str:
    """
    Script that stops every process of the job: SIGTERM, then SIGKILL after a grace period.

    The job's processes are those carrying its marker in their environment (Linux), the
    process group of its verified wrapper (setsid), the descendants of the wrapper, and every
    process found at SIGTERM time for as long as it is still the same process (a child whose
    parent died on SIGTERM is no longer the wrapper's descendant); see ``sh/kill.sh``. A pid
    of 0 or 1 is never signalled, nor a pid that now belongs to another process. The answer
    is ``killed`` only when none of them is left, and names any process that survived.

    With a token, the marker is derived from it
    (:func:`~ssh_jobs_provider.protocol.identity.job_marker`), so the job's processes
    are found even when its directory, or the ``pid`` in it, is gone (a directory that was
    gone adds ``dir=missing`` to the answer); a directory that carries another token is not
    this job's, and nothing is killed (``foreign``).

    :param paths: the job's paths
    :param token: the submit's token, checked against the directory's; ``""`` checks only
        that the directory is the SSH user's and uses the marker recorded in it
    :param grace_seconds: seconds between SIGTERM and SIGKILL
    """
    marker = job_marker(token) if validate_token(token, required=False) else ""
    return as_whole(
        script_prelude()
        + shell_source("kill.sh")
        + f"kill_job {quote(paths.job_dir)} {quote(token)} {int(grace_seconds)} {quote(marker)}\n"
    )


@dataclass(frozen=True)
class KillAnswer:
    """
    The answer of the kill script.

    :param state: ``killed`` (every process of the job found is gone), ``survived`` (some are
        left: :attr:`survivors`), ``not-running`` or ``not-started`` (nothing to kill),
        ``missing`` (no job directory, and no process carrying the job's marker) or
        ``foreign`` (the directory is not this job's: nothing was killed)
    :param survivors: the pids still there after SIGKILL
    :param directory_missing: the job directory was gone: the processes were found by the
        marker derived from the token alone
    """

    state: str
    survivors: tuple[int, ...] = ()
    directory_missing: bool = False

    def describe(self) -> str:
        """The state in words for a task log, e.g. ``killed (its directory was gone ...)``."""
        if not self.directory_missing:
            return self.state
        return f"{self.state} (its directory was gone: found by the marker in their environment)"


def parse_kill_answer(output: bytes) -> KillAnswer:
    """The kill script's answer."""
    fields, _ = find_header(output, "kill")
    pids = tuple(int(pid) for pid in fields.get("pids", "").split(",") if pid.isdigit())
    return KillAnswer(fields.get("state", ""), pids, fields.get("dir") == "missing")


def parse_kill_output(output: bytes) -> tuple[str, list[int]]:
    """The kill answer's state, and the pids that survived SIGKILL (``state=survived``)."""
    answer = parse_kill_answer(output)
    return answer.state, list(answer.survivors)
