"""
What an OpenSSH client config file says about one host alias, read the same way for both hooks.

paramiko and asyncssh each have a config parser, and they differ (``Include``, ``Match``,
token expansion). The worker and the triggerer must reach a host the same way, so the file
is read here, once, into a :class:`HostConfig`; the hooks get explicit values and never
parse the file themselves.

Supported: ``Host`` (patterns, ``!`` negation), ``Match`` with ``all``, ``host``,
``originalhost``, ``user``, ``localuser``, ``canonical`` and ``final``, ``Include`` (globs,
relative to ``~/.ssh``), ``key value`` and ``key=value``, quoted arguments, first obtained
value wins. ``Match exec`` and the other criteria that depend on running commands or on the
network are not evaluated: their block is skipped with a warning, so that no command runs
inside a hook and both processes get the same answer.
"""

from __future__ import annotations

import fnmatch
import getpass
import glob
import logging
import os
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache

log = logging.getLogger(__name__)

#: Where OpenSSH reads the user's client config.
DEFAULT_CONFIG_PATH = "~/.ssh/config"
#: Nesting depth of ``Include`` that OpenSSH allows, too.
MAX_INCLUDE_DEPTH = 16

_LINE = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*?)\s*$")
#: Options read from the file, by their lowercase names.
_READ = frozenset(
    {
        "hostname",
        "user",
        "port",
        "identityfile",
        "proxyjump",
        "proxycommand",
        "serveraliveinterval",
        "serveralivecountmax",
        "connecttimeout",
    }
)
#: Options that change how a host is reached or trusted, not applied here: the fix for each.
_NOT_APPLIED = {
    "stricthostkeychecking": "set the connection extra 'host_key_policy' instead",
    "userknownhostsfile": "set the connection extra 'known_hosts' instead",
    "globalknownhostsfile": "set the connection extra 'known_hosts' instead",
    "hostkeyalias": "pin the key with the connection extra 'host_key' instead",
    "ciphers": "set the connection extra 'ciphers' instead",
    "kexalgorithms": "set the connection extra 'disabled_algorithms' instead",
    "hostkeyalgorithms": "set the connection extra 'disabled_algorithms' instead",
    "macs": "set the connection extra 'disabled_algorithms' instead",
    "compression": "set the connection extra 'compress' instead",
    "identitiesonly": "set the connection extra 'look_for_keys' instead",
    "identityagent": "set SSH_AUTH_SOCK in the environment of the worker and the triggerer instead",
    "certificatefile": "certificates are not supported",
    "canonicalizehostname": "write the full name in HostName instead",
    "bindaddress": "the local address cannot be chosen",
    "bindinterface": "the local interface cannot be chosen",
    "addressfamily": "write an address of the wanted family in HostName instead",
    "controlmaster": "connections are shared by the triggerer itself",
    "controlpath": "connections are shared by the triggerer itself",
}
_SKIPPED_MATCH = ("exec", "localnetwork", "tagged", "version", "sessiontype", "command")


class SSHConfigError(ValueError):
    """The config file cannot be read or says something impossible (names the file and line)."""


@dataclass(frozen=True)
class HostConfig:
    """The options of one host alias that the hooks apply (``None``: the file does not set it)."""

    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()
    #: The first obtained of ProxyJump and ProxyCommand, as OpenSSH uses: ``("jump", spec)``,
    #: ``("command", command line)``, or ``None`` (also for an explicit ``none``).
    proxy: tuple[str, str] | None = None
    server_alive_interval: float | None = None
    server_alive_count_max: int | None = None
    connect_timeout: float | None = None


def default_path() -> str | None:
    """``~/.ssh/config`` when it exists, else ``None``."""
    path = os.path.expanduser(DEFAULT_CONFIG_PATH)
    return path if os.path.isfile(path) else None


def lookup(path: str, alias: str, user: str | None = None) -> HostConfig:
    """
    What ``path`` says about ``alias`` (re-read when the file changes).

    :param path: the config file
    :param alias: the host name as the connection gives it
    :param user: the login the connection gives (``Match user`` and ``%r`` see it)
    :raises SSHConfigError: the file is missing or has a line that is not ``keyword value``
    """
    path = os.path.expanduser(path)
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError as error:
        raise SSHConfigError(
            f"SSH config file {path!r} cannot be read ({error.strerror}): fix the connection extra "
            "'ssh_config_file', or set it to 'none' to read no file."
        ) from None
    return _lookup(path, stamp, alias, user)


@lru_cache(maxsize=256)
def _lookup(path: str, stamp: int, alias: str, user: str | None) -> HostConfig:
    # Cached per file version: a fan-out resolves the same connection hundreds of times, and
    # each warning is worth saying once.
    state = _Lookup(alias, user)
    state.read(path, depth=0)
    return state.result(path)


