"""
One SSH login per host, shared by the worker processes of one machine.

A handshake costs ``sshd`` more CPU than the submit it carries, and in a fan-out every
worker-mode task makes one. Sharing (the connection extra ``share_login``) lets a worker
process start a *login broker* (:mod:`~ssh_jobs_provider.hooks.login_broker`) for that host in
the background: a small process of the same user that logs in once and runs the scripts of
every worker process of the machine on channels of that one login, until it has been idle for
:data:`BROKER_IDLE_SECONDS`.

When a broker is started: with ``share_login`` ``"auto"`` (the default), by a worker process
that finds another process of the user handshaking with the host at that moment (holding one
of its :mod:`~ssh_jobs_provider.hooks.handshake_turns`): a fan-out. That process still logs
in by itself, as it would have alone; the tasks that come while the broker starts wait for
it. A lone task logs in by itself and starts nothing, and so does every task of a host
reached through a jump host or a proxy command (:func:`shares_login`). With ``True``, by the
first worker process that finds none, which waits for it; with ``False``, never. Either way
a broker that is already there is used.

The broker listens on a Unix socket in the user's private directory (the one of
:mod:`~ssh_jobs_provider.hooks.handshake_turns`: mode 700, not used if not safely ours), named
by a keyed hash of *every* connection setting, secrets included: two connections that differ
in anything (user, key, jump host, host-key policy) never share a login, and the name tells
nothing of the host or the credentials. The broker serves only processes of its own user
(checked with ``SO_PEERCRED``).

Every process that comes while a broker logs in waits for it (at most
:data:`STARTING_WAIT_SECONDS`): a fan-out's burst of submits then costs the host a handshake
or a few, not one per task. Sharing never makes a script less certain than a
login of its own would: whatever goes wrong before a broker ran a script (it could not log in,
it ended, it is gone) sends the caller to its own login, exactly as without sharing, and a
broker that could not log in is not tried again for :data:`FAILED_START_SECONDS`, so a host
that refuses logins sees one attempt more per that period, not one per task; whatever goes
wrong after (the login lost mid-script) is raised as the lost reply it is, and the caller's
retry sends the script again, which the remote scripts make safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import pickle
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.handshake_turns import turns_dir, turns_in_use

#: What running a script gives: ``(exit_status, stdout, stderr)``.
ScriptResult = tuple[int, bytes, bytes]
#: Seconds allowed to reach a broker's socket and hand it a script.
REACH_SECONDS = 5.0
#: Extra seconds a caller waits for the broker's answer beyond the script's own timeout.
ANSWER_MARGIN_SECONDS = 30.0
#: Seconds without a script after which a broker logs out and ends: long enough to span the
#: gaps of a fan-out's waves of tasks, short enough that an idle machine holds no login long.
BROKER_IDLE_SECONDS = 30.0
#: Longest wait for a broker that is logging in, in seconds; then the caller logs in itself.
STARTING_WAIT_SECONDS = 20.0
#: After a broker could not log in, seconds during which no other is started for the same settings.
FAILED_START_SECONDS = 30.0
#: Longest Unix socket path that binds everywhere, in bytes (plus its terminating zero).
MAX_SOCKET_PATH_BYTES = 104
#: Longest header line of a message, in bytes.
MAX_HEADER_BYTES = 65536


class BrokerUnavailable(Exception):
    """No broker ran the script (none reached, or it could not): the caller logs in itself."""


class BrokerDeclined(BrokerUnavailable):
    """A broker was reached but did not run the script (no channel in time, its login gone)."""


# --------------------------------------------------------------------------- the wire


def send_frame(sock: socket.socket, header: dict[str, Any], *payloads: bytes) -> None:
    """One message: a JSON header line naming the payloads' sizes, then the payloads."""
    line = json.dumps({**header, "sizes": [len(payload) for payload in payloads]}).encode()
    sock.sendall(line + b"\n" + b"".join(payloads))


def read_frame(reader: Any) -> tuple[dict[str, Any], list[bytes]]:
    """Read one :func:`send_frame` message from a binary file object (``EOFError`` if cut short)."""
    line = reader.readline(MAX_HEADER_BYTES)
    if not line.endswith(b"\n"):
        raise EOFError("the message ended before its header did")
    header = json.loads(line)
    payloads = []
    for size in header.pop("sizes"):
        payload = reader.read(size)
        if len(payload) != size:
            raise EOFError("the message ended before its payload did")
        payloads.append(payload)
    return header, payloads


# --------------------------------------------------------------------------- where a broker listens


