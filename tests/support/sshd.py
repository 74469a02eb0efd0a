"""The real-sshd test server; it lives in ``dev/harness`` so the demo can use it too."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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
    "NamespacedSSHServer",
    "SSHServer",
    "SSHServerError",
    "auth_only",
    "count_log_events",
    "ensure_privsep_dir",
    "free_loopback_port",
    "generate_ed25519_key",
    "local_password_user",
    "public_key_without_comment",
    "running_ssh_agent",
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


def auth_only(method: str, *, pam: bool = False) -> list[str]:
    """``extra_config`` lines for an sshd that allows ONLY ``method`` (e.g. ``password``).

    Keyboard-interactive needs PAM on Linux: OpenSSH has no other kbdint device there.
    """
    return [
        f"AuthenticationMethods {method}",
        f"PasswordAuthentication {'yes' if method == 'password' else 'no'}",
        f"KbdInteractiveAuthentication {'yes' if method == 'keyboard-interactive' else 'no'}",
        f"PubkeyAuthentication {'yes' if method == 'publickey' else 'no'}",
        f"UsePAM {'yes' if pam else 'no'}",
    ]


@contextmanager
def local_password_user() -> Iterator[tuple[str, str]]:
    """A throwaway local user with a random password, ``(name, password)``; deleted afterwards."""
    name = f"sshj{secrets.token_hex(3)}"
    password = secrets.token_urlsafe(12)
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", name], check=True, timeout=30)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, timeout=30)
        yield name, password
    finally:
        subprocess.run(["userdel", "-f", name], capture_output=True, timeout=30)


@contextmanager
def running_ssh_agent(*keys: Path) -> Iterator[str]:
    """An ``ssh-agent`` of our own holding ``keys``; yields its socket, killed by PID afterwards."""
    directory = Path(os.environ.get("TMPDIR", "/tmp"))
    socket_path = directory / f"sshj-agent-{secrets.token_hex(4)}.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        for key in keys:
            subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True, timeout=30)
        yield str(socket_path)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=10)
        socket_path.unlink(missing_ok=True)


class NamespacedSSHServer(SSHServer):
    """The test sshd run inside network namespace ``netns``, listening on ``addresses``.

    It also listens on the namespace's own 127.0.0.1 (the fixture's default, which tells when
    it is ready); nobody outside the namespace can reach that one.
    """

    def __init__(self, base_dir: Path, *, netns: str, addresses: list[str], **options: Any) -> None:
        self.netns = netns
        self.host = addresses[0]
        listen = [f"ListenAddress {address}" for address in addresses]
        super().__init__(base_dir, extra_config=[*listen, *options.pop("extra_config", [])], **options)

    def _spawn(self) -> None:
        # `ip netns exec` execs sshd: the PID is sshd's own, as stop() needs.
        command = ["ip", "netns", "exec", self.netns, str(SSHD_BINARY), "-D", "-f", str(self.config_path)]
        with self.stdio_path.open("ab") as stdio:
            self._proc = subprocess.Popen(
                [*command, "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=stdio,
                start_new_session=True,
            )

    def known_hosts_lines(self, addresses: list[str]) -> str:
        """known_hosts lines pinning this server's key under each of ``addresses``."""
        return "".join(f"[{address}]:{self.port} {self.host_public_key}\n" for address in addresses)
