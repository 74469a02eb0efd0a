"""
The remote-job protocol, as pure code: no sockets, no SSH, no Airflow.

Every step of a job's life (submit, poll, kill, cleanup) is a POSIX ``sh`` script built
here and fed to ``/bin/sh -s`` on the remote host through the script's *standard input*
(see :data:`REMOTE_SHELL`). Sending the script on stdin instead of as the exec command
line keeps it away from the user's login shell quoting rules (csh, fish, ...) and from
``ARG_MAX``. Every script answers with one header line that starts with
:data:`PROTOCOL_TAG`; the parsers here find that line even when a chatty login shell
printed something before it.

The sync hook (paramiko, in the worker) and the async hook (asyncssh, in the triggerer)
both run exactly these scripts and both parse their output with exactly these functions.

The shell programs themselves live in ``ssh_jobs_provider/protocol/sh/*.sh``; this module
validates every input and assembles one script from them and the quoted arguments.

The job directory is private to the SSH user (mode 700), and the base dir and every directory
above it must be trusted (see the Security page of the docs).

Remote layout of one job, all under ``<base_dir>/<job_id>/``::

    token          random, written first: proves which submit created the directory
    command.sh     the user's command, byte for byte
    env.sh         ``export NAME='value'`` lines for ``environment``
    workdir        where the command runs (default: the SSH user's home, as ``ssh host cmd``)
    run.sh         the wrapper that runs detached and records what happened
    launcher       ``setsid`` or ``nohup``: how the wrapper was detached (decides how kill finds it)
    claimed/       created atomically by the one wrapper that owns the job
    pid            the wrapper's pid (its process group and session id under setsid)
    start          the wrapper's start time (Linux), so a recycled pid is not taken for the job
    boot_id        the kernel boot id at start (Linux), to tell a reboot from a live job
    stdout.log     the command's stdout and stderr
    exit_code.new  space reserved at submit for the exit record
    exit_code      ``<code>[ nospace]``, written atomically when the command has ended
    delivered      log bytes a watcher has delivered (for resuming after a restart)
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from ssh_jobs_provider.protocol import shell_source

PROTOCOL_TAG = "SSHJOBS1"
REMOTE_SHELL = "/bin/sh -s"
DEFAULT_BASE_DIR = "/tmp/airflow-ssh-jobs"

# Seconds the kill script waits between SIGTERM and SIGKILL for the job's process group.
KILL_GRACE_SECONDS = 5

#: Environment names the wrapper sets for the command; ``environment`` may not use them.
RESERVED_ENV_PREFIX = "SSH_JOBS_"
#: Longest ``NAME=value`` one environment entry may be (Linux's MAX_ARG_STRLEN, less the NUL).
MAX_ENV_ENTRY_BYTES = 128 * 1024 - 1
#: Most bytes all of ``environment`` may take: the job's exec must also fit the host's own
#: environment and arguments within ARG_MAX (2 MiB on Linux by default).
MAX_ENV_TOTAL_BYTES = 1024 * 1024
#: Longest path on the remote host (PATH_MAX less the NUL) and path component (NAME_MAX).
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
#: Longest file name the protocol creates in a job directory, counted with its slash.
_LONGEST_JOB_FILE = len("/exit_code.new.tmp.4194304")  # tmp names carry a pid
#: Bytes reserved at submit for the exit record, so that it can be written on a full disk.
EXIT_RECORD_RESERVE = 64

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOKEN = re.compile(r"[0-9a-f]{32}")
_JOB_ID_MAX = 200
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
_HEADER_FIELD = re.compile(r"(\w+)=(\S*)")


class RemoteJobProtocolError(ValueError):
    """Raised when a script's answer cannot be understood (not our protocol, or truncated)."""


# --------------------------------------------------------------------------- identity & paths


def _slug(value: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", value).strip("_")[:limit] or "x"


def make_job_id(dag_id: str, task_id: str, run_id: str, map_index: int, try_number: int) -> str:
    """
    Derive a job id from the task instance: the same try always gets the same id.

    That determinism is what makes submission idempotent: a retried submit of the same try
    lands in the same directory and re-attaches to a job that already started, instead of
    launching a second one. The readable part is truncated; the digest keeps ids unique.
    """
    identity = "\0".join((dag_id, task_id, run_id, str(map_index), str(try_number)))
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]
    map_part = "" if map_index < 0 else f"_m{map_index}"
    return f"af_{_slug(dag_id, 40)}_{_slug(task_id, 40)}{map_part}_t{try_number}_{digest}"


