"""The ``host_key`` extra: the type is read from the key data and checked against the stated one."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.hooks.connection_settings import normalise_host_key

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
FIX = "ssh-keyscan -t ed25519 <host>"


def wire(*strings: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(s)) + s for s in strings)


def blob(key_type: str, *rest: bytes) -> str:
    return base64.b64encode(wire(key_type.encode(), *(rest or (b"\x01" * 32,)))).decode()


key_types = st.sampled_from(KEY_TYPES)
key_bytes = st.lists(st.binary(min_size=1, max_size=80), min_size=1, max_size=3)
host_names = st.from_regex(r"\A[a-z][a-z0-9.-]{0,20}\Z")


@given(key_type=key_types, rest=key_bytes)
def test_a_bare_blob_gets_the_type_it_embeds(key_type: str, rest: list[bytes]) -> None:
    data = blob(key_type, *rest)
    assert normalise_host_key(data) == f"{key_type} {data}"


@given(key_type=key_types, rest=key_bytes, host=host_names, comment=st.sampled_from(["", " root@box"]))
def test_every_accepted_form_gives_the_same_pin(
    key_type: str, rest: list[bytes], host: str, comment: str
) -> None:
    data = blob(key_type, *rest)
    expected = f"{key_type} {data}"
    assert normalise_host_key(f"{key_type} {data}{comment}") == expected
    assert normalise_host_key(f"{host} {key_type} {data}{comment}") == expected
    assert normalise_host_key(f"[{host}]:2222,10.0.0.1 {key_type} {data}") == expected


@given(stated=key_types, embedded=key_types, rest=key_bytes)
def test_a_stated_type_that_contradicts_the_key_data_is_rejected(
    stated: str, embedded: str, rest: list[bytes]
) -> None:
    line = f"{stated} {blob(embedded, *rest)}"
    if stated == embedded:
        assert normalise_host_key(line) == line
        return
    with pytest.raises(ValueError, match="host_key") as info:
        normalise_host_key(line)
    assert repr(stated) in str(info.value) and repr(embedded) in str(info.value)
    assert FIX in str(info.value)


@given(text=st.text(max_size=200))
def test_anything_is_either_a_checked_pin_or_a_value_error(text: str) -> None:
    try:
        pinned = normalise_host_key(text)
    except ValueError as error:
        assert "host_key" in str(error) or "DSA" in str(error)
        return
    _, data = pinned.split(" ")
    assert normalise_host_key(data) == pinned, "the returned type is the embedded one"


@given(garbage=st.binary(min_size=1, max_size=120))
def test_base64_of_random_bytes_is_rejected_unless_it_is_a_key(garbage: bytes) -> None:
    data = base64.b64encode(b"\0\0\0" + garbage).decode()  # starts with AAAA like every key
    try:
        pinned = normalise_host_key(data)
    except ValueError as error:
        assert FIX in str(error)
        return
    assert pinned.endswith(data)


@pytest.mark.parametrize(
    ("host_key", "problem"),
    [
        ("ssh-ed25519 AAAA!!!!", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqq", "not valid base64"),  # cut mid-quantum
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkV", "truncated or damaged ssh-ed25519"),
        (f"ssh-ed25519 {base64.b64encode(wire(b'ssh-ed25519')).decode()}", "truncated or damaged"),
        ("AAAAAAAA", "no SSH public key"),
        (f"ssh-rsa {base64.b64encode(wire(b'NOT A TYPE', b'x')).decode()}", "no SSH public key"),
    ],
)
def test_damaged_key_data_names_the_extra_and_the_fix(host_key: str, problem: str) -> None:
    with pytest.raises(ValueError, match="Connection extra 'host_key'") as info:
        normalise_host_key(host_key)
    assert problem in str(info.value)
    assert FIX in str(info.value)


def test_a_bare_dsa_blob_is_refused_too() -> None:
    with pytest.raises(ValueError, match="DSA"):
        normalise_host_key(blob("ssh-dss", b"p", b"q", b"g", b"y"))


def test_a_certificate_is_only_checked_for_its_type() -> None:
    data = base64.b64encode(wire(b"ssh-ed25519-cert-v01@openssh.com") + b"\0" * 8).decode()
    assert normalise_host_key(data) == f"ssh-ed25519-cert-v01@openssh.com {data}"


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_real_keys_from_ssh_keygen_pass_and_import(tmp_path: Path, key_type: str) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-f", str(key)], check=True)
    stated, data = key.with_suffix(".pub").read_text().split()[:2]
    assert normalise_host_key(data) == f"{stated} {data}"
    asyncssh.import_public_key(normalise_host_key(data))  # what the triggerer's hook will do