class _Lookup:
    """One pass over the file(s) for one alias: conditions evaluated as the lines come."""

    def __init__(self, alias: str, user: str | None) -> None:
        self.alias = alias
        self.user = user
        self.options: dict[str, str] = {}
        self.identity_files: list[str] = []
        self.ignored: dict[str, str] = {}

    def read(self, path: str, depth: int) -> None:
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except OSError as error:
            raise SSHConfigError(f"SSH config file {path!r} cannot be read ({error.strerror}).") from None
        active = True
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parsed = _LINE.match(line)
            if parsed is None:
                raise SSHConfigError(f"{path}:{number}: expected 'Keyword value', got {line!r}.")
            key, value = parsed.group(1).lower(), parsed.group(2)
            where = f"{path}:{number}"
            if key == "host":
                active = self._host_matches(_words(value, where))
            elif key == "match":
                active = self._match(_words(value, where), where)
            elif not active:
                continue
            elif key == "include":
                self._include(_words(value, where), depth, where)
            else:
                self._set(key, value, where)

    def _include(self, patterns: list[str], depth: int, where: str) -> None:
        if depth >= MAX_INCLUDE_DEPTH:
            raise SSHConfigError(f"{where}: Include nested deeper than {MAX_INCLUDE_DEPTH} files.")
        for pattern in patterns:
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
            for included in sorted(glob.glob(pattern)):
                self.read(included, depth + 1)

    def _set(self, key: str, value: str, where: str) -> None:
        if key == "identityfile":
            self.identity_files.extend(_words(value, where))
        elif key in _READ:
            if key in ("proxycommand", "proxyjump") and (
                "proxycommand" in self.options or "proxyjump" in self.options
            ):
                return  # OpenSSH: whichever of the two comes first is used
            # ProxyCommand is a shell command line: kept as written, quotes and all.
            self.options.setdefault(key, value if key == "proxycommand" else " ".join(_words(value, where)))
        elif key in _NOT_APPLIED:
            self.ignored.setdefault(key, where)

    def _host_matches(self, patterns: list[str]) -> bool:
        return _patterns_match(patterns, self.alias)

    def _match(self, words: list[str], where: str) -> bool:
        result = True
        index = 0
        while index < len(words):
            word = words[index].lower()
            negate = word.startswith("!")
            criterion = word.lstrip("!")
            if criterion == "all":
                matched = True
            elif criterion in ("canonical", "final"):
                # No canonicalisation here: the one pass is also the final one.
                matched = criterion == "final"
            elif criterion in _SKIPPED_MATCH:
                log.warning(
                    "SSH config %s: 'Match %s' is not evaluated by ssh_jobs_provider; the block is "
                    "skipped for host %r. Write a 'Host' block for it instead.",
                    where,
                    criterion,
                    self.alias,
                )
                return False
            elif criterion in ("host", "originalhost", "user", "localuser") and index + 1 < len(words):
                index += 1
                target = {
                    "host": self.options.get("hostname", self.alias),
                    "originalhost": self.alias,
                    "user": self.options.get("user", self.user or getpass.getuser()),
                    "localuser": getpass.getuser(),
                }[criterion]
                matched = _patterns_match(words[index].split(","), target)
            else:
                raise SSHConfigError(f"{where}: unsupported Match criterion {words[index]!r}.")
            result = result and (matched != negate)
            index += 1
        return result

    def result(self, path: str) -> HostConfig:
        for key, where in sorted(self.ignored.items()):
            log.warning(
                "SSH config %s: %s for host %r is not applied by ssh_jobs_provider (the worker and the "
                "triggerer both ignore it): %s.",
                where,
                key,
                self.alias,
                _NOT_APPLIED[key],
            )
        options = self.options
        user = options.get("user") or self.user
        hostname = (
            _expand(options["hostname"], self.alias, None, None, None) if "hostname" in options else None
        )
        proxy: tuple[str, str] | None = None
        for key, kind in (("proxyjump", "jump"), ("proxycommand", "command")):
            if key in options and options[key].lower() != "none":
                proxy = (kind, options[key])
        return HostConfig(
            hostname=hostname,
            user=options.get("user"),
            port=_integer(options, "port", path),
            identity_files=tuple(
                os.path.expanduser(_expand(f, hostname or self.alias, None, user, self.alias))
                for f in self.identity_files
            ),
            proxy=proxy,
            server_alive_interval=_number(options, "serveraliveinterval", float, path),
            server_alive_count_max=_integer(options, "serveralivecountmax", path),
            connect_timeout=_number(options, "connecttimeout", float, path),
        )


def expand_proxy_command(command: str, host: str, port: int, user: str, alias: str) -> str:
    """``command`` with OpenSSH's ``%h``, ``%p``, ``%r``, ``%n`` and ``%%`` replaced."""
    return _expand(command, host, port, user, alias)


def _expand(text: str, host: str, port: int | None, user: str | None, alias: str | None) -> str:
    tokens = {
        "h": host,
        "p": None if port is None else str(port),
        "r": user,
        "n": alias,
        "u": getpass.getuser(),
        "d": os.path.expanduser("~"),
        "%": "%",
    }

    def replace(found: re.Match[str]) -> str:
        value = tokens.get(found.group(1))
        if value is None:
            raise SSHConfigError(f"SSH config token %{found.group(1)} is not supported here (in {text!r}).")
        return value

    return re.sub(r"%(.)", replace, text)


def _patterns_match(patterns: list[str], target: str) -> bool:
    matched = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if fnmatch.fnmatchcase(target, pattern[1:]):
                return False  # a negated match wins over every positive one
        elif fnmatch.fnmatchcase(target, pattern):
            matched = True
    return matched


def _words(value: str, where: str) -> list[str]:
    try:
        return shlex.split(value, comments=False, posix=True)
    except ValueError as error:
        raise SSHConfigError(f"{where}: {error} in {value!r}.") from None


def _integer(options: dict[str, str], key: str, path: str) -> int | None:
    number = _number(options, key, int, path)
    return None if number is None else int(number)


def _number(options: dict[str, str], key: str, kind: type, path: str) -> float | None:
    if key not in options:
        return None
    try:
        number = kind(options[key])
    except ValueError:
        raise SSHConfigError(f"SSH config {path}: {key} must be a number, got {options[key]!r}.") from None
    if number < 0:
        raise SSHConfigError(f"SSH config {path}: {key} must not be negative, got {options[key]!r}.")
    return number
