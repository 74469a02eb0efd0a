"""
Trust on first use (``host_key_policy: accept-new``), the same for both hooks.

A host seen for the first time has its key added to the known_hosts file; a host already
listed there with any other key is refused, exactly like an unknown key under ``strict``.

Hundreds of workers of one fan-out may meet a new host in the same second, each in its own
process. Every decision is therefore taken under an exclusive ``flock`` on a lock file next to
the known_hosts file, after re-reading the file (another process may have just added the
host), and the file is replaced by ``rename``: readers that take no lock (OpenSSH itself)
always see a whole file, and the host gets exactly one line.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable

import paramiko

log = logging.getLogger(__name__)

#: Where OpenSSH keeps the user's known hosts; also where accept-new writes by default.
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


def target_file(known_hosts: str | None) -> str:
    """The file accept-new reads and writes: the ``known_hosts`` extra, else ``~/.ssh/known_hosts``."""
    return os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)


def _keys_for(path: str, names: Iterable[str]) -> set[tuple[str, str]]:
    """Every ``(type, base64)`` that ``path`` lists for any of ``names`` (hashed entries included)."""
    if not os.path.exists(path):
        return set()
    # paramiko's parser understands hashed names and comma lists; it skips lines it cannot read.
    host_keys = paramiko.HostKeys(path)
    found: set[tuple[str, str]] = set()
    for name in names:
        entry = host_keys.lookup(name)
        if entry is not None:
            found.update((key_type, key.get_base64()) for key_type, key in entry.items())
    return found


def accept_new(path: str, name: str, key_type: str, key_b64: str) -> bool:
    """
    Decide on a key the connection does not already trust, under the file's lock.

    :param path: the known_hosts file (created with its directory when missing)
    :param name: the host as known_hosts names it (``host``, or ``[host]:port``)
    :param key_type: the server's key type, e.g. ``ssh-ed25519``
    :param key_b64: the server's key, base64
    :returns: ``True`` if the key is now trusted (added, or added meanwhile by another
        process); ``False`` if the host is listed with another key
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = _keys_for(path, [name])
            if (key_type, key_b64) in known:
                return True
            if known:
                return False
            _append(path, f"{name} {key_type} {key_b64}\n")
            log.warning(
                "Added the %s host key of %s to %s (host_key_policy accept-new).", key_type, name, path
            )
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _append(path: str, line: str) -> None:
    """Write the file plus ``line`` to a temporary file, then rename it over the file."""
    try:
        with open(path, "rb") as current:
            content = current.read()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        content, mode = b"", 0o600
    if content and not content.endswith(b"\n"):
        content += b"\n"
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(content + line.encode("ascii"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
