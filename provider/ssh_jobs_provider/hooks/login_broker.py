"""
The login broker: one SSH login that runs the scripts of a machine's worker processes.

Started by :func:`~ssh_jobs_provider.hooks.shared_login.start_broker` as
``python -m ssh_jobs_provider.hooks.login_broker <socket> <lock descriptor> <idle seconds>``, with the
connection settings on stdin. It logs in once (taking its handshake turn like any worker), then
listens on the socket and releases the starting lock. Each caller's script runs on a channel
of its own (at most :data:`CHANNELS` at once, below ``sshd``'s default ``MaxSessions`` of 10),
in a thread of its own. It ends, removing its socket, when no script has come for its idle
time (:data:`~ssh_jobs_provider.hooks.shared_login.BROKER_IDLE_SECONDS`), or when its login
is gone; a script it had taken when the login went is answered ``lost`` (the caller sends it
again), one it had not yet started ``not_run`` (the caller runs it over a login of its own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import struct
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import paramiko

from ssh_jobs_provider.exceptions import is_refused_channel
from ssh_jobs_provider.hooks import _paramiko
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.shared_login import failed_marker, read_frame, send_frame
from ssh_jobs_provider.protocol.scripts import REMOTE_SHELL
from ssh_jobs_provider.retry import FixedWaits, RetryPolicy

#: Scripts run at once on the one login: below sshd's default MaxSessions (10) with room for
#: the sessions it frees a moment after they are closed.
CHANNELS = 6
#: How long a refused channel is asked for again before its script is handed back unrun.
CHANNEL_PATIENCE_SECONDS = 10.0
#: Asking again for a channel the server refused on the broker's login: every tenth of a
#: second, for at most :data:`CHANNEL_PATIENCE_SECONDS` (less when the script must start sooner).
CHANNEL_REOPEN_POLICY = RetryPolicy(
    attempts=int(CHANNEL_PATIENCE_SECONDS / 0.1) + 1,
    backoff=FixedWaits((0.1,)),
    retry_on=is_refused_channel,
    within=CHANNEL_PATIENCE_SECONDS,
)
#: For a script without a timeout: how long after its arrival it may still start.
START_WAIT_SECONDS = 60.0
#: How often the broker looks at its idle time and its login, in seconds.
LOOK_SECONDS = 0.5

log = logging.getLogger(__name__)


class LoginBroker:
    """One login, serving the scripts of the callers that reach its socket."""

    def __init__(self, client: paramiko.SSHClient, listener: socket.socket, idle_seconds: float) -> None:
        self.client = client
        self.idle_seconds = idle_seconds
        self.listener = listener
        self.channels = threading.BoundedSemaphore(CHANNELS)
        self.guard = threading.Lock()
        self.running = 0
        self.last_activity = time.monotonic()

    def login_alive(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def serve(self) -> None:
        """Accept callers until idle for ``idle_seconds`` or the login is gone."""
        self.listener.settimeout(LOOK_SECONDS)
        while True:
            with self.guard:
                idle = self.running == 0 and time.monotonic() - self.last_activity > self.idle_seconds
            if idle or not self.login_alive():
                return
            try:
                caller, _ = self.listener.accept()
            except TimeoutError:
                continue
            with self.guard:
                self.running += 1
                self.last_activity = time.monotonic()
            threading.Thread(target=self._serve_caller, args=(caller,), daemon=True).start()

    def _serve_caller(self, caller: socket.socket) -> None:
        try:
            with caller, caller.makefile("rb") as reader:
                if not _same_user(caller):
                    return
                caller.settimeout(10.0)
                header, (script,) = read_frame(reader)
                received = time.monotonic()
                caller.settimeout(None)
                send_frame(caller, *self._run(caller, script, header.get("timeout"), received))
        except (OSError, EOFError, ValueError):
            pass  # the caller went away: its own retry decides what happens next
        finally:
            with self.guard:
                self.running -= 1
                self.last_activity = time.monotonic()

    def _run(
        self, caller: socket.socket, script: bytes, timeout: float | None, received: float
    ) -> tuple[Any, ...]:
        # A script starts within its own timeout of its arrival, or never: its caller waits
        # longer than that (see shared_login.ask_broker), so nothing ever starts on the host
        # after the caller gave up on it and, perhaps, sent it again.
        start_by = received + (START_WAIT_SECONDS if timeout is None else timeout)
        if not self.channels.acquire(timeout=max(0.0, start_by - time.monotonic())):
            return _not_run("no channel of the shared login came free in time")
        try:
            if not self.login_alive():
                return _not_run("the shared login has ended")
            try:
                channel = self._open_channel(start_by)
            except Exception as error:  # nothing ran: the caller logs in by itself
                return _not_run(f"no channel on the shared login: {error}")
            if time.monotonic() > start_by or not _still_connected(caller):
                channel.close()
                return _not_run("the caller's time to start the script had passed")
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                status, stdout, stderr = _paramiko.run_on_channel(channel, REMOTE_SHELL, script, deadline)
            except TimeoutError as error:
                return ({"outcome": "timeout", "reason": str(error)},)
            except Exception as error:  # whatever ended the channel: the caller cannot know more
                return ({"outcome": "lost", "reason": f"{type(error).__name__}: {error}"},)
            return {"outcome": "ran", "status": status}, stdout, stderr
        finally:
            self.channels.release()

    def _open_channel(self, start_by: float) -> paramiko.Channel:
        # A refusal here is sshd's count lagging behind closed sessions (this login never has
        # more than CHANNELS open): asked again, it passes; a login of the caller's own would
        # cost far more. No answer at all means the login is dead without TCP knowing yet
        # (keepalives do not end it): it is closed, and the broker ends.
        patience = max(0.0, min(start_by - time.monotonic(), CHANNEL_PATIENCE_SECONDS))
        deadline = time.monotonic() + patience
        policy = replace(
            CHANNEL_REOPEN_POLICY,
            within=patience,
            retry_on=lambda error: is_refused_channel(error) and self.login_alive(),
        )
        try:
            return policy.retrying()(
                lambda: _paramiko.open_channel(self.client, max(0.5, deadline - time.monotonic()))
            )
        except paramiko.ChannelException:
            raise
        except paramiko.SSHException:
            self.client.close()
            raise


def _not_run(reason: str) -> tuple[dict[str, Any]]:
    return ({"outcome": "not_run", "reason": reason},)


def _still_connected(caller: socket.socket) -> bool:
    """Whether the caller still waits for its answer (it has not closed its end)."""
    try:
        return caller.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def _same_user(caller: socket.socket) -> bool:
    """Whether the caller runs as this broker's user (``SO_PEERCRED``; Linux)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the socket's private directory (mode 700) is the only guard there
    credentials = caller.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", credentials)
    return uid == os.geteuid()


