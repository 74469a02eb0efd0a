"""The real-sshd test server; it lives in ``dev/harness`` so the demo can use it too."""

from __future__ import annotations

from typing import Any

import pytest

from harness.sshd import (
    LOG_PATTERNS,
    LOOPBACK,
    POLL_INTERVAL,
    PORT_ATTEMPTS,
    PRIVSEP_DIR,
    READY_MARKER,
    SSHD_BINARY,
    START_TIMEOUT,
    STOP_TIMEOUT,
    BaseSSHServer,
    SSHServer,
    SSHServerError,
    count_log_events,
    ensure_privsep_dir,
    free_loopback_port,
    generate_ed25519_key,
    public_key_without_comment,
    split_extra_config,
)

__all__ = [
    "LOG_PATTERNS",
    "LOOPBACK",
    "POLL_INTERVAL",
    "PORT_ATTEMPTS",
    "PRIVSEP_DIR",
    "READY_MARKER",
    "SSHD_BINARY",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "BaseSSHServer",
    "SSHServer",
    "SSHServerError",
    "count_log_events",
    "ensure_privsep_dir",
    "free_loopback_port",
    "generate_ed25519_key",
    "public_key_without_comment",
    "split_extra_config",
    "use_connection",
]


def use_connection(
    monkeypatch: pytest.MonkeyPatch, server: BaseSSHServer, conn_id: str, **kwargs: Any
) -> str:
    """Make Airflow connection ``conn_id`` point at ``server`` (``kwargs`` as for ``airflow_env``)."""
    for name, value in server.airflow_env(conn_id=conn_id, **kwargs).items():
        monkeypatch.setenv(name, value)
    return conn_id
