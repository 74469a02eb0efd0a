"""
SSH hooks: :class:`SSHHook` (paramiko, blocking, in the worker) and :class:`SSHHookAsync`
(asyncssh, in the triggerer), twins over :class:`~ssh_jobs_provider.hooks._base.SSHHookBase`:
same settings, host-key rules, error translation and retry policy, same methods and results.
The library code lives in ``hooks/_paramiko.py`` and ``hooks/_asyncssh.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import asyncssh
import paramiko

from ssh_jobs_provider.exceptions import SSHConnectError
from ssh_jobs_provider.hooks import _asyncssh, _paramiko
from ssh_jobs_provider.hooks._asyncssh import CONNECTION_CACHE_SECONDS as CONNECTION_CACHE_SECONDS
from ssh_jobs_provider.hooks._base import (
    SETTING_PARAMETERS,
    CommandResult,
    SSHHookBase,
    T,
    ajump_connections,
    explicit_settings,
    jump_connections,
)
from ssh_jobs_provider.hooks._errors import translated_connect_errors
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.shared_login import ScriptSession
from ssh_jobs_provider.protocol.scripts import REMOTE_SHELL
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, BackoffPolicy, RetryPolicy


class SSHHook(SSHHookBase):
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
    :param host_proxy_cmd: command whose stdin/stdout is the connection (run by ``/bin/sh``, taken
        as given, without ``%h`` expansion); wins over SSH config ProxyJump/ProxyCommand
    :param conn_retry_attempts: attempts for the connect, retrying only refusals that happen
        before authentication (EOF before the banner, reset, refused, timeouts) with jittered
        exponential backoff (default 3)
    :param no_host_key_check: accept unknown host keys (insecure); ``None`` takes the connection's
        extra, else ``False``
    :param backoff: the backoff policy between attempts

    Keyword-only, as :class:`SSHHookAsync` takes them (the twins take the same parameters):

    :param host: host instead of the connection's (``remote_host`` wins over it)
    :param known_hosts: known_hosts file to trust (default: the system's)
    :param passphrase: passphrase of the private key
    :param private_key: private key text instead of the ``private_key`` extra
    :param keepalive_count_max: unanswered keepalives before disconnecting (default 3)
    """

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
        *,
        host: str | None = None,
        known_hosts: str | None = None,
        passphrase: str | None = None,
        private_key: str | None = None,
        keepalive_count_max: int | None = None,
    ) -> None:
        arguments = locals()  # this signature's parameters, by name: the same on both twins
        overrides = explicit_settings(**{name: arguments[name] for name in SETTING_PARAMETERS})
        super().__init__(ssh_conn_id, conn_retry_attempts, backoff, overrides)
        self.remote_host = remote_host or host or ""
        self.cmd_timeout = cmd_timeout

    def get_settings(self) -> SSHConnectionSettings:
        """The resolved connection settings (read from Airflow once, on first use)."""
        settings = self._settings
        if settings is None:
            conn = self.get_connection(self.ssh_conn_id) if self.ssh_conn_id else None
            settings = self._resolve(conn, jump_connections(conn, self.get_connection))
            self.remote_host = settings.host
        return settings

    @property
    def settings(self) -> SSHConnectionSettings:
        return self.get_settings()  # a property too, where the worker's code reads it

    def get_conn(self) -> paramiko.SSHClient:
        """
        Open a new connection, retrying pre-authentication refusals; the caller owns it. Raises
        :class:`~ssh_jobs_provider.exceptions.SSHAuthenticationError` / ``SSHHostKeyError`` at
        once, and a final ``SSHConnectError`` naming the likely cause once the attempts are used up.
        """
        return self.call_with_retries(partial(self.connect_with, self.settings), "SSH connect")

    def connect_with(self, settings: SSHConnectionSettings) -> paramiko.SSHClient:
        """Open ONE connection with resolved ``settings``: a refused attempt raises a non-final
        :class:`~ssh_jobs_provider.exceptions.SSHConnectError`, for the caller's retry loop."""
        with translated_connect_errors(settings):
            return _paramiko.connect(settings, self.log)

    def script_session(self) -> ScriptSession:
        """Where one step runs its scripts: this machine's shared login to the host if one
        answers, else ONE login of its own (see :mod:`~ssh_jobs_provider.hooks.shared_login`)."""
        return ScriptSession(self.settings, self.connect_with, self.run_script)

    def call_with_retries(
        self, attempt: Callable[[], T], what: str, log: Any = None, retry: RetryPolicy | None = None
    ) -> T:
        """
        Call ``attempt`` until it succeeds, under one retry policy: the only loop, so a connect
        inside it (use :meth:`connect_with`) is never retried by a second, nested loop.

        :param attempt: one try, e.g. connect and run a script
        :param what: what is tried, for the retry messages
        :param log: where retries are announced (default: this hook's log)
        :param retry: the policy (default: :attr:`retry`, ``conn_retry_attempts`` attempts)
        """
        retrying = (retry or self.retry).retrying(log or self.log, what)
        try:
            return retrying(attempt)
        except SSHConnectError as error:
            self._give_up(self.settings, retrying, error)

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
        return _paramiko.run_on(ssh_client, command, None, timeout or self.cmd_timeout, environment, get_pty)

    def run_script(self, conn: paramiko.SSHClient, script: str, timeout: float | None) -> CommandResult:
        """Run a remote-job protocol script (``/bin/sh -s``, script on stdin) on an open client."""
        return _paramiko.run_on(conn, REMOTE_SHELL, script.encode("utf-8"), timeout)

    def test_connection(self) -> tuple[bool, str]:
        """Connect and run ``true``; used by the Airflow UI's *Test* button."""
        try:
            with self.get_conn() as client:
                status, _, stderr = self.exec_ssh_client_command(client, "true", timeout=30)
            return status == 0, "Connection successfully tested" if status == 0 else stderr.decode()
        except Exception as error:
            return False, str(error)