def _listen(address: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        address.unlink()
    listener.bind(str(address))
    os.chmod(address, 0o600)
    listener.listen(512)  # a fan-out's burst of callers waits in the backlog, not refused
    return listener


def main(argv: list[str]) -> int:
    address, lock, idle_seconds = Path(argv[1]), int(argv[2]), float(argv[3])
    settings: SSHConnectionSettings = pickle.load(sys.stdin.buffer)
    try:
        client = _paramiko.connect(settings, log)
    except Exception:
        # Callers log in by themselves meanwhile; none starts another broker for a while.
        with contextlib.suppress(OSError):
            failed_marker(address).touch(mode=0o600)
        return 1
    try:
        listener = _listen(address)
        inode = address.stat().st_ino
    except OSError:
        client.close()
        return 1
    with contextlib.suppress(OSError):
        failed_marker(address).unlink()
    os.close(lock)  # listening: the callers waiting for it ask now
    broker = LoginBroker(client, listener, idle_seconds)
    try:
        broker.serve()
    finally:
        with contextlib.suppress(OSError):
            if address.stat().st_ino == inode:
                address.unlink()  # new callers start a new broker; those accepted are answered
        listener.close()
        deadline = time.monotonic() + 60.0
        while broker.running and time.monotonic() < deadline:
            time.sleep(0.1)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
