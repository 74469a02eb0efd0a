"""
How an Airflow ``ssh`` connection is read: one piece of code for both hooks.

:class:`SSHConnectionSettings` is the resolved, validated view of a connection (fields,
extras, and explicit hook parameters, which win over extras). The paramiko hook and the
asyncssh hook each translate the *same* settings object into their library's arguments,
so the two cannot drift apart in what a connection means.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

from ssh_jobs_provider.protocol.batch import POLL_INTERPRETERS

DEFAULT_SSH_PORT = 22
DEFAULT_CONN_TIMEOUT = 10.0
DEFAULT_BANNER_TIMEOUT = 30.0
DEFAULT_KEEPALIVE_INTERVAL = 30
DEFAULT_KEEPALIVE_COUNT_MAX = 3

_SUPPORTED_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
#: What a key type name looks like, e.g. ``ssh-ed25519`` or ``sk-ssh-ed25519@openssh.com``.
_KEY_TYPE_NAME = re.compile(r"[a-z0-9][a-z0-9@._+-]{2,63}")


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


_HOST_KEY_FIX = (
    "Set it to the server's public key as '<type> <base64>': the output of "
    "`ssh-keyscan -t ed25519 <host>` without the host name."
)


def _looks_like_key_type(word: str) -> bool:
    return word in _SUPPORTED_HOST_KEY_TYPES or word.startswith(("ssh-", "ecdsa-", "sk-"))


def _invalid_host_key(problem: str) -> ValueError:
    return ValueError(f"Connection extra 'host_key' {problem}. {_HOST_KEY_FIX}")


def _first_string(data: bytes) -> bytes | None:
    """The leading SSH wire string of ``data`` (uint32 length, then the bytes), or ``None``."""
    size = int.from_bytes(data[:4], "big")
    return data[4 : 4 + size] if 4 + size <= len(data) else None


def _wire_strings(data: bytes) -> list[bytes] | None:
    """All the wire strings ``data`` consists of, or ``None`` if it is not such a sequence."""
    strings = []
    while data:
        string = _first_string(data)
        if string is None:
            return None
        strings.append(string)
        data = data[4 + len(string) :]
    return strings


def _embedded_key_type(blob: str) -> str:
    """
    The key type a public key blob names in its first field (SSH wire format).

    Checked here rather than left to the SSH library, whose error would come at connect time
    and not name the extra: truncated or mistyped blobs are the usual copy-and-paste slips.
    """
    try:
        data = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid_host_key("is not valid base64") from None
    head = _first_string(data)
    name = head.decode("ascii", errors="replace") if head else ""
    if not _KEY_TYPE_NAME.fullmatch(name):
        raise _invalid_host_key("holds no SSH public key (its data does not start with a key type)")
    if "-cert-" in name:
        return name  # a certificate's fields are not all length-prefixed
    fields = _wire_strings(data)
    if fields is None or len(fields) < 2:
        raise _invalid_host_key(f"holds a truncated or damaged {name} key")
    return name


def normalise_host_key(host_key: str) -> str:
    """
    Return ``"<type> <base64>"`` for a pinned host key, after checking the key data.

    Accepts a full ``known_hosts``-style line (host names are ignored), ``type base64
    [comment]`` or a bare base64 blob, whose type is read from the blob itself (an RSA blob
    gives ``ssh-rsa``, as the upstream hook assumes for every bare blob). Raises
    ``ValueError`` naming the extra for data that is not base64 or not an SSH public key, and
    for a stated type that contradicts the type the key data embeds.
    """
    parts = host_key.strip().split()
    if not parts:
        raise ValueError("Connection extra 'host_key' is empty.")
    # The type is the word right before the base64 blob (blobs start with "AAAA": the
    # length prefix of the type name). Host names before it may look like types too.
    for index, part in enumerate(parts[:-1]):
        if _looks_like_key_type(part) and parts[index + 1].startswith("AAAA"):
            key_type, blob = part, parts[index + 1]
            break
    else:
        if _looks_like_key_type(parts[-1]) or not parts[0].startswith("AAAA"):
            raise ValueError(
                f"Connection extra 'host_key' has no key data: expected '<type> <base64>', got {host_key!r}. "
                + _HOST_KEY_FIX
            )
        key_type, blob = "", parts[0]
    embedded = _embedded_key_type(blob)
    if "ssh-dss" in (key_type, embedded):
        raise ValueError("DSA host keys are not supported: pin the server's ed25519, ECDSA or RSA key.")
    if key_type and key_type != embedded:
        raise _invalid_host_key(f"says {key_type!r} but its key data is an {embedded!r} key")
    return f"{embedded} {blob}"


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

    def __post_init__(self) -> None:
        if self.poll_interpreter not in POLL_INTERPRETERS:
            raise ValueError(
                f"SSH connection {self.conn_id!r}: extra 'poll_interpreter' must be one of "
                f"{', '.join(map(repr, POLL_INTERPRETERS))}, got {self.poll_interpreter!r}."
            )
        if not self.host:
            raise ValueError(
                f"SSH connection {self.conn_id!r} has no host: set the connection's host or pass remote_host."
            )
        if self.host_key is not None and self.no_host_key_check:
            raise ValueError(
                f"SSH connection {self.conn_id!r} sets both 'host_key' and 'no_host_key_check': "
                "a pinned key must be checked. Remove one of them."
            )
        if self.key_file and self.private_key:
            raise ValueError(
                f"SSH connection {self.conn_id!r} sets both 'key_file' and 'private_key': keep only one."
            )
        if not 0 < self.port < 65536:
            raise ValueError(f"SSH connection {self.conn_id!r} has an invalid port {self.port}.")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_connection(cls, conn: ConnectionLike | None, **overrides: Any) -> SSHConnectionSettings:
        """
        Resolve settings from an Airflow connection; non-``None`` ``overrides`` win over it.

        ``overrides`` keys are field names of this class (e.g. ``host`` for ``remote_host``).
        """
        # host defaults to "" so that a missing host fails validation with a clear message.
        values: dict[str, Any] = {"conn_id": getattr(conn, "conn_id", None), "host": ""}
        if conn is not None:
            values.update(cls._from_fields(conn))
            values.update(cls._from_extras(conn.extra_dejson or {}))
        known = {f.name for f in fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                raise TypeError(f"Unknown SSH setting {name!r}")
            if value is not None and value != "":
                values[name] = value
        if values.get("ciphers") is not None:
            values["ciphers"] = tuple(values["ciphers"])
        return cls(**values)

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
        no_check = extra.get("no_host_key_check", extra.get("ignore_hostkey_verification"))
        if no_check is not None:
            values["no_host_key_check"] = _as_bool(no_check, "no_host_key_check")
        for name in ("allow_host_key_change", "look_for_keys", "compress"):
            if name in extra:
                values[name] = _as_bool(extra[name], name)
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
            if f.name == "conn_id":
                continue
            parts.append(json.dumps(value, sort_keys=True) if isinstance(value, Mapping) else value)
        return tuple(parts)
