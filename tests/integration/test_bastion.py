"""
Hosts behind a bastion: the target sshd lives in a network namespace that only the bastion
sshd can reach (see ``support/netns.py``), so each test shows that the way through the
bastion works AND that the client never went around it.

Counted from the servers' logs: one bastion login per worker submit, one bastion login in all
for the triggerer's watch of every host behind it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.cli.main import main
from ssh_jobs_provider.hooks import _tunnels
from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync
from ssh_jobs_provider.triggers.host_session import HostSession
from support.jobs import make_operator
from support.netns import BastionTopology, record_connects
from support.report import report
from support.runner import StandInTaskInstance, run_triggers, submit
from support.sshd import SSHD_BINARY, NamespacedSSHServer

pytestmark = [pytest.mark.integration]

FAN_OUT = 50


def _can_make_namespaces() -> bool:
    return os.geteuid() == 0 and SSHD_BINARY.exists() and shutil.which("ip") is not None


@dataclass
class Site:
    """The topology, its two servers, and files the connections use."""

    net: BastionTopology
    bastion: NamespacedSSHServer
    target: NamespacedSSHServer
    known_hosts: Path
    ssh_config: Path

    def connection(self, conn_id: str, **extra: Any) -> dict[str, str]:
        """Environment defining Airflow connection ``conn_id`` to the first target through the bastion."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(_connection(**extra))}


def _connection(**fields: Any) -> dict[str, Any]:
    extra = fields.pop("extra", {})
    return {"conn_type": "ssh", **fields, "extra": extra}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not _can_make_namespaces():
        pytest.skip("needs root, ip(8) and /usr/sbin/sshd for network namespaces")
    base = tmp_path_factory.mktemp("bastion")
    net = BastionTopology().create()
    servers: list[NamespacedSSHServer] = []
    try:
        bastion = NamespacedSSHServer(
            base / "bastion",
            netns=net.bastion_ns,
            addresses=[net.bastion_outer, net.bastion_inner],
            max_startups="200",
            max_sessions=20,
        )
        servers.append(bastion)
        bastion.start()
        target = NamespacedSSHServer(
            base / "target", netns=net.target_ns, addresses=net.targets, max_startups="200", max_sessions=20
        )
        servers.append(target)
        target.start()
        known_hosts = base / "known_hosts"
        known_hosts.write_text(
            bastion.known_hosts_lines([net.bastion_outer, net.bastion_inner])
            + target.known_hosts_lines(net.targets)
        )
        ssh_config = base / "ssh_config"
        ssh_config.write_text(
            f"Host jump\n  HostName {net.bastion_outer}\n  Port {bastion.port}\n"
            f"  IdentityFile {bastion.client_key_path}\n\n"
            f"Host gpu-a gpu-b\n  Port {target.port}\n  ProxyJump jump\n"
            f"  IdentityFile {target.client_key_path}\n  ServerAliveInterval 17\n"
            f"Host gpu-a\n  HostName {net.targets[0]}\n"
            f"Host gpu-b\n  HostName {net.targets[1]}\n"
        )
        yield Site(net, bastion, target, known_hosts, ssh_config)
    finally:
        for server in reversed(servers):
            server.close()
        net.destroy()


@pytest.fixture
def conns(site: Site, monkeypatch: pytest.MonkeyPatch) -> Site:
    """Airflow connections: ``bastion``; ``behind`` (via proxy_jump_conn_id); ``aliased`` (SSH config)."""
    bastion = _connection(
        host=site.net.bastion_outer,
        port=site.bastion.port,
        login=site.bastion.user,
        extra={"key_file": str(site.bastion.client_key_path), "host_key": site.bastion.host_public_key},
    )
    behind = _connection(
        host=site.net.targets[0],
        port=site.target.port,
        login=site.target.user,
        extra={
            "key_file": str(site.target.client_key_path),
            "host_key": site.target.host_public_key,
            "proxy_jump_conn_id": "bastion",
        },
    )
    aliased = _connection(
        host="gpu-a", extra={"ssh_config_file": str(site.ssh_config), "known_hosts": str(site.known_hosts)}
    )
    for conn_id, conn in (("bastion", bastion), ("behind", behind), ("aliased", aliased)):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    monkeypatch.setattr(HostSession, "linger", 0.2)
    monkeypatch.setattr(_tunnels, "LINGER", 0.2)
    return site


