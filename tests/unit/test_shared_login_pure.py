"""The pure parts of the shared login: where a broker listens, and the messages it speaks."""

from __future__ import annotations

import fcntl
import io
import multiprocessing
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.hooks import handshake_turns, shared_login
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.shared_login import (
    BrokerUnavailable,
    ask_broker,
    broker_address,
    read_frame,
    send_frame,
)

SETTINGS = SSHConnectionSettings(
    conn_id="cluster", host="login.example.org", username="alice", password="s3cret", share_login=True
)


@pytest.fixture(autouse=True)
def private_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # A short directory: pytest's own temporary paths can be too long for a socket's name.
    with tempfile.TemporaryDirectory(prefix="sl-", dir="/tmp") as directory:
        monkeypatch.setenv("XDG_RUNTIME_DIR", directory)
        yield Path(directory)


def test_the_same_settings_find_the_same_broker() -> None:
    assert broker_address(SETTINGS) == broker_address(replace(SETTINGS))


@pytest.mark.parametrize(
    "change",
    [
        {"password": "other"},
        {"username": "bob"},
        {"port": 2222},
        {"key_file": "/keys/id_ed25519"},
        {"host_key_policy": "accept-new"},
        {"proxy_jump": SSHConnectionSettings(conn_id="bastion", host="bastion.example.org")},
    ],
)
def test_settings_that_differ_in_anything_never_share_a_broker(change: dict) -> None:
    assert broker_address(SETTINGS) != broker_address(replace(SETTINGS, **change))


def test_the_name_tells_nothing_of_the_host_or_the_secrets() -> None:
    address = broker_address(SETTINGS)
    assert address is not None
    for word in ("login.example.org", "alice", "s3cret", "cluster"):
        assert word not in str(address)
    assert (address.parent.stat().st_mode & 0o777) == 0o700
    assert (address.parent / "login-names.key").stat().st_mode & 0o777 == 0o600


def test_names_are_keyed_per_user_directory(private_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = broker_address(SETTINGS)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(private_dir / "other"))
    (private_dir / "other").mkdir()
    second = broker_address(SETTINGS)
    assert first is not None and second is not None
    assert first.name != second.name, "another key, another name: a name cannot be computed from the settings"


def test_no_broker_where_the_socket_path_would_be_too_long(private_dir: Path, monkeypatch) -> None:
    deep = private_dir / ("d" * 80)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    assert broker_address(SETTINGS) is None


def test_no_broker_where_the_directory_is_not_safely_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handshake_turns, "turns_dir", lambda: None)
    monkeypatch.setattr(shared_login, "turns_dir", lambda: None)
    assert broker_address(SETTINGS) is None


def test_asking_where_no_broker_listens_runs_nothing(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable):
        ask_broker(tmp_path / "nobody.sock", b"true\n", 5)


@given(
    header=st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4),
    payloads=st.lists(st.binary(max_size=300), max_size=3),
)
def test_a_message_reads_back_as_sent(header: dict, payloads: list[bytes]) -> None:
    header.pop("sizes", None)
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, header, *payloads)
        left.shutdown(socket.SHUT_WR)
        with right.makefile("rb") as reader:
            assert read_frame(reader) == (header, payloads)


@pytest.mark.parametrize("cut", [0, 5, 30, -12, -3])
def test_a_message_cut_short_is_an_eof(cut: int) -> None:
    left, right = socket.socketpair()
    with left, right:
        send_frame(left, {"outcome": "ran"}, b"stdout bytes", b"")
        left.shutdown(socket.SHUT_WR)
        whole = right.makefile("rb").read()
    assert whole.endswith(b"\nstdout bytes")
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(whole[:cut]))


class _Connection:
    conn_id, host, port, login, password = "cluster", "login.example.org", None, "alice", None

    def __init__(self, extra: dict) -> None:
        self.extra_dejson = extra


@pytest.mark.parametrize(
    ("extra", "shared"),
    [
        ({}, "auto"),
        ({"share_login": " Auto"}, "auto"),
        ({"share_login": ""}, "auto"),
        ({"share_login": None}, "auto"),
        ({"share_login": "true"}, True),
        ({"share_login": True}, True),
        ({"share_login": False}, False),
        ({"share_login": "no"}, False),
    ],
)
def test_sharing_is_asked_for_with_the_connection_extra(extra: dict, shared: bool | str) -> None:
    assert SSHConnectionSettings.from_connection(_Connection(extra)).share_login == shared


@pytest.mark.parametrize("value", ["sometimes", 2])
def test_a_wrong_share_login_names_the_fix(value: object) -> None:
    with pytest.raises(ValueError, match="'share_login' must be true, false or auto"):
        SSHConnectionSettings.from_connection(_Connection({"share_login": value}))
    with pytest.raises(ValueError, match="'share_login' must be true, false or auto"):
        SSHConnectionSettings(conn_id="c", host="h", share_login=value)  # type: ignore[arg-type]


