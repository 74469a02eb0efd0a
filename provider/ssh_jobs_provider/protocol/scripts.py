"""
The remote-job scripts: the ``.sh`` programs of ``sh/`` with one call's quoted arguments. Pure code.

Every step of a job's life (submit, poll, kill, cleanup) is a POSIX ``sh`` script fed to
``/bin/sh -s`` on the remote host through its *standard input* (:data:`REMOTE_SHELL`), which
keeps it away from the login shell's quoting rules (csh, fish, ...) and from ``ARG_MAX``.
The programs themselves are real ``.sh`` files shipped with the package (checked by
ShellCheck); this module reads them and quotes the arguments. Every script answers with
header lines starting with :data:`PROTOCOL_TAG` (:mod:`~ssh_jobs_provider.protocol.answers`);
each verb's module builds its script and parses its answer (:mod:`~ssh_jobs_provider.protocol.submit`,
:mod:`~ssh_jobs_provider.protocol.poll`, :mod:`~ssh_jobs_provider.protocol.cleanup`,
:mod:`~ssh_jobs_provider.protocol.kill`, ...), and :mod:`~ssh_jobs_provider.protocol.batch`
puts the verbs of one poll tick in one script.

The job directory is private to the SSH user (mode 700), and the base dir and every directory
above it must be trusted (see the Security page of the docs).

Remote layout of one job, all under ``<base_dir>/<job_id>/``::

    token          random, written first: proves which submit created the directory
    command.sh     the user's command, byte for byte
    env.sh         ``export NAME='value'`` lines for ``environment``
    workdir        where the command runs (default: the SSH user's home, as ``ssh host cmd``)
    run.sh         the wrapper that runs detached and records what happened (in sh; where the
                   submit runs in perl, the process it forks is the wrapper instead:
                   ``perl/wrapper.pl``, ``ssh-jobs wrapper <job dir>`` in ps)
    marker         derived from the token, exported to every process of the job as
                   SSH_JOBS_JOB_MARKER (for kill)
    launcher       ``setsid`` or ``nohup``: how the wrapper was detached (decides how kill finds it)
    claimed/       created atomically by the one wrapper that owns the job
    pid            the wrapper's pid (its process group and session id under setsid)
    start          the wrapper's start time (Linux), so a recycled pid is not taken for the job
    boot_id        the kernel boot id at start (Linux), to tell a reboot from a live job
    stdout.log     the command's stdout and stderr
    exit_code.new  space reserved at submit for the exit record (written over in place, and
                   renamed to exit_code, only when a full file system refuses a new file)
    exit_code      ``<code> log=<log bytes>[ nospace]``, written atomically when the command has ended
    fs_probe       one byte per end of the command: whether the file system had room left
    delivered      log bytes a watcher has delivered (for resuming after a restart)
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from importlib.resources import files
from itertools import groupby
from typing import Protocol, TypeVar

from ssh_jobs_provider.protocol.environment import render_env_file
from ssh_jobs_provider.protocol.identity import (
    RemoteJobPaths,
    job_marker,
    require_utf8,
    validate_working_dir,
)

#: The tag every answer line starts with: defined here only, handed to the shell as ``$answer_tag``.
PROTOCOL_TAG = "SSHJOBS1"
#: How every script is run: on standard input, so the login shell's quoting never applies.
REMOTE_SHELL = "/bin/sh -s"
#: Seconds the kill script waits between SIGTERM and SIGKILL.
KILL_GRACE_SECONDS = 5
#: Days the record of a removed job directory is kept (``.ssh-jobs-ended/<job id>``).
ENDED_DAYS = 7
#: Bytes reserved at submit for the exit record, so that it can be written on a full disk.
EXIT_RECORD_RESERVE = 64


@cache
def shell_source(name: str) -> str:
    """The text of ``sh/<name>`` shipped with the package."""
    return files("ssh_jobs_provider.protocol").joinpath("sh").joinpath(name).read_text(encoding="utf-8")


@cache
def perl_source(name: str) -> str:
    """The text of ``perl/<name>`` shipped with the package."""
    return files("ssh_jobs_provider.protocol").joinpath("perl").joinpath(name).read_text(encoding="utf-8")


def script_prelude(tag: str = PROTOCOL_TAG) -> str:
    """The start of every script: the answers' tag and the shared functions."""
    # Variables the scripts read as settings start out unset, whatever the login shell set.
    return (
        f"answer_tag={tag}\nunset batch_key base_ok NO_ENDED ended_records_ok ssh_uid\nENDED_DAYS={ENDED_DAYS}\n"
        + shell_source("process.sh")
        + shell_source("lib.sh")
    )


def batch_tag() -> str:
    """
    A fresh tag for one batch: :data:`PROTOCOL_TAG` and a random suffix.

    A batch carries log bytes, which may hold any text, even lines that look like answers. The
    parser never reads log bytes as headers, and with a tag nobody can know in advance, no
    log can even contain one.
    """
    return f"{PROTOCOL_TAG}.{secrets.token_hex(8)}"


def as_whole(body: str) -> str:
    # One compound command: a script cut short in transit is a syntax error and runs not at
    # all, instead of running up to wherever it was cut.
    return "{\n" + body + "}\n"


def quote(value: str | int) -> str:
    """``value`` as one shell word."""
    return shlex.quote(str(value))


class _Located(Protocol):
    @property
    def paths(self) -> RemoteJobPaths: ...


Located = TypeVar("Located", bound=_Located)


def by_base_dir(
    items: Sequence[tuple[int, Located]], name: Callable[[Located], str], size: int
) -> Iterator[tuple[str, list[tuple[int, Located]]]]:
    """
    ``items`` (batch key, entry) per base dir, in chunks of at most ``size``, sorted by
    ``name`` (a path under the base dir) as ``ls`` sorts it: one remote call per chunk.
    """
    ordered = sorted(items, key=lambda item: (item[1].paths.base_dir, name(item[1]).encode()))
    for base, group in groupby(ordered, key=lambda item: item[1].paths.base_dir):
        members = list(group)
        for start in range(0, len(members), size):
            yield base, members[start : start + size]


def job_files(
    command: str, environment: Mapping[str, str], working_dir: str | None, token: str
) -> tuple[tuple[str, str], ...]:
    """
    The files a submit writes into a new job directory besides ``run.sh``, validated.

    :param command: the shell text to run
    :param environment: validated by :func:`normalise_environment`
    :param working_dir: where the command runs (see :func:`validate_working_dir`)
    :param token: the submit's token, from which the job's marker is derived
    """
    if not command or not command.strip():
        raise ValueError("command is empty: give the shell text to run on the remote host.")
    if "\0" in command:
        raise ValueError("command contains a NUL byte, which a shell script cannot hold.")
    require_utf8(command, "command")
    workdir = validate_working_dir(working_dir)
    return (
        ("command.sh", command),
        ("env.sh", render_env_file(environment)),
        ("workdir", workdir + "\n"),
        # The marker every process of the job carries in its environment, for the kill; every
        # re-sent submit of the job (a re-created trigger's too) writes the same.
        ("marker", job_marker(token) + "\n"),
        ("exit_code.new", "\n" * EXIT_RECORD_RESERVE),
    )


def wrapper_source() -> str:
    """The text of ``run.sh``, the wrapper that runs the job detached and records its end."""
    return shell_source("process.sh") + shell_source("shebang.sh") + shell_source("wrapper.sh")