def _accepted(server: NamespacedSSHServer) -> int:
    return server.counts()["accepted"]


def _target_peers(site: Site) -> set[str]:
    """The addresses the target's connections came from."""
    peers = set()
    for line in site.target.log_text().splitlines():
        if "Connection from " in line:
            peers.add(line.split("Connection from ", 1)[1].split()[0])
    return peers


def _never_direct(site: Site, addresses: list[Any]) -> None:
    hosts = {address[0] for address in addresses if isinstance(address, tuple)}
    assert not hosts & set(site.net.targets), f"the client connected to the target itself: {hosts}"
    assert _target_peers(site) <= {site.net.bastion_inner}, _target_peers(site)


def test_the_target_cannot_be_reached_without_the_bastion(conns: Site) -> None:
    with pytest.raises(OSError):
        socket.create_connection((conns.net.targets[0], conns.target.port), timeout=3).close()


@pytest.mark.parametrize("conn_id", ["behind", "aliased"])
def test_both_hooks_reach_the_target_through_the_bastion(conns: Site, conn_id: str) -> None:
    before = _accepted(conns.bastion)
    with record_connects() as addresses:
        hook = SSHHook(ssh_conn_id=conn_id)
        with hook.get_conn() as client:
            status, out, _ = hook.exec_ssh_client_command(client, "hostname -I", timeout=10)
        async_status, async_out, _ = asyncio.run(
            SSHHookAsync(ssh_conn_id=conn_id).run_command("hostname -I", 10)
        )
    assert (status, async_status) == (0, 0)
    # The command ran in the target's namespace: it has the target's addresses.
    assert conns.net.targets[0] in out.decode() and conns.net.targets[0] in async_out
    assert _accepted(conns.bastion) - before == 2
    assert hook.settings.proxy_jump is not None
    _never_direct(conns, addresses)


