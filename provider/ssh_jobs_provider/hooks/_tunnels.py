"""
One connection per jump host for a whole event loop: the asyncssh side of ``proxy_jump``.

In the triggerer every host session opens its own connection to its host, but all the hosts
behind one bastion share ONE connection to that bastion: each target connection is a
``direct-tcpip`` channel on it (asyncssh's ``tunnel=``). A bastion that allows few logins per
minute, or asks for a second factor, is then logged into once, not once per host.

The shared connection stays open while any target connection uses it, and :data:`LINGER`
seconds after the last one closed (a host session reconnecting after a dropped batch then
finds it still open). A closed or lost bastion connection is replaced on the next use.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Hashable

import asyncssh

from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings

#: Seconds a jump host connection stays open after its last user closed.
LINGER = 10.0

Connector = Callable[[SSHConnectionSettings], Awaitable[asyncssh.SSHClientConnection]]


class _Shared:
    """A jump host connection and how many target connections run over it."""

    def __init__(self) -> None:
        self.conn: asyncssh.SSHClientConnection | None = None
        self.users = 0
        self.lock = asyncio.Lock()
        self.closer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _Shared]] = (
    weakref.WeakKeyDictionary()
)
# Tasks waiting for target connections to close; kept so that they are not collected early.
_waiters: set[asyncio.Task[None]] = set()


def _shared(settings: SSHConnectionSettings) -> _Shared:
    pool = _pools.setdefault(asyncio.get_running_loop(), {})
    return pool.setdefault(settings.identity(), _Shared())


async def acquire(settings: SSHConnectionSettings, connect: Connector) -> asyncssh.SSHClientConnection:
    """
    The loop's connection to the jump host ``settings`` (opened with ``connect`` if needed).

    Concurrent callers wait for one connect instead of each opening their own. Every caller
    must hand the connection back with :func:`release_when_closed` or :func:`release`.
    """
    shared = _shared(settings)
    async with shared.lock:
        if not shared.usable:
            shared.conn = await connect(settings)
        shared.users += 1
        if shared.closer is not None:
            shared.closer.cancel()
            shared.closer = None
        assert shared.conn is not None
        return shared.conn


def release(settings: SSHConnectionSettings) -> None:
    """One user less; the last one schedules the close, :data:`LINGER` seconds later."""
    shared = _shared(settings)
    shared.users = max(0, shared.users - 1)
    if shared.users == 0 and shared.closer is None:
        shared.closer = asyncio.get_running_loop().call_later(LINGER, _close_if_unused, shared)


def release_when_closed(settings: SSHConnectionSettings, target: asyncssh.SSHClientConnection) -> None:
    """Call :func:`release` once ``target``, a connection through the jump host, has closed."""

    async def wait() -> None:
        try:
            await target.wait_closed()
        finally:
            release(settings)

    task = asyncio.get_running_loop().create_task(wait(), name=f"ssh-jobs tunnel user {settings.address}")
    _waiters.add(task)
    task.add_done_callback(_waiters.discard)


def _close_if_unused(shared: _Shared) -> None:
    shared.closer = None
    if shared.users == 0 and shared.conn is not None:
        conn, shared.conn = shared.conn, None
        conn.close()