def test_by_default_a_broker_is_started_only_while_another_handshake_with_the_host_is_on() -> None:
    target = replace(SETTINGS, share_login="auto")
    session = shared_login.ScriptSession(target, connect=lambda _: None, run_on=lambda *_: (0, b"", b""))
    assert not session._worth_a_broker(), "a lone task logs in by itself"
    with handshake_turns.handshake_turn(target.host, 22, wait=0) as held:
        assert held and session._worth_a_broker()
    with handshake_turns.handshake_turn("elsewhere.example.org", 22, wait=0):
        assert not session._worth_a_broker(), "handshakes with other hosts are not this fan-out"
    assert shared_login.ScriptSession(
        replace(target, share_login=True), connect=lambda _: None, run_on=lambda *_: (0, b"", b"")
    )._worth_a_broker()


def test_by_default_a_host_behind_a_jump_host_or_a_proxy_command_is_never_shared() -> None:
    jump = SSHConnectionSettings(conn_id="jump", host="bastion.example.org", username="alice")
    auto = replace(SETTINGS, share_login="auto")
    assert shared_login.shares_login(auto)
    assert not shared_login.shares_login(replace(auto, proxy_jump=jump))
    assert not shared_login.shares_login(replace(auto, proxy_command="nc %h %p"))
    assert shared_login.shares_login(replace(SETTINGS, proxy_jump=jump)), "true shares everywhere"
    assert not shared_login.shares_login(replace(SETTINGS, share_login=False))


class _Logins:
    """A step's own logins, counted; the broker's start and wait, recorded instead of run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.own = 0
        self.started: list[Path] = []
        self.waited: list[Path] = []
        monkeypatch.setattr(
            shared_login, "start_broker", lambda address, _: self.started.append(address) or True
        )
        monkeypatch.setattr(shared_login, "wait_for_start", lambda address, _: self.waited.append(address))

    def session(self, settings: SSHConnectionSettings) -> shared_login.ScriptSession:
        def connect(_: SSHConnectionSettings) -> str:
            self.own += 1
            return "own login"

        return shared_login.ScriptSession(settings, connect, lambda client, *_: (0, client.encode(), b""))


AUTO = replace(SETTINGS, share_login="auto")


def test_a_lone_task_logs_in_by_itself_and_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    logins = _Logins(monkeypatch)
    session = logins.session(AUTO)
    assert session.run("true\n", 5) == session.run("true\n", 5) == (0, b"own login", b"")
    assert (logins.own, logins.started, logins.waited) == (1, [], [])


def test_the_task_that_meets_a_handshake_starts_a_broker_and_does_not_wait_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logins = _Logins(monkeypatch)
    with handshake_turns.handshake_turn(AUTO.host, AUTO.port, wait=0) as held:
        assert held
        assert logins.session(AUTO).run("true\n", 5) == (0, b"own login", b"")
    assert (logins.own, logins.started, logins.waited) == (1, [broker_address(AUTO)], [])
    # With share_login true, the starter waits for its broker (and here, finding none, logs in).
    logins.started.clear()
    assert logins.session(SETTINGS).run("true\n", 5) == (0, b"own login", b"")
    assert logins.started == logins.waited == [broker_address(SETTINGS)]


def test_tasks_that_come_while_a_broker_starts_wait_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    logins = _Logins(monkeypatch)
    address = broker_address(AUTO)
    assert address is not None
    # A starter holds the starting lock; no handshake is on (the early tasks' are over).
    descriptor = os.open(f"{address}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        assert logins.session(AUTO).run("true\n", 5) == (0, b"own login", b"")
    finally:
        os.close(descriptor)
    assert (logins.own, logins.started, logins.waited) == (1, [], [address])
    # No broker listened after the wait: it failed, and none is started for a while.
    assert shared_login.recently_failed(address)


def test_a_broker_that_declines_the_script_sends_the_caller_to_its_own_login_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logins = _Logins(monkeypatch)
    address = broker_address(AUTO)
    assert address is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(address))
        listener.listen(1)

        def decline() -> None:
            conn, _ = listener.accept()
            with conn, conn.makefile("rb") as reader:
                read_frame(reader)
                send_frame(conn, {"outcome": "not_run", "reason": "no channel in time"})

        answering = threading.Thread(target=decline, daemon=True)
        answering.start()
        with handshake_turns.handshake_turn(AUTO.host, AUTO.port, wait=0):
            assert logins.session(AUTO).run("true\n", 5) == (0, b"own login", b"")
        answering.join(10)
    assert (logins.own, logins.started, logins.waited) == (1, [], [])
    assert not shared_login.recently_failed(address), "a broker that runs has not failed"


def _address_in_a_process(barrier: Any, results: Any) -> None:
    barrier.wait(10)
    results.put(str(broker_address(SETTINGS)))


def test_processes_that_come_at_once_agree_on_the_name_key() -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(12), context.Queue()
    processes = [context.Process(target=_address_in_a_process, args=(barrier, results)) for _ in range(12)]
    for process in processes:
        process.start()
    found = {results.get(timeout=30) for _ in processes}
    for process in processes:
        process.join(10)
    assert len(found) == 1 and "None" not in found, found
