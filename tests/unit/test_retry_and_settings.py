"""BackoffPolicy, transient-error classification, and how an Airflow ssh Connection is read."""

from __future__ import annotations

import asyncio
import getpass
import itertools
import json
import logging
import random
from typing import Any

import asyncssh
import paramiko
import pytest

try:
    from airflow.sdk.definitions.connection import Connection
except ImportError:  # Airflow 2.11: no task SDK
    from airflow.models.connection import Connection  # type: ignore[no-redef]
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.exceptions import (
    SSHAuthenticationError,
    SSHConnectError,
    SSHHostKeyError,
    is_transient_connect_error,
)
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings, normalise_host_key
from ssh_jobs_provider.retry import DEFAULT_BACKOFF, BackoffPolicy, RetryPolicy

FAST = BackoffPolicy(initial=0.001, maximum=0.002)

# --------------------------------------------------------------------------- backoff


@given(
    initial=st.floats(0.01, 10),
    maximum=st.floats(0.01, 100),
    multiplier=st.floats(1, 4),
    attempt=st.integers(1, 60),
    seed=st.integers(0, 2**32),
)
def test_delay_is_within_half_ceiling_and_ceiling_and_capped(
    initial: float, maximum: float, multiplier: float, attempt: int, seed: int
) -> None:
    policy = BackoffPolicy(initial=initial, maximum=maximum, multiplier=multiplier)
    top = policy.ceiling(attempt)
    delay = policy.delay(attempt, random.Random(seed))
    assert top <= maximum
    assert top / 2 <= delay <= top