def new_job_token() -> str:
    """
    A fresh random token for one submit.

    It is written first into the job directory the submit creates; a later submit re-attaches
    to that directory only when it knows the same token. Nobody else can guess it, so a
    directory someone else created (or one left by another Airflow deployment whose job ids
    happen to coincide) is refused instead of adopted.
    """
    return secrets.token_hex(16)


def validate_token(token: str, required: bool = True) -> str:
    """A job token is 32 lowercase hex digits; ``""`` (unchecked) only where not ``required``."""
    if token == "" and not required:
        return token
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError(f"Invalid job token {token!r}: expected 32 hex digits from new_job_token().")
    return token


def validate_base_dir(base_dir: str) -> str:
    """
    Return ``base_dir`` normalised, or raise ``ValueError`` naming the fix.

    The base dir bounds what cleanup may delete, so it must be an absolute, normalised
    path that is not the filesystem root, and short enough for every file of a job.
    """
    if not isinstance(base_dir, str) or not base_dir:
        raise ValueError(
            "remote_base_dir is empty: leave it unset (None) for the default "
            f"{DEFAULT_BASE_DIR!r}, or give an absolute path such as '/home/<user>/airflow-ssh-jobs'."
        )
    if "\0" in base_dir or "\n" in base_dir:
        raise ValueError(f"remote_base_dir must not contain NUL or newline characters: {base_dir!r}.")
    if not base_dir.startswith("/"):
        raise ValueError(
            f"remote_base_dir must be an absolute path (got {base_dir!r}); "
            "use e.g. '/home/<user>/airflow-ssh-jobs' instead of a relative or '~' path."
        )
    if ".." in base_dir.split("/"):
        raise ValueError(f"remote_base_dir must not contain '..' components (got {base_dir!r}).")
    normalised = posixpath.normpath(base_dir)
    if normalised.startswith("//"):
        normalised = "/" + normalised.lstrip("/")
    if normalised == "/":
        raise ValueError("remote_base_dir must not be '/': cleanup removes job directories under it.")
    _require_utf8(normalised, "remote_base_dir")
    longest = len(normalised.encode("utf-8")) + 1 + _JOB_ID_MAX + _LONGEST_JOB_FILE
    if longest > MAX_PATH_BYTES:
        raise ValueError(
            f"remote_base_dir is {len(normalised.encode('utf-8'))} bytes long: job files under it would "
            f"exceed the {MAX_PATH_BYTES}-byte path limit; use a base dir of at most "
            f"{MAX_PATH_BYTES - 1 - _JOB_ID_MAX - _LONGEST_JOB_FILE} bytes."
        )
    for part in normalised.split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(
                f"remote_base_dir has a component of {len(part.encode('utf-8'))} bytes ({part[:40]!r}...): "
                f"file names are limited to {MAX_NAME_BYTES} bytes."
            )
    return normalised


def validate_working_dir(working_dir: str | None) -> str:
    """
    Return the command's working directory as the wrapper reads it (``""``: the SSH user's home).

    An absolute path, or ``~`` / ``~/...`` for the home directory of the SSH user.
    """
    if working_dir is None:
        return ""
    if not isinstance(working_dir, str) or not working_dir:
        raise ValueError(
            "remote_working_dir is empty: leave it unset (None) to run in the SSH user's home directory, "
            "or give an absolute path or '~/...'."
        )
    if "\0" in working_dir or "\n" in working_dir:
        raise ValueError(f"remote_working_dir must not contain NUL or newline characters: {working_dir!r}.")
    if not (working_dir.startswith("/") or working_dir == "~" or working_dir.startswith("~/")):
        raise ValueError(
            f"remote_working_dir must be an absolute path or start with '~/' (got {working_dir!r})."
        )
    _require_utf8(working_dir, "remote_working_dir")
    if len(working_dir.encode("utf-8")) > MAX_PATH_BYTES:
        raise ValueError(f"remote_working_dir is longer than {MAX_PATH_BYTES} bytes.")
    return working_dir


