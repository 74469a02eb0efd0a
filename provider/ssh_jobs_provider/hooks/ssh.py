"""
SSH hooks: :class:`SSHHook` (paramiko, blocking, used in the worker) and
:class:`SSHHookAsync` (asyncssh, used in the triggerer).

They are twins: both resolve the Airflow connection through
:class:`~ssh_jobs_provider.hooks.connection_settings.SSHConnectionSettings`, apply the same
host-key rules, retry the same pre-authentication refusals with the same
:data:`~ssh_jobs_provider.retry.DEFAULT_BACKOFF`, and run remote-job scripts the same way
(``/bin/sh -s`` with the script on stdin).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import select
import socket
import time
import weakref
from collections.abc import Mapping
from typing import Any

import asyncssh
import paramiko
from airflow.sdk import BaseHook

from ssh_jobs_provider.exceptions import (
    FAN_OUT_HINT,
    SSHAuthenticationError,
    SSHConnectError,
    SSHHostKeyError,
    is_transient_connect_error,
)
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.retry import CHANNEL_OPEN_RETRY_DELAYS, DEFAULT_BACKOFF, BackoffPolicy
from ssh_jobs_provider.utils.remote_job import REMOTE_SHELL

# asyncssh logs every channel open/close at INFO: in a triggerer that would bury the remote
# job's own output. Quiet it unless the deployment configured that logger itself.
if logging.getLogger("asyncssh").level == logging.NOTSET:
    logging.getLogger("asyncssh").setLevel(logging.WARNING)

_INSECURE_WARNING = (
    "Host key verification is disabled for %s: this does not protect against man-in-the-middle attacks."
)
_HOST_KEY_FIX = (
    "Pin the server's key with the connection extra 'host_key' (e.g. the output of "
    "`ssh-keyscan -t ed25519 <host>` without the host name), add it to ~/.ssh/known_hosts of the "
    "Airflow user or to a file named by the 'known_hosts' extra, or (insecure) set 'no_host_key_check': true."
)


def _auth_error(settings: SSHConnectionSettings, error: BaseException) -> SSHAuthenticationError:
    return SSHAuthenticationError(
        f"Authentication to {settings.address} failed ({error}). Not retried: check the connection's "
        "login, password, key_file/private_key and private_key_passphrase, and the server's authorized_keys."
    )


def _host_key_error(settings: SSHConnectionSettings, error: BaseException) -> SSHHostKeyError:
    return SSHHostKeyError(
        f"Host key of {settings.known_hosts_name} could not be verified ({error}). Not retried. {_HOST_KEY_FIX}"
    )


def _exhausted_error(settings: SSHConnectionSettings, attempts: int, error: BaseException) -> SSHConnectError:
    return SSHConnectError(
        f"Could not connect to {settings.address} after {attempts} attempt(s): "
        f"{type(error).__name__}: {error}. {FAN_OUT_HINT}"
    )


def _connect_failure(settings: SSHConnectionSettings, attempts: int, error: Exception) -> Exception:
    """What a failed connect raises: transient causes become one error naming the fix."""
    if is_transient_connect_error(error) and not isinstance(error, SSHConnectError):
        return _exhausted_error(settings, attempts, error)
    return error


# =============================================================================== paramiko


class _AcceptAnyHostKey(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key without saving it anywhere (``no_host_key_check``)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        return None


def _paramiko_pkey(private_key: str, passphrase: str | None) -> paramiko.PKey:
    import io

    errors = []
    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(private_key), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ValueError(
                "The connection's private_key is encrypted: set the 'private_key_passphrase' extra."
            ) from None
        except paramiko.SSHException as error:
            errors.append(f"{key_class.__name__}: {error}")
    raise ValueError("Could not load the connection's private_key: " + "; ".join(errors))


def _paramiko_disabled_algorithms(settings: SSHConnectionSettings) -> dict[str, list[str]] | None:
    disabled = {key: list(value) for key, value in (settings.disabled_algorithms or {}).items()}
    if settings.ciphers:
        # paramiko only lets us *remove* ciphers before negotiation, so offering exactly the
        # requested ones means disabling every other cipher it knows.
        known = list(paramiko.Transport._preferred_ciphers)  # type: ignore[attr-defined]
        disabled["ciphers"] = sorted(
            set(disabled.get("ciphers", [])) | {c for c in known if c not in settings.ciphers}
        )
    return disabled or None


def _set_paramiko_host_key_policy(
    client: paramiko.SSHClient, settings: SSHConnectionSettings, log: Any
) -> None:
    if settings.no_host_key_check or settings.allow_host_key_change:
        log.warning(_INSECURE_WARNING, settings.known_hosts_name)
        client.set_missing_host_key_policy(_AcceptAnyHostKey())
        return
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    if settings.host_key:
        key_type, blob = settings.host_key.split(" ", 1)
        key = paramiko.PKey.from_type_string(key_type, base64.b64decode(blob))
        for name in {settings.known_hosts_name, settings.host}:
            client.get_host_keys().add(name, key.get_name(), key)
        return
    client.load_system_host_keys()
    if settings.known_hosts:
        client.get_host_keys().load(settings.known_hosts)


class SSHHook(BaseHook):
    """
    Run commands over SSH with paramiko: the blocking twin, used by the operator in the worker.

    :param ssh_conn_id: Airflow connection id of type ``ssh``; explicit parameters win over it
    :param remote_host: host to connect to instead of the connection's host
    :param username: login instead of the connection's
    :param password: password instead of the connection's
    :param key_file: private key file instead of the ``key_file`` extra
    :param port: port instead of the connection's (default 22)
    :param conn_timeout: seconds allowed for the TCP connect (extra ``conn_timeout``, default 10)
    :param cmd_timeout: default seconds allowed for one remote command (``None``: no limit)
    :param keepalive_interval: seconds between SSH keepalives (extra ``keepalive_interval``, default 30)
    :param banner_timeout: seconds allowed for the server's banner (default 30)
    :param disabled_algorithms: algorithms not to offer, as paramiko's ``disabled_algorithms``
    :param ciphers: ciphers to offer, in order of preference
    :param auth_timeout: seconds allowed for authentication
    :param host_proxy_cmd: not supported yet; raises if given
    :param conn_retry_attempts: attempts for the connect, retrying only refusals that happen
        before authentication (EOF before the banner, reset, refused, timeouts) with jittered
        exponential backoff (default 3)
    :param no_host_key_check: accept unknown host keys (insecure); ``None`` takes the connection's
        extra, else ``False``
    :param backoff: the backoff policy between attempts
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    conn_type = "ssh"
    hook_name = "SSH (remote jobs)"

    def __init__(
        self,
        ssh_conn_id: str | None = None,
        remote_host: str = "",
        username: str | None = None,
        password: str | None = None,
        key_file: str | None = None,
        port: int | None = None,
        conn_timeout: float | None = None,
        cmd_timeout: float | None = None,
        keepalive_interval: float | None = None,
        banner_timeout: float | None = None,
        disabled_algorithms: dict | None = None,
        ciphers: list[str] | None = None,
        auth_timeout: float | None = None,
        host_proxy_cmd: str | None = None,
        conn_retry_attempts: int = 3,
        no_host_key_check: bool | None = None,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__()
        if host_proxy_cmd:
            raise ValueError("host_proxy_cmd is not supported by ssh_jobs_provider yet.")
        self.ssh_conn_id = ssh_conn_id
        self.remote_host = remote_host
        self.cmd_timeout = cmd_timeout
        self.conn_retry_attempts = max(1, int(conn_retry_attempts))
        self.backoff = backoff
        self._overrides: dict[str, Any] = {
            "host": remote_host or None,
            "username": username,
            "password": password,
            "key_file": key_file,
            "port": port,
            "conn_timeout": conn_timeout,
            "keepalive_interval": keepalive_interval,
            "banner_timeout": banner_timeout,
            "disabled_algorithms": disabled_algorithms,
            "ciphers": ciphers,
            "auth_timeout": auth_timeout,
            "no_host_key_check": no_host_key_check,
        }
        self._settings: SSHConnectionSettings | None = None
        self.client: paramiko.SSHClient | None = None

    @property
    def settings(self) -> SSHConnectionSettings:
        """The resolved connection settings (read from Airflow once, on first use)."""
        if self._settings is None:
            conn: Any = self.get_connection(self.ssh_conn_id) if self.ssh_conn_id else None
            self._settings = SSHConnectionSettings.from_connection(conn, **self._overrides)
            self.remote_host = self._settings.host
        return self._settings

    def get_conn(self) -> paramiko.SSHClient:
        """
        Open a new connection, retrying pre-authentication refusals.

        The caller owns the returned client (use it as a context manager). Raises
        :class:`~ssh_jobs_provider.exceptions.SSHAuthenticationError` /
        :class:`~ssh_jobs_provider.exceptions.SSHHostKeyError` at once, and
        :class:`~ssh_jobs_provider.exceptions.SSHConnectError` naming the likely cause once the
        attempts are used up.
        """
        settings = self.settings
        retrying = self.backoff.retrying(
            self.conn_retry_attempts,
            is_transient_connect_error,
            self.log,
            f"SSH connect to {settings.address}",
        )
        try:
            client = retrying(self._connect_once, settings)
        except Exception as error:
            failure = _connect_failure(settings, self.conn_retry_attempts, error)
            if failure is error:
                raise
            raise failure from error
        self.client = client
        return client

    def _connect_once(self, settings: SSHConnectionSettings) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        _set_paramiko_host_key_policy(client, settings, self.log)
        # paramiko applies its `timeout` to the TCP connect AND to the key exchange. Under a
        # fan-out the key exchange of a loaded server can take longer than a sensible connect
        # timeout, so connect the socket ourselves with conn_timeout and give the key exchange
        # the banner budget.
        sock = socket.create_connection((settings.host, settings.port), timeout=settings.conn_timeout)
        kwargs: dict[str, Any] = {
            "hostname": settings.host,
            "port": settings.port,
            "sock": sock,
            "username": settings.username,
            "password": settings.password,
            "timeout": max(settings.conn_timeout or 0.0, settings.banner_timeout),
            "banner_timeout": settings.banner_timeout,
            "auth_timeout": settings.auth_timeout,
            "look_for_keys": settings.look_for_keys,
            "compress": settings.compress,
            "disabled_algorithms": _paramiko_disabled_algorithms(settings),
        }
        if settings.key_file:
            kwargs["key_filename"] = settings.key_file
            kwargs["passphrase"] = settings.private_key_passphrase
        if settings.private_key:
            kwargs["pkey"] = _paramiko_pkey(settings.private_key, settings.private_key_passphrase)
        try:
            client.connect(**kwargs)
        except paramiko.AuthenticationException as error:
            client.close()
            if "timeout" in str(error).lower():
                # A slow link, not bad credentials: retryable like any other timeout.
                raise TimeoutError(f"Authentication to {settings.address} timed out") from error
            raise _auth_error(settings, error) from error
        except paramiko.BadHostKeyException as error:
            client.close()
            raise _host_key_error(settings, error) from error
        except paramiko.SSHException as error:
            client.close()
            if "known_hosts" in str(error):
                raise _host_key_error(settings, error) from error
            raise
        except BaseException:
            client.close()
            sock.close()
            raise
        transport = client.get_transport()
        if transport is not None and settings.keepalive_interval:
            transport.set_keepalive(int(max(1, settings.keepalive_interval)))
        return client

    def exec_ssh_client_command(
        self,
        ssh_client: paramiko.SSHClient,
        command: str,
        get_pty: bool = False,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, bytes]:
        """
        Run ``command`` on an open client; return ``(exit_status, stdout, stderr)``.

        :param ssh_client: an open client from :meth:`get_conn`
        :param command: the command line
        :param get_pty: request a pseudo-terminal
        :param environment: variables sent with the exec request (the server must accept them)
        :param timeout: seconds before ``TimeoutError``; defaults to ``cmd_timeout``
        """
        return self._exec(ssh_client, command, None, timeout or self.cmd_timeout, environment, get_pty)

    def run_script(
        self, ssh_client: paramiko.SSHClient, script: str, timeout: float
    ) -> tuple[int, bytes, bytes]:
        """Run a remote-job protocol script (``/bin/sh -s``, script on stdin) on an open client."""
        return self._exec(ssh_client, REMOTE_SHELL, script.encode("utf-8"), timeout, None, False)

    @staticmethod
    def _exec(
        ssh_client: paramiko.SSHClient,
        command: str,
        stdin_data: bytes | None,
        timeout: float | None,
        environment: Mapping[str, str] | None,
        get_pty: bool,
    ) -> tuple[int, bytes, bytes]:
        transport = ssh_client.get_transport()
        if transport is None or not transport.is_active():
            raise EOFError("SSH connection is not active")
        deadline = None if timeout is None else time.monotonic() + timeout
        channel = _open_paramiko_session(transport, timeout)
        try:
            if get_pty:
                channel.get_pty()
            if environment:
                channel.update_environment(dict(environment))
            channel.exec_command(command)
            if stdin_data is not None:
                channel.sendall(stdin_data)
                channel.shutdown_write()
            stdout, stderr = _drain_channel(channel, deadline)
            return channel.recv_exit_status(), stdout, stderr
        finally:
            # Always close the channel, also on errors: a leaked channel counts against
            # the server's MaxSessions for as long as the connection lives.
            channel.close()

    def test_connection(self) -> tuple[bool, str]:
        """Connect and run ``true``; used by the Airflow UI's *Test* button."""
        try:
            with self.get_conn() as client:
                status, _, stderr = self.exec_ssh_client_command(client, "true", timeout=30)
            return status == 0, "Connection successfully tested" if status == 0 else stderr.decode()
        except Exception as error:
            return False, str(error)


def _open_paramiko_session(transport: paramiko.Transport, timeout: float | None) -> paramiko.Channel:
    """Open a session channel, pausing briefly and retrying when the server refuses it."""
    for delay in (*CHANNEL_OPEN_RETRY_DELAYS, None):
        try:
            return transport.open_session(timeout=timeout)
        except paramiko.ChannelException:
            if delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def _drain_channel(channel: paramiko.Channel, deadline: float | None) -> tuple[bytes, bytes]:
    """Read stdout and stderr until the command has exited and both streams are at EOF."""
    stdout: list[bytes] = []
    stderr: list[bytes] = []
    while True:
        progressed = False
        while channel.recv_ready():
            stdout.append(channel.recv(65536))
            progressed = True
        while channel.recv_stderr_ready():
            stderr.append(channel.recv_stderr(65536))
            progressed = True
        buffered = channel.recv_ready() or channel.recv_stderr_ready()
        if not buffered and channel.exit_status_ready() and channel.eof_received:
            return b"".join(stdout), b"".join(stderr)
        if not buffered and channel.closed:
            if not channel.exit_status_ready():
                raise EOFError("SSH channel closed before the command reported its exit status")
            return b"".join(stdout), b"".join(stderr)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError("Remote command did not finish in time")
        if not progressed:
            select.select([channel], [], [], 0.05)


# =============================================================================== asyncssh


_ASYNCSSH_CIPHER_PREFERENCE = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


def _asyncssh_algorithms(settings: SSHConnectionSettings) -> dict[str, Any]:
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
        options["encryption_algs"] = [c for c in _ASYNCSSH_CIPHER_PREFERENCE if c not in disabled]
    if not settings.compress:
        options["compression_algs"] = None
    return options


def _asyncssh_known_hosts(settings: SSHConnectionSettings, log: Any) -> Any:
    if settings.no_host_key_check or settings.allow_host_key_change:
        log.warning(_INSECURE_WARNING, settings.known_hosts_name)
        return None
    if settings.host_key:
        # (trusted host keys, trusted CA keys, revoked keys): only the pinned key is trusted,
        # whatever name the host is reached by (e.g. a remote_host override).
        return ([asyncssh.import_public_key(settings.host_key)], [], [])
    if settings.known_hosts:
        import os

        default = os.path.expanduser("~/.ssh/known_hosts")
        return [settings.known_hosts, *([default] if os.path.isfile(default) else [])]
    return ()  # asyncssh's default: ~/.ssh/known_hosts


class SSHHookAsync(BaseHook):
    """
    Run commands over SSH with asyncssh: the asyncio twin, used by the trigger in the triggerer.

    Reads the connection exactly as :class:`SSHHook` does. The connection it opens carries
    an SSH-level keepalive, so a dead peer or a NAT that silently dropped the connection is
    noticed after about ``keepalive_interval * keepalive_count_max`` seconds.

    :param ssh_conn_id: Airflow connection id of type ``ssh``
    :param host: host instead of the connection's (``remote_host``)
    :param port: port instead of the connection's
    :param username: login instead of the connection's
    :param password: password instead of the connection's
    :param known_hosts: known_hosts file to trust (default: the system's)
    :param key_file: private key file instead of the ``key_file`` extra
    :param passphrase: passphrase of the private key
    :param private_key: private key text instead of the ``private_key`` extra
    :param keepalive_interval: seconds between keepalives (default 30; extra ``keepalive_interval``)
    :param keepalive_count_max: unanswered keepalives before disconnecting (default 3)
    :param conn_timeout: seconds allowed for the TCP connect (default 10)
    :param banner_timeout: seconds allowed for banner, key exchange and authentication (default 30).
        asyncssh has a single limit for the whole connect: it is ``conn_timeout + banner_timeout +
        auth_timeout``.
    :param conn_retry_attempts: attempts for the connect, as for :class:`SSHHook` (default 3)
    :param no_host_key_check: accept unknown host keys (insecure)
    :param backoff: the backoff policy between attempts
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    conn_type = "ssh"
    hook_name = "SSH (remote jobs, async)"

    def __init__(
        self,
        ssh_conn_id: str = default_conn_name,
        host: str | None = None,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        known_hosts: str | None = None,
        key_file: str | None = None,
        passphrase: str | None = None,
        private_key: str | None = None,
        keepalive_interval: float | None = None,
        keepalive_count_max: int | None = None,
        conn_timeout: float | None = None,
        banner_timeout: float | None = None,
        conn_retry_attempts: int = 3,
        no_host_key_check: bool | None = None,
        backoff: BackoffPolicy = DEFAULT_BACKOFF,
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.host = host
        self.conn_retry_attempts = max(1, int(conn_retry_attempts))
        self.backoff = backoff
        self._overrides: dict[str, Any] = {
            "host": host,
            "port": port,
            "username": username,
            "password": password,
            "known_hosts": known_hosts,
            "key_file": key_file,
            "private_key_passphrase": passphrase,
            "private_key": private_key,
            "keepalive_interval": keepalive_interval,
            "keepalive_count_max": keepalive_count_max,
            "conn_timeout": conn_timeout,
            "banner_timeout": banner_timeout,
            "no_host_key_check": no_host_key_check,
        }
        self._settings: SSHConnectionSettings | None = None

    async def get_settings(self) -> SSHConnectionSettings:
        """The resolved connection settings (read from Airflow once, on first use)."""
        if self._settings is None:
            conn = await _cached_connection(self.ssh_conn_id) if self.ssh_conn_id else None
            self._settings = SSHConnectionSettings.from_connection(conn, **self._overrides)
        return self._settings

    def connect_options(self, settings: SSHConnectionSettings) -> dict[str, Any]:
        """The ``asyncssh.connect`` keyword arguments these settings mean."""
        options: dict[str, Any] = {
            "host": settings.host,
            "port": settings.port,
            "username": settings.username,
            "password": settings.password,
            "known_hosts": _asyncssh_known_hosts(settings, self.log),
            "keepalive_interval": settings.keepalive_interval or 0,
            "keepalive_count_max": settings.keepalive_count_max,
            "connect_timeout": (settings.conn_timeout or 10.0)
            + settings.banner_timeout
            + (settings.auth_timeout or 0.0),
            # Never prompt (BatchMode semantics): no keyboard-interactive prompts.
            "kbdint_auth": False,
            # Read no ~/.ssh/config: the worker's paramiko hook does not either, and the two
            # sides must reach the same host the same way.
            "config": None,
        }
        if settings.key_file:
            options["client_keys"] = [settings.key_file]
            options["passphrase"] = settings.private_key_passphrase
        elif settings.private_key:
            options["client_keys"] = [
                asyncssh.import_private_key(settings.private_key, settings.private_key_passphrase)
            ]
        elif not settings.look_for_keys:
            options["client_keys"] = None
        options.update(_asyncssh_algorithms(settings))
        return options

    async def get_conn(self) -> asyncssh.SSHClientConnection:
        """
        Open a new connection, retrying pre-authentication refusals; the caller owns it.

        Raises like :meth:`SSHHook.get_conn`.
        """
        settings = await self.get_settings()
        retrying = self.backoff.async_retrying(
            self.conn_retry_attempts,
            is_transient_connect_error,
            self.log,
            f"SSH connect to {settings.address}",
        )
        try:
            return await retrying(self._connect_once, settings)
        except Exception as error:
            failure = _connect_failure(settings, self.conn_retry_attempts, error)
            if failure is error:
                raise
            raise failure from error

    async def connect_with(self, settings: SSHConnectionSettings) -> asyncssh.SSHClientConnection:
        """Open ONE connection with already-resolved ``settings`` (no retries; errors as for :meth:`get_conn`)."""
        try:
            return await self._connect_once(settings)
        except Exception as error:
            failure = _connect_failure(settings, 1, error)
            if failure is error:
                raise
            raise failure from error

    async def _connect_once(self, settings: SSHConnectionSettings) -> asyncssh.SSHClientConnection:
        try:
            return await asyncssh.connect(**self.connect_options(settings))
        except asyncssh.PermissionDenied as error:
            raise _auth_error(settings, error) from error
        except asyncssh.HostKeyNotVerifiable as error:
            raise _host_key_error(settings, error) from error

    @staticmethod
    async def run_script_on(
        conn: asyncssh.SSHClientConnection, script: str, timeout: float | None
    ) -> tuple[int, bytes, bytes]:
        """Run a remote-job protocol script on an open connection; ``(exit_status, stdout, stderr)``."""
        return await _run_on(conn, REMOTE_SHELL, script.encode("utf-8"), timeout)

    @staticmethod
    async def run_command_on(
        conn: asyncssh.SSHClientConnection, command: str, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """Run ``command`` on an open connection; output decoded as UTF-8 (invalid bytes replaced)."""
        status, stdout, stderr = await _run_on(conn, command, None, timeout)
        return status, stdout.decode("utf-8", errors="replace"), stderr.decode("utf-8", errors="replace")

    async def run_command(self, command: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Open a connection, run ``command``, close it; ``(exit_status, stdout, stderr)`` as text."""
        conn = await self.get_conn()
        try:
            return await self.run_command_on(conn, command, timeout)
        finally:
            conn.close()
            await conn.wait_closed()

    async def run_command_output(self, command: str, timeout: float | None = None) -> str:
        """Like :meth:`run_command`, returning only stdout."""
        _, stdout, _ = await self.run_command(command, timeout)
        return stdout


#: Seconds a connection read from Airflow is reused by other hooks of the same event loop.
#: Hundreds of triggers of one fan-out start together and all read the same connection.
CONNECTION_CACHE_SECONDS = 10.0
_connection_cache: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[float, Any]]] = (
    weakref.WeakKeyDictionary()
)