def test_ceilings_grow_exponentially_until_the_cap() -> None:
    policy = BackoffPolicy(initial=1.0, maximum=30.0, multiplier=2.0)
    assert [policy.ceiling(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.ceiling(0) == 1.0


def test_default_backoff_first_wait_and_cap() -> None:
    rng = random.Random(1)
    assert 1.0 <= DEFAULT_BACKOFF.delay(1, rng) <= 2.0
    assert 15.0 <= DEFAULT_BACKOFF.delay(50, rng) <= 30.0


@given(seed=st.integers(0, 2**32))
def test_delays_never_shrink_with_doubling_and_stay_capped(seed: int) -> None:
    # With multiplier 2 the lower bound of each wait is the upper bound of the previous one.
    policy = BackoffPolicy(initial=1.0, maximum=30.0, multiplier=2.0)
    waits = list(itertools.islice(policy.delays(random.Random(seed)), 12))
    assert waits[:5] == sorted(waits[:5])
    assert all(0.5 <= w <= 30.0 for w in waits)
    assert all(w >= 15.0 for w in waits[5:])


def test_jitter_spreads_workers() -> None:
    rng = random.Random(7)
    assert len({round(DEFAULT_BACKOFF.delay(3, rng), 6) for _ in range(20)}) > 10


def test_delays_generator_is_endless_and_capped() -> None:
    waits = list(itertools.islice(DEFAULT_BACKOFF.delays(random.Random(0)), 1100))
    assert max(waits) <= DEFAULT_BACKOFF.maximum


def test_retrying_stops_after_n_attempts_and_reraises(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> None:
        calls.append(1)
        raise ConnectionResetError(f"boom {len(calls)}")

    log = logging.getLogger("test.retry")
    with (
        caplog.at_level(logging.WARNING, logger="test.retry"),
        pytest.raises(ConnectionResetError, match="boom 4"),
    ):
        RetryPolicy(4, FAST, lambda e: True).retrying(log, "Submit")(flaky)

    assert len(calls) == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    assert warnings[0].startswith("Submit failed (attempt 1/4): boom 1; retrying in")


def test_retrying_returns_the_first_success() -> None:
    results = iter([OSError("x"), OSError("y"), "ok"])

    def attempt() -> str:
        value = next(results)
        if isinstance(value, Exception):
            raise value
        return value

    assert RetryPolicy(5, FAST, lambda e: isinstance(e, OSError)).retrying()(attempt) == "ok"


def test_retrying_does_not_retry_when_the_predicate_says_no() -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise ValueError("permanent")

    with pytest.raises(ValueError, match="permanent"):
        RetryPolicy(5, FAST, lambda e: not isinstance(e, ValueError)).retrying()(fails)
    assert len(calls) == 1


@pytest.mark.parametrize("attempts", [0, -3, 1])
def test_retrying_makes_at_least_one_attempt(attempts: int) -> None:
    calls = []

    def fails() -> None:
        calls.append(1)
        raise OSError

    with pytest.raises(OSError):
        RetryPolicy(attempts, FAST, lambda e: True).retrying()(fails)
    assert len(calls) == 1


def test_async_retrying_retries_coroutines_and_reraises() -> None:
    calls = []

    async def flaky() -> str:
        await asyncio.sleep(0)
        calls.append(1)
        if len(calls) < 3:
            raise asyncssh.ConnectionLost("lost")
        return "done"

    async def always_fails() -> None:
        calls.append(1)
        raise OSError("down")

    assert asyncio.run(RetryPolicy(5, FAST, is_transient_connect_error).async_retrying()(flaky)) == "done"
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(OSError, match="down"):
        asyncio.run(RetryPolicy(2, FAST, is_transient_connect_error).async_retrying()(always_fails))
    assert len(calls) == 2


def test_async_retrying_does_not_retry_permanent_errors() -> None:
    calls = []

    async def denied() -> None:
        calls.append(1)
        raise asyncssh.PermissionDenied("nope")

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(RetryPolicy(5, FAST, is_transient_connect_error).async_retrying()(denied))
    assert len(calls) == 1


# --------------------------------------------------------------------------- transient errors


class _Key:
    def get_base64(self) -> str:
        return "AAAA"


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (paramiko.SSHException("Error reading SSH protocol banner"), True),
        (paramiko.SSHException("SSH session not active"), True),
        (paramiko.SSHException("Unable to connect to host: timed out"), True),
        (paramiko.SSHException("Incompatible ssh peer (no acceptable kex algorithm)"), False),
        (paramiko.ChannelException(2, "Connect failed"), True),
        (paramiko.AuthenticationException("Authentication failed."), False),
        (paramiko.AuthenticationException("Authentication timeout."), False),
        (paramiko.BadAuthenticationType("Bad authentication type", ["publickey"]), False),
        (paramiko.BadHostKeyException("host", _Key(), _Key()), False),
        (OSError("Connection refused"), True),
        (ConnectionResetError(), True),
        (EOFError(), True),
        (TimeoutError(), True),
        (asyncio.TimeoutError(), True),
        (asyncssh.PermissionDenied("denied"), False),
        (asyncssh.HostKeyNotVerifiable("bad key"), False),
        (asyncssh.ConnectionLost("lost"), True),
        (asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "MaxSessions"), True),
        (asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many"), True),
        # Our own error is not classified here: is_retryable decides by its `final` flag.
        (SSHConnectError("refused"), False),
        (SSHAuthenticationError("denied"), False),
        (SSHHostKeyError("mismatch"), False),
        (ValueError("bug"), False),
        (RuntimeError("bug"), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_is_transient_connect_error_classification(error: BaseException, transient: bool) -> None:
    assert is_transient_connect_error(error) is transient


# --------------------------------------------------------------------------- connection settings


def conn(extra: dict[str, Any] | None = None, **fields: Any) -> Connection:
    values: dict[str, Any] = {"host": "example.org", "port": 2222, "login": "alice", "password": "pw"}
    values.update(fields)
    return Connection(conn_id="ssh_x", conn_type="ssh", extra=json.dumps(extra or {}), **values)


def settings_for(extra: dict[str, Any] | None = None, **fields: Any) -> SSHConnectionSettings:
    return SSHConnectionSettings.from_connection(conn(extra, **fields))


def test_connection_fields_are_read() -> None:
    s = settings_for()
    assert (s.conn_id, s.host, s.port, s.username, s.password) == (
        "ssh_x",
        "example.org",
        2222,
        "alice",
        "pw",
    )
    assert s.address == "alice@example.org:2222"
    assert s.known_hosts_name == "[example.org]:2222"


def test_defaults_when_connection_has_no_extras() -> None:
    s = settings_for(port=None, login=None, password=None)
    assert s.port == 22
    assert s.known_hosts_name == "example.org"
    assert s.username == getpass.getuser()
    assert s.password is None
    assert (s.conn_timeout, s.banner_timeout, s.auth_timeout) == (10.0, 30.0, None)
    assert (s.keepalive_interval, s.keepalive_count_max) == (30, 3)
    assert (s.no_host_key_check, s.host_key, s.allow_host_key_change) == (False, None, False)
    assert (s.look_for_keys, s.compress, s.ciphers, s.disabled_algorithms) == (True, True, None, None)


def test_every_extra_is_read() -> None:
    s = settings_for(
        {
            "key_file": "/keys/id_ed25519",
            "private_key_passphrase": "secret phrase",
            "known_hosts": "/etc/ssh/extra_known_hosts",
            "conn_timeout": "12.5",
            "banner_timeout": 40,
            "auth_timeout": "7",
            "keepalive_interval": "15",
            "keepalive_count_max": "9",
            "no_host_key_check": "true",
            "allow_host_key_change": "true",
            "look_for_keys": "false",
            "compress": "false",
            "disabled_algorithms": {"pubkeys": ["rsa-sha2-512"]},
            "ciphers": ["aes128-ctr", "aes256-ctr"],
        }
    )
    assert s.key_file == "/keys/id_ed25519"
    assert s.private_key_passphrase == "secret phrase"
    assert s.known_hosts == "/etc/ssh/extra_known_hosts"
    assert (s.conn_timeout, s.banner_timeout, s.auth_timeout) == (12.5, 40.0, 7.0)
    assert (s.keepalive_interval, s.keepalive_count_max) == (15.0, 9)
    assert (s.no_host_key_check, s.allow_host_key_change, s.look_for_keys, s.compress) == (
        True,
        True,
        False,
        False,
    )
    assert s.disabled_algorithms == {"pubkeys": ["rsa-sha2-512"]}
    assert s.ciphers == ("aes128-ctr", "aes256-ctr")


def test_private_key_text_and_passphrase_alias() -> None:
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n"
    s = settings_for({"private_key": pem, "passphrase": "pp"})
    assert s.private_key == pem
    assert s.private_key_passphrase == "pp"


def test_secrets_stay_out_of_repr() -> None:
    s = settings_for(
        {"private_key": "PRIVATE-KEY-TEXT", "private_key_passphrase": "PASSPHRASE"}, password="PASSWORD"
    )
    text = repr(s)
    for secret in ("PRIVATE-KEY-TEXT", "PASSPHRASE", "PASSWORD"):
        assert secret not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        (True, True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        (False, False),
        ("0", False),
        ("off", False),
    ],
)
def test_no_host_key_check_bool_forms(value: object, expected: bool) -> None:
    assert settings_for({"no_host_key_check": value}).no_host_key_check is expected


def test_ignore_hostkey_verification_alias() -> None:
    assert settings_for({"ignore_hostkey_verification": "true"}).no_host_key_check is True


@pytest.mark.parametrize("name", ["no_host_key_check", "look_for_keys", "compress", "allow_host_key_change"])
def test_bad_bool_extra_raises_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name}.*true or false"):
        settings_for({name: "maybe"})


@pytest.mark.parametrize("name", ["conn_timeout", "banner_timeout", "auth_timeout", "keepalive_interval"])
@pytest.mark.parametrize("value", ["soon", "-1", [1]])
def test_bad_timeout_extra_raises_naming_it(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        settings_for({name: value})


def test_empty_timeout_extra_keeps_the_default() -> None:
    assert settings_for({"conn_timeout": ""}).conn_timeout == 10.0


KEY_B64 = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
# Real keys of the other types: the key data names its type, and a stated type must match it.
ECDSA_B64 = (
    "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNVidhZbshO4cwaIEDMiSBA0iEJi38UYT+FNBvn0hx"
    "CUzoBUFvRaEsH+xtuHnCQ2tamHLRLRJ27ag0dPCg/Crl4="
)
RSA_B64 = (
    "AAAAB3NzaC1yc2EAAAADAQABAAAAgQDeC7t8ZERjKjcc7AkOYKvD9uXnzu14T/sW9BT2H4oTRUyYPAgXO5jb9wFlONIfXvBIr5mo"
    "vOQZJXdi0FB8+aJIdy1P6Fy7OjN5aIKRiyaN9xO/kkELwJ7bYzHp3WSH1MqTkFIqw2g7+t3efWi6DCtHgkMiM88teQcsgfZ9sq4jGw=="
)


@pytest.mark.parametrize(
    ("host_key", "expected"),
    [
        (f"ssh-ed25519 {KEY_B64}", f"ssh-ed25519 {KEY_B64}"),
        (f"example.org ssh-ed25519 {KEY_B64} root@example", f"ssh-ed25519 {KEY_B64}"),
        (f"[example.org]:2222,10.0.0.1 ecdsa-sha2-nistp256 {ECDSA_B64}", f"ecdsa-sha2-nistp256 {ECDSA_B64}"),
        (f"  ssh-rsa {RSA_B64} comment with spaces  ", f"ssh-rsa {RSA_B64}"),
        (RSA_B64, f"ssh-rsa {RSA_B64}"),
    ],
)
def test_host_key_forms_are_normalised(host_key: str, expected: str) -> None:
    assert settings_for({"host_key": host_key}).host_key == expected


def test_dsa_host_key_is_refused() -> None:
    with pytest.raises(ValueError, match="DSA"):
        normalise_host_key(f"ssh-dss {KEY_B64}")


def test_known_hosts_line_for_host_named_ssh_dash_is_normalised() -> None:
    assert normalise_host_key(f"ssh-gw.example.org ssh-ed25519 {KEY_B64}") == f"ssh-ed25519 {KEY_B64}"


def test_host_key_type_without_blob_is_rejected() -> None:
    with pytest.raises(ValueError):
        normalise_host_key("ssh-ed25519")


def test_host_key_with_no_host_key_check_raises_naming_both() -> None:
    with pytest.raises(ValueError, match="host_key") as info:
        settings_for({"host_key": f"ssh-ed25519 {KEY_B64}", "no_host_key_check": True})
    assert "no_host_key_check" in str(info.value)


def test_pinned_host_key_with_no_host_key_check_false_is_fine() -> None:
    s = settings_for({"host_key": f"ssh-ed25519 {KEY_B64}", "no_host_key_check": "false"})
    assert s.host_key == f"ssh-ed25519 {KEY_B64}"
    assert s.no_host_key_check is False


def test_key_file_and_private_key_together_raise() -> None:
    with pytest.raises(ValueError, match=r"key_file.*private_key"):
        settings_for({"key_file": "/k", "private_key": "PEM"})


def test_disabled_algorithms_as_json_string() -> None:
    value = {"ciphers": ["3des-cbc"], "kex": ["diffie-hellman-group1-sha1"]}
    assert settings_for({"disabled_algorithms": json.dumps(value)}).disabled_algorithms == value


def test_disabled_algorithms_that_is_not_json_raises() -> None:
    with pytest.raises(ValueError, match=r"disabled_algorithms.*JSON"):
        settings_for({"disabled_algorithms": "{not json"})


@pytest.mark.parametrize(
    ("ciphers", "expected"),
    [
        (["aes128-ctr", "aes256-ctr"], ("aes128-ctr", "aes256-ctr")),
        ('["aes256-gcm@openssh.com", "aes128-ctr"]', ("aes256-gcm@openssh.com", "aes128-ctr")),
        ('"aes128-ctr"', ("aes128-ctr",)),
    ],
)
def test_ciphers_as_list_json_list_or_json_string(ciphers: object, expected: tuple[str, ...]) -> None:
    assert settings_for({"ciphers": ciphers}).ciphers == expected


def test_ciphers_as_plain_string() -> None:
    assert settings_for({"ciphers": "aes128-ctr"}).ciphers == ("aes128-ctr",)


def test_overrides_win_over_fields_and_extras() -> None:
    s = SSHConnectionSettings.from_connection(
        conn({"conn_timeout": 5, "banner_timeout": 6}),
        host="override.example",
        port=2022,
        username="bob",
        conn_timeout=1.5,
        banner_timeout=None,  # None means "not overridden"
        key_file="",  # so does ""
    )
    assert (s.host, s.port, s.username) == ("override.example", 2022, "bob")
    assert (s.conn_timeout, s.banner_timeout, s.key_file) == (1.5, 6.0, None)


def test_override_ciphers_become_a_tuple() -> None:
    s = SSHConnectionSettings.from_connection(conn(), ciphers=["aes128-ctr"])
    assert s.ciphers == ("aes128-ctr",)


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="remote_hostt"):
        SSHConnectionSettings.from_connection(conn(), remote_hostt="x")


def test_empty_host_raises_pointing_at_remote_host() -> None:
    with pytest.raises(ValueError, match=r"no host.*remote_host"):
        SSHConnectionSettings(conn_id="ssh_x", host="")


@pytest.mark.parametrize("override", [None, ""])
def test_connection_without_host_raises_pointing_at_remote_host(override: str | None) -> None:
    with pytest.raises(ValueError, match=r"no host.*remote_host"):
        SSHConnectionSettings.from_connection(conn(host=None), host=override)


def test_host_from_override_when_connection_has_none() -> None:
    s = SSHConnectionSettings.from_connection(conn(host=None), host="h2")
    assert s.host == "h2"
    assert SSHConnectionSettings.from_connection(None, host="h3").host == "h3"


@pytest.mark.parametrize("port", [65536, 70000, -1])
def test_invalid_port_raises(port: int) -> None:
    with pytest.raises(ValueError, match="invalid port"):
        SSHConnectionSettings.from_connection(conn(), port=port)


def test_identity_ignores_conn_id_but_not_credentials() -> None:
    a = settings_for({"disabled_algorithms": {"kex": ["a"]}})
    b = SSHConnectionSettings.from_connection(
        Connection(
            conn_id="other_id",
            conn_type="ssh",
            host="example.org",
            port=2222,
            login="alice",
            password="pw",
            extra=json.dumps({"disabled_algorithms": {"kex": ["a"]}}),
        )
    )
    assert a.identity() == b.identity()
    assert a.identity() != a.with_overrides(password="other").identity()
    assert a.with_overrides(port=None) == a
