"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_support import start_sshd

from harness.processes import interrupts_unwind
from harness.sshd import SSHServer


@pytest.fixture(scope="module", autouse=True)
def _sigterm_unwinds_like_ctrl_c() -> Iterator[None]:
    """
    A SIGTERM (e.g. a CI timeout) would end pytest without running any clean-up, leaving
    the sshd and Airflow processes, which live in sessions of their own, running. Turned
    into an interruption, it unwinds through every fixture's ``finally`` instead.
    """
    with interrupts_unwind():
        yield


@pytest.fixture(scope="module")
def module_sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """One sshd for a test module, with the MaxStartups default that fan-outs run into."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"), max_startups="10:30:100")
    try:
        yield server
    finally:
        server.stop()