def validate_job_id(job_id: str) -> str:
    """Job ids become one path component: letters, digits, ``_ . -``, not starting with a dot."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"Invalid job id {job_id!r}: expected 1-200 characters of [A-Za-z0-9_.-], "
            "starting with a letter or digit."
        )
    return job_id


@dataclass(frozen=True)
class RemoteJobPaths:
    """
    Where one job's files live on the remote host.

    :param job_id: the job's id (one path component)
    :param base_dir: the configured base directory; the job directory is its direct child
    """

    job_id: str
    base_dir: str = DEFAULT_BASE_DIR

    def __post_init__(self) -> None:
        validate_job_id(self.job_id)
        object.__setattr__(self, "base_dir", validate_base_dir(self.base_dir))

    @classmethod
    def from_job_dir(cls, job_dir: str, base_dir: str | None) -> RemoteJobPaths:
        """
        Rebuild the paths from a job directory, refusing anything not directly under ``base_dir``.

        This is the guard that keeps cleanup from ever removing something outside the base
        directory, whatever a serialized trigger event or XCom value says.
        """
        base = validate_base_dir(base_dir or DEFAULT_BASE_DIR)
        parent, name = posixpath.split(job_dir.rstrip("/")) if job_dir else ("", "")
        if parent != base:
            raise ValueError(f"Refusing job directory {job_dir!r}: it is not directly under {base!r}.")
        return cls(job_id=name, base_dir=base)

    @property
    def job_dir(self) -> str:
        return f"{self.base_dir}/{self.job_id}"

    @property
    def log_file(self) -> str:
        return f"{self.job_dir}/stdout.log"

    @property
    def exit_code_file(self) -> str:
        return f"{self.job_dir}/exit_code"

    @property
    def pid_file(self) -> str:
        return f"{self.job_dir}/pid"

    def as_dict(self) -> dict[str, str]:
        """The identity and paths pushed to XCom and carried by trigger events."""
        return {
            "job_id": self.job_id,
            "job_dir": self.job_dir,
            "log_file": self.log_file,
            "exit_code_file": self.exit_code_file,
            "pid_file": self.pid_file,
            "remote_os": "posix",
        }


# --------------------------------------------------------------------------- environment


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
        _require_utf8(text, f"environment[{name!r}]")
        if "\0" in text:
            raise ValueError(
                f"environment[{name!r}] contains a NUL byte, which no process environment can hold."
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


def _require_utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} cannot be encoded as UTF-8 ({error.reason} at {error.start}).") from None


def render_env_file(environment: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines; single quotes keep every byte literal, newlines included."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in environment.items())


# --------------------------------------------------------------------------- scripts


def script_prelude() -> str:
    """The start of every script: the protocol tag (defined only here) and the shared functions."""
    return f"T={PROTOCOL_TAG}\n" + shell_source("lib.sh")


def _q(value: str | int) -> str:
    return shlex.quote(str(value))


def build_submit_script(
    paths: RemoteJobPaths,
    command: str,
    environment: Mapping[str, str],
    token: str,
    working_dir: str | None = None,
) -> str:
    """
    Script that creates the job directory and launches the job detached, idempotently.

    Before anything is written, every directory on the way to the base dir is checked the
    way sshd's ``StrictModes`` checks a home directory, and a job directory that exists
    already is only re-used when it is the SSH user's, private, and carries ``token`` (this
    submit's own, from a try whose reply was lost). Anything else is refused with a reason.
    Running it twice for the same job never starts two jobs: the wrapper claims the job with
    an atomic ``mkdir``, and files are only written while no wrapper has claimed it. Space
    for the exit record is reserved here; if the disk is full, what this submit created is
    removed again.

    :param paths: the job's paths
    :param command: the shell text to run
    :param environment: validated by :func:`normalise_environment`
    :param token: this submit's :func:`new_job_token`
    :param working_dir: where the command runs (see :func:`validate_working_dir`)
    """
    if not command or not command.strip():
        raise ValueError("command is empty: give the shell text to run on the remote host.")
    if "\0" in command:
        raise ValueError("command contains a NUL byte, which a shell script cannot hold.")
    _require_utf8(command, "command")
    validate_token(token)
    workdir = validate_working_dir(working_dir)
    files = (
        ("command.sh", command),
        ("env.sh", render_env_file(environment)),
        ("workdir", workdir + "\n"),
        ("run.sh", shell_source("wrapper.sh")),
        ("exit_code.new", "\n" * EXIT_RECORD_RESERVE),
    )
    writes = "".join(f"  put {name} {_q(content)}\n" for name, content in files)
    return (
        "umask 077\n"
        + script_prelude()
        + shell_source("submit.sh")
        + f"begin {_q(paths.base_dir)} {_q(paths.job_id)} {_q(token)}\n"
        + 'if [ "$claimed" = 0 ]; then\n'
        + writes
        + "  launch\n"
        + "fi\n"
        + "finish\n"
    )


def build_poll_script(paths: RemoteJobPaths, log_offset: int, max_bytes: int, token: str = "") -> str:
    """
    Script that reports one job's state and up to ``max_bytes`` of its log from ``log_offset``.

    A batch of one: see :mod:`ssh_jobs_provider.utils.batch_poll` for the format and for
    why the probes are ordered as they are.
    """
    from ssh_jobs_provider.utils.batch_poll import PollEntry, build_batch_script

    if log_offset < 0 or max_bytes <= 0:
        raise ValueError(f"Invalid log window: offset={log_offset}, max_bytes={max_bytes}.")
    return build_batch_script([PollEntry(paths, log_offset, max_bytes, token=token)])


def build_kill_script(paths: RemoteJobPaths, token: str = "", grace_seconds: int = KILL_GRACE_SECONDS) -> str:
    """
    Script that stops every process of the job: SIGTERM, then SIGKILL after a grace period.

    The job's processes are those carrying its marker in their environment (Linux), the
    process group of its verified wrapper (setsid), or the wrapper's descendants (without
    setsid, e.g. macOS); see ``sh/kill.sh``. A pid of 0 or 1 is never signalled, nor a pid
    that now belongs to another process. The answer names any process that survived.

    :param token: the submit's token, checked against the directory's; ``""`` checks only
        that the directory is the SSH user's and uses the token recorded in it
    """
    validate_token(token, required=False)
    return (
        script_prelude()
        + shell_source("kill.sh")
        + f"k {_q(paths.job_dir)} {_q(token)} {int(grace_seconds)}\n"
    )


def build_cleanup_script(paths: RemoteJobPaths, token: str = "") -> str:
    """
    Script that removes the job directory and nothing else.

    ``paths`` is validated on construction (job id is one plain path component, base dir
    absolute and normalised), so the directory removed is always a direct child of the
    base directory; it is only removed when it is the SSH user's and, with ``token``, carries it.
    """
    from ssh_jobs_provider.utils.batch_poll import CleanupEntry, build_batch_script

    validate_token(token, required=False)
    return build_batch_script([CleanupEntry(paths, token=token)])


# --------------------------------------------------------------------------- answers


class JobState(str, Enum):
    """What the remote job directory says about the job."""

    PENDING = "pending"  # directory exists, no wrapper has recorded a pid yet
    RUNNING = "running"
    EXITED = "exited"  # exit code recorded: the log is complete
    VANISHED = "vanished"  # process gone (killed, OOM, reboot) without an exit code
    MISSING = "missing"  # no job directory at all
    FOREIGN = "foreign"  # the directory does not carry this job's token: not ours to watch


@dataclass(frozen=True)
class JobStatus:
    """One parsed answer of the submit or poll script."""

    state: JobState
    pid: int | None = None
    exit_code: int | None = None
    log_size: int = 0
    remote_os: str | None = None
    launched: bool | None = None
    #: Log bytes an earlier watcher recorded as delivered (for resuming after a restart).
    delivered: int = 0
    #: The file system holding the job directory was (or is) full: the log may be incomplete.
    disk_full: bool = False
    log_data: bytes = field(default=b"", repr=False)

    @property
    def done(self) -> bool:
        return self.state in (JobState.EXITED, JobState.VANISHED, JobState.MISSING, JobState.FOREIGN)


def _find_header(output: bytes, verb: str) -> tuple[dict[str, str], bytes]:
    """Locate ``TAG verb k=v ...`` as a whole line; return its fields and the bytes after it."""
    needle = f"{PROTOCOL_TAG} {verb}".encode()
    start = 0
    while True:
        index = output.find(needle, start)
        if index < 0:
            preview = output[:200].decode("utf-8", errors="replace")
            raise RemoteJobProtocolError(f"No '{PROTOCOL_TAG} {verb}' answer in remote output: {preview!r}")
        at_line_start = index == 0 or output[index - 1 : index] == b"\n"
        end = output.find(b"\n", index)
        if at_line_start and end >= 0:
            line = output[index + len(needle) : end].decode("utf-8", errors="replace")
            return header_fields(line), output[end + 1 :]
        start = index + 1


def header_fields(text: str) -> dict[str, str]:
    """The ``name=value`` fields of a header line."""
    return dict(_HEADER_FIELD.findall(text))


def int_or_none(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise RemoteJobProtocolError(f"Expected an integer, got {value!r}") from None


def status_from_fields(fields: dict[str, str], log_data: bytes = b"") -> JobStatus:
    if fields.get("state") == "missing":
        return JobStatus(JobState.MISSING)
    if fields.get("state") == "foreign":
        return JobStatus(JobState.FOREIGN)
    pid = int_or_none(fields.get("pid"))
    alive = fields.get("alive") == "1"
    # An exit record counts only once the wrapper that writes it is gone: one that appears
    # while the wrapper still runs was written by the job itself (or the wrapper is about to
    # exit, and the next poll sees it gone).
    exit_code = None if alive else int_or_none(fields.get("exit"))
    if exit_code is not None:
        state = JobState.EXITED
    elif pid is None:
        state = JobState.PENDING
    elif alive and fields.get("boot") != "changed":
        state = JobState.RUNNING
    else:
        state = JobState.VANISHED
    return JobStatus(
        state=state,
        pid=pid,
        exit_code=exit_code,
        log_size=int_or_none(fields.get("size")) or 0,
        remote_os=fields.get("os") or None,
        launched=None if "launched" not in fields else fields["launched"] == "1",
        delivered=int_or_none(fields.get("delivered")) or 0,
        disk_full=fields.get("full") == "1" or fields.get("note") == "nospace",
        log_data=log_data,
    )


class SubmitRefused(RemoteJobProtocolError):
    """
    The submit script refused or failed before launching anything, and removed what it created.

    :param code: ``unsafe`` (an untrusted directory on the way to the base dir), ``foreign``
        (the job directory is not this submit's), ``nospace`` (the file system is full) or
        ``io`` (another write failure)
    :param detail: the script's one-line reason, naming the path
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def parse_submit_output(output: bytes) -> JobStatus:
    """Parse the submit script's answer: its header, then the job's state as a poll answer."""
    from ssh_jobs_provider.utils.batch_poll import PollEntry, parse_batch_output

    fields, rest = _find_header(output, "submit")
    if fields.get("error"):
        detail = rest.decode("utf-8", errors="replace").strip().splitlines()
        raise SubmitRefused(fields["error"], detail[0] if detail else "no reason given")
    # The poll record has no log window; its entry only has to name some job for messages.
    probe = PollEntry(RemoteJobPaths("submitted-job", DEFAULT_BASE_DIR), 0, 0)
    result = parse_batch_output(rest + f"{PROTOCOL_TAG} end\n".encode(), [probe])[0]
    if isinstance(result, RemoteJobProtocolError):
        raise result
    assert isinstance(result, JobStatus)
    return replace(result, remote_os=fields.get("os") or None, launched=fields.get("launched") == "1")


def parse_poll_output(output: bytes, max_bytes: int) -> JobStatus:
    """Parse the answer of :func:`build_poll_script`; the log bytes follow the header line."""
    fields, rest = _find_header(output, "poll")
    data = rest
    if "len" in fields:
        length = int_or_none(fields["len"]) or 0
        data = rest[:length]
        if len(data) != length:
            raise RemoteJobProtocolError(f"Poll announced {length} log bytes but returned {len(data)}.")
    if len(data) > max_bytes:
        raise RemoteJobProtocolError(
            f"Poll returned {len(data)} log bytes, more than the {max_bytes} asked for."
        )
    return status_from_fields(fields, data)


def parse_simple_state(output: bytes, verb: str) -> str:
    """Parse the ``state=`` of a kill or cleanup answer."""
    fields, _ = _find_header(output, verb)
    return fields.get("state", "")


def parse_kill_output(output: bytes) -> tuple[str, list[int]]:
    """The kill answer's state, and the pids that survived SIGKILL (``state=survived``)."""
    fields, _ = _find_header(output, "kill")
    pids = [int(pid) for pid in fields.get("pids", "").split(",") if pid.isdigit()]
    return fields.get("state", ""), pids
