"""
The asyncssh side of :class:`~ssh_jobs_provider.hooks.ssh.SSHHookAsync`: settings in, a connection out.

Everything here speaks asyncssh (or asyncio) and nothing else: connect options, trusted
host keys, one connect attempt, running one command on a channel, and the per-event-loop
cache of Airflow connections. Errors are left as asyncssh raises them; the hook translates
them (see :mod:`._errors`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from ssh_jobs_provider._compat import aextra_dejson, aget_connection
from ssh_jobs_provider.hooks import _tunnels, known_hosts
from ssh_jobs_provider.hooks._errors import INSECURE_WARNING, translated_connect_errors
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.proxy import proxy_command_line
from ssh_jobs_provider.protocol.scripts import REMOTE_SHELL
from ssh_jobs_provider.retry import CHANNEL_OPEN_POLICY

_CIPHER_PREFERENCE = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)

_library_log_quieted = False


def quiet_library_log() -> None:
    """
    Lower asyncssh's own logger to WARNING, once, unless the deployment configured it.

    asyncssh logs every channel open/close at INFO: in a triggerer that would bury the remote
    job's own output. Called when the first async hook is built, not at import, so importing
    the provider changes no logging configuration.
    """
    global _library_log_quieted
    if _library_log_quieted:
        return
    _library_log_quieted = True
    logger = logging.getLogger("asyncssh")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _algorithms(settings: SSHConnectionSettings) -> dict[str, Any]:
    options: dict[str, Any] = {}
    # asyncssh understands OpenSSH-style "-alg1,alg2" lists: "everything but these".
    names = {
        "ciphers": "encryption_algs",
        "kex": "kex_algs",
        "macs": "mac_algs",
        "keys": "server_host_key_algs",
    }
    for key, values in (settings.disabled_algorithms or {}).items():
        if key in names and values:
            options[names[key]] = "-" + ",".join(values)
    if settings.ciphers:
        options["encryption_algs"] = list(settings.ciphers)
    else:
        # Prefer AES-GCM: asyncssh runs it through OpenSSL's AEAD in one call per packet,
        # which costs the triggerer noticeably less CPU than its ChaCha20-Poly1305.
        disabled = set((settings.disabled_algorithms or {}).get("ciphers", []))
        options["encryption_algs"] = [c for c in _CIPHER_PREFERENCE if c not in disabled]
    if not settings.compress:
        options["compression_algs"] = None
    return options


class _AcceptNewClient(asyncssh.SSHClient):
    """``accept-new``: asked only for a key the known_hosts files do not trust (see :mod:`.known_hosts`)."""

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        key_type, key_b64 = key.export_public_key("openssh").decode("ascii").split()[:2]
        # A blocking lock in the event loop, but only for a host's first connection, and held
        # for one read and one rename of a small file.
        return known_hosts.accept_new(self.path, self.name, key_type, key_b64)


def _known_hosts(settings: SSHConnectionSettings, log: Any) -> Any:
    if settings.no_host_key_check or settings.allow_host_key_change:
        log.warning(INSECURE_WARNING, settings.known_hosts_name)
        return None
    if settings.host_key:
        # (trusted host keys, trusted CA keys, revoked keys): only the pinned key is trusted,
        # whatever name the host is reached by (e.g. a remote_host override).
        return ([asyncssh.import_public_key(settings.host_key)], [], [])
    default = os.path.expanduser(known_hosts.DEFAULT_KNOWN_HOSTS)
    if settings.host_key_policy == "accept-new":
        files = {known_hosts.target_file(settings.known_hosts), default}
    elif settings.known_hosts:
        files = {settings.known_hosts, default}
    else:
        return ()  # asyncssh's default: ~/.ssh/known_hosts
    # Only existing files, as paramiko reads them (the one accept-new writes may not exist
    # yet); none at all trusts nothing, and accept-new's _AcceptNewClient is asked.
    return sorted(f for f in files if os.path.isfile(f)) or ([], [], [])


def connect_options(settings: SSHConnectionSettings, log: Any) -> dict[str, Any]:
    """
    The ``asyncssh.connect`` keyword arguments these settings mean.

    :param settings: where and how to connect
    :param log: where the insecure host-key warning goes
    """
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "username": settings.username,
        "password": settings.password,
        "known_hosts": _known_hosts(settings, log),
        "keepalive_interval": settings.keepalive_interval or 0,
        "keepalive_count_max": settings.keepalive_count_max,
        "connect_timeout": (settings.conn_timeout or 10.0)
        + settings.banner_timeout
        + (settings.auth_timeout or 0.0),
        # Never prompt (BatchMode semantics): keyboard-interactive only where the connection's
        # password answers it (asyncssh then answers a single password prompt with it).
        "kbdint_auth": settings.password is not None,
        # Read no SSH config file: SSHConnectionSettings already applied the one the
        # connection names, exactly as for the worker's paramiko hook (None: no file; ()
        # would make asyncssh read ~/.ssh/config itself).
        "config": None,
    }
    if settings.proxy_command:
        options["proxy_command"] = proxy_command_line(settings.proxy_command)
    if settings.host_key_policy == "accept-new" and not settings.host_key:
        path, name = known_hosts.target_file(settings.known_hosts), settings.known_hosts_name
        options["client_factory"] = lambda: _AcceptNewClient(path, name)
    if settings.key_file:
        options["client_keys"] = [settings.key_file]
        options["passphrase"] = settings.private_key_passphrase
    elif settings.private_key:
        options["client_keys"] = [
            asyncssh.import_private_key(settings.private_key, settings.private_key_passphrase)
        ]
    elif not settings.look_for_keys:
        options["client_keys"] = None
    options.update(_algorithms(settings))
    return options


async def connect(settings: SSHConnectionSettings, log: Any) -> asyncssh.SSHClientConnection:
    """
    ONE connect attempt; asyncssh's errors are raised as they are (a jump host's translated).

    Through a jump host, the connection runs over the event loop's shared connection to it
    (see :mod:`._tunnels`), which is opened on first use: one bastion login for all the hosts
    behind it. Arguments as :func:`connect_options`.
    """
    options = connect_options(settings, log)
    jump = settings.proxy_jump
    if jump is None:
        return await asyncssh.connect(**options)

    async def connect_jump(jump_settings: SSHConnectionSettings) -> asyncssh.SSHClientConnection:
        with translated_connect_errors(jump_settings):
            return await connect(jump_settings, log)

    tunnel = await _tunnels.acquire(jump, connect_jump)
    try:
        conn = await asyncssh.connect(**options, tunnel=tunnel)
    except asyncssh.ChannelOpenError as error:
        _tunnels.release(jump)
        # Retried like a refused TCP connect, which is what it is, one hop further.
        raise ConnectionRefusedError(
            f"jump host {jump.address} could not connect to {settings.host}:{settings.port} ({error.reason})"
        ) from error
    except BaseException:
        _tunnels.release(jump)
        raise
    _tunnels.release_when_closed(jump, conn)
    return conn


# ------------------------------------------------------------------ connections from Airflow

#: Seconds a connection read from Airflow is reused by other hooks of the same event loop.
#: Hundreds of triggers of one fan-out start together and all read the same connection.
CONNECTION_CACHE_SECONDS = 10.0
_connection_cache: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, tuple[float, ReadConnection]]
] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ReadConnection:
    """
    An Airflow connection's fields and extras as read once on the event loop (see
    :func:`read_connection`); it reads as a ``Connection`` to the settings resolution.
    """

    conn_id: str | None
    host: str | None
    port: int | None
    login: str | None
    password: str | None = field(repr=False)
    extra_dejson: dict[str, Any] = field(repr=False)


async def cached_connection(conn_id: str) -> ReadConnection:
    """The Airflow connection ``conn_id``, read at most once per :data:`CONNECTION_CACHE_SECONDS` per loop."""
    loop = asyncio.get_running_loop()
    cache = _connection_cache.setdefault(loop, {})
    hit = cache.get(conn_id)
    if hit is not None and loop.time() - hit[0] < CONNECTION_CACHE_SECONDS:
        return hit[1]
    conn = await read_connection(conn_id)
    cache[conn_id] = (loop.time(), conn)
    return conn


async def read_connection(conn_id: str) -> ReadConnection:
    """
    The Airflow connection ``conn_id`` with its extras, read the asynchronous way: a
    ``Connection``'s ``extra_dejson`` makes a blocking call to Airflow's supervisor, which must
    not run on the event loop (:mod:`ssh_jobs_provider._compat` says why, per release).
    """
    conn = await aget_connection(conn_id)
    return ReadConnection(
        conn_id=conn.conn_id,
        host=conn.host,
        port=conn.port,
        login=conn.login,
        password=conn.password,
        extra_dejson=await aextra_dejson(conn),
    )


# ------------------------------------------------------------------ running commands


async def run_on(
    conn: asyncssh.SSHClientConnection, command: str, stdin_data: bytes | None, timeout: float | None
) -> tuple[int, bytes, bytes]:
    """
    Run ``command`` on one channel of an open connection; ``(exit_status, stdout, stderr)``.

    :param conn: an open connection
    :param command: the command line
    :param stdin_data: bytes sent on stdin, which is then closed (``None``: nothing sent)
    :param timeout: seconds for the whole command, channel open and close included
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    process = await _open_process(conn, command, stdin_data, remaining)
    try:
        completed = await asyncio.wait_for(process.wait(), remaining())
    finally:
        process.close()
        # Wait for the channel's full close, so the next command never needs a second
        # session slot (MaxSessions 1 keeps working); bounded so a dead peer cannot hang us.
        try:
            await asyncio.wait_for(process.wait_closed(), max(1.0, remaining() or 0.0))
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass
    status = completed.returncode if completed.returncode is not None else -1
    return status, _as_bytes(completed.stdout), _as_bytes(completed.stderr)


async def run_script(
    conn: asyncssh.SSHClientConnection, script: str, timeout: float | None
) -> tuple[int, bytes, bytes]:
    """Run a remote-job protocol script (``/bin/sh -s``, script on stdin) on an open connection."""
    return await run_on(conn, REMOTE_SHELL, script.encode("utf-8"), timeout)


async def _open_process(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdin_data: bytes | None,
    remaining: Callable[[], float | None],
) -> Any:
    """Open the exec channel, pausing briefly and retrying when the server refuses it."""

    async def open_once() -> Any:
        return await asyncio.wait_for(
            conn.create_process(command, input=stdin_data, encoding=None), remaining()
        )

    return await CHANNEL_OPEN_POLICY.async_retrying()(open_once)


def _as_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode("utf-8")
