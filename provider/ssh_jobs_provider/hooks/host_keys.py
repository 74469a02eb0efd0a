"""
Checking a pinned host key (the ``host_key`` extra) before anything connects.

A truncated or mistyped key is the usual copy-and-paste slip; found here, the error names the
extra instead of coming from the SSH library at connect time.
"""

from __future__ import annotations

import base64
import binascii
import re

_SUPPORTED_HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
#: What a key type name looks like, e.g. ``ssh-ed25519`` or ``sk-ssh-ed25519@openssh.com``.
_KEY_TYPE_NAME = re.compile(r"[a-z0-9][a-z0-9@._+-]{2,63}")


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
