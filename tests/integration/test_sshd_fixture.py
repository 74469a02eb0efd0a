"""Tests of the test infrastructure itself: real sshd, its log counts, FaultProxy.

Every event the counters look for is triggered for real here, so a change in
OpenSSH's log wording fails these tests instead of silently zeroing a count.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import asyncssh
import paramiko
import pytest

from harness.processes import is_same_live_process, process_id, wait_processes_gone
from support.faultproxy import SSHD_MAXSTARTUPS_TEXT, FaultProxy
from support.sshd import SSHD_BINARY, BaseSSHServer, SSHServer, SSHServerError

SSHServerFactory = Callable[..., BaseSSHServer]
BANNER_ERROR = "Error reading SSH protocol banner"


def run(client: paramiko.SSHClient, command: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``command``; every read is bounded by ``timeout``."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def timed_run(client: paramiko.SSHClient, command: str) -> float:
    started = time.monotonic()
    assert run(client, command)[0] == 0
    return time.monotonic() - started


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 1):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return predicate()


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def first_reply(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    return sock.recv(256)


# -- the sshd fixture ----------------------------------------------------------------


def test_echo_over_pinned_host_key_is_counted(sshd: BaseSSHServer, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("integration"), "conftest hook should mark sshd users"
    with sshd.paramiko_client() as client:
        assert run(client, "echo hello") == (0, "hello\n", "")
    counts = sshd.wait_for_counts(connections=1, accepted=1, sessions=1)
    assert counts["drops"] == counts["session_refusals"] == 0


def test_openssh_client_trusts_known_hosts_file(sshd: BaseSSHServer) -> None:
    command = [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={sshd.known_hosts_path}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes", "-i", str(sshd.client_key_path), "-p", str(sshd.port),
        f"{sshd.user}@{sshd.host}", "echo", "pinned",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    assert (result.returncode, result.stdout) == (0, "pinned\n"), result.stderr
    assert sshd.known_hosts_path.read_text() == f"[127.0.0.1]:{sshd.port} {sshd.host_public_key}\n"


def test_a_different_host_key_is_rejected(sshd_factory: SSHServerFactory) -> None:
    trusted, impostor = sshd_factory(), sshd_factory()
    with pytest.raises(paramiko.BadHostKeyException):
        trusted.paramiko_client(port=impostor.port)


def test_remote_shell_uses_clean_home(sshd: BaseSSHServer) -> None:
    with sshd.paramiko_client() as client:
        assert run(client, "echo $HOME")[1] == f"{sshd.home_dir}\n"


def test_slow_login_shell_delays_every_command(sshd_factory: SSHServerFactory) -> None:
    fast, slow = sshd_factory(), sshd_factory(login_shell_delay=1.0)
    with fast.paramiko_client() as fast_client, slow.paramiko_client() as slow_client:
        assert timed_run(fast_client, "true") < 0.8
        # Proves SetEnv HOME makes bash source <home>/.bashrc for sshd commands.
        assert timed_run(slow_client, "true") >= 1.0


def test_restart_keeps_port_and_host_key(sshd: BaseSSHServer) -> None:
    port, host_key = sshd.port, sshd.host_public_key
    with sshd.paramiko_client() as before:
        transport = before.get_transport()
        assert transport is not None
        sshd.restart()
        assert wait_until(lambda: not transport.is_active()), "restart should end old sessions"
    assert (sshd.running, sshd.port, sshd.host_public_key) == (True, port, host_key)
    with sshd.paramiko_client() as after:
        assert run(after, "echo again")[1] == "again\n"
    sshd.wait_for_counts(accepted=2)  # the log is appended to across restarts


def test_stop_kills_session_processes_and_is_idempotent(sshd: BaseSSHServer) -> None:
    with sshd.paramiko_client() as client:
        _, stdout, _ = client.exec_command("echo $$; exec sleep 60", timeout=10)
        remote_pid = int(stdout.readline())
        assert process_alive(remote_pid)
        sshd.stop()
        assert not sshd.running
        assert wait_until(lambda: not process_alive(remote_pid)), "session process survived stop()"
        sshd.stop()


def test_max_sessions_refusal_is_counted(sshd_factory: SSHServerFactory) -> None:
    server = sshd_factory(max_sessions=1)
    with server.paramiko_client() as client:
        transport = client.get_transport()
        assert transport is not None
        first = transport.open_session(timeout=5)
        with pytest.raises(paramiko.ChannelException):
            transport.open_session(timeout=5)
        first.close()
    server.wait_for_counts(session_refusals=1)


def test_max_startups_drops_are_counted(sshd_factory: SSHServerFactory) -> None:
    server = sshd_factory(max_startups="1:100:1")
    # Silent clients hold their unauthenticated slot, so with one slot the rest are dropped.
    silent = [socket.create_connection((server.host, server.port), timeout=5) for _ in range(10)]
    try:
        replies = [first_reply(sock) for sock in silent]
        assert replies[0].startswith(b"SSH-2.0-OpenSSH")
        assert replies[1:] == [SSHD_MAXSTARTUPS_TEXT] * 9
        with pytest.raises(paramiko.SSHException, match=BANNER_ERROR):
            server.paramiko_client(timeout=3)
    finally:
        for sock in silent:
            sock.close()
    assert server.wait_for_counts(drops=10)["connections"] >= 1
    # Once the silent slot is released, logins work again.
    assert wait_until(lambda: login_works(server), timeout=5, interval=0.2)


def login_works(server: BaseSSHServer) -> bool:
    try:
        with server.paramiko_client(timeout=2) as client:
            return run(client, "true")[0] == 0
    except paramiko.SSHException:
        return False


def test_extra_config_overrides_defaults(sshd_factory: SSHServerFactory) -> None:
    server = sshd_factory(max_sessions=10, extra_config=["MaxSessions 3", "ClientAliveInterval 7"])
    effective = subprocess.run(
        [str(SSHD_BINARY), "-T", "-f", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.splitlines()
    assert {"maxsessions 3", "clientaliveinterval 7", f"setenv HOME={server.home_dir}"} <= set(effective)


@pytest.mark.integration
def test_start_failure_reports_sshd_output(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "bad", extra_config=["NoSuchKeyword yes"])
    try:
        with pytest.raises(SSHServerError, match="Bad configuration option"):
            server.start()
        assert not server.running
    finally:
        server.stop()


@pytest.mark.integration
def test_first_start_moves_off_a_taken_port(tmp_path: Path) -> None:
    server = SSHServer(tmp_path / "moved")
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind((server.host, taken))
        squatter.listen()
        try:
            server.start()
            assert server.port != taken
            assert f"[127.0.0.1]:{server.port} " in server.known_hosts_path.read_text()
            assert login_works(server)
        finally:
            server.stop()


def test_airflow_connection_env(sshd: BaseSSHServer, ssh_conn: str) -> None:
    assert ssh_conn == "ssh_test"
    connection = json.loads(os.environ["AIRFLOW_CONN_SSH_TEST"])
    assert connection == sshd.airflow_connection()
    assert connection["conn_type"] == "ssh"
    assert (connection["host"], connection["port"], connection["login"]) == (
        "127.0.0.1",
        sshd.port,
        sshd.user,
    )
    assert connection["extra"] == {"key_file": str(sshd.client_key_path), "host_key": sshd.host_public_key}
    assert sshd.host_public_key.startswith("ssh-ed25519 AAAA") and len(sshd.host_public_key.split()) == 2
    assert "PRIVATE KEY" in sshd.client_private_key_text

    other = sshd.airflow_env("Via_Proxy", port=1234, conn_timeout=5)
    via_proxy = json.loads(other["AIRFLOW_CONN_VIA_PROXY"])
    assert (via_proxy["port"], via_proxy["extra"]["conn_timeout"]) == (1234, 5)


# -- FaultProxy --------------------------------------------------------------------


def test_proxy_forwards_and_counts(sshd: BaseSSHServer) -> None:
    proxy = FaultProxy(sshd.host, sshd.port).start()
    try:
        with sshd.paramiko_client(port=proxy.port) as client:
            assert run(client, "echo via proxy")[1] == "via proxy\n"
            assert (proxy.accepted_total, proxy.refused_total, proxy.active) == (1, 0, 1)
        assert wait_until(lambda: proxy.active == 0)
    finally:
        proxy.stop()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((proxy.host, proxy.port), timeout=2).close()


def test_proxy_refusal_looks_like_a_maxstartups_drop(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy:
        proxy.refuse_new(1)
        with pytest.raises(paramiko.SSHException, match=BANNER_ERROR):
            sshd.paramiko_client(port=proxy.port, timeout=3)
        with sshd.paramiko_client(port=proxy.port) as client:
            assert run(client, "echo next")[1] == "next\n"
        assert (proxy.accepted_total, proxy.refused_total) == (2, 1)


def test_proxy_refusal_can_send_sshds_text(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port, refuse_payload=SSHD_MAXSTARTUPS_TEXT) as proxy:
        proxy.refuse_new(1)
        with closing(socket.create_connection((proxy.host, proxy.port), timeout=5)) as sock:
            assert first_reply(sock) == SSHD_MAXSTARTUPS_TEXT
            assert first_reply(sock) == b""


def test_proxy_refuse_all_until_switched_off(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy:
        proxy.refuse_all(True)
        for _ in range(3):
            with closing(socket.create_connection((proxy.host, proxy.port), timeout=5)) as sock:
                assert first_reply(sock) == b"", "refused connections see EOF before any banner"
        proxy.refuse_all(False)
        proxy.refuse_new(None)  # None is another way to say "refuse all"
        with closing(socket.create_connection((proxy.host, proxy.port), timeout=5)) as sock:
            assert first_reply(sock) == b""
        proxy.refuse_all(False)
        with closing(socket.create_connection((proxy.host, proxy.port), timeout=5)) as sock:
            assert first_reply(sock).startswith(b"SSH-2.0-OpenSSH")
        assert (proxy.accepted_total, proxy.refused_total) == (5, 4)


def test_proxy_cut_all_breaks_open_transport(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy, sshd.paramiko_client(port=proxy.port) as client:
        transport = client.get_transport()
        assert transport is not None
        assert run(client, "echo before")[0] == 0
        proxy.cut_all()
        assert wait_until(lambda: not transport.is_active()), "transport survived cut_all()"
        with pytest.raises((paramiko.SSHException, EOFError, OSError)):
            run(client, "echo after")
        assert wait_until(lambda: proxy.active == 0)
        assert login_works_via(sshd, proxy)


def login_works_via(sshd: BaseSSHServer, proxy: FaultProxy) -> bool:
    with sshd.paramiko_client(port=proxy.port) as client:
        return run(client, "true")[0] == 0


def test_proxy_latency_slows_round_trips(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy, sshd.paramiko_client(port=proxy.port) as client:
        baseline = timed_run(client, "true")
        proxy.set_latency(0.1)
        # Opening a channel and running a command take at least two round trips.
        slowed = timed_run(client, "true")
        proxy.set_latency(0)
        assert slowed >= baseline + 0.35


def test_proxy_blackhole_holds_bytes_until_released(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy:
        proxy.blackhole(True)
        with closing(socket.create_connection((proxy.host, proxy.port), timeout=5)) as sock:
            with pytest.raises(TimeoutError):
                first_reply(sock, timeout=0.5)
            assert proxy.active == 1, "a blackholed connection stays open"
            proxy.blackhole(False)
            assert first_reply(sock).startswith(b"SSH-2.0-OpenSSH")


def test_proxy_blackhole_makes_a_live_transport_hang(sshd: BaseSSHServer) -> None:
    with FaultProxy(sshd.host, sshd.port) as proxy, sshd.paramiko_client(port=proxy.port) as client:
        transport = client.get_transport()
        assert transport is not None
        proxy.blackhole(True)
        with pytest.raises(paramiko.SSHException, match="Timeout opening channel"):
            transport.open_session(timeout=1.0)
        assert transport.is_active(), "nothing told the client the peer is gone"
        proxy.blackhole(False)


def test_proxy_serves_a_test_that_runs_its_own_event_loop(sshd: BaseSSHServer) -> None:
    async def scenario(proxy: FaultProxy) -> str:
        known_hosts = asyncssh.import_known_hosts(sshd.known_hosts_entry(proxy.port))
        async with asyncssh.connect(
            proxy.host,
            proxy.port,
            username=sshd.user,
            client_keys=[str(sshd.client_key_path)],
            known_hosts=known_hosts,
            agent_path=None,
        ) as conn:
            output = (await conn.run("echo async", check=True, timeout=10)).stdout
            proxy.cut_all()  # controls are callable from inside another loop
            with pytest.raises((asyncssh.Error, OSError)):
                await conn.run("echo after", check=True, timeout=10)
        return str(output)

    with FaultProxy(sshd.host, sshd.port) as proxy:
        assert asyncio.run(asyncio.wait_for(scenario(proxy), timeout=20)) == "async\n"


# -- the Docker variant ---------------------------------------------------------------


@pytest.mark.integration
def test_container_server_runs_a_command(tmp_path: Path) -> None:
    from support.sshd_container import DEFAULT_IMAGE, ContainerSSHServer, require_docker_engine

    require_docker_engine()
    with ContainerSSHServer(tmp_path / "container") as server, server.paramiko_client() as client:
        assert run(client, "echo container")[1] == "container\n"
        if server.image == DEFAULT_IMAGE:
            assert run(client, "/usr/sbin/sshd -V 2>&1")[1].startswith("OpenSSH_10."), "the recipe's server"


@pytest.mark.integration
def test_container_server_restart_keeps_detached_processes_and_close_ends_them(tmp_path: Path) -> None:
    """Like an sshd restart on a host: jobs survive ``restart()``; ``close()`` removes the container."""
    from support.sshd_container import ContainerSSHServer, require_docker_engine

    require_docker_engine()
    pid_file = tmp_path / "container" / "job.pid"
    with ContainerSSHServer(tmp_path / "container") as server:
        with server.paramiko_client() as client:
            run(client, f"setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}")
        job = process_id(int(pid_file.read_text()))  # the host's pid: shared PID namespace
        assert job is not None
        server.restart()
        with server.paramiko_client() as client:
            assert run(client, "echo again")[1] == "again\n"
        assert is_same_live_process(*job)
    assert wait_processes_gone([job], 10) == []
