"""
A production-shaped Airflow 3 on 127.0.0.1: PostgreSQL, Redis, CeleryExecutor, several Celery
workers and triggerers, started and stopped by this process.

:class:`ProductionDeployment` is :class:`~harness.airflow_deploy.AirflowDeployment` (same REST
helpers, log readers, kill/pause helpers) with the parts a real installation has instead of
SQLite and the LocalExecutor: the metadata DB is PostgreSQL (row locks: ``SELECT ... FOR
UPDATE SKIP LOCKED`` is what keeps two triggerers or schedulers from claiming the same row; on
SQLite it is left out), tasks travel through Redis to ``airflow celery worker`` processes, and
every component is its own process, each stopped by pid.

Celery workers are named ``celery-worker``, ``celery-worker-2``, ... Triggerers started after
the deployment (a replacement for a killed one, a restart) get fresh names ``triggerer-<n>``,
so :attr:`triggerer_job_ids` keeps the job id of every triggerer that ever ran here.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.airflow_deploy import (
    HEALTH_TIMEOUT,
    POLL_INTERVAL,
    STOP_GRACE,
    AirflowDeployment,
    DeploymentError,
    airflow_command,
)
from harness.processes import descendants, proc_stat, spawn_in_new_session, stop_gracefully
from harness.services import DATABASE, DB_ROLE, PostgresServer, RedisServer
from harness.sshd import LOOPBACK

CELERY_WORKER = "celery-worker"
#: What ``airflow celery worker`` prints once it consumes from the broker.
CELERY_READY_TEXT = " ready."
#: Celery worker slots per worker: with two workers, 16 task processes at most on 2 cores.
CELERY_CONCURRENCY = 8
#: Airflow's own recovery of tasks whose worker died, in seconds instead of minutes:
#: a running task whose supervisor stopped heartbeating is failed (then retried) after
#: TASK_HEARTBEAT_TIMEOUT; a task a dead worker had taken from the broker but not started
#: stays "queued" and is sent again after TASK_QUEUED_TIMEOUT. The queued timeout is also
#: the lifetime of a queued task's token, so it must exceed the longest wait in the queue.
TASK_HEARTBEAT_TIMEOUT = 15
TASK_QUEUED_TIMEOUT = 90
FAST_TASK_RECOVERY_ENV = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": str(TASK_QUEUED_TIMEOUT),
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "5",
}
#: The triggerer's part of a task log: ``attempt=<n>.log.trigger.<triggerer job id>.log``.
TRIGGER_LOG_FILE = re.compile(r"\.log\.trigger\.(\d+)\.log$")
#: /proc/net/tcp state of an established connection.
TCP_ESTABLISHED = "01"


class ProductionDeployment(AirflowDeployment):
    """
    PostgreSQL + Redis + CeleryExecutor: api-server, scheduler, dag-processor, ``triggerers``
    triggerers and ``celery_workers`` Celery workers, all on loopback, all in ``base_dir``.

    Takes the parameters of :class:`AirflowDeployment` (``parallelism`` defaults to the Celery
    slots, so the scheduler queues no more than the workers can start at once) and:

    :param celery_workers: how many ``airflow celery worker`` processes
    :param concurrency: task slots of each Celery worker
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        celery_workers: int = 2,
        concurrency: int = CELERY_CONCURRENCY,
        triggerers: int = 2,
        **options: Any,
    ) -> None:
        options.setdefault("parallelism", celery_workers * concurrency)
        super().__init__(base_dir, triggerers=triggerers, **options)
        if celery_workers < 1:
            raise ValueError(f"celery_workers must be at least 1, got {celery_workers}")
        self.celery_workers = [
            CELERY_WORKER if number == 1 else f"{CELERY_WORKER}-{number}"
            for number in range(1, celery_workers + 1)
        ]
        self.concurrency = concurrency
        self.postgres = PostgresServer(self.base_dir / "postgres")
        self.redis = RedisServer(self.base_dir / "redis")
        self._started_triggerers = triggerers

    # ------------------------------------------------------------------ configuration

    def environment(self) -> dict[str, str]:
        settings = {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
            # SQLite needed a fresh connection per session; PostgreSQL wants pooled ones (each
            # new connection forks a server process).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_ENABLED": "True",
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
        }
        base = super().environment()
        # The caller's extra settings (``env``) still win over these.
        return {**base, **settings, **self.extra_env}

    def has_metadata_db(self) -> bool:
        return self.postgres.port != 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders, as on SQLite) against PostgreSQL."""
        import psycopg2  # the driver the deployment itself uses; only this deployment needs it

        connection = psycopg2.connect(
            host=LOOPBACK, port=self.postgres.port, user=DB_ROLE,
            password=self.postgres.password, dbname=DATABASE, connect_timeout=10,
        )  # fmt: skip
        try:
            connection.set_session(readonly=True, autocommit=True)
            with connection.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), tuple(params))
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            connection.close()

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Start PostgreSQL and Redis, then Airflow (:meth:`AirflowDeployment.start`), then the workers."""
        try:
            self.postgres.start()
            self.redis.start()
            super().start(timeout)
            for worker in self.celery_workers:
                self.start_component(worker)
            self.wait_workers_ready(self.celery_workers, timeout)
        except BaseException:
            self.stop()
            raise

    def start_component(self, component: str) -> None:
        if component.startswith(CELERY_WORKER):
            # Each worker its own Celery node name; serve-logs is not needed (logs are read from files).
            name = component.replace("-", "_")
            args = ["celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs"]
            args += ["--concurrency", str(self.concurrency)]
            self._spawn(component, args)
        elif component.startswith("triggerer"):
            self._spawn(component, ["triggerer", "--skip-serve-logs"])
        else:
            super().start_component(component)

    def _spawn(self, component: str, args: list[str]) -> None:
        output = self.output_dir / f"{component}.out"
        self._processes[component] = spawn_in_new_session(
            [*airflow_command(), *args], output=output, env=self.environment(), cwd=self.home
        )

    def wait_workers_ready(
        self, workers: Iterable[str], timeout: float = HEALTH_TIMEOUT, since: Mapping[str, int] | None = None
    ) -> None:
        """
        Wait until each Celery worker says it is ready (consuming from the broker).

        ``since``: worker -> how much of its output to skip (what an earlier process wrote).
        """
        pending = set(workers)
        skip = dict(since or {})
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            self.assert_alive()
            pending = {
                name
                for name in pending
                if CELERY_READY_TEXT not in self.component_output(name)[skip.get(name, 0) :]
            }
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        if pending:
            raise DeploymentError(f"Celery worker(s) {sorted(pending)} not ready after {timeout:.0f}s")

    def restart_worker(self, component: str, timeout: float = HEALTH_TIMEOUT) -> None:
        """Start a Celery worker again (after :meth:`kill_component`), as a process supervisor would."""
        written = len(self.component_output(component))
        self.start_component(component)
        self.wait_workers_ready([component], timeout, since={component: written})

    def start_triggerer(self, timeout: float = HEALTH_TIMEOUT) -> str:
        """Start one more triggerer (a replacement or a restart) under a fresh name; return the name."""
        self._started_triggerers += 1
        component = f"triggerer-{self._started_triggerers}"
        self._start_triggerer(component, timeout)
        return component

    def stop_component(self, component: str) -> None:
        """Stop one component gracefully (SIGTERM, as a service manager does), and all it forked."""
        stop_gracefully([self._processes.pop(component)], grace=STOP_GRACE * 4, timeout=STOP_GRACE)

    def task_processes(self, worker: str) -> list[int]:
        """
        Pids of the task processes a Celery worker runs now (below its pool processes). A
        login broker a task started (share_login) is no task process: it serves the tasks of
        every worker of the machine.
        """
        proc = self._processes.get(worker)
        if proc is None or proc.poll() is not None:
            return []
        pool = {pid for pid, _ in descendants(proc.pid) if _parent(pid) == proc.pid}
        return [pid for pid, _ in descendants(proc.pid) if pid not in pool and not _is_login_broker(pid)]

    @property
    def live_triggerers(self) -> list[str]:
        return [name for name in self.running_components if name.startswith("triggerer")]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            try:
                self.redis.stop()
            finally:
                self.postgres.stop()

    # ------------------------------------------------------------------ observation

    def connections_to(self, port: int, components: Iterable[str]) -> dict[str, int]:
        """
        Established TCP connections from each component (and all it forked) to ``port`` on loopback.

        Read from ``/proc``: the sockets of each process, matched against the kernel's table of
        connections, so what is counted is what the host sees, not what a log claims.
        """
        inodes = _established_socket_inodes(port)
        counts: dict[str, int] = {}
        for component in components:
            proc = self._processes.get(component)
            if proc is None or proc.poll() is not None:
                continue
            pids = [proc.pid, *(pid for pid, _ in descendants(proc.pid))]
            counts[component] = len({inode for pid in pids for inode in _socket_inodes(pid)} & inodes)
        return counts

    def triggerer_names(self) -> Mapping[int, str]:
        """Triggerer job id -> component name, for every triggerer that ran here."""
        return {job_id: name for name, job_id in self.triggerer_job_ids.items()}


