"""
The worker processes of one machine submit over one shared login (``hooks/shared_login.py``,
``hooks/login_broker.py``), against a real sshd that counts the logins it accepts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssh_jobs_provider.hooks import login_broker, shared_login
from ssh_jobs_provider.hooks.handshake_turns import DEFAULT_HANDSHAKE_SLOTS, handshake_turn
from ssh_jobs_provider.hooks.shared_login import BrokerUnavailable, ask_broker, broker_address
from ssh_jobs_provider.hooks.ssh import SSHHook
from support.jobs import make_operator
from support.runner import StandInTaskInstance, submit
from support.sshd import use_connection
from support.waiting import wait_until

BROKER_MODULE = b"ssh_jobs_provider.hooks.login_broker"


def broker_pids(address: Path) -> list[int]:
    """The brokers serving ``address`` (started, through the code under test, by this test)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if BROKER_MODULE in argv and str(address).encode() in argv:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """
    Process ``pid`` has exited with all its threads: its files are closed only then (a killed
    leader thread turns zombie while the others still run down).
    """
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return True
    states = []
    for thread in threads:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # that thread just ended
            states.append((thread / "stat").read_text().rsplit(")", 1)[1].split()[0])
    return len(states) <= 1 and all(state in ("Z", "X") for state in states)


@pytest.fixture
def short_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Brokers of these tests end 3 s after their last script (not 30)."""
    monkeypatch.setattr(shared_login, "BROKER_IDLE_SECONDS", 3.0)


@pytest.fixture
def shared_conn(sshd, monkeypatch: pytest.MonkeyPatch) -> str:
    """Airflow connection ``ssh_shared`` to ``sshd``, with the extra ``share_login``."""
    return use_connection(monkeypatch, sshd, "ssh_shared", share_login=True)


@pytest.fixture
def address(shared_conn: str, short_idle: None) -> Iterator[Path]:
    """The broker socket of connection ``shared_conn``; its brokers are stopped at teardown."""
    found = broker_address(SSHHook(shared_conn).settings)
    assert found is not None, "the user's private directory must be usable here"
    yield found
    for pid in broker_pids(found):
        os.kill(pid, signal.SIGKILL)


def ran_once(base_dir: str, job_count: int) -> None:
    """Every job directory holds one wrapper's launch and an exit code of 0."""
    job_dirs = [path for path in Path(base_dir).iterdir() if path.is_dir() and not path.name.startswith(".")]
    assert len(job_dirs) == job_count
    for job_dir in job_dirs:
        wait_until(lambda job_dir=job_dir: (job_dir / "exit_code").exists(), what=f"{job_dir.name} to end")
        assert (job_dir / "exit_code").read_text().split()[0] == "0"
        assert (job_dir / "stdout.log").read_text() == "hi\n"


def test_the_submits_of_a_machine_share_one_login(sshd, shared_conn, address, remote_base_dir) -> None:
    # The first submit runs in a process of its own, which ends: the broker it starts outlives it.
    first = (
        "from support.jobs import make_operator\n"
        "from support.runner import StandInTaskInstance, submit\n"
        f"submit(make_operator({shared_conn!r}, {remote_base_dir!r}), StandInTaskInstance(map_index=0))\n"
    )
    subprocess.run([sys.executable, "-c", first], check=True, env=os.environ, cwd=Path(__file__).parents[1])
    assert address.exists() and broker_pids(address)
    assert sshd.counts()["accepted"] == 1  # the broker's: the first submit waited for it

    for index in range(1, 9):
        submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance(map_index=index))

    assert sshd.counts()["accepted"] == 1, "the other eight submits must log in no more"
    ran_once(remote_base_dir, 9)


