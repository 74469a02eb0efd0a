"""
PostgreSQL and Redis on 127.0.0.1, each in a temp directory, started and stopped by this process.

They back the production-shaped Airflow (:mod:`harness.production`): PostgreSQL as the metadata
database (the row locks HA schedulers and triggerers rely on exist there, not on SQLite) and
Redis as the Celery broker. Both come from Debian's packages (``postgresql``, ``redis-server``;
``dev/setup-env.sh`` installs them). Nothing is persisted: the database runs without fsync and
Redis without snapshots, because a test's deployment lives for minutes and is thrown away.

``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` user
(``setpriv``, which executes the program in place, so the pid we hold is the server's).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from harness.processes import run_bounded, spawn_in_new_session, terminate_tree
from harness.sshd import LOOPBACK, free_loopback_port

START_TIMEOUT = 60.0
INITDB_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.1
POSTGRES_USER = "postgres"
DATABASE = "airflow"
DB_ROLE = "airflow"
#: A 100-way fan-out on CeleryExecutor: scheduler, api-server, dag-processor, two triggerers,
#: two Celery workers (the result backend is this database too) each hold a pool.
MAX_CONNECTIONS = 300


class ServiceError(RuntimeError):
    """A service could not start; the message carries its log."""


def postgres_bindir() -> Path:
    """Debian's ``/usr/lib/postgresql/<version>/bin`` (newest), which is not on ``PATH``."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda path: int(path.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise ServiceError("PostgreSQL not found: apt-get install -y postgresql (or bash dev/setup-env.sh)")


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((LOOPBACK, port)) == 0


class PostgresServer:
    """
    A throwaway PostgreSQL cluster: ``initdb`` in a fresh temp directory, ``postgres`` on a free
    loopback port, one database and a role with a random password (scram-sha-256 over TCP).

    The data directory is made with :func:`tempfile.mkdtemp` rather than under the caller's
    directory: as root the server runs as ``postgres``, which cannot enter a 0700 test dir.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.port = 0
        self.password = secrets.token_hex(16)
        self.data_root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / "postgres.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database (carries the password: keep it out of logs)."""
        return f"postgresql+psycopg2://{DB_ROLE}:{self.password}@{LOOPBACK}:{self.port}/{DATABASE}"

    def _command(self, *args: str) -> list[str]:
        if not self._as_postgres:
            return list(args)
        # setpriv executes the program in place (no fork): signals to our pid reach the server.
        return ["setpriv", f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", *args]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        bindir = postgres_bindir()
        self.data_root = Path(tempfile.mkdtemp(prefix="ssh-jobs-pg-"))
        data, pwfile = self.data_root / "data", self.data_root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            try:
                account = pwd.getpwnam(POSTGRES_USER)
            except KeyError:
                raise ServiceError(
                    f"running as root needs the {POSTGRES_USER!r} user (apt-get install postgresql)"
                ) from None
            for path in (self.data_root, pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        initdb = self._command(
            str(bindir / "initdb"), "-D", str(data), "-U", DB_ROLE, f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        status = run_bounded(initdb, timeout=INITDB_TIMEOUT, output=self.log_dir / "initdb.log")
        pwfile.unlink()
        if status != 0:
            raise ServiceError(
                f"initdb failed ({status}): {(self.log_dir / 'initdb.log').read_text()[-3000:]}"
            )
        self.port = free_loopback_port()
        server = self._command(
            str(bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.data_root),
            "-c", f"listen_addresses={LOOPBACK}", "-c", f"max_connections={MAX_CONNECTIONS}",
            # Throwaway data: durability costs CPU the 2-core test machines do not have.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        )  # fmt: skip
        self._proc = spawn_in_new_session(server, output=self.log_path)
        self._wait_ready()
        self._create_database(bindir)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if self._proc is None or self._proc.poll() is not None:
                break
            if _accepts(self.port) and "ready to accept connections" in self._log():
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        self.stop()
        raise ServiceError(f"PostgreSQL did not start on {LOOPBACK}:{self.port}: {self._log()[-3000:]}")

    def _create_database(self, bindir: Path) -> None:
        # Over the Unix socket in the server's own directory (trust), so no password is passed.
        assert self.data_root is not None
        command = self._command(
            str(bindir / "psql"), "-h", str(self.data_root), "-p", str(self.port), "-U", DB_ROLE,
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {DATABASE}",
        )  # fmt: skip
        output = self.log_dir / "createdb.log"
        if run_bounded(command, timeout=START_TIMEOUT, output=output) != 0:
            self.stop()
            raise ServiceError(f"CREATE DATABASE failed: {output.read_text()[-2000:]}")

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: clients are disconnected), then remove the data. Safe to repeat."""
        try:
            if self._proc is not None:
                terminate_tree(self._proc, timeout=STOP_TIMEOUT, first_signal=signal.SIGINT)
                self._proc = None
        finally:
            if self.data_root is not None:
                shutil.rmtree(self.data_root, ignore_errors=True)
                self.data_root = None

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer:
    """A throwaway Redis (the Celery broker): no snapshots, no append-only file, a random password."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = Path(base_dir)
        self.port = 0
        self.password = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Broker URL (carries the password; Celery masks it when it prints the URL)."""
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "redis.log"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise ServiceError(
                "redis-server not found: apt-get install -y redis-server (or bash dev/setup-env.sh)"
            )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_loopback_port()
        config = self.base_dir / "redis.conf"
        # The password goes into a file of this run, not onto a command line others can read.
        config.write_text(
            f"port {self.port}\nbind {LOOPBACK}\nsave ''\nappendonly no\ndir {self.base_dir}\n"
            f"requirepass {self.password}\n"
        )
        config.chmod(0o600)
        self._proc = spawn_in_new_session([binary, str(config)], output=self.log_path)
        deadline = time.monotonic() + START_TIMEOUT
        for _ in range(int(START_TIMEOUT / POLL_INTERVAL) + 1):
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                break
            if "Ready to accept connections" in self.log_path.read_text(errors="replace") and _accepts(
                self.port
            ):
                return
            time.sleep(POLL_INTERVAL)
        log = self.log_path.read_text(errors="replace")
        self.stop()
        raise ServiceError(f"redis-server did not start on {LOOPBACK}:{self.port}: {log[-2000:]}")

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                terminate_tree(self._proc, timeout=STOP_TIMEOUT)
            self._proc = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
