"""
Handshakes to one host, taken in turns by the worker processes of one machine.

``sshd`` drops new connections at random once more than ``MaxStartups``' first number (10 by
default) are unauthenticated, before it even sends its banner. A fan-out whose hundreds of
worker processes all handshake with one host at once is dropped by the hundred, and every
drop costs a retry, a back-off, and in the end failed tasks. The worker processes of one
machine (a ``LocalExecutor``, a Celery worker's pool) need not compete: each one holds one of
``handshake_slots`` turns for the host from its TCP connect until it is authenticated, then
lets the next one go. Fewer turns than ``MaxStartups`` allows means no drop from this machine.

A turn is an exclusive ``flock`` on one of ``handshake_slots`` lock files, named by a hash of
host and port (no secret, no name of a host, in them), in a directory of the user's own
(``$XDG_RUNTIME_DIR``, else the temporary directory), mode 700. The kernel releases a lock
when its process dies, so a worker that is killed mid-handshake never blocks the others.

Limits: only processes of the same user on the same machine (and the same temporary
directory) take turns together; workers on other machines, or in containers of their own,
do not see each other's turns. A directory that is not safely the user's is not used (the
handshake then goes ahead without a turn), and neither is a turn waited for longer than
``wait``: a turn bounds how many handshakes start at once, it never stops one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

#: Turns per host and machine: below OpenSSH's default MaxStartups start (10), which leaves
#: room for the triggerer's connection and for other clients of the host.
DEFAULT_HANDSHAKE_SLOTS = 8
#: Longest wait for a turn, in seconds; then the handshake goes ahead without one.
DEFAULT_TURN_WAIT = 60.0
#: Pauses between looks for a free turn grow to this, in seconds (a few looks per handshake).
MAX_PAUSE = 0.05


def turns_dir() -> Path | None:
    """The user's private directory of lock files, created if missing; ``None`` if it is not safely ours."""
    parent = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(parent) / f"ssh-jobs-handshakes-{os.geteuid()}"
    with contextlib.suppress(FileExistsError, OSError):
        path.mkdir(mode=0o700)
    try:
        info = path.lstat()
    except OSError:
        return None
    # Another user may have put a directory (or a link) there first: then no turns at all.
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        return None
    return path


def _open_slots(directory: Path, host: str, port: int, slots: int) -> list[int]:
    name = hashlib.sha256(f"{host}\0{port}".encode()).hexdigest()[:20]
    fds = []
    for index in range(slots):
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fds.append(os.open(directory / f"{name}.{index}", flags, 0o600))
        except OSError:
            continue
    return fds


def _try_lock(fd: int, mode: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def turns_in_use(host: str, port: int, slots: int = DEFAULT_HANDSHAKE_SLOTS) -> bool:
    """
    Whether a process of this user on this machine (another connection to the host too) holds
    one of the turns to ``host:port`` at this moment, that is, is handshaking with the host
    now (``False`` where there are no turns: ``slots`` 0, or no private directory). Each turn
    is tried with a shared lock and at once let go: lookers do not see each other, and a look
    costs a handshake at most a missed try.
    """
    directory = turns_dir() if slots > 0 else None
    fds = _open_slots(directory, host, port, slots) if directory is not None else []
    try:
        for fd in fds:
            if not _try_lock(fd, fcntl.LOCK_SH):
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def handshake_turn(
    host: str, port: int, slots: int = DEFAULT_HANDSHAKE_SLOTS, wait: float | None = None
) -> Iterator[bool]:
    """
    Hold one of ``slots`` turns to ``host:port`` while the body handshakes; yields whether a
    turn was taken (``False``: no turns, ``slots`` 0, or waited for ``wait`` seconds in vain;
    default :data:`DEFAULT_TURN_WAIT`, read at each call).
    """
    wait = DEFAULT_TURN_WAIT if wait is None else wait
    directory = turns_dir() if slots > 0 else None
    fds = _open_slots(directory, host, port, slots) if directory is not None else []
    held = None
    try:
        deadline = time.monotonic() + wait
        # Each look tries every turn once, starting at a random one; the pause between looks
        # grows, with jitter, so that hundreds of waiting workers cost the machine little.
        pause = 0.002
        while fds and held is None:
            start = random.randrange(len(fds))
            held = next((fd for fd in fds[start:] + fds[:start] if _try_lock(fd)), None)
            if held is None:
                if time.monotonic() >= deadline:
                    break
                time.sleep(random.uniform(pause / 2, pause))
                pause = min(MAX_PAUSE, pause * 2)
        yield held is not None
    finally:
        for fd in fds:
            if fd == held:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
