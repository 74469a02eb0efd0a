"""A real OpenSSH ``sshd`` on 127.0.0.1 for the tests and the demo.

The provider's hard problems (MaxStartups drops, MaxSessions refusals, slow
login shells, restarts) only show up against the real server, so the tests and the
demo run the distribution's ``/usr/sbin/sshd`` as a child process instead of a fake.

Linux only: ``stop()`` walks ``/proc`` to find the per-connection processes, which
call ``setsid()`` and so leave sshd's process group.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import paramiko

from harness.processes import descendants, signal_processes, wait_processes_gone

LOOPBACK = "127.0.0.1"
SSHD_BINARY = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")
READY_MARKER = f"Server listening on {LOOPBACK}"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.02
# Attempts at a fresh port when another process grabbed ours before sshd bound it.
PORT_ATTEMPTS = 3

# Wording checked against OpenSSH 9.2p1 (Debian 12) and 10.0p2 (bookworm-backports) at
# LogLevel VERBOSE; lines end in "\r\n". "Accepted key ED25519 ... found at" is also printed
# (twice per login) and must NOT count, hence "Accepted publickey for" rather than "Accepted".
# A MaxStartups drop ends in "past MaxStartups" on 9.2 and in "Maxstartups" on 10.0; 10.0 also
# drops penalised addresses (PerSourcePenalties), logged as "... penalty: <reason>".
LOG_PATTERNS: dict[str, re.Pattern[str]] = {
    "connections": re.compile(r"Connection from \S+ port \d+ on "),
    "accepted": re.compile(r"Accepted (?:publickey|password) for "),
    "sessions": re.compile(r"Starting session: "),
    "drops": re.compile(r"drop connection #\d+ from .* (?:past MaxStartups|Maxstartups)\s*$"),
    "penalty_drops": re.compile(r"drop connection #\d+ from .* penalty: "),
    "session_refusals": re.compile(r"no more sessions"),
}


class SSHServerError(RuntimeError):
    """sshd could not be started; the message carries its log."""


def free_loopback_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def generate_ed25519_key(path: Path) -> None:
    """Create ``path`` and ``path.pub`` with no passphrase."""
    # A fixed comment keeps the user's hostname out of the key files.
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ssh-jobs-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


def public_key_without_comment(pub_path: Path) -> str:
    key_type, key_b64 = pub_path.read_text().split()[:2]
    return f"{key_type} {key_b64}"


def count_log_events(text: str) -> dict[str, int]:
    counts = dict.fromkeys(LOG_PATTERNS, 0)
    for line in text.splitlines():
        for name, pattern in LOG_PATTERNS.items():
            if pattern.search(line):
                counts[name] += 1
    return counts


def split_extra_config(lines: list[str]) -> tuple[list[str], list[str]]:
    """Split into (global overrides, Match blocks).

    sshd keeps the FIRST value of a keyword, so overrides must precede our
    defaults; a Match block swallows every following line, so it must come last.
    """
    for index, line in enumerate(lines):
        if line.strip().lower().startswith("match "):
            return lines[:index], lines[index:]
    return list(lines), []


class BaseSSHServer:
    """Keys, config and log parsing shared by the local and container servers.

    Subclasses provide how the sshd process is run: ``start``, ``stop``, ``running``.
    """

    host = LOOPBACK
    _has_started = False

    def __init__(
        self,
        base_dir: Path,
        *,
        max_startups: str = "10:30:100",
        max_sessions: int = 10,
        log_level: str = "VERBOSE",
        login_grace_time: int = 30,
        extra_config: list[str] | None = None,
        login_shell_delay: float = 0.0,
        session_env: dict[str, str] | None = None,
    ) -> None:
        # sshd_config values are whitespace-separated; refusing spaces beats quoting rules.
        if any(char.isspace() for char in str(base_dir)):
            raise ValueError(f"base_dir must not contain whitespace: {base_dir!r}")
        self.base_dir = Path(base_dir).resolve()
        self.max_startups = max_startups
        self.max_sessions = max_sessions
        self.log_level = log_level
        self.login_grace_time = login_grace_time
        self.extra_config = list(extra_config or [])
        self.login_shell_delay = login_shell_delay
        #: More variables for every session besides HOME (e.g. SLURM_CONF): sshd keeps only its
        #: first SetEnv line, so they go on the same one.
        self.session_env = dict(session_env or {})
        if any(char.isspace() for value in self.session_env.values() for char in value):
            raise ValueError(f"session_env values must not contain whitespace: {self.session_env!r}")
        self.user = getpass.getuser()
        self.port = free_loopback_port()

        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.base_dir / "sshd_config"
        self.log_path = self.base_dir / "sshd.log"
        self.pid_path = self.base_dir / "sshd.pid"
        self.host_key_path = self.base_dir / "host_ed25519"
        self.client_key_path = self.base_dir / "client_ed25519"
        self.authorized_keys_path = self.base_dir / "authorized_keys"
        self.known_hosts_path = self.base_dir / "known_hosts"
        self.home_dir = self.base_dir / "home"

        self._create_keys()
        self._create_home()
        self._write_port_dependent_files()

    # -- set-up -------------------------------------------------------------

    def _create_keys(self) -> None:
        generate_ed25519_key(self.host_key_path)
        generate_ed25519_key(self.client_key_path)
        self.host_public_key = public_key_without_comment(self.host_key_path.with_suffix(".pub"))
        client_public = public_key_without_comment(self.client_key_path.with_suffix(".pub"))
        self.authorized_keys_path.write_text(client_public + "\n")
        self.client_private_key_text = self.client_key_path.read_text()

    def _create_home(self) -> None:
        # root's real ~/.bashrc runs `pyenv init`, making every remote command slow;
        # sshd's SetEnv HOME points bash at this clean directory instead.
        self.home_dir.mkdir(exist_ok=True)
        if self.login_shell_delay > 0:
            # Debian's bash sources ~/.bashrc for commands run by sshd, so this
            # behaves like a slow conda/module-system login shell.
            (self.home_dir / ".bashrc").write_text(f"sleep {self.login_shell_delay}\n")

    def _write_port_dependent_files(self) -> None:
        self.config_path.write_text("\n".join(self._config_lines()) + "\n")
        self.known_hosts_path.write_text(self.known_hosts_entry() + "\n")

    def _config_lines(self) -> list[str]:
        overrides, match_blocks = split_extra_config(self.extra_config)
        defaults = [
            f"ListenAddress {LOOPBACK}",
            f"Port {self.port}",
            f"HostKey {self.host_key_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            f"PidFile {self.pid_path}",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"MaxStartups {self.max_startups}",
            f"MaxSessions {self.max_sessions}",
            f"LoginGraceTime {self.login_grace_time}",
            f"LogLevel {self.log_level}",
            " ".join(["SetEnv", f"HOME={self.home_dir}", *(f"{k}={v}" for k, v in self.session_env.items())]),
            # In-process SFTP so uploads work without depending on the sftp-server path.
            "Subsystem sftp internal-sftp",
        ]
        return [*overrides, *defaults, *match_blocks]

    def _move_to_new_port(self) -> None:
        self.port = free_loopback_port()
        self._write_port_dependent_files()

    # -- process control (subclasses) ----------------------------------------

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        """Stop and start again on the same port with the same keys."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good and release everything the server holds (the container server's
        container); ``stop()`` alone leaves it restartable. Idempotent."""
        self.stop()

    def __enter__(self) -> BaseSSHServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- log ------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            # sshd creates the log only once it has parsed its config.
            return ""

    def counts(self) -> dict[str, int]:
        """Event counts over the whole log (it is appended to across restarts)."""
        return count_log_events(self.log_text())

    def wait_for_counts(self, timeout: float = 5.0, **minimums: int) -> dict[str, int]:
        """Poll ``counts()`` until each named count reaches its minimum.

        sshd writes some lines from a different process than the one answering
        the client, so a test can observe the effect before the log line exists.
        """
        unknown = set(minimums) - set(LOG_PATTERNS)
        if unknown:
            raise ValueError(f"unknown counts: {sorted(unknown)}")
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            counts = self.counts()
            if all(counts[name] >= minimum for name, minimum in minimums.items()):
                return counts
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise AssertionError(f"counts {self.counts()} did not reach {minimums} within {timeout}s")

    def _wait_until_listening(self, offset: int, is_alive: Callable[[], bool]) -> bool:
        """True once this run logged READY_MARKER; False if the server died first."""
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if READY_MARKER in self._log_since(offset):
                return True
            if not is_alive():
                return False
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise SSHServerError(f"sshd not listening after {START_TIMEOUT}s; log:\n{self._log_since(offset)}")

    @property
    def stdio_path(self) -> Path:
        """Where sshd's own stdout and stderr go (errors before it opens its -E log)."""
        return self.base_dir / "sshd.stdio"

    def _stdio_text(self) -> str:
        try:
            return self.stdio_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _start_with_port_retries(
        self, spawn: Callable[[], None], discard: Callable[[], None], where: str = ""
    ) -> None:
        """Run ``spawn`` until sshd listens; move to a fresh port when another process took ours.

        :param spawn: starts sshd (it then counts as ``running``)
        :param discard: forgets (and reaps) an sshd that did not come up
        :param where: said in the error, e.g. the container image
        """
        for attempt in range(PORT_ATTEMPTS):
            offset = self._log_size()
            spawn()
            if self._wait_until_listening(offset, lambda: self.running):
                self._has_started = True
                return
            failure = self._log_since(offset) + self._stdio_text()
            discard()
            # Only before the first successful start: afterwards clients depend on the port.
            if "Address already in use" in failure and not self._has_started and attempt + 1 < PORT_ATTEMPTS:
                self._move_to_new_port()
                continue
            raise SSHServerError(f"sshd exited during start-up{where}; output:\n{failure}")

    # -- client-side helpers -----------------------------------------------------

    def known_hosts_entry(self, port: int | None = None) -> str:
        """known_hosts line pinning the host key; pass a proxy's port to pin it there."""
        return f"[{self.host}]:{port or self.port} {self.host_public_key}"

    def paramiko_client(self, port: int | None = None, timeout: float = 5.0) -> paramiko.SSHClient:
        """A connected client that only trusts this server's host key."""
        key_type, key_b64 = self.host_public_key.split()
        host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
        client = paramiko.SSHClient()
        client.get_host_keys().add(f"[{self.host}]:{port or self.port}", key_type, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(
                self.host,
                port or self.port,
                username=self.user,
                key_filename=str(self.client_key_path),
                allow_agent=False,
                look_for_keys=False,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
            )
        except BaseException:
            # A failed connect leaves a transport thread behind unless closed.
            client.close()
            raise
        return client

    def airflow_connection(
        self, conn_id: str = "ssh_test", *, port: int | None = None, **extra_overrides: Any
    ) -> dict[str, Any]:
        """Airflow JSON connection; ``port`` lets a test route through a FaultProxy."""
        extra: dict[str, Any] = {
            "key_file": str(self.client_key_path),
            "host_key": self.host_public_key,
            **extra_overrides,
        }
        return {
            "conn_type": "ssh",
            "description": f"{conn_id}: test sshd on {self.host}:{self.port}",
            "host": self.host,
            "port": port or self.port,
            "login": self.user,
            "extra": extra,
        }

    def airflow_env(
        self, conn_id: str = "ssh_test", *, port: int | None = None, **extra_overrides: Any
    ) -> dict[str, str]:
        connection = self.airflow_connection(conn_id, port=port, **extra_overrides)
        return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(connection)}