class SSHHookAsync(SSHHookBase):
    """
    Run commands over SSH with asyncssh: the asyncio twin, used by the trigger in the triggerer.

    Reads the connection exactly as :class:`SSHHook` does. The connection it opens carries
    an SSH-level keepalive, so a dead peer or a NAT that silently dropped the connection is
    noticed after about ``keepalive_interval * keepalive_count_max`` seconds. The first one
    built lowers the ``asyncssh`` logger to WARNING unless the deployment set its level.

    :param ssh_conn_id: Airflow connection id of type ``ssh``
    :param host: host instead of the connection's (upstream's name for ``remote_host``)
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
    :param host_proxy_cmd: as for :class:`SSHHook`
    :param remote_host: host instead of the connection's, as for :class:`SSHHook` (wins over ``host``)

    Keyword-only, as :class:`SSHHook` takes them (the twins take the same parameters):

    :param cmd_timeout: default seconds allowed for one :meth:`run_command` (``None``: no limit)
    :param disabled_algorithms: algorithms not to offer, as for :class:`SSHHook`
    :param ciphers: ciphers to offer, in order of preference
    :param auth_timeout: seconds allowed for authentication (added to asyncssh's one connect limit)
    """

    hook_name = "SSH (remote jobs, async)"

    def __init__(
        self,
        ssh_conn_id: str = SSHHookBase.default_conn_name,
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
        host_proxy_cmd: str | None = None,
        remote_host: str = "",
        *,
        cmd_timeout: float | None = None,
        disabled_algorithms: dict | None = None,
        ciphers: list[str] | None = None,
        auth_timeout: float | None = None,
    ) -> None:
        arguments = locals()  # this signature's parameters, by name: the same on both twins
        overrides = explicit_settings(**{name: arguments[name] for name in SETTING_PARAMETERS})
        super().__init__(ssh_conn_id, conn_retry_attempts, backoff, overrides)
        self.cmd_timeout = cmd_timeout
        self.host, self.remote_host = remote_host or host, remote_host or host or ""
        _asyncssh.quiet_library_log()

    async def get_settings(self) -> SSHConnectionSettings:
        """The resolved connection settings (read from Airflow once, on first use)."""
        settings = self._settings
        if settings is None:
            conn = await _asyncssh.cached_connection(self.ssh_conn_id) if self.ssh_conn_id else None
            settings = self._resolve(conn, await ajump_connections(conn, _asyncssh.cached_connection))
            self.remote_host = settings.host
        return settings

    def connect_options(self, settings: SSHConnectionSettings) -> dict[str, Any]:
        """The ``asyncssh.connect`` keyword arguments these settings mean."""
        return _asyncssh.connect_options(settings, self.log)

    async def get_conn(self) -> asyncssh.SSHClientConnection:
        """Open a new connection, retrying pre-authentication refusals (raises like :meth:`SSHHook.get_conn`)."""
        settings = await self.get_settings()
        return await self.call_with_retries(partial(self.connect_with, settings), "SSH connect")

    async def connect_with(self, settings: SSHConnectionSettings) -> asyncssh.SSHClientConnection:
        """Open ONE connection with already-resolved ``settings`` (no retries; errors as :meth:`SSHHook.connect_with`)."""
        with translated_connect_errors(settings):
            return await _asyncssh.connect(settings, self.log)

    async def call_with_retries(
        self,
        attempt: Callable[[], Awaitable[T]],
        what: str,
        log: Any = None,
        retry: RetryPolicy | None = None,
    ) -> T:
        """Await ``attempt()``, a coroutine function (tenacity does not await a lambda's coroutine),
        until it succeeds; as :meth:`SSHHook.call_with_retries`."""
        settings = await self.get_settings()
        retrying = (retry or self.retry).async_retrying(log or self.log, what)
        try:
            return await retrying(attempt)
        except SSHConnectError as error:
            self._give_up(settings, retrying, error)

    async def run_script(
        self, conn: asyncssh.SSHClientConnection, script: str, timeout: float | None
    ) -> CommandResult:
        """Run a remote-job protocol script on an open connection; ``(exit_status, stdout, stderr)``."""
        return await _asyncssh.run_script(conn, script, timeout)

    async def run_command(self, command: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Open a connection, run ``command``, close it; ``(exit_status, stdout, stderr)`` as text."""
        conn = await self.get_conn()
        try:
            status, stdout, stderr = await _asyncssh.run_on(conn, command, None, timeout or self.cmd_timeout)
        finally:
            conn.close()
            await conn.wait_closed()
        return status, stdout.decode("utf-8", errors="replace"), stderr.decode("utf-8", errors="replace")

    async def run_command_output(self, command: str, timeout: float | None = None) -> str:
        return (await self.run_command(command, timeout))[1]  # as run_command: stdout only