def _is_login_broker(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"ssh_jobs_provider.hooks.login_broker" in argv


def _parent(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def _established_socket_inodes(port: int) -> set[str]:
    """Inodes of established IPv4 connections whose remote end is ``port``."""
    found: set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[3] == TCP_ESTABLISHED:
                found.add(fields[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    found: set[str] = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(target[8:-1])
    return found


def watchers(deployment: AirflowDeployment, dag_id: str, run_id: str) -> dict[str, list[int]]:
    """
    Triggerer component -> map indexes of the tasks it watched (wrote trigger log lines for).

    A task moved by a failover or a restart counts for every triggerer that watched it. The
    triggerer is read from the name of the task's trigger log file
    (``attempt=<n>.log.trigger.<triggerer job id>.log``).
    """
    names = {job_id: name for name, job_id in deployment.triggerer_job_ids.items()}
    found: dict[str, set[int]] = {}
    for ti in deployment.task_instances(dag_id, run_id):
        for try_number in range(1, ti.try_number + 1):
            for path in deployment.task_log_files(dag_id, run_id, ti, try_number):
                match = TRIGGER_LOG_FILE.search(path.name)
                if match:
                    name = names.get(int(match.group(1)), f"triggerer job {match.group(1)}")
                    found.setdefault(name, set()).add(ti.map_index)
    return {name: sorted(indexes) for name, indexes in sorted(found.items())}


class ConnectionSampler:
    """The most connections each triggerer held to one port at once, over repeated :meth:`sample` calls."""

    def __init__(self, deployment: ProductionDeployment, port: int) -> None:
        self.deployment = deployment
        self.port = port
        self.peak: dict[str, int] = {}
        #: each sample: component -> connections, for the triggerers alive at that moment
        self.samples: list[dict[str, int]] = []

    def sample(self) -> dict[str, int]:
        counts = self.deployment.connections_to(self.port, self.deployment.live_triggerers)
        self.samples.append(counts)
        for name, count in counts.items():
            self.peak[name] = max(self.peak.get(name, 0), count)
        return counts
