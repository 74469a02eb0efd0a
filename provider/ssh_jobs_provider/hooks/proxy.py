"""
The ways to a host that is not reached directly: jump hosts and proxy commands.

Library-neutral pieces shared by both hooks: what an SSH config file adds to a connection's
settings (host alias, jump hosts, proxy command), OpenSSH's ``ProxyJump`` spelling, and the
command line a ``ProxyCommand`` runs.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ssh_jobs_provider.hooks import ssh_config

#: Hops allowed in one chain of jump hosts: more is almost surely a loop in the config.
MAX_JUMP_HOPS = 8

#: What a jump host from an SSH config file's ProxyJump takes over from the connection it
#: serves: how to trust hosts and which key to offer, never the password (it would be sent to
#: the bastion) nor a pinned host key (it is the target's).
_INHERITED_BY_HOPS = (
    "known_hosts",
    "host_key_policy",
    "no_host_key_check",
    "allow_host_key_change",
    "look_for_keys",
    "banner_timeout",
    "auth_timeout",
)
_KEY_MATERIAL = ("key_file", "private_key", "private_key_passphrase")
#: Builds settings from resolved values (the settings class itself; passed in to avoid a cycle).
Build = Callable[..., Any]

_HOP = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:\[\]]+)(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class JumpHop:
    """One ``[user@]host[:port]`` of a ``ProxyJump`` list (``None``: not given)."""

    host: str
    user: str | None = None
    port: int | None = None


def parse_proxy_jump(spec: str, where: str) -> list[JumpHop]:
    """
    The hops of a ``ProxyJump`` value, first hop first.

    :param spec: e.g. ``"alice@bastion:2222,inner"`` or ``"ssh://bastion"``
    :param where: what is read, for the error message
    :raises ValueError: a hop that is not ``[user@]host[:port]``
    """
    hops = []
    for part in spec.split(","):
        found = _HOP.match(part.strip())
        if found is None:
            raise ValueError(f"{where}: ProxyJump hop {part.strip()!r} is not '[user@]host[:port]'.")
        port = int(found.group("port")) if found.group("port") else None
        hops.append(JumpHop(found.group("host").strip("[]"), found.group("user"), port))
    if len(hops) > MAX_JUMP_HOPS:
        raise ValueError(f"{where}: ProxyJump lists {len(hops)} hops; at most {MAX_JUMP_HOPS} are allowed.")
    return hops


def proxy_command_line(command: str) -> str:
    """
    The command line both libraries run for a ``ProxyCommand``: ``/bin/sh -c 'exec COMMAND'``.

    OpenSSH runs a ProxyCommand through the shell; paramiko and asyncssh would only split it
    into words. Going through ``sh`` in both keeps quotes, pipes and ``$VARIABLES`` meaning
    what they mean to OpenSSH, and ``exec`` leaves no shell process in between.
    """
    return shlex.join(["/bin/sh", "-c", f"exec {command}"])


def apply_ssh_config(values: dict[str, Any], path: str, build: Build, depth: int) -> None:
    """
    Fill in, from the SSH config file, what resolved ``values`` leave unset for their host alias.

    Set values (connection fields, extras, hook parameters) win; the file's HostName replaces
    the alias (kept in ``alias``); its ProxyJump hops become nested settings built by ``build``.
    """
    alias = values["host"]
    found = ssh_config.lookup(path, alias, values.get("username"))
    if found.hostname and found.hostname != alias:
        values["host"], values["alias"] = found.hostname, alias
    for name, value in (
        ("username", found.user),
        ("port", found.port),
        ("keepalive_interval", found.server_alive_interval),
        ("keepalive_count_max", found.server_alive_count_max),
        ("conn_timeout", found.connect_timeout),
    ):
        if value is not None:
            values.setdefault(name, value)
    if found.identity_files and not (values.get("key_file") or values.get("private_key")):
        existing = [f for f in found.identity_files if os.path.isfile(f)]
        if existing:
            values["key_file"] = existing[0]  # OpenSSH, too, skips identity files that do not exist
    if found.proxy is None or values.get("proxy_jump") is not None or values.get("proxy_command"):
        return  # the connection's own jump host or proxy command wins over the file
    kind, spec = found.proxy
    if kind == "command":
        values["proxy_command"] = ssh_config.expand_proxy_command(
            spec, values["host"], values.get("port", 22), values.get("username") or getpass.getuser(), alias
        )
        return
    through = None
    for hop in parse_proxy_jump(spec, f"SSH config {path} (host {alias!r})"):
        if depth + 1 > MAX_JUMP_HOPS:
            raise ValueError(f"SSH config {path}: the ProxyJump chain of {alias!r} is too long (a loop?).")
        through = _config_hop(hop, values, path, through, build, depth + 1)
    values["proxy_jump"] = through


def _config_hop(
    hop: JumpHop, served: Mapping[str, Any], path: str, through: Any, build: Build, depth: int
) -> Any:
    """Settings of one ProxyJump hop: its own config entry, then what it takes from ``served``."""
    values: dict[str, Any] = {"conn_id": None, "host": hop.host}
    if hop.user:
        values["username"] = hop.user
    if hop.port:
        values["port"] = hop.port
    if through is not None:
        values["proxy_jump"] = through  # later hops go through the earlier ones, as with ssh -J
    apply_ssh_config(values, path, build, depth)
    for name in _INHERITED_BY_HOPS:
        if name in served:
            values.setdefault(name, served[name])
    if not (values.get("key_file") or values.get("private_key")):
        values.update({name: served[name] for name in _KEY_MATERIAL if served.get(name)})
    return build(**values)
