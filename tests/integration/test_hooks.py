"""Both hooks against a real sshd: same connection, same host-key rules, same retry rules."""

from __future__ import annotations

import asyncio
import time

import pytest

from ssh_jobs_provider.exceptions import SSHAuthenticationError, SSHConnectError, SSHHostKeyError
from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync
from support.faultproxy import FaultProxy
from support.sshd import use_connection

pytestmark = pytest.mark.integration


def sync_run(conn_id: str, **hook_kwargs) -> tuple[int, bytes, bytes]:
    hook = SSHHook(ssh_conn_id=conn_id, **hook_kwargs)
    with hook.get_conn() as client:
        return hook.exec_ssh_client_command(client, "echo hello", timeout=10)


def async_run(conn_id: str, **hook_kwargs) -> tuple[int, str, str]:
    return asyncio.run(SSHHookAsync(ssh_conn_id=conn_id, **hook_kwargs).run_command("echo hello", timeout=10))


def test_both_hooks_run_a_command_over_the_same_connection(ssh_conn: str) -> None:
    assert sync_run(ssh_conn) == (0, b"hello\n", b"")
    assert async_run(ssh_conn) == (0, "hello\n", "")


def test_private_key_text_extra_works_for_both(sshd, monkeypatch) -> None:
    conn_id = use_connection(
        monkeypatch, sshd, "ssh_pk", key_file=None, private_key=sshd.client_key_path.read_text()
    )
    assert sync_run(conn_id)[0] == 0
    assert async_run(conn_id)[0] == 0


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_authentication_failure_is_not_retried(sshd, monkeypatch, tmp_path, runner) -> None:
    import subprocess

    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    conn_id = use_connection(monkeypatch, sshd, "ssh_badkey", key_file=str(wrong_key), look_for_keys=False)
    before = sshd.counts()["connections"]

    with pytest.raises(SSHAuthenticationError, match="Not retried"):
        runner(conn_id, conn_retry_attempts=5)
    assert sshd.counts()["connections"] - before == 1


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_unknown_host_key_is_rejected_with_the_fix_named(sshd, monkeypatch, runner) -> None:
    conn_id = use_connection(monkeypatch, sshd, "ssh_unknown", host_key=None)
    with pytest.raises(SSHHostKeyError, match="host_key"):
        runner(conn_id)


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_wrong_pinned_host_key_is_rejected(sshd, monkeypatch, tmp_path, runner) -> None:
    import subprocess

    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pinned = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    conn_id = use_connection(monkeypatch, sshd, "ssh_wrongkey", host_key=pinned)
    with pytest.raises(SSHHostKeyError):
        runner(conn_id)


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_known_hosts_file_and_no_host_key_check_are_honoured(sshd, monkeypatch, runner) -> None:
    conn_id = use_connection(
        monkeypatch, sshd, "ssh_kh", host_key=None, known_hosts=str(sshd.known_hosts_path)
    )
    assert runner(conn_id)[0] == 0
    conn_id = use_connection(monkeypatch, sshd, "ssh_nocheck", host_key=None, no_host_key_check=True)
    assert runner(conn_id)[0] == 0


def test_pinned_host_key_applies_to_a_remote_host_override(sshd, monkeypatch) -> None:
    conn_id = use_connection(monkeypatch, sshd, "ssh_alias")
    # 'localhost' is the same server under another name: the pin, not the name, decides.
    assert sync_run(conn_id, remote_host="localhost")[0] == 0
    assert async_run(conn_id, host="localhost")[0] == 0


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_refusals_before_the_banner_are_retried(proxy: FaultProxy, sshd, runner) -> None:
    proxy.refuse_new(2)  # like two MaxStartups drops in a row
    assert runner("ssh_proxy", conn_retry_attempts=3)[0] == 0
    assert proxy.refused_total == 2


@pytest.mark.parametrize("runner", [sync_run, async_run], ids=["sync", "async"])
def test_exhausted_retries_name_the_cause_and_the_knobs(proxy: FaultProxy, runner) -> None:
    proxy.refuse_all(True)
    started = time.monotonic()
    with pytest.raises(SSHConnectError) as info:
        runner("ssh_proxy", conn_retry_attempts=2)
    message = str(info.value)
    assert "after 2 attempt(s)" in message
    for knob in ("MaxStartups", "MaxSessions", "conn_retry_attempts", "max_active_tis_per_dag", "pool"):
        assert knob in message
    assert proxy.refused_total == 2
    assert time.monotonic() - started < 5


def test_async_keepalive_notices_a_dead_peer(proxy: FaultProxy) -> None:
    async def scenario() -> float:
        hook = SSHHookAsync(ssh_conn_id="ssh_proxy", keepalive_interval=1, keepalive_count_max=2)
        conn = await hook.get_conn()
        proxy.blackhole(True)  # the peer stops answering, like a NAT that dropped the flow
        started = time.monotonic()
        await asyncio.wait_for(conn.wait_closed(), 15)
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert elapsed < 6, "noticed after about interval x count, not TCP's two hours"


def test_async_hook_keepalive_defaults(sshd, ssh_conn: str) -> None:
    hook = SSHHookAsync(ssh_conn_id=ssh_conn)
    settings = asyncio.run(hook.get_settings())
    options = hook.connect_options(settings)
    assert options["keepalive_interval"] == 30
    assert options["keepalive_count_max"] == 3


def test_slow_key_exchange_is_not_cut_by_the_connect_timeout(sshd, monkeypatch) -> None:
    """A loaded server (here: a slow link) takes longer to exchange keys than to accept TCP."""
    with FaultProxy(sshd.host, sshd.port) as slow:
        slow.set_latency(0.4)  # every chunk, both ways: the key exchange takes well over 1 s
        conn_id = use_connection(monkeypatch, sshd, "ssh_slowkex", port=slow.port, conn_timeout=1)
        started = time.monotonic()
        assert sync_run(conn_id, conn_retry_attempts=1)[0] == 0
        assert time.monotonic() - started > 1.0, "the exchange really was slower than conn_timeout"
