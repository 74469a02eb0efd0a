"""
The worker processes of one machine take turns to handshake with a host: never more than
``handshake_slots`` at once, a killed holder frees its turn, an unsafe directory is not used,
and a turn is never waited for beyond its bound. Real processes, real locks.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.hooks.handshake_turns import _open_slots, handshake_turn, turns_dir, turns_in_use

HOST, PORT = "bastion.example", 2222
#: Time a holder keeps its turn: long against taking one, short for the test.
HOLD = 0.3


@pytest.fixture(autouse=True)
def own_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # The children inherit it: their turns are this test's alone.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def take_turn(slots: int, record: str, wait: float = 30.0) -> None:
    with handshake_turn(HOST, PORT, slots, wait) as held:
        start = time.monotonic()
        time.sleep(HOLD)
        with open(record, "a") as out:
            out.write(f"{int(held)} {start} {time.monotonic()}\n")


def most_at_once(lines: list[str]) -> int:
    events = []
    for line in lines:
        _, start, end = line.split()
        events += [(float(start), 1), (float(end), -1)]
    now = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def run_all(targets: list[multiprocessing.Process], timeout: float = 30.0) -> None:
    for process in targets:
        process.start()
    for process in targets:
        process.join(timeout)
        assert process.exitcode == 0


def test_no_more_handshakes_at_once_than_turns(tmp_path: Path) -> None:
    record = str(tmp_path / "record")
    context = multiprocessing.get_context("fork")
    run_all([context.Process(target=take_turn, args=(3, record)) for _ in range(12)])

    lines = Path(record).read_text().splitlines()
    assert len(lines) == 12 and all(line.startswith("1 ") for line in lines)
    # Three at a time (not one: the turns are used), never four.
    assert most_at_once(lines) == 3


def test_a_holder_killed_mid_handshake_frees_its_turn(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=take_turn, args=(1, str(tmp_path / "never"), 30.0))
    holder.start()
    try:
        # Until the holder has its turn, a look with no wait finds none free.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with handshake_turn(HOST, PORT, 1, wait=0) as held:
                if not held:
                    break
            time.sleep(0.01)
        else:
            pytest.fail("the holder never took its turn")
        os.kill(holder.pid or 0, signal.SIGKILL)
        holder.join(10)
        started = time.monotonic()
        with handshake_turn(HOST, PORT, 1, wait=5) as held:
            assert held
        assert time.monotonic() - started < 1
    finally:
        holder.kill()
        holder.join(10)


def test_a_turn_is_waited_for_no_longer_than_its_bound(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=take_turn, args=(1, str(tmp_path / "record")))
    holder.start()
    try:
        time.sleep(HOLD / 3)
        started = time.monotonic()
        with handshake_turn(HOST, PORT, 1, wait=0.1) as held:
            waited = time.monotonic() - started
        assert not held and 0.1 <= waited < HOLD
    finally:
        holder.join(10)


def test_a_look_tells_whether_another_process_holds_a_turn_and_takes_none(tmp_path: Path) -> None:
    assert not turns_in_use(HOST, PORT, 3)
    context = multiprocessing.get_context("fork")
    holder = context.Process(target=take_turn, args=(3, str(tmp_path / "record"), 30.0))
    holder.start()
    try:
        deadline = time.monotonic() + 10
        while not turns_in_use(HOST, PORT, 3):
            assert time.monotonic() < deadline, "the holder's turn was never seen"
            time.sleep(0.01)
        assert not turns_in_use("other.example", PORT, 3), "another host's turns are its own"
    finally:
        holder.join(10)
    assert not turns_in_use(HOST, PORT, 3)


def test_lookers_do_not_take_each_other_for_handshakes(tmp_path: Path) -> None:
    # Another process looking at every turn at this very moment (its shared locks held).
    context = multiprocessing.get_context("fork")
    looking, done = context.Event(), context.Event()

    def look_and_hold() -> None:
        fds = _open_slots(turns_dir() or tmp_path, HOST, PORT, 2)
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_SH)
        looking.set()
        done.wait(30)

    looker = context.Process(target=look_and_hold)
    looker.start()
    try:
        assert looking.wait(10)
        assert not turns_in_use(HOST, PORT, 2)
        # While a look holds them (a real one, a few microseconds) a handshake finds no turn.
        with handshake_turn(HOST, PORT, 2, wait=0) as held:
            assert not held
        done.set()
        looker.join(10)
        with handshake_turn(HOST, PORT, 2, wait=0) as held:
            assert held
            assert turns_in_use(HOST, PORT, 2), "a handshake is seen by a look"
            assert not turns_in_use(HOST, PORT, 0), "with no turns, nothing is seen"
    finally:
        done.set()
        looker.join(10)


def test_no_turns_at_all_with_zero_slots(tmp_path: Path) -> None:
    with handshake_turn(HOST, PORT, 0) as held:
        assert not held
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("planted", ["open to others", "a link", "a file"])
def test_a_directory_that_is_not_safely_ours_is_not_used(tmp_path: Path, planted: str) -> None:
    path = tmp_path / f"ssh-jobs-handshakes-{os.geteuid()}"
    if planted == "open to others":
        path.mkdir()
        path.chmod(0o777)
    elif planted == "a link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.write_text("")
    assert turns_dir() is None
    started = time.monotonic()
    with handshake_turn(HOST, PORT, 1, wait=5) as held:
        assert not held
    assert time.monotonic() - started < 1
    assert not (tmp_path / "elsewhere").exists() or not any((tmp_path / "elsewhere").iterdir())


def test_the_lock_files_name_no_host(tmp_path: Path) -> None:
    with handshake_turn(HOST, PORT, 2) as held:
        assert held
    names = [p.name for p in (turns_dir() or tmp_path).iterdir()]
    assert len(names) == 2 and not any("bastion" in name for name in names)


@pytest.mark.parametrize("value", [-1, "many", 2.5, True])
def test_a_bad_handshake_slots_names_the_extra(value: object) -> None:
    with pytest.raises(ValueError, match="extra 'handshake_slots' must be a whole number >= 0"):
        SSHConnectionSettings(conn_id="c", host="h", handshake_slots=value)  # type: ignore[arg-type]


def test_the_extra_is_read_from_the_connection() -> None:
    values = SSHConnectionSettings._from_extras({"handshake_slots": "3"})
    assert values["handshake_slots"] == 3
    with pytest.raises(ValueError, match="handshake_slots"):
        SSHConnectionSettings(
            conn_id="c", host="h", **SSHConnectionSettings._from_extras({"handshake_slots": "x"})
        )
