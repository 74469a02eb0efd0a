"""
How an Airflow ``ssh`` connection is read: one piece of code for both hooks.

:class:`SSHConnectionSettings` is the resolved, validated view of a connection (fields,
extras, and explicit hook parameters, which win over extras). The paramiko hook and the
asyncssh hook each translate the *same* settings object into their library's arguments,
so the two cannot drift apart in what a connection means.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Protocol

from ssh_jobs_provider.hooks import ssh_config
from ssh_jobs_provider.hooks.handshake_turns import DEFAULT_HANDSHAKE_SLOTS
from ssh_jobs_provider.hooks.host_keys import normalise_host_key
from ssh_jobs_provider.hooks.proxy import MAX_JUMP_HOPS, apply_ssh_config
from ssh_jobs_provider.protocol.poll import POLL_INTERPRETERS

__all__ = ["ConnectionLike", "SSHConnectionSettings", "normalise_host_key"]

DEFAULT_SSH_PORT = 22
DEFAULT_CONN_TIMEOUT = 10.0
DEFAULT_BANNER_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 30
DEFAULT_KEEPALIVE_COUNT_MAX = 3
#: What ``host_key_policy`` may say; ``off`` is ``no_host_key_check``.
HOST_KEY_POLICIES = ("strict", "accept-new", "off")


class ConnectionLike(Protocol):
    """The parts of an Airflow ``Connection`` we read."""

    conn_id: str | None
    host: str | None
    port: int | None
    login: str | None
    password: str | None

    @property
    def extra_dejson(self) -> dict[str, Any]: ...


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"Connection extra {name!r} must be true or false, got {value!r}.")


def _as_share_login(value: Any) -> bool | Literal["auto"]:
    # Unset (as a connection form leaves it) is the default.
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return "auto"
    try:
        return _as_bool(value, "share_login")
    except ValueError:
        raise ValueError(
            f"Connection extra 'share_login' must be true, false or auto, got {value!r}."
        ) from None


def _as_float(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Connection extra {name!r} must be a number of seconds, got {value!r}.") from None
    if number < 0:
        raise ValueError(f"Connection extra {name!r} must not be negative, got {value!r}.")
    return number


def _as_json(value: Any, name: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"Connection extra {name!r} must be JSON, got {value!r}.") from None
    return value


@dataclass(frozen=True)
class SSHConnectionSettings:
    """
    Everything needed to open one SSH connection, resolved from an Airflow connection.

    :param conn_id: the Airflow connection id it came from
    :param host: host to connect to (``remote_host`` overrides the connection's host)
    :param port: TCP port (22 when unset)
    :param username: login; the local user when the connection has none
    :param password: password, or ``None``
    :param key_file: path to a private key file
    :param private_key: private key text (``private_key`` extra)
    :param private_key_passphrase: passphrase of the private key
    :param conn_timeout: seconds allowed for the TCP connect
    :param banner_timeout: seconds allowed for the server's banner
    :param auth_timeout: seconds allowed for authentication
    :param keepalive_interval: seconds between SSH keepalives (0 disables)
    :param keepalive_count_max: unanswered keepalives before the connection is declared dead
    :param no_host_key_check: accept any host key (insecure; logged as a warning)
    :param host_key: pinned host key ``"<type> <base64>"``; only that key is accepted
    :param allow_host_key_change: do not verify against known keys (insecure)
    :param look_for_keys: let the client try keys in ``~/.ssh``
    :param known_hosts: path of a known_hosts file to trust in addition to the system ones
    :param disabled_algorithms: ``{"ciphers": [...], "kex": [...], "keys": [...], "macs": [...]}``
    :param ciphers: preferred ciphers, in order; others are not offered
    :param compress: enable SSH compression
    :param poll_interpreter: what runs the triggerer's batched polls on the host: ``"auto"``
        (perl when the host has it, else POSIX sh), ``"perl"`` or ``"sh"``
    :param handshake_slots: most handshakes with this host that the worker processes of one
        machine run at once (``0``: no turns; see :mod:`~ssh_jobs_provider.hooks.handshake_turns`)
    :param share_login: whether the worker processes of one machine run their scripts over one
        login to the host (see :mod:`~ssh_jobs_provider.hooks.shared_login`): ``"auto"``
        (the default: once several of them log in to it at the same moment, as in a
        fan-out, and never through a jump host or a proxy command), ``True`` (always) or
        ``False`` (never)
    :param host_key_policy: ``"strict"`` (only known or pinned keys), ``"accept-new"`` (add an
        unknown host's key to the known_hosts file, refuse a changed one) or ``"off"``
        (``no_host_key_check``)
    :param proxy_jump: the jump host this host is reached through (its own settings, which
        may name a jump host of their own)
    :param proxy_command: shell command whose stdin/stdout is the connection, tokens expanded
    :param alias: the name the connection gave, when an SSH config file's HostName replaced it
    """

    conn_id: str | None
    host: str
    port: int = DEFAULT_SSH_PORT
    username: str = field(default_factory=getpass.getuser)
    password: str | None = field(default=None, repr=False)
    key_file: str | None = None
    private_key: str | None = field(default=None, repr=False)
    private_key_passphrase: str | None = field(default=None, repr=False)
    conn_timeout: float | None = DEFAULT_CONN_TIMEOUT
    banner_timeout: float = DEFAULT_BANNER_TIMEOUT
    auth_timeout: float | None = None
    keepalive_interval: float = DEFAULT_KEEPALIVE_INTERVAL
    keepalive_count_max: int = DEFAULT_KEEPALIVE_COUNT_MAX
    no_host_key_check: bool = False
    host_key: str | None = None
    allow_host_key_change: bool = False
    look_for_keys: bool = True
    known_hosts: str | None = None
    disabled_algorithms: Mapping[str, list[str]] | None = None
    ciphers: tuple[str, ...] | None = None
    compress: bool = True
    poll_interpreter: str = "auto"
    handshake_slots: int = DEFAULT_HANDSHAKE_SLOTS
    share_login: bool | Literal["auto"] = "auto"
    host_key_policy: str = "strict"
    proxy_jump: SSHConnectionSettings | None = None
    proxy_command: str | None = None
    alias: str | None = None

    def __post_init__(self) -> None:
        name = f"SSH connection {self.conn_id or self.alias or self.host!r}"
        if self.poll_interpreter not in POLL_INTERPRETERS:
            raise ValueError(
                f"{name}: extra 'poll_interpreter' must be one of "
                f"{', '.join(map(repr, POLL_INTERPRETERS))}, got {self.poll_interpreter!r}."
            )
        if not self.host:
            raise ValueError(f"{name} has no host: set the connection's host or pass remote_host.")
        if (
            isinstance(self.handshake_slots, bool)
            or not isinstance(self.handshake_slots, int)
            or self.handshake_slots < 0
        ):
            raise ValueError(
                f"{name}: extra 'handshake_slots' must be a whole number >= 0 (0: no turns), "
                f"got {self.handshake_slots!r}."
            )
        if not isinstance(self.share_login, bool) and self.share_login != "auto":
            raise ValueError(
                f"{name}: extra 'share_login' must be true, false or auto, got {self.share_login!r}."
            )
        if self.host_key_policy not in HOST_KEY_POLICIES:
            raise ValueError(
                f"{name}: extra 'host_key_policy' must be one of "
                f"{', '.join(map(repr, HOST_KEY_POLICIES))}, got {self.host_key_policy!r}."
            )
        if self.no_host_key_check and self.host_key_policy == "accept-new":
            raise ValueError(
                f"{name} sets both 'no_host_key_check' and host_key_policy 'accept-new': keep only one."
            )
        # One meaning, two spellings: keep both fields in agreement for the hooks.
        off = self.no_host_key_check or self.host_key_policy == "off"
        object.__setattr__(self, "no_host_key_check", off)
        object.__setattr__(self, "host_key_policy", "off" if off else self.host_key_policy)
        if self.host_key is not None and self.host_key_policy != "strict":
            raise ValueError(
                f"{name} sets both 'host_key' and host_key_policy {self.host_key_policy!r} (or "
                "'no_host_key_check'): a pinned key must be checked. Remove one of them."
            )
        if self.key_file and self.private_key:
            raise ValueError(f"{name} sets both 'key_file' and 'private_key': keep only one.")
        if self.proxy_jump is not None and self.proxy_command:
            raise ValueError(
                f"{name} has both a jump host and a proxy command (proxy_jump_conn_id, ProxyJump, "
                "ProxyCommand or host_proxy_cmd): keep only one."
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"{name} has an invalid port {self.port}.")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_connection(
        cls,
        conn: ConnectionLike | None,
        jump_connections: Mapping[str, ConnectionLike] | None = None,
        *,
        chain: tuple[str, ...] = (),
        **overrides: Any,
    ) -> SSHConnectionSettings:
        """
        Resolve settings from an Airflow connection; non-``None`` ``overrides`` win over it.

        ``overrides`` keys are field names of this class (e.g. ``host`` for ``remote_host``).
        Then the SSH config file (extra ``ssh_config_file``, default ``~/.ssh/config``) fills in
        what the connection leaves unset for its host alias, and the jump host is resolved.

        :param jump_connections: the Airflow connections that ``proxy_jump_conn_id`` extras of
            this connection and its jump hosts name, by id (the hooks read them beforehand)
        :param chain: connection ids already on the way here, to refuse a loop
        """
        # host defaults to "" so that a missing host fails validation with a clear message.
        values: dict[str, Any] = {"conn_id": getattr(conn, "conn_id", None), "host": ""}
        extra: Mapping[str, Any] = (conn.extra_dejson or {}) if conn is not None else {}
        if conn is not None:
            values.update(cls._from_fields(conn))
            values.update(cls._from_extras(extra))
        known = {f.name for f in fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                raise TypeError(f"Unknown SSH setting {name!r}")
            if value is not None and value != "":
                values[name] = value
        if values.get("ciphers") is not None:
            values["ciphers"] = tuple(values["ciphers"])
        jump_id = str(extra.get("proxy_jump_conn_id") or "") or None
        if jump_id is not None and values.get("proxy_command"):
            raise ValueError(
                f"SSH connection {values['conn_id']!r} sets 'proxy_jump_conn_id' and a proxy command "
                "(host_proxy_cmd): keep only one."
            )
        config_path = _config_path(extra)
        if jump_id is not None:
            values["proxy_jump"] = cls._jump_connection(values["conn_id"], jump_id, jump_connections, chain)
        if config_path and values["host"]:
            apply_ssh_config(values, config_path, cls, depth=0)
        return cls(**values)

    @classmethod
    def _jump_connection(
        cls,
        conn_id: str | None,
        jump_id: str,
        jump_connections: Mapping[str, ConnectionLike] | None,
        chain: tuple[str, ...],
    ) -> SSHConnectionSettings:
        chain = (*chain, conn_id or "?")
        if jump_id in chain:
            raise ValueError(f"The proxy_jump_conn_id chain loops: {' -> '.join((*chain, jump_id))}.")
        if len(chain) > MAX_JUMP_HOPS:
            raise ValueError(
                f"The proxy_jump_conn_id chain {' -> '.join(chain)} is longer than {MAX_JUMP_HOPS}."
            )
        jump_conn = (jump_connections or {}).get(jump_id)
        if jump_conn is None:
            raise ValueError(
                f"SSH connection {conn_id!r}: the jump host connection {jump_id!r} named by "
                "'proxy_jump_conn_id' was not found: create it (an ssh connection) or fix the extra."
            )
        return cls.from_connection(jump_conn, jump_connections, chain=chain)

    @staticmethod
    def _from_fields(conn: ConnectionLike) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if conn.host:
            values["host"] = conn.host
        if conn.port:
            values["port"] = int(conn.port)
        if conn.login:
            values["username"] = conn.login
        if conn.password:
            values["password"] = conn.password
        return values

    @staticmethod
    def _from_extras(extra: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in ("key_file", "private_key", "known_hosts", "poll_interpreter"):
            if extra.get(name):
                values[name] = str(extra[name])
        if values.get("key_file"):
            values["key_file"] = os.path.expanduser(values["key_file"])
        passphrase = extra.get("private_key_passphrase") or extra.get("passphrase")
        if passphrase:
            values["private_key_passphrase"] = str(passphrase)
        for name in ("conn_timeout", "banner_timeout", "auth_timeout", "keepalive_interval"):
            if name in extra:
                number = _as_float(extra[name], name)
                if number is not None:
                    values[name] = number
        if extra.get("keepalive_count_max") not in (None, ""):
            values["keepalive_count_max"] = int(extra["keepalive_count_max"])
        if extra.get("handshake_slots") not in (None, ""):
            slots = extra["handshake_slots"]
            values["handshake_slots"] = int(slots) if str(slots).strip().isdigit() else slots
        no_check = extra.get("no_host_key_check", extra.get("ignore_hostkey_verification"))
        if no_check is not None:
            values["no_host_key_check"] = _as_bool(no_check, "no_host_key_check")
        if extra.get("host_key_policy"):
            values["host_key_policy"] = str(extra["host_key_policy"]).strip().lower()
            if values.get("no_host_key_check") and values["host_key_policy"] == "strict":
                raise ValueError(
                    "Connection extras 'no_host_key_check' and host_key_policy 'strict' contradict "
                    "each other: keep only one."
                )
        for name in ("allow_host_key_change", "look_for_keys", "compress"):
            if name in extra:
                values[name] = _as_bool(extra[name], name)
        if "share_login" in extra:
            values["share_login"] = _as_share_login(extra["share_login"])
        if extra.get("host_key"):
            values["host_key"] = normalise_host_key(str(extra["host_key"]))
        if extra.get("disabled_algorithms"):
            values["disabled_algorithms"] = _as_json(extra["disabled_algorithms"], "disabled_algorithms")
        if extra.get("ciphers"):
            ciphers = extra["ciphers"]
            if isinstance(ciphers, str):
                # A JSON list, or OpenSSH's own spelling: "aes256-ctr,aes128-ctr".
                text = ciphers.strip()
                ciphers = _as_json(text, "ciphers") if text.startswith(("[", '"')) else text.split(",")
            if isinstance(ciphers, str):
                ciphers = [ciphers]
            values["ciphers"] = [str(c).strip() for c in ciphers if str(c).strip()]
        return values

    # ------------------------------------------------------------------ helpers

    def with_overrides(self, **overrides: Any) -> SSHConnectionSettings:
        """A copy with the non-``None`` ``overrides`` applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def address(self) -> str:
        """``user@host:port``, for messages (never includes secrets)."""
        return f"{self.username}@{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts: ``host`` on port 22, else ``[host]:port``."""
        return self.host if self.port == DEFAULT_SSH_PORT else f"[{self.host}]:{self.port}"

    def identity(self) -> tuple[Any, ...]:
        """
        Everything that decides *which* connection this is, for sharing connections safely.

        Two settings with equal identities may share one SSH connection: same server, same
        credentials, same host-key rules.
        """
        parts: list[Any] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("conn_id", "alias"):
                continue
            if isinstance(value, SSHConnectionSettings):
                value = value.identity()
            parts.append(json.dumps(value, sort_keys=True) if isinstance(value, Mapping) else value)
        return tuple(parts)


def _config_path(extra: Mapping[str, Any]) -> str | None:
    """The SSH config file to read: the ``ssh_config_file`` extra (``none``: no file), else ``~/.ssh/config`` if it exists."""
    named = extra.get("ssh_config_file")
    if named is None or str(named).strip() == "":
        return ssh_config.default_path()
    if str(named).strip().lower() == "none":
        return None
    path = os.path.expanduser(str(named).strip())
    if not os.path.isfile(path):
        raise ValueError(
            f"Connection extra 'ssh_config_file' names {path!r}, which is not a file: fix the path, "
            "or set it to 'none' to read no SSH config file."
        )
    return path
