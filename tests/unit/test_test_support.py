"""The parts of the test infrastructure that need no sshd: the fault proxy's guard, the server twins."""

from __future__ import annotations

import pytest

from support.faultproxy import FaultProxy
from support.sshd import SSHServer


def test_proxy_only_targets_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 22)


def test_container_server_offers_the_same_interface() -> None:
    from support.sshd_container import ContainerSSHServer

    public = {name for name in dir(SSHServer) if not name.startswith("_")}
    assert public <= set(dir(ContainerSSHServer))


def test_container_tests_skip_where_docker_cannot_run_but_fail_under_ci(monkeypatch) -> None:
    from support.sshd_container import UNAVAILABLE_ENV, require_docker_engine

    monkeypatch.setenv(UNAVAILABLE_ENV, "dockerd exited during start-up")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="dockerd exited during start-up"):
        require_docker_engine()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires them"):
        require_docker_engine()


def test_a_task_log_reads_its_files_interleaved_by_time_as_airflow_shows_them() -> None:
    from harness.airflow_deploy import interleaved, parse_log_line

    worker = [
        parse_log_line("worker", '{"timestamp": "2026-12-07T02:58:10.000Z", "event": "deferred"}'),
        parse_log_line("worker", "a traceback's continuation"),
        parse_log_line("worker", '{"timestamp": "2026-12-07T02:58:30.000Z", "event": "line 3"}'),
    ]
    trigger = [  # Airflow 2's text lines
        parse_log_line("trigger", "[2026-12-07T02:58:12.513+0000] {x.py:1} INFO - line 1"),
        parse_log_line("trigger", "[2026-12-07T02:58:13.000+0000] {x.py:1} INFO - line 2"),
    ]
    merged = interleaved([worker, trigger])
    assert [record.event for record in merged] == [
        "deferred",
        "a traceback's continuation",
        "line 1",
        "line 2",
        "line 3",
    ]
    assert [record.source for record in merged] == ["worker", "worker", "trigger", "trigger", "worker"]
