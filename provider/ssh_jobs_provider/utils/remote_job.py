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

Remote layout of one job, all under ``<base_dir>/<job_id>/``::

    command.sh   the user's command, byte for byte
    env.sh       ``export NAME='value'`` lines for ``environment``
    run.sh       the wrapper that runs detached and records what happened
    launcher     ``setsid`` or ``nohup``: how the wrapper was detached (decides how kill finds it)
    claimed/     created atomically by the one wrapper that owns the job
    pid          the wrapper's pid (its process group and session id under setsid)
    boot_id      the kernel boot id at start (Linux), to tell a reboot from a live job
    stdout.log   the command's stdout and stderr
    exit_code    written atomically (tmp + rename) when the command has ended
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

PROTOCOL_TAG = "SSHJOBS1"
REMOTE_SHELL = "/bin/sh -s"
DEFAULT_BASE_DIR = "/tmp/airflow-ssh-jobs"

# Seconds the kill script waits between SIGTERM and SIGKILL for the job's process group.
KILL_GRACE_SECONDS = 5

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
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


def validate_base_dir(base_dir: str) -> str:
    """
    Return ``base_dir`` normalised, or raise ``ValueError`` naming the fix.

    The base dir bounds what cleanup may delete, so it must be an absolute, normalised
    path that is not the filesystem root.
    """
    if not isinstance(base_dir, str) or not base_dir:
        raise ValueError("remote_base_dir must be a non-empty absolute path, e.g. '/tmp/airflow-ssh-jobs'.")
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
    return normalised


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
        result[name] = text
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


def _write_file(name: str, content: str) -> str:
    # printf '%s' writes the bytes exactly (no trailing newline added, no escapes
    # interpreted); tmp + rename means a running job never sees a half-written file.
    return f"printf '%s' {shlex.quote(content)} > {name}.tmp.$$ && mv -f {name}.tmp.$$ {name} || exit 3\n"


# The detached wrapper. ``$$`` is the wrapper's own pid; under setsid it is also the
# process group and session id, which is what kill signals.
_WRAPPER = r"""cd "$(dirname "$0")" || exit 1
mkdir claimed 2>/dev/null || exit 0
echo $$ > pid.tmp && mv -f pid.tmp pid
cat /proc/sys/kernel/random/boot_id > boot_id 2>/dev/null || rm -f boot_id
# Record a status even when the group is signalled: the trap runs after the child ends.
trap 'got_signal=1' HUP INT TERM
(
  . ./env.sh
  case "$(head -c 2 command.sh)" in
    '#!') chmod u+x command.sh && exec ./command.sh ;;
  esac
  if command -v bash >/dev/null 2>&1; then exec bash ./command.sh; fi
  exec /bin/sh ./command.sh
) </dev/null >>stdout.log 2>&1
rc=$?
printf '%s\n' "$rc" > exit_code.tmp && mv -f exit_code.tmp exit_code
"""

# Shared by submit and poll: reports what the job directory says about the job.
_STATE_PROBE = r"""pid=$(cat pid 2>/dev/null)
case "$pid" in ''|*[!0-9]*) pid= ;; esac
alive=0
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then alive=1; fi
ec=
if [ -f exit_code ]; then ec=$(cat exit_code); fi
size=$(wc -c < stdout.log 2>/dev/null || echo 0)
size=$((size + 0))
boot=unknown
if [ -f boot_id ] && [ -r /proc/sys/kernel/random/boot_id ]; then
  if [ "$(cat boot_id)" = "$(cat /proc/sys/kernel/random/boot_id)" ]; then boot=same; else boot=changed; fi
fi
claimed=0
if [ -d claimed ]; then claimed=1; fi
"""

_STATE_FIELDS = "pid=$pid alive=$alive exit=$ec size=$size boot=$boot claimed=$claimed"


def build_submit_script(paths: RemoteJobPaths, command: str, environment: Mapping[str, str]) -> str:
    """
    Script that creates the job directory and launches the job detached, idempotently.

    Running it twice for the same job never starts two jobs: the wrapper claims the job
    with an atomic ``mkdir``, and a second wrapper that loses the claim exits silently.
    Files are only written while no wrapper has claimed the job.
    """
    if not command or not command.strip():
        raise ValueError("command is empty: give the shell text to run on the remote host.")
    if "\0" in command:
        raise ValueError("command contains a NUL byte, which a shell script cannot hold.")
    _require_utf8(command, "command")
    job_dir = shlex.quote(paths.job_dir)
    return (
        "umask 077\n"
        f"mkdir -p {shlex.quote(paths.base_dir)} {job_dir} || exit 3\n"
        f"cd {job_dir} || exit 3\n"
        "launched=0\n"
        "if [ ! -d claimed ]; then\n"
        "  launched=1\n"
        + _write_file("command.sh", command)
        + _write_file("env.sh", render_env_file(environment))
        + _write_file("run.sh", _WRAPPER)
        + "  : >> stdout.log\n"
        "  if command -v setsid >/dev/null 2>&1; then\n"
        "    printf setsid > launcher\n"
        f"    setsid /bin/sh {job_dir}/run.sh </dev/null >/dev/null 2>&1 &\n"
        "  else\n"
        "    printf nohup > launcher\n"
        f"    nohup /bin/sh {job_dir}/run.sh </dev/null >/dev/null 2>&1 &\n"
        "  fi\n"
        "fi\n"
        # Wait (bounded, ~5 s) for the wrapper to record its pid, so the answer says
        # whether the job really started.
        "i=0\n"
        'while [ ! -s pid ] && [ ! -f exit_code ] && [ "$i" -lt 50 ]; do\n'
        "  sleep 0.1 2>/dev/null || sleep 1\n"
        "  i=$((i + 1))\n"
        "done\n"
        + _STATE_PROBE
        + f'echo "{PROTOCOL_TAG} submit os=$(uname -s 2>/dev/null | tr -d " ") launched=$launched {_STATE_FIELDS}"\n'
    )