def test_scripts_of_many_callers_run_at_once_on_the_one_login(
    sshd, shared_conn, address, remote_base_dir
) -> None:
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance())
    wait_until(address.exists, what="the broker to listen")
    answers: list[tuple[int, bytes, bytes]] = []

    errors: list[BaseException] = []

    def caller(index: int) -> None:
        try:
            answers.append(
                ask_broker(address, f"sleep 1; echo out {index}; echo err >&2; exit 3\n".encode(), 30)
            )
        except BaseException as error:
            errors.append(error)

    callers = [threading.Thread(target=caller, args=(index,)) for index in range(20)]
    started = time.monotonic()
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert not errors
    assert sorted(answers) == sorted((3, f"out {index}\n".encode(), b"err\n") for index in range(20))
    # Six channels at a time: 20 one-second scripts take four rounds, not twenty.
    assert time.monotonic() - started < 15
    # One login; a channel sshd refused for a moment (a closed one's slot is freed late) was
    # opened again on it, as the hooks do.
    assert sshd.counts()["accepted"] == 1


def test_a_broker_ends_when_idle_and_removes_its_socket(sshd, shared_conn, address, remote_base_dir) -> None:
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance())
    wait_until(address.exists, what="the broker to listen")
    (pid,) = broker_pids(address)
    wait_until(lambda: not address.exists(), timeout=20, what="the idle broker to remove its socket")
    wait_until(
        lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), timeout=10, what="the broker to end"
    )
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance(map_index=1))
    assert sshd.counts()["accepted"] == 2, "after the broker ended, the next submit starts another"
    ran_once(remote_base_dir, 2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def test_a_broker_whose_login_is_gone_sends_the_next_submit_to_a_login_of_its_own(
    sshd, shared_conn, address, remote_base_dir
) -> None:
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance())
    wait_until(address.exists, what="the broker to listen")
    sshd.restart()  # every connection of the old server is gone, the broker's too
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance(map_index=1))
    ran_once(remote_base_dir, 2)


def test_a_broker_killed_mid_script_is_a_lost_reply(
    sshd, shared_conn, address, remote_base_dir, tmp_path
) -> None:
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance())
    wait_until(address.exists, what="the broker to listen")
    (pid,) = broker_pids(address)
    running = tmp_path / "running"  # the script's first step: then the broker is killed

    def kill_once_it_runs() -> None:
        wait_until(running.exists, 60, "the script to run on the shared login")
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_once_it_runs, daemon=True)
    killer.start()
    with pytest.raises(EOFError, match="took the script but sent no answer"):
        script = f"echo $$ > {running}.new; mv {running}.new {running}; exec sleep 30\n"
        ask_broker(address, script.encode(), 60)
    killer.join()
    with contextlib.suppress(ProcessLookupError):  # the script's process, left by the lost login
        os.kill(int(running.read_text()), signal.SIGTERM)
    # A process being killed closes its sockets one by one: until its listening one is closed
    # too, a caller still gets in (and then hears nothing, a lost reply). Once it is gone, none.
    wait_until(lambda: gone(pid), 30, "the killed broker to be gone")
    with pytest.raises(BrokerUnavailable):
        ask_broker(address, b"echo nobody\n", 30)


def test_by_default_lone_submits_log_in_by_themselves_and_leave_nothing_running(
    sshd, ssh_conn, short_idle, remote_base_dir
) -> None:
    conn_id = ssh_conn  # no share_login extra: "auto"
    for index in range(3):
        submit(make_operator(conn_id, remote_base_dir), StandInTaskInstance(map_index=index))
    assert sshd.counts()["accepted"] == 3
    assert not broker_pids(broker_address(SSHHook(conn_id).settings) or Path("/nonexistent"))
    ran_once(remote_base_dir, 3)


@contextlib.contextmanager
def another_worker_handshaking(sshd) -> Iterator[None]:
    """What a fan-out looks like from one worker process: another one holds a handshake turn."""
    with handshake_turn(sshd.host, sshd.port, DEFAULT_HANDSHAKE_SLOTS, wait=0) as held:
        assert held
        yield


