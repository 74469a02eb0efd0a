"""
Who a job is and where its files live: ids, tokens and paths, validated. Pure code.

Every value here ends up in a remote shell script or a remote path, so each is checked
before anything runs remotely, and each error says what to change.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
from dataclasses import dataclass

DEFAULT_BASE_DIR = "/tmp/airflow-ssh-jobs"
#: Longest path on the remote host (PATH_MAX less the NUL) and path component (NAME_MAX).
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
#: Longest file name the protocol creates in a job directory, counted with its slash.
_LONGEST_JOB_FILE = len("/exit_code.new.tmp.4194304")  # tmp names carry a pid

_TOKEN = re.compile(r"[0-9a-f]{32}")
_JOB_ID_MAX = 200
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
#: The ids :func:`make_job_id` makes: what the operations tools (status, reap) treat as a job.
JOB_ID_MADE = re.compile(r"af_[A-Za-z0-9_]{1,83}(?:_m[0-9]+)?_t[0-9]+_[0-9a-f]{16}")


def require_utf8(text: str, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``text`` cannot travel as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{what} cannot be encoded as UTF-8 ({error.reason} at {error.start}).") from None


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


def is_made_job_id(name: str) -> bool:
    """Whether ``name`` has the form of the ids :func:`make_job_id` makes (``af_..._t<try>_<hex>``)."""
    return bool(JOB_ID_MADE.fullmatch(name)) and len(name) <= _JOB_ID_MAX


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


def job_marker(token: str) -> str:
    """
    The marker of the job a submit with ``token`` starts: 32 hex digits.

    Every process of the job carries it in its environment as ``SSH_JOBS_JOB_MARKER``, so that
    a kill finds them. It is derived from the token, not the token itself (the job's
    environment may well end up in a log, and the marker does not reveal the token), and
    derived rather than random, so that every re-sent submit of the job writes the same one
    and a kill that knows the token needs nothing from the job directory to find the job's
    processes: not even the directory, which the job may have removed.

    :param token: the submit's :func:`new_job_token`
    """
    return hashlib.sha256(f"ssh-jobs marker\0{validate_token(token)}".encode()).hexdigest()[:32]


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
    require_utf8(normalised, "remote_base_dir")
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
    require_utf8(working_dir, "remote_working_dir")
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
