"""The real-sshd test server; it lives in ``dev/harness`` so the demo can use it too."""

from __future__ import annotations

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
]
