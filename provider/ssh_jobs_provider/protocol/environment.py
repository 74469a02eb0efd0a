"""
The job's ``environment``: validated names, literal values, and what an ``exec`` can carry.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from ssh_jobs_provider.protocol.identity import require_utf8

#: Environment names the wrapper sets for the command; ``environment`` may not use them.
RESERVED_ENV_PREFIX = "SSH_JOBS_"
#: Longest ``NAME=value`` one environment entry may be (Linux's MAX_ARG_STRLEN, less the NUL).
MAX_ENV_ENTRY_BYTES = 128 * 1024 - 1
#: Most bytes all of ``environment`` may take: the job's exec must also fit the host's own
#: environment and arguments within ARG_MAX (2 MiB on Linux by default).
MAX_ENV_TOTAL_BYTES = 1024 * 1024

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Names a POSIX shell or bash will not let a script set: ``env.sh`` would fail on them.
_SHELL_READONLY = frozenset({"BASHOPTS", "BASH_VERSINFO", "EUID", "PPID", "SHELLOPTS", "UID"})


def normalise_environment(environment: Mapping[str, object] | None) -> dict[str, str]:
    """
    Validate names and coerce values to ``str``; raise ``ValueError`` naming the bad entry.

    Values are passed literally (no ``$VAR`` or ``$(...)`` expansion on the remote side).
    Names starting with ``SSH_JOBS_`` are reserved for the variables the wrapper sets, and
    sizes are checked against what an ``exec`` can carry, so these errors come before
    anything runs remotely instead of as ``Argument list too long`` at run time.
    """
    if not environment:
        return {}
    if not isinstance(environment, Mapping):
        raise ValueError(f"environment must be a mapping of names to values, got {type(environment)!r}.")
    result: dict[str, str] = {}
    for name, value in environment.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise ValueError(
                f"Invalid environment variable name {name!r}: use letters, digits and '_', "
                "not starting with a digit."
            )
        if value is None or isinstance(value, (bytes, dict, list, tuple, set)):
            raise ValueError(
                f"environment[{name!r}] must be a string (or a number/bool), got {type(value).__name__}."
            )
        text = str(value)
        require_utf8(text, f"environment[{name!r}]")
        if "\0" in text:
            raise ValueError(
                f"environment[{name!r}] contains a NUL byte, which no process environment can hold."
            )
        if name in _SHELL_READONLY:
            raise ValueError(
                f"environment[{name!r}]: the shell keeps {name} read-only, so the job could not start "
                "with it; rename it."
            )
        if name == "OPTIND":
            # dash (Debian's /bin/sh) fails the job on any value but a number; bash rewrites it.
            raise ValueError(
                "environment['OPTIND']: the shell keeps OPTIND for its own option parsing (getopts) "
                "and fails or changes any other value; rename it."
            )
        if name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(
                f"environment[{name!r}]: names starting with {RESERVED_ENV_PREFIX!r} are reserved for the "
                "variables SSHRemoteJobOperator sets for the job (SSH_JOBS_JOB_ID, SSH_JOBS_JOB_DIR, ...); "
                "rename it."
            )
        entry = len(name.encode()) + 1 + len(text.encode("utf-8"))
        if entry > MAX_ENV_ENTRY_BYTES:
            raise ValueError(
                f"environment[{name!r}] is {entry} bytes: a process environment entry is limited to "
                f"{MAX_ENV_ENTRY_BYTES} bytes on Linux. Pass large data in a file instead (e.g. write it "
                "from the command, or upload it first) and give its path in the environment."
            )
        result[name] = text
    total = sum(len(n.encode()) + len(v.encode("utf-8")) + 2 for n, v in result.items())
    if total > MAX_ENV_TOTAL_BYTES:
        raise ValueError(
            f"environment takes {total} bytes in all, more than the {MAX_ENV_TOTAL_BYTES} allowed (the job's "
            "exec must fit the host's ARG_MAX); pass large data in files instead."
        )
    return result


def render_env_file(environment: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines; single quotes keep every byte literal, newlines included."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())
