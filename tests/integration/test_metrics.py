"""Every documented metric reaches a real StatsD listener on loopback from real runs."""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from ssh_jobs_provider import metrics
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.operators.remote_steps import finish_remote
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from support.faultproxy import FaultProxy
from support.jobs import make_operator, start_job, trigger_for
from support.runner import run_operator, run_to_its_event
from support.sshd import use_connection

STATS = "airflow.sdk._shared.observability.metrics.stats"


@pytest.fixture
def statsd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A UDP socket on loopback, and Airflow's Stats configured to send to it (as a worker is)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    for name, value in {
        "STATSD_ON": "True",
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(listener.getsockname()[1]),
        "STATSD_PREFIX": "airflow",
        "STATSD_INFLUXDB_ENABLED": "True",
    }.items():
        monkeypatch.setenv(f"AIRFLOW__METRICS__{name}", value)
    # Undone at teardown: the process goes back to whatever Stats it had.
    restart_airflow_stats(monkeypatch)
    yield listener
    listener.close()


def restart_airflow_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make Airflow's ``Stats`` start again from ``[metrics]``, in the shape this release gives it."""
    try:
        stats = importlib.import_module(STATS)
    except ImportError:  # Airflow 3.1: one Stats class whose backend is chosen at import
        from airflow.metrics import statsd_logger
        from airflow.stats import Stats

        monkeypatch.setattr(type(Stats), "factory", statsd_logger.get_statsd_logger)
        monkeypatch.setattr(Stats, "instance", None)
        return
    if hasattr(stats, "initialize"):  # Airflow >= 3.3: module functions over one backend
        monkeypatch.setattr(stats, "_factory", None)
        monkeypatch.setattr(stats, "_backend", None)
    else:  # Airflow 3.2: a Stats class in that module
        monkeypatch.setattr(stats.Stats, "factory", None)
        monkeypatch.setattr(stats.Stats, "instance", None)


def received(listener: socket.socket) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            packet = listener.recv(65536)
        except TimeoutError:
            continue
        lines.extend(packet.decode().splitlines())
    return lines


def test_each_documented_metric_is_sent(statsd, ssh_conn, sshd, monkeypatch, remote_base_dir) -> None:
    # A whole job: submit, watch, clean up.
    assert run_operator(make_operator(ssh_conn, remote_base_dir, cleanup="always")).outcome == "success"
    with FaultProxy(sshd.host, sshd.port) as proxy:
        proxied = use_connection(monkeypatch, sshd, "ssh_proxy", port=proxy.port)
        # A dropped connect, and the submit tried again.
        proxy.refuse_new(1)
        op = make_operator(proxied, remote_base_dir, task_id="retried", cleanup="always")
        assert run_operator(op).outcome == "success"
        # A batch that fails: the connection is cut while a job is watched.
        paths = start_job(ssh_conn, remote_base_dir, "sleep 2; echo done", "cut")

        async def watch_through_a_cut() -> None:
            async def cut() -> None:
                await asyncio.sleep(0.6)
                proxy.cut_all()

            cutter = asyncio.ensure_future(cut())
            await run_to_its_event(trigger_for(proxied, paths), 30)
            await cutter

        asyncio.run(watch_through_a_cut())
    # A cleanup that fails for good: nothing listens there any more.
    hook = SSHHook(ssh_conn_id=proxied, conn_retry_attempts=1)
    finish_remote(
        hook, RemoteJobPaths("gone", remote_base_dir), "", kill=False, remove=True, attempts=1,
        command_timeout=5, log=logging.getLogger("test"),
    )  # fmt: skip

    lines = received(statsd)
    names = {line.split(",", 1)[0].split(":", 1)[0] for line in lines}
    expected = {f"airflow.{metric.name}" for metric in metrics.METRICS}
    assert expected <= names, f"missing {sorted(expected - names)}; got {sorted(names)}"
    assert any(line.startswith("airflow.ssh_jobs.batch_polls,host=127.0.0.1:") for line in lines)
    print("metrics received:", sorted(n for n in names if ".ssh_jobs." in n))