def test_by_default_a_submit_that_meets_another_handshake_starts_a_broker_for_the_rest(
    sshd, ssh_conn, short_idle, remote_base_dir
) -> None:
    address = broker_address(SSHHook(ssh_conn).settings)
    assert address is not None
    try:
        with another_worker_handshaking(sshd):
            # In a process of its own, which ends: the broker it starts outlives it.
            first = (
                "from support.jobs import make_operator\n"
                "from support.runner import StandInTaskInstance, submit\n"
                f"submit(make_operator({ssh_conn!r}, {remote_base_dir!r}), StandInTaskInstance(map_index=0))\n"
            )
            subprocess.run(
                [sys.executable, "-c", first], check=True, env=os.environ, cwd=Path(__file__).parents[1]
            )
        assert broker_pids(address), "the submit met another handshake: it must have started a broker"
        # The submit logged in by itself, as it would have alone; then the broker did.
        wait_until(address.exists, what="the broker to listen")
        assert sshd.counts()["accepted"] == 2

        # The fan-out's later submits find the broker and use it, another handshake or not.
        for index in range(1, 4):
            submit(make_operator(ssh_conn, remote_base_dir), StandInTaskInstance(map_index=index))
        assert sshd.counts()["accepted"] == 2
        ran_once(remote_base_dir, 4)
    finally:
        for pid in broker_pids(address):
            os.kill(pid, signal.SIGKILL)


def test_share_login_false_never_starts_a_broker_even_in_a_fan_out(
    sshd, monkeypatch, short_idle, remote_base_dir
) -> None:
    conn_id = use_connection(monkeypatch, sshd, "ssh_alone", share_login=False)
    with another_worker_handshaking(sshd):
        for index in range(2):
            submit(make_operator(conn_id, remote_base_dir), StandInTaskInstance(map_index=index))
    assert sshd.counts()["accepted"] == 2
    assert not broker_pids(broker_address(SSHHook(conn_id).settings) or Path("/nonexistent"))
    ran_once(remote_base_dir, 2)


def test_a_broker_that_cannot_log_in_sends_callers_to_their_own_and_is_not_retried_at_once(
    sshd, monkeypatch, short_idle, remote_base_dir, tmp_path
) -> None:
    from ssh_jobs_provider.exceptions import SSHAuthenticationError
    from support.sshd import generate_ed25519_key

    stranger = tmp_path / "stranger_key"
    generate_ed25519_key(stranger)
    conn_id = use_connection(monkeypatch, sshd, "ssh_refused", share_login=True, key_file=str(stranger))
    address = broker_address(SSHHook(conn_id).settings)
    assert address is not None
    for index in range(2):
        with pytest.raises(SSHAuthenticationError):
            submit(make_operator(conn_id, remote_base_dir), StandInTaskInstance(map_index=index))
    assert shared_login.recently_failed(address)
    # The broker's one attempt, then each submit's own; the second submit started no broker.
    assert sshd.counts()["connections"] == 3
    assert not broker_pids(address)


def test_a_script_that_cannot_start_in_its_time_is_handed_back_unrun(
    sshd, shared_conn, address, remote_base_dir, tmp_path
) -> None:
    submit(make_operator(shared_conn, remote_base_dir), StandInTaskInstance())
    wait_until(address.exists, what="the broker to listen")
    busy = [
        threading.Thread(target=ask_broker, args=(address, b"sleep 4\n", 30), daemon=True)
        for _ in range(login_broker.CHANNELS)
    ]
    for thread in busy:
        thread.start()
    time.sleep(1)  # every channel of the login is taken
    late = tmp_path / "late"
    with pytest.raises(BrokerUnavailable, match="came free in time"):
        ask_broker(address, f"touch {late}\n".encode(), 1)
    for thread in busy:
        thread.join()
    time.sleep(1)
    assert not late.exists(), "a script handed back unrun must never run later"