def build_poll_script(paths: RemoteJobPaths, log_offset: int, max_bytes: int) -> str:
    """
    Script that reports one job's state and up to ``max_bytes`` of its log from ``log_offset``.

    A batch of one: see :mod:`ssh_jobs_provider.utils.batch_poll` for the format and for
    why the probes are ordered as they are.
    """
    from ssh_jobs_provider.utils.batch_poll import PollEntry, build_batch_script

    if log_offset < 0 or max_bytes <= 0:
        raise ValueError(f"Invalid log window: offset={log_offset}, max_bytes={max_bytes}.")
    return build_batch_script([PollEntry(paths, log_offset, max_bytes)])


def build_kill_script(paths: RemoteJobPaths, grace_seconds: int = KILL_GRACE_SECONDS) -> str:
    """
    Script that terminates the job's whole process tree: SIGTERM, then SIGKILL after a grace period.

    Under setsid the recorded pid leads its own process group, so the group is signalled.
    Without setsid (e.g. macOS) the descendants of the wrapper are found with ``ps`` and
    signalled one by one. A pid of 0 or 1 is never signalled.
    """
    return (
        f"cd {shlex.quote(paths.job_dir)} 2>/dev/null || "
        f'{{ echo "{PROTOCOL_TAG} kill state=missing"; exit 0; }}\n'
        "pid=$(cat pid 2>/dev/null)\n"
        "case \"$pid\" in ''|*[!0-9]*) pid= ;; esac\n"
        'if [ -z "$pid" ] || [ "$pid" -le 1 ]; then\n'
        f'  echo "{PROTOCOL_TAG} kill state=not-started"; exit 0\n'
        "fi\n"
        # setsid jobs lead their own process group: signal the group. Without setsid
        # (e.g. macOS) the job's processes are found as descendants of the wrapper.
        "mode=$(cat launcher 2>/dev/null)\n"
        "members() {\n"
        '  ps -A -o pid= -o ppid= -o pgid= -o stat= 2>/dev/null | awk -v root="$pid" -v mode="$mode" \'\n'
        "    { parent[$1] = $2; group[$1] = $3; state[$1] = $4 }\n"
        "    END { for (p in parent) {\n"
        "      if (state[p] ~ /^Z/) continue\n"
        '      if (mode == "setsid") { if (group[p] == root) print p; continue }\n'
        "      q = p; n = 0\n"
        '      while (q != "" && q > 1 && n < 64) { if (q == root) { print p; break }; q = parent[q]; n++ } } }\'\n'
        "}\n"
        "signal() {\n"
        '  if [ "$mode" = setsid ]; then kill -"$1" "-$pid" 2>/dev/null; fi\n'
        '  for p in $(members); do kill -"$1" "$p" 2>/dev/null; done\n'
        "}\n"
        'running() { [ -n "$(members)" ]; }\n'
        "if ! running; then\n"
        f'  echo "{PROTOCOL_TAG} kill state=not-running"; exit 0\n'
        "fi\n"
        "signal TERM\n"
        "i=0\n"
        f'while running && [ "$i" -lt {grace_seconds * 10} ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done\n'
        "if running; then signal KILL; sleep 0.2 2>/dev/null || sleep 1; fi\n"
        "if running; then state=survived; else state=killed; fi\n"
        f'echo "{PROTOCOL_TAG} kill state=$state"\n'
    )


def build_cleanup_script(paths: RemoteJobPaths) -> str:
    """
    Script that removes the job directory and nothing else.

    ``paths`` is validated on construction (job id is one plain path component, base dir
    absolute and normalised), so the directory removed is always a direct child of the
    base directory.
    """
    job_dir = shlex.quote(paths.job_dir)
    return (
        f'if [ ! -e {job_dir} ]; then echo "{PROTOCOL_TAG} cleanup state=absent"; exit 0; fi\n'
        f"rm -rf -- {job_dir}\n"
        f'if [ -e {job_dir} ]; then echo "{PROTOCOL_TAG} cleanup state=failed"; exit 4; fi\n'
        f'echo "{PROTOCOL_TAG} cleanup state=removed"\n'
    )


# --------------------------------------------------------------------------- answers


class JobState(str, Enum):
    """What the remote job directory says about the job."""

    PENDING = "pending"  # directory exists, no wrapper has recorded a pid yet
    RUNNING = "running"
    EXITED = "exited"  # exit code recorded: the log is complete
    VANISHED = "vanished"  # process gone (killed, OOM, reboot) without an exit code
    MISSING = "missing"  # no job directory at all


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
    log_data: bytes = field(default=b"", repr=False)

    @property
    def done(self) -> bool:
        return self.state in (JobState.EXITED, JobState.VANISHED, JobState.MISSING)


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
    pid = int_or_none(fields.get("pid"))
    exit_code = int_or_none(fields.get("exit"))
    alive = fields.get("alive") == "1"
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
        log_data=log_data,
    )


def parse_submit_output(output: bytes) -> JobStatus:
    """Parse the submit script's answer."""
    fields, _ = _find_header(output, "submit")
    return status_from_fields(fields)


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
