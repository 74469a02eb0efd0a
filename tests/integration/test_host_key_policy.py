"""
``host_key_policy``: strict, accept-new (trust on first use, also under 50 concurrent
processes) and off, with both hooks against the real sshd.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import paramiko
import pytest

from ssh_jobs_provider.exceptions import SSHHostKeyError
from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync
from support.report import report
from support.sshd import generate_ed25519_key, public_key_without_comment, use_connection

pytestmark = [pytest.mark.integration]

PROCESSES = 50
TRIGGERER_CONNECTS = 10


def _sync(conn_id: str) -> int:
    hook = SSHHook(ssh_conn_id=conn_id, conn_retry_attempts=1)
    with hook.get_conn() as client:
        return hook.exec_ssh_client_command(client, "true", timeout=10)[0]


def _async(conn_id: str) -> int:
    return asyncio.run(SSHHookAsync(ssh_conn_id=conn_id, conn_retry_attempts=1).run_command("true", 10))[0]


BOTH = pytest.mark.parametrize("run", [_sync, _async], ids=["paramiko", "asyncssh"])


def _policy_conn(monkeypatch: pytest.MonkeyPatch, sshd: Any, known_hosts: Path, policy: str | None) -> str:
    extra: dict[str, Any] = {"known_hosts": str(known_hosts), "host_key": ""}
    if policy:
        extra["host_key_policy"] = policy
    return use_connection(monkeypatch, sshd, "policy", **extra)


@BOTH
def test_strict_refuses_an_unknown_key(sshd, monkeypatch, tmp_path: Path, run) -> None:
    known_hosts = tmp_path / "known_hosts"
    conn_id = _policy_conn(monkeypatch, sshd, known_hosts, None)  # strict is the default
    with pytest.raises(SSHHostKeyError, match="host_key"):
        run(conn_id)
    assert not known_hosts.exists()


@BOTH
def test_accept_new_records_the_key_once_then_it_is_known(sshd, monkeypatch, tmp_path: Path, run) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    conn_id = _policy_conn(monkeypatch, sshd, known_hosts, "accept-new")
    assert run(conn_id) == 0
    assert known_hosts.read_text() == f"[{sshd.host}]:{sshd.port} {sshd.host_public_key}\n"
    assert run(conn_id) == 0
    assert len(known_hosts.read_text().splitlines()) == 1
    # The recorded key now satisfies strict checking too.
    assert run(_policy_conn(monkeypatch, sshd, known_hosts, "strict")) == 0


@BOTH
def test_accept_new_refuses_a_changed_key(sshd, monkeypatch, tmp_path: Path, run) -> None:
    other = tmp_path / "other_host_key"
    generate_ed25519_key(other)
    known_hosts = tmp_path / "known_hosts"
    recorded = f"[{sshd.host}]:{sshd.port} {public_key_without_comment(other.with_suffix('.pub'))}\n"
    known_hosts.write_text(recorded)
    conn_id = _policy_conn(monkeypatch, sshd, known_hosts, "accept-new")
    with pytest.raises(SSHHostKeyError):
        run(conn_id)
    assert known_hosts.read_text() == recorded  # not replaced, not appended to


@BOTH
def test_off_accepts_any_key_and_records_nothing(sshd, monkeypatch, tmp_path: Path, run) -> None:
    known_hosts = tmp_path / "known_hosts"
    assert run(_policy_conn(monkeypatch, sshd, known_hosts, "off")) == 0
    assert not known_hosts.exists()


def test_contradicting_policies_fail_before_connecting(sshd, monkeypatch, tmp_path: Path) -> None:
    use_connection(monkeypatch, sshd, "bad", host_key_policy="accept-new")  # and the pinned host_key
    with pytest.raises(ValueError, match="pinned key must be checked"):
        _ = SSHHook(ssh_conn_id="bad").settings
    use_connection(monkeypatch, sshd, "bad", host_key="", host_key_policy="sometimes")
    with pytest.raises(ValueError, match="'strict', 'accept-new', 'off'"):
        _ = SSHHook(ssh_conn_id="bad").settings
    assert sshd.counts()["connections"] == 0


def _first_connect(index: int, barrier: Any, results: Any) -> None:
    """A worker process (paramiko). The async hook stays in the parent: a forked child cannot
    read an Airflow connection asynchronously (the thread that serves it is not forked)."""
    barrier.wait(timeout=60)
    try:
        results.put((index, _sync("policy")))
    except BaseException as error:
        results.put((index, f"{type(error).__name__}: {error}"))


@pytest.mark.slow
def test_fifty_processes_accept_a_new_host_at_once(sshd_factory, monkeypatch, tmp_path: Path) -> None:
    sshd = sshd_factory(max_startups="200", max_sessions=10)
    known_hosts = tmp_path / "known_hosts"
    # An unrelated line first: it must survive the concurrent rewrites.
    unrelated = (
        "[192.0.2.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n"
    )
    known_hosts.write_text(unrelated)
    _policy_conn(monkeypatch, sshd, known_hosts, "accept-new")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(PROCESSES + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_first_connect, args=(i, barrier, results), daemon=True) for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()

    async def triggerer() -> list[Any]:
        hooks = [SSHHookAsync(ssh_conn_id="policy", conn_retry_attempts=1) for _ in range(TRIGGERER_CONNECTS)]
        return await asyncio.gather(*(hook.run_command("true", 30) for hook in hooks))

    try:
        barrier.wait(timeout=60)
        # Meanwhile the parent, like a triggerer, meets the same new host on several connections.
        in_loop = asyncio.run(triggerer())
        outcomes = [results.get(timeout=120) for _ in range(PROCESSES)]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    lines = known_hosts.read_text().splitlines(keepends=True)
    report(
        f"accept-new from {PROCESSES} worker processes + {TRIGGERER_CONNECTS} async connects at once: "
        f"{len(lines) - 1} line(s) added, {len(outcomes) + len(in_loop)} connected"
    )
    assert [o for o in outcomes if o[1] != 0] == []
    assert [status for status, _, _ in in_loop] == [0] * TRIGGERER_CONNECTS
    assert lines == [unrelated, f"[{sshd.host}]:{sshd.port} {sshd.host_public_key}\n"]
    # Still a valid known_hosts file, and no temporary file left behind.
    assert paramiko.HostKeys(str(known_hosts)).lookup(f"[{sshd.host}]:{sshd.port}") is not None
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("known_hosts")) == [
        "known_hosts",
        "known_hosts.lock",
    ]