async def _cached_connection(conn_id: str) -> Any:
    loop = asyncio.get_running_loop()
    cache = _connection_cache.setdefault(loop, {})
    hit = cache.get(conn_id)
    if hit is not None and loop.time() - hit[0] < CONNECTION_CACHE_SECONDS:
        return hit[1]
    conn = await _aget_connection(conn_id)
    cache[conn_id] = (loop.time(), conn)
    return conn


async def _aget_connection(conn_id: str) -> Any:
    getter = getattr(BaseHook, "aget_connection", None)
    if getter is not None:
        return await getter(conn_id)
    return await asyncio.to_thread(BaseHook.get_connection, conn_id)  # pragma: no cover - Airflow < 3.1


async def _run_on(
    conn: asyncssh.SSHClientConnection, command: str, stdin_data: bytes | None, timeout: float | None
) -> tuple[int, bytes, bytes]:
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


async def _open_process(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdin_data: bytes | None,
    remaining: Any,
) -> Any:
    """Open the exec channel, pausing briefly and retrying when the server refuses it."""
    for delay in (*CHANNEL_OPEN_RETRY_DELAYS, None):
        try:
            return await asyncio.wait_for(
                conn.create_process(command, input=stdin_data, encoding=None), remaining()
            )
        except asyncssh.ChannelOpenError:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _as_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    return data if isinstance(data, bytes) else str(data).encode("utf-8")
