"""Shared fixtures: a real OpenSSH sshd on 127.0.0.1 per test.

``SSH_JOBS_TEST_SSHD=docker`` runs it in a container instead of as a local process
(``dev/run-tests.sh`` runs part of the suite that way, against OpenSSH 10).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import support.protocol
from support.airflow_reach import reaches_airflow
from support.faultproxy import FaultProxy
from support.sshd import SSHD_BINARY, BaseSSHServer, SSHServer, use_connection

SSHD_MODE_ENV = "SSH_JOBS_TEST_SSHD"
SSHD_FIXTURES = frozenset({"sshd", "sshd_factory", "ssh_conn", "slurm_sshd"})

SSHServerFactory = Callable[..., BaseSSHServer]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--only-airflow-dependent",
        action="store_true",
        help="run only the test modules that import Airflow, directly or through this repository's "
        "modules (tests/support/airflow_reach.py): the ones worth running again on another Airflow release",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # `-m "not integration"` must deselect every test that starts an sshd, marked or not.
    for item in items:
        if SSHD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        # `-m "not slurm"` deselects every test that needs the run's Slurm cluster.
        if "slurm_cluster" in set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slurm)
            item.add_marker(pytest.mark.integration)
    if config.getoption("--only-airflow-dependent"):
        independent = [item for item in items if not reaches_airflow(Path(str(item.path)).resolve())]
        if independent:
            config.hook.pytest_deselected(items=independent)
            items[:] = [item for item in items if item not in independent]


def _server_class() -> Callable[..., BaseSSHServer]:
    """The server implementation for this run; fails loudly when it cannot work here."""
    if os.environ.get(SSHD_MODE_ENV, "local") == "docker":
        from support.sshd_container import ContainerSSHServer, require_docker_engine

        # Skips with the reason when Docker cannot run here; fails instead under CI=true.
        require_docker_engine()
        return ContainerSSHServer
    if not SSHD_BINARY.exists():
        # Failing, not skipping: a silently skipped integration suite looks like a green one.
        pytest.fail(
            f"{SSHD_BINARY} not found; the integration tests need a real OpenSSH server. "
            "Install it with: apt-get install -y openssh-server",
            pytrace=False,
        )
    return SSHServer


@pytest.fixture
def sshd_factory(tmp_path: Path) -> Iterator[SSHServerFactory]:
    """``make(**options)`` creates and starts a server; all are stopped at teardown."""
    server_class = _server_class()
    servers: list[BaseSSHServer] = []

    def make(**options: Any) -> BaseSSHServer:
        if server_class is not SSHServer:
            # The container must see the remote job dirs the tests create under tmp_path.
            options.setdefault("extra_mounts", [tmp_path])
        server = server_class(tmp_path / f"sshd-{len(servers)}", **options)
        servers.append(server)
        server.start()
        return server

    yield make
    _stop_all(servers)


def _stop_all(servers: list[BaseSSHServer]) -> None:
    """Close every server even if one fails, then report the first failure."""
    errors: list[Exception] = []
    for server in reversed(servers):
        try:
            server.close()
        except Exception as error:
            errors.append(error)
    if errors:
        raise errors[0]


@pytest.fixture
def sshd(sshd_factory: SSHServerFactory) -> BaseSSHServer:
    return sshd_factory()


@pytest.fixture
def ssh_conn(sshd: BaseSSHServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """Airflow connection id ``ssh_test`` pointing at ``sshd`` (via AIRFLOW_CONN_SSH_TEST)."""
    return use_connection(monkeypatch, sshd, "ssh_test")


@pytest.fixture(params=["perl", "sh"])
def poll_conn(sshd: BaseSSHServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """Like ``ssh_conn``, with the polls forced to run in perl, then in POSIX sh."""
    return use_connection(monkeypatch, sshd, f"ssh_{request.param}", poll_interpreter=request.param)


@pytest.fixture
def proxy(sshd: BaseSSHServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy in front of ``sshd``, exposed as Airflow connection ``ssh_proxy``."""
    with FaultProxy(sshd.host, sshd.port) as fault_proxy:
        use_connection(monkeypatch, sshd, "ssh_proxy", port=fault_proxy.port)
        yield fault_proxy


@pytest.fixture
def remote_base_dir(tmp_path: Path) -> str:
    """Where remote jobs live; sshd runs on this machine, so a local temp path works."""
    return str(tmp_path / "remote-jobs")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the numbers tests reported (handshakes, drops, ...), also when they pass."""
    from support.report import LINES

    if LINES:
        terminalreporter.section("measurements")
        for line in LINES:
            terminalreporter.write_line(line)


@pytest.fixture(params=["sh", "perl"])
def poll_interpreter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test that uses it runs twice: its polls in POSIX sh, and in one perl process."""
    monkeypatch.setattr(support.protocol, "POLL_INTERPRETER", request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real single-node Slurm cluster for the whole run (tests/support/slurm.py)."""
    from support.slurm import slurm_cluster_fixture

    yield from slurm_cluster_fixture(tmp_path_factory)


@pytest.fixture
def slurm_calls(tmp_path: Path) -> Any:
    """Every Slurm command the login node (``slurm_sshd``) runs, recorded (support.slurm.SlurmCallLog)."""
    from support.slurm import SlurmCallLog

    return SlurmCallLog(tmp_path / "slurm-calls")


@pytest.fixture
def slurm_sshd(sshd_factory: SSHServerFactory, slurm_cluster: Any, slurm_calls: Any) -> BaseSSHServer:
    """
    A test sshd playing a cluster's login node: its sessions talk to ``slurm_cluster``
    (SLURM_CONF set by sshd's SetEnv) and find the Slurm commands through ``slurm_calls``.
    """
    return sshd_factory(session_env={**slurm_cluster.env, "PATH": slurm_calls.path})