def test_doctor_status_and_reap_reach_the_target_through_the_bastion(
    conns: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "jobs"
    base.mkdir(mode=0o700)
    before = _accepted(conns.bastion)
    with record_connects() as addresses:
        doctor = main(["doctor", "--conn-id", "behind", "--base-dir", str(base), "--fan-out", "50"])
        shown = capsys.readouterr().out
        status = main(["status", "--conn-id", "aliased", "--base-dir", str(base), "--json"])
        listing = json.loads(capsys.readouterr().out)
        reap = main(["reap", "--conn-id", "behind", "--base-dir", str(base), "--older-than", "7d"])
    assert (doctor, status, reap) == (0, 0, 0), shown
    # The doctor talked to the target (its address in the server row), through the bastion.
    assert f"@{conns.net.targets[0]}:{conns.target.port}" in shown, shown
    assert f"tcp connect via {conns.bastion.user}@{conns.net.bastion_outer}:{conns.bastion.port}" in shown
    assert listing["jobs"] == []
    # The doctor's two timed connections, then one each for status and reap: all through the bastion.
    assert _accepted(conns.bastion) - before == 4
    _never_direct(conns, addresses)


def test_a_chain_of_two_jump_hosts(conns: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # The second hop is the same bastion sshd reached at its inner address, through the first.
    inner = _connection(
        host=conns.net.bastion_inner,
        port=conns.bastion.port,
        login=conns.bastion.user,
        extra={
            "key_file": str(conns.bastion.client_key_path),
            "host_key": conns.bastion.host_public_key,
            "proxy_jump_conn_id": "bastion",
        },
    )
    chained = json.loads(os.environ["AIRFLOW_CONN_BEHIND"])
    chained["extra"]["proxy_jump_conn_id"] = "inner"
    monkeypatch.setenv("AIRFLOW_CONN_INNER", json.dumps(inner))
    monkeypatch.setenv("AIRFLOW_CONN_CHAINED", json.dumps(chained))
    before = _accepted(conns.bastion)
    hook = SSHHook(ssh_conn_id="chained")
    with hook.get_conn() as client:
        assert hook.exec_ssh_client_command(client, "true", timeout=10)[0] == 0
    assert asyncio.run(SSHHookAsync(ssh_conn_id="chained").run_command("true", 10))[0] == 0
    assert _accepted(conns.bastion) - before == 4  # two hops, two hooks


def test_host_proxy_cmd_and_config_proxy_command(
    conns: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = json.loads(os.environ["AIRFLOW_CONN_BEHIND"])
    del plain["extra"]["proxy_jump_conn_id"]
    monkeypatch.setenv("AIRFLOW_CONN_PLAIN", json.dumps(plain))
    with pytest.raises(ValueError, match="keep only one"):
        _ = SSHHook(ssh_conn_id="behind", host_proxy_cmd="nc %h %p").settings
    ssh = (
        f"ssh -q -o BatchMode=yes -o UserKnownHostsFile={conns.known_hosts} -o StrictHostKeyChecking=yes "
        f"-i {conns.bastion.client_key_path} -p {conns.bastion.port} {conns.bastion.user}@{conns.net.bastion_outer}"
    )
    target = f"{conns.net.targets[0]}:{conns.target.port}"
    for hook in (
        SSHHook(ssh_conn_id="plain", host_proxy_cmd=f"{ssh} -W {target}"),
        SSHHookAsync(ssh_conn_id="plain", host_proxy_cmd=f"{ssh} -W {target}"),
    ):
        if isinstance(hook, SSHHook):
            with hook.get_conn() as client:
                assert hook.exec_ssh_client_command(client, "true", timeout=10)[0] == 0
        else:
            assert asyncio.run(hook.run_command("true", 10))[0] == 0
    config = tmp_path / "config"
    config.write_text(f"Host via-command\n  HostName {conns.net.targets[1]}\n  ProxyCommand {ssh} -W %h:%p\n")
    monkeypatch.setenv(
        "AIRFLOW_CONN_VIA_COMMAND",
        json.dumps(
            _connection(
                host="via-command",
                port=conns.target.port,
                login=conns.target.user,
                extra={
                    "key_file": str(conns.target.client_key_path),
                    "host_key": conns.target.host_public_key,
                    "ssh_config_file": str(config),
                },
            )
        ),
    )
    hook = SSHHook(ssh_conn_id="via_command")
    with hook.get_conn() as client:
        out = hook.exec_ssh_client_command(client, "hostname -I", timeout=10)[1].decode()
    assert conns.net.targets[1] in out
    assert asyncio.run(SSHHookAsync(ssh_conn_id="via_command").run_command("true", 10))[0] == 0


# ------------------------------------------------------------------ the fan-out


def _fan_out_operator(conn_id: str, host: str | None, index: int, base_dir: str, submit_from: str) -> Any:
    return make_operator(
        conn_id, base_dir, f'echo "job {index}"', remote_host=host, task_id="fan_out", submit_from=submit_from
    )


def _submit_one(
    conn_id: str, host: str | None, index: int, base_dir: str, barrier: Any, results: Any
) -> None:
    """A worker (forked process): submit one job, report the deferral's trigger and its connects."""
    op = _fan_out_operator(conn_id, host, index, base_dir, "worker")
    barrier.wait(timeout=60)
    try:
        with record_connects() as addresses:
            deferred = submit(op, StandInTaskInstance(task_id="fan_out", map_index=index))
        classpath, kwargs = deferred.trigger.serialize()
        results.put((index, "ok", (classpath, kwargs), [a for a in addresses if isinstance(a, tuple)]))
    except BaseException as error:
        results.put((index, "error", f"{type(error).__name__}: {error}", []))


def _worker_submits(conn_id: str, hosts: list[str | None], base_dir: str) -> list[Any]:
    """:data:`FAN_OUT` submits at once, each in its own worker process (the worker submit mode)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(FAN_OUT + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(
            target=_submit_one,
            args=(conn_id, hosts[i % len(hosts)], i, base_dir, barrier, results),
            daemon=True,
        )
        for i in range(FAN_OUT)
    ]
    for worker in workers:
        worker.start()
    try:
        barrier.wait(timeout=60)
        outcomes = [results.get(timeout=120) for _ in range(FAN_OUT)]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    failures = [o for o in outcomes if o[1] != "ok"]
    assert not failures, failures[:3]
    return outcomes


def _deferred_at_once(conn_id: str, hosts: list[str | None], base_dir: str) -> list[Any]:
    """:data:`FAN_OUT` tasks with ``submit_from="triggerer"``: each defers without any connection."""
    outcomes = []
    for index in range(FAN_OUT):
        op = _fan_out_operator(conn_id, hosts[index % len(hosts)], index, base_dir, "triggerer")
        with record_connects() as addresses:
            deferred = submit(op, StandInTaskInstance(task_id="fan_out", map_index=index))
        assert not [a for a in addresses if isinstance(a, tuple)], "execute() must not connect anywhere"
        outcomes.append((index, "ok", deferred.trigger.serialize(), []))
    return outcomes


def _triggerer_watch(outcomes: list[Any]) -> list[Any]:
    """Every deferred trigger, recreated from its serialized form, in ONE event loop."""
    triggers = []
    for _, _, (classpath, kwargs), _ in sorted(outcomes, key=lambda o: o[0]):
        module_name, _, class_name = classpath.rpartition(".")
        triggers.append(getattr(importlib.import_module(module_name), class_name)(**kwargs))
    return asyncio.run(run_triggers(triggers, timeout=120))


@pytest.mark.slow
@pytest.mark.parametrize("submit_from", ["worker", "triggerer"])
@pytest.mark.parametrize(
    ("conn_id", "hosts"),
    [
        pytest.param("behind", "addresses", id="proxy_jump_conn_id"),
        pytest.param("aliased", ["gpu-a", "gpu-b"], id="ssh_config_alias"),
    ],
)
def test_fifty_way_fan_out_through_a_bastion(
    conns: Site, tmp_path: Path, conn_id: str, hosts: Any, submit_from: str
) -> None:
    hosts = list(conns.net.targets) if hosts == "addresses" else hosts
    base_dir = str(tmp_path / "jobs")
    bastion_before, target_before = _accepted(conns.bastion), _accepted(conns.target)
    began = time.monotonic()
    if submit_from == "worker":
        outcomes = _worker_submits(conn_id, hosts, base_dir)
    else:
        outcomes = _deferred_at_once(conn_id, hosts, base_dir)
    submitted = time.monotonic()
    bastion_submits = _accepted(conns.bastion) - bastion_before
    target_submits = _accepted(conns.target) - target_before

    with record_connects() as addresses:
        events = _triggerer_watch(outcomes)
    watched = time.monotonic()
    bastion_watch = _accepted(conns.bastion) - bastion_before - bastion_submits
    target_watch = _accepted(conns.target) - target_before - target_submits
    report(
        f"bastion fan-out ({conn_id}, submit_from={submit_from}): {FAN_OUT} submits from the {submit_from} "
        f"-> bastion logins={bastion_submits}, "
        f"target logins={target_submits} in {submitted - began:.1f}s; triggerer watch of {len(hosts)} hosts "
        f"-> bastion logins={bastion_watch}, target logins={target_watch} in {watched - submitted:.1f}s"
    )
    assert all(e["status"] == "success" for e in events), events[:3]
    # One bastion login per worker submit (share_login "auto" keeps a login per task through
    # a jump host); none at all when the triggerer submits.
    expected_submit_logins = FAN_OUT if submit_from == "worker" else 0
    assert bastion_submits == expected_submit_logins
    assert target_submits == expected_submit_logins
    assert bastion_watch == 1  # one in all for the triggerer, whatever the number of hosts
    assert target_watch == len(hosts)  # one shared session per host
    for outcome in outcomes:
        _never_direct(conns, outcome[3])
    _never_direct(conns, addresses)