def _name_key(directory: Path) -> bytes:
    """The user's random key for broker names (created once, mode 600)."""
    path = directory / "login-names.key"
    if not path.exists():
        # Written aside, then linked into place whole: a fan-out's first processes all come
        # here at once, and none may read a key half written (link fails where one is).
        draft = directory / f"login-names.key.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(secrets.token_bytes(32))
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink()
    with open(path, "rb") as file:
        key = file.read()
    if len(key) != 32:
        raise OSError(f"{path} is not a key (being written, or damaged)")
    return key


def broker_address(settings: SSHConnectionSettings) -> Path | None:
    """The socket of the broker for exactly these settings; ``None`` where no safe directory is."""
    directory = turns_dir()
    if directory is None:
        return None
    try:
        key = _name_key(directory)
    except OSError:
        return None
    described = json.dumps(asdict(settings), sort_keys=True, default=str).encode()
    address = directory / f"login-{hmac.new(key, described, hashlib.sha256).hexdigest()[:32]}.sock"
    # A Unix socket's path has a short limit (108 bytes on Linux, 104 on macOS): too long, no broker.
    return address if len(os.fsencode(address)) < MAX_SOCKET_PATH_BYTES else None


# --------------------------------------------------------------------------- the caller's side


def ask_broker(address: Path, script: bytes, timeout: float | None) -> ScriptResult:
    """
    Have the broker at ``address`` run ``script`` (``/bin/sh -s`` on the host).

    :raises BrokerUnavailable: it ran nothing (not there, not answering, or its login is gone)
    :raises EOFError: it took the script but no answer came: a lost reply
    :raises TimeoutError: the script ran past ``timeout``
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REACH_SECONDS)
        try:
            sock.connect(str(address))
            send_frame(sock, {"timeout": timeout}, script)
        except OSError as error:
            raise BrokerUnavailable(f"no login broker answers: {error}") from None
        # The broker starts the script within `timeout` of its arrival or not at all, and then
        # gives it `timeout` to run: waiting longer than both, this caller never gives up on a
        # script that could still start.
        sock.settimeout(None if timeout is None else 2 * timeout + ANSWER_MARGIN_SECONDS)
        with sock.makefile("rb") as reader:
            try:
                header, payloads = read_frame(reader)
            except (OSError, EOFError, ValueError):
                # It had the script: whether it ran is not known, as after any lost reply.
                raise EOFError("the login broker took the script but sent no answer") from None
    outcome = header.get("outcome")
    if outcome == "ran" and len(payloads) == 2:
        return int(header["status"]), payloads[0], payloads[1]
    reason = str(header.get("reason", outcome))
    if outcome == "not_run":
        raise BrokerDeclined(reason)
    if outcome == "timeout":
        raise TimeoutError(reason)
    raise EOFError(f"the shared login was lost while the script ran: {reason}")


def start_broker(address: Path, settings: SSHConnectionSettings) -> bool:
    """
    Start a broker for ``settings`` in the background unless one is starting already; it
    listens on ``address`` once logged in (or exits if it cannot). Returns whether it started one.
    """
    lock = _open_start_lock(address)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # another process is starting one
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(REACH_SECONDS)
            probe.connect(str(address))
            return False  # one answers already
        with contextlib.suppress(FileNotFoundError):
            address.unlink()  # a dead broker's socket
        # The broker inherits the lock (same open file) and holds it until it listens or gives
        # up, so no second broker starts meanwhile; it is not in the task's process group and
        # holds none of its files: it outlives the task without keeping anything of it open.
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ssh_jobs_provider.hooks.login_broker",
                str(address),
                str(lock),
                str(BROKER_IDLE_SECONDS),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(lock,),
            start_new_session=True,
            cwd="/",
        )
        assert process.stdin is not None
        with process.stdin:
            # The settings, secrets included, go through the pipe, never the command line.
            process.stdin.write(pickle.dumps(settings))
        return True
    finally:
        os.close(lock)


def _lock_path(address: Path) -> str:
    return f"{address}.lock"


def _open_start_lock(address: Path) -> int:
    """The descriptor of the lock a starting broker for ``address`` holds until it listens."""
    return os.open(_lock_path(address), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def failed_marker(address: Path) -> Path:
    """Touched by a broker that could not log in."""
    return Path(f"{address}.failed")


def recently_failed(address: Path, now: float | None = None) -> bool:
    """Whether a broker for ``address`` failed to log in less than :data:`FAILED_START_SECONDS` ago."""
    try:
        failed_at = failed_marker(address).stat().st_mtime
    except OSError:
        return False
    return (time.time() if now is None else now) - failed_at < FAILED_START_SECONDS


def broker_starting(address: Path) -> bool:
    """Whether a broker for ``address`` is starting now (its starting lock is held); never waits."""
    try:
        lock = _open_start_lock(address)
    except OSError:
        return False
    try:
        # A shared lock: lookers do not see each other, only a starter's exclusive one.
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(lock)
    return False


def wait_for_start(address: Path, seconds: float) -> None:
    """Wait (at most ``seconds``) until no broker for ``address`` is starting."""
    deadline = time.monotonic() + seconds
    lock = _open_start_lock(address)
    try:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.05)
                continue
            fcntl.flock(lock, fcntl.LOCK_UN)
            return
    finally:
        os.close(lock)


def shares_login(settings: SSHConnectionSettings) -> bool:
    """
    Whether these settings may use a broker: ``share_login`` true, or ``"auto"`` to a host
    reached directly. Through a jump host or a proxy command, ``"auto"`` keeps a login per
    task: there a broker's sessions were seen to end without an exit status under a burst
    (a submit then fails), which logins of their own never did.
    """
    if settings.share_login == "auto":
        return settings.proxy_jump is None and not settings.proxy_command
    return settings.share_login is True


class ScriptSession:
    """
    Where one worker-side step (a submit, a cleanup, a lookup) runs its scripts: this machine's
    shared login if one answers, else a login of its own, opened on first use.

    :param settings: the connection's settings
    :param connect: opens ONE login of this process's own (the hook's ``connect_with``)
    :param run_on: runs a script on such a login (the hook's ``run_script``)
    """

    def __init__(
        self,
        settings: SSHConnectionSettings,
        connect: Callable[[SSHConnectionSettings], Any],
        run_on: Callable[[Any, str, float | None], ScriptResult],
    ) -> None:
        self.settings = settings
        self._connect = connect
        self._run_on = run_on
        self.address = broker_address(settings) if shares_login(settings) else None
        self.client: Any = None

    def run(self, script: str, timeout: float | None) -> ScriptResult:
        """Run one protocol script; ``(exit_status, stdout, stderr)``."""
        if self.client is None and self.address is not None:
            with contextlib.suppress(BrokerUnavailable):
                return self._shared(self.address, script.encode("utf-8"), timeout)
            self.address = None  # no broker for this step: its own login from here on
        if self.client is None:
            self.client = self._connect(self.settings)
        return self._run_on(self.client, script, timeout)

    def _shared(self, address: Path, script: bytes, timeout: float | None) -> ScriptResult:
        try:
            return ask_broker(address, script, timeout)
        except BrokerDeclined:
            raise  # one runs but could not take it: no second broker, the caller's own login
        except BrokerUnavailable:
            pass
        starting = broker_starting(address)
        if not starting and not self._worth_a_broker():
            raise BrokerUnavailable("no login broker runs or starts, and no other worker process logs in now")
        if recently_failed(address):
            raise BrokerUnavailable("a login broker for this connection failed moments ago")
        # "auto": the task that starts a broker logs in by itself, as it would have done
        # alone; only the tasks that come after it wait for the broker.
        try:
            started = not starting and start_broker(address, self.settings)
            goes_alone = started and self.settings.share_login == "auto"
            if not goes_alone:
                wait_for_start(address, STARTING_WAIT_SECONDS)
        except Exception as error:  # whatever stops sharing sends the caller to its own login
            raise BrokerUnavailable(f"no login broker could be started: {error}") from None
        if goes_alone:
            raise BrokerUnavailable("started a login broker for the worker processes to come")
        try:
            return ask_broker(address, script, timeout)
        except BrokerDeclined:
            raise
        except BrokerUnavailable:
            if started or starting:
                # It ended without listening (it could not log in, or not even start: no
                # provider on its path, a socket it could not bind): none for a while.
                with contextlib.suppress(OSError):
                    failed_marker(address).touch(mode=0o600)
            raise

    def _worth_a_broker(self) -> bool:
        """
        Whether to start a broker: always with ``share_login`` true; with ``"auto"`` only while
        another worker process of the machine is handshaking with the host, the sign of a
        fan-out, where one login instead of one per task saves the host the most. The look is
        cheap (a few lock tries) and never waits.
        """
        if self.settings.share_login is True:
            return True
        try:
            return turns_in_use(self.settings.host, self.settings.port, self.settings.handshake_slots)
        except OSError:
            return False  # cannot tell: as a lone task does, log in by itself

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def __enter__(self) -> ScriptSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