def ensure_privsep_dir() -> None:
    # sshd refuses to start as root without its privilege-separation directory.
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(parents=True, exist_ok=True)


class SSHServer(BaseSSHServer):
    """One ``/usr/sbin/sshd -D`` child process on 127.0.0.1."""

    _proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        ensure_privsep_dir()
        try:
            self._start_with_port_retries(self._spawn, self._reap)
        except BaseException:
            # Whatever went wrong (even Ctrl-C), do not leave an sshd behind.
            self.stop()
            raise

    def _spawn(self) -> None:
        command = [str(SSHD_BINARY), "-D", "-f", str(self.config_path), "-E", str(self.log_path)]
        # Errors before sshd opens its -E log (e.g. bad config) go to stderr.
        with self.stdio_path.open("ab") as stdio:
            # A new session gives sshd its own process group, which stop() can signal as a whole.
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, start_new_session=True
            )

    def stop(self) -> None:
        """Stop the listener and every process it forked. Safe to call repeatedly."""
        proc = self._proc
        if proc is None:
            return
        session_processes: list[tuple[int, int]] = []
        if proc.poll() is None:
            # Frozen, the listener cannot fork a child we would miss in the snapshot.
            os.kill(proc.pid, signal.SIGSTOP)
            session_processes = descendants(proc.pid)
            # Still unreaped, so the group id cannot have been recycled.
            os.killpg(proc.pid, signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
            signal_processes(session_processes, signal.SIGTERM)
        self._reap()
        survivors = wait_processes_gone(session_processes, STOP_TIMEOUT)
        signal_processes(survivors, signal.SIGKILL)
        wait_processes_gone(survivors, STOP_TIMEOUT)

    def _reap(self) -> None:
        """Wait for the listener to exit, escalating to SIGKILL after STOP_TIMEOUT."""
        proc = self._proc
        if proc is None:
            return
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT)
        self._proc = None
