"""
What the two SSH hooks share: how a hook is configured, and its one retry loop.

:class:`SSHHookBase` holds the parts that do not depend on the library or on asyncio: the
connection id, the explicit parameters that win over the connection
(:class:`~ssh_jobs_provider.hooks.connection_settings.SSHConnectionSettings` resolves them),
and the connect :class:`~ssh_jobs_provider.retry.RetryPolicy`. The twins in
:mod:`ssh_jobs_provider.hooks.ssh` add the same methods on top, blocking or async:

- ``get_conn()``: connect, retrying refusals (``conn_retry_attempts`` attempts);
- ``connect_with(settings)``: ONE connect attempt, for callers that own the retry loop;
- ``call_with_retries(attempt, what)``: run ``attempt`` under the hook's policy, the only
  loop: whatever ``attempt`` does (connect, then run a script) shares one budget;
- ``run_script(conn, script, timeout)``: a remote-job script on an open connection,
  ``(exit_status, stdout, stderr)`` as bytes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

from tenacity import AsyncRetrying, Retrying

from ssh_jobs_provider._compat import BaseHook
from ssh_jobs_provider.exceptions import SSHConnectError
from ssh_jobs_provider.hooks._errors import gave_up
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.proxy import MAX_JUMP_HOPS
from ssh_jobs_provider.retry import BackoffPolicy, RetryPolicy, attempts_made

#: What one attempt returns, for ``call_with_retries``.
T = TypeVar("T")
#: What running a command or script gives, on both hooks: ``(exit_status, stdout, stderr)``.
CommandResult = tuple[int, bytes, bytes]


#: The parameters (the same on both hooks) that set a connection setting.
SETTING_PARAMETERS = frozenset(
    {
        "remote_host",
        "host",
        "host_proxy_cmd",
        "passphrase",
        "username",
        "password",
        "key_file",
        "private_key",
        "known_hosts",
        "port",
        "conn_timeout",
        "keepalive_interval",
        "keepalive_count_max",
        "banner_timeout",
        "auth_timeout",
        "disabled_algorithms",
        "ciphers",
        "no_host_key_check",
    }
)


def explicit_settings(
    *,
    remote_host: str | None,
    host: str | None,
    host_proxy_cmd: str | None,
    passphrase: str | None,
    **same: Any,
) -> dict[str, Any]:
    """
    The settings a hook's explicit parameters set, by setting name: the twins take the same
    parameters and read them here, once. ``remote_host`` wins over ``host`` (upstream's async
    name for it); the others keep their names.
    """
    return {
        "host": remote_host or host or None,
        "proxy_command": host_proxy_cmd,
        "private_key_passphrase": passphrase,
        **same,
    }


class SSHHookBase(BaseHook):
    """
    Configuration and retry policy shared by :class:`~ssh_jobs_provider.hooks.ssh.SSHHook` and
    :class:`~ssh_jobs_provider.hooks.ssh.SSHHookAsync`.

    :param ssh_conn_id: Airflow connection id of type ``ssh`` (``None``: parameters only)
    :param conn_retry_attempts: connect attempts of :meth:`retry` (at least 1)
    :param backoff: the waits between attempts
    :param overrides: explicit parameters by setting name; ``None`` values do not override
    """

    conn_name_attr = "ssh_conn_id"
    default_conn_name = "ssh_default"
    conn_type = "ssh"

    def __init__(
        self,
        ssh_conn_id: str | None,
        conn_retry_attempts: int,
        backoff: BackoffPolicy,
        overrides: dict[str, Any],
    ) -> None:
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.conn_retry_attempts = max(1, int(conn_retry_attempts))
        self.backoff = backoff
        self._overrides = overrides
        self._settings: SSHConnectionSettings | None = None
        self._retry = RetryPolicy(self.conn_retry_attempts, backoff)

    @property
    def retry(self) -> RetryPolicy:
        """The policy of this hook's retry loop: ``conn_retry_attempts`` attempts, ``backoff`` waits."""
        # Made once; again only when a caller changed either after construction (tests do).
        if (self._retry.attempts, self._retry.backoff) != (max(1, self.conn_retry_attempts), self.backoff):
            self._retry = RetryPolicy(self.conn_retry_attempts, self.backoff)
        return self._retry

    def _resolve(self, conn: Any, jump_connections: Mapping[str, Any] | None = None) -> SSHConnectionSettings:
        """
        Resolve and keep the settings from the Airflow connection ``conn`` (``None``: parameters only).

        :param jump_connections: the connections its ``proxy_jump_conn_id`` chain names, by id
        """
        self._settings = SSHConnectionSettings.from_connection(conn, jump_connections, **self._overrides)
        return self._settings

    @staticmethod
    def _give_up(
        settings: SSHConnectionSettings, retrying: Retrying | AsyncRetrying, error: SSHConnectError
    ) -> NoReturn:
        """Raise what the loop ``retrying`` means by its last failure, a connect failure ``error``."""
        failure = gave_up(settings, error, attempts_made(retrying))
        if failure is error:
            raise error
        # The library's error is the cause worth showing, not our per-attempt wrapper.
        raise failure from error.__cause__ or error


def next_jump_id(conn: Any, found: Mapping[str, Any]) -> str | None:
    """
    The ``proxy_jump_conn_id`` of ``conn`` if it still has to be read (not in ``found``).

    The hooks read a jump host chain with this, one connection after the other, and stop at
    a repeated id or a long chain: the settings resolution then names the loop or the length.
    """
    extra = (getattr(conn, "extra_dejson", None) or {}) if conn is not None else {}
    jump_id = str(extra.get("proxy_jump_conn_id") or "") or None
    if jump_id is None or jump_id in found or len(found) > MAX_JUMP_HOPS:
        return None
    return jump_id


def jump_connections(conn: Any, get_connection: Callable[[str], Any]) -> dict[str, Any]:
    """The connections the ``proxy_jump_conn_id`` chain of ``conn`` names, read with ``get_connection``."""
    found: dict[str, Any] = {}
    jump_id = next_jump_id(conn, found)
    while jump_id is not None:
        found[jump_id] = get_connection(jump_id)
        jump_id = next_jump_id(found[jump_id], found)
    return found


async def ajump_connections(conn: Any, get_connection: Callable[[str], Awaitable[Any]]) -> dict[str, Any]:
    """:func:`jump_connections` for the async hook (``get_connection`` is awaited)."""
    found: dict[str, Any] = {}
    jump_id = next_jump_id(conn, found)
    while jump_id is not None:
        found[jump_id] = await get_connection(jump_id)
        jump_id = next_jump_id(found[jump_id], found)
    return found
