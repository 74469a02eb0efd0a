"""
A throwaway Airflow deployment on 127.0.0.1, started and stopped by this process.

``airflow db migrate`` in a temp ``AIRFLOW_HOME``, then api-server, scheduler, dag-processor
and triggerer (Airflow 2.11: webserver, scheduler and triggerer; :mod:`harness.airflow_release`)
as separate processes (``LocalExecutor``, SQLite), each in its own session so
that :meth:`AirflowDeployment.stop` can end it with everything it forked. The REST API is
used to wait for health, trigger runs and read their state; task logs are read from the
files the worker and the triggerer write under ``AIRFLOW_HOME/logs``.

``serve-logs`` is not started: it always listens on every interface, and both the API
server and this module read the log files directly. Its ports are still set to free
ones so that nothing can collide with another deployment on the same machine.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.airflow_release import Release, installed_airflow, parse_text_line
from harness.processes import (
    descendants,
    kill_tree,
    run_bounded,
    signal_processes,
    spawn_in_new_session,
    stop_gracefully,
)
from harness.sshd import LOOPBACK, free_loopback_port

#: The components of an Airflow 3 deployment (:attr:`AirflowDeployment.components`: this one's).
COMPONENTS = Release(3).components
MIGRATE_TIMEOUT = 180.0
HEALTH_TIMEOUT = 120.0
DAG_PARSE_TIMEOUT = 120.0
# Generous: on a saturated 2-core machine the API server can take seconds to answer.
HTTP_TIMEOUT = 30.0
CLEAR_TIMEOUT = 150.0
CLEAR_ATTEMPTS = 5
TRIGGER_ATTEMPTS = 3
SQLITE_LOCK_TIMEOUT = 30.0
EXECUTION_API_TIMEOUT = 60.0
POLL_INTERVAL = 1.0
#: Seconds the components get to shut down on SIGTERM before they and their children are killed.
STOP_GRACE = 5.0
PAGE_SIZE = 100
FINISHED_RUN_STATES = frozenset({"success", "failed"})
#: What the scheduler logs when it fails a task the executor reported finished while the
#: task instance was already queued again (an upstream race with resumed deferred tasks).
STATE_MISMATCH_TEXT = "but the task instance's state attribute is"
#: ``[workers] min_heartbeat_interval``: also the longest a task supervisor sleeps before it
#: notices that its task process exited (when the process closed its sockets first). With
#: Airflow's default (5 s) the executor often reports a deferring task's exit only after the
#: trigger has fired and the task was queued again; the scheduler then fails the resumed task
#: (STATE_MISMATCH_TEXT). 1 s narrows that window; it does not close it.
SUPERVISOR_WAKEUP = 1
#: What the metadata DB calls a triggerer in its ``job`` table.
TRIGGERER_JOB_TYPE = "TriggererJob"


class DeploymentError(RuntimeError):
    """The deployment could not start or answer; the message says which part and why."""


class APIError(DeploymentError):
    """A REST call failed; ``status`` is the HTTP status, or None when no answer came."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """No answer in time, or a server error: on a busy machine, worth asking again."""
        return self.status is None or self.status >= 500


@dataclass(frozen=True)
class TaskInstance:
    task_id: str
    map_index: int
    state: str | None
    try_number: int


@dataclass(frozen=True)
class LogRecord:
    """One line of a task log; ``source`` is ``"worker"`` or ``"trigger"``."""

    source: str
    level: str
    event: str
    #: The whole line as written (JSON with exception details, if any).
    raw: str
    #: When it was logged (``None``: the line says not, e.g. a traceback's continuation).
    at: datetime.datetime | None = None


@dataclass
class TaskLog:
    records: list[LogRecord] = field(default_factory=list)

    def events(self, source: str | None = None) -> list[str]:
        return [record.event for record in self.records if source in (None, record.source)]

    @property
    def text(self) -> str:
        """Every line as written, exception details included."""
        return "\n".join(record.raw for record in self.records)


@dataclass(frozen=True)
class RunProgress:
    """A snapshot while waiting for a run: its state and how many tasks are in each state."""

    elapsed: float
    run_state: str
    task_states: Counter[str]


def _without_ambient_airflow_settings(environ: Mapping[str, str]) -> dict[str, str]:
    # The caller's own Airflow settings (another AIRFLOW_HOME, connections) must not leak in.
    return {name: value for name, value in environ.items() if not name.startswith("AIRFLOW")}


def airflow_command() -> list[str]:
    """The ``airflow`` CLI of the interpreter running this code."""
    script = Path(sys.executable).with_name("airflow")
    return [str(script)] if script.exists() else [sys.executable, "-m", "airflow"]


def parse_log_line(source: str, line: str) -> LogRecord:
    """Task logs are JSON lines (Airflow 2.11: text lines); anything else is kept verbatim."""
    try:
        entry = json.loads(line)
    except ValueError:
        text = parse_text_line(line)
        if text is not None:
            return LogRecord(source, text[0], text[1], line, parse_time(text[2]))
        return LogRecord(source, "", line, line)
    if not isinstance(entry, dict):
        return LogRecord(source, "", line, line)
    level, event = str(entry.get("level", "")), str(entry.get("event", ""))
    return LogRecord(source, level, event, line, parse_time(str(entry.get("timestamp", ""))))


def parse_time(text: str) -> datetime.datetime | None:
    """A log line's time (``...Z`` or ``...+0000``), or ``None``."""
    try:
        at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=datetime.timezone.utc)


def interleaved(files: list[list[LogRecord]]) -> list[LogRecord]:
    """The records of several log files in time order; a line without a time stays after its predecessor."""
    keyed = []
    for index, records in enumerate(files):
        last = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
        for position, record in enumerate(records):
            last = record.at or last
            keyed.append(((last, index, position), record))
    return [record for _, record in sorted(keyed, key=lambda item: item[0])]


class AirflowDeployment:
    """
    api-server, scheduler, dag-processor and triggerer on loopback, in ``base_dir``.

    :param base_dir: a new or empty directory; ``AIRFLOW_HOME`` is created inside it
    :param dag_files: DAG files or directories (copied) for the DAGs folder
    :param env: extra environment for every component (e.g. ``AIRFLOW_CONN_SSH_DEFAULT``)
    :param parallelism: most task processes the LocalExecutor runs at once
    :param supervisor_wakeup: ``[workers] min_heartbeat_interval``, seconds; see
        :data:`SUPERVISOR_WAKEUP`
    :param triggerers: how many triggerer processes to run (Airflow's HA triggerer). The
        first is the component ``"triggerer"``, the others ``"triggerer-2"``, ... With more
        than one, each is started only once the one before it has its row in the metadata
        DB's ``job`` table, so :attr:`triggerer_job_ids` knows which process is which job.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        dag_files: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        parallelism: int = 32,
        supervisor_wakeup: int = SUPERVISOR_WAKEUP,
        triggerers: int = 1,
    ) -> None:
        if triggerers < 1:
            raise ValueError(f"triggerers must be at least 1, got {triggerers}")
        self.base_dir = Path(base_dir).resolve()
        self.home = self.base_dir / "airflow-home"
        self.dags_folder = self.home / "dags"
        self.logs_folder = self.home / "logs"
        self.output_dir = self.base_dir / "process-output"
        self.dag_files = [Path(path) for path in dag_files]
        self.extra_env = dict(env or {})
        self.parallelism = parallelism
        self.supervisor_wakeup = supervisor_wakeup
        self.api_port = free_loopback_port()
        self._secrets = (secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        self.triggerers = triggerers
        #: The Airflow release whose ``airflow`` command this deployment runs.
        self.release = Release(installed_airflow()[0])
        self.components = self.release.components
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        #: triggerer component -> its id in the ``job`` table (filled only with several triggerers)
        self.triggerer_job_ids: dict[str, int] = {}
        #: component -> wall-clock time (``time.time()``) it was SIGKILLed by :meth:`kill_component`
        self.killed: dict[str, float] = {}

    # ------------------------------------------------------------------ configuration

    @property
    def triggerer_components(self) -> list[str]:
        """The names of this deployment's triggerer components."""
        return ["triggerer", *(f"triggerer-{number}" for number in range(2, self.triggerers + 1))]

    @property
    def database_path(self) -> Path:
        return self.home / "airflow.db"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def environment(self) -> dict[str, str]:
        """The environment every ``airflow`` command of this deployment runs with."""
        jwt_secret, session_secret = self._secrets
        settings = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            # Loopback-only throwaway: every API caller is an admin, so no login is needed.
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # The default resolves the host name through DNS; a plain host name needs no network.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "socket.gethostname",
            # SQLite's default 5 s wait for a lock is too short when four components and
            # dozens of task processes write on a busy 2-core machine: "database is locked".
            # It stays below EXECUTION_API_TIMEOUT, so a request stuck on a lock fails on the
            # server before the worker gives up on it and sends it again.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": (
                f"sqlite:///{self.database_path}?timeout={SQLITE_LOCK_TIMEOUT:.0f}"
            ),
            # A fresh SQLite connection per session: with a bounded pool, a burst of task
            # starts exhausted the API server's connections while their holders waited for
            # the write lock, and the whole API stalled for the pool's 30 s timeout.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_ENABLED": "False",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            # One secret shared by every component: task tokens are signed and checked with it.
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__API__SECRET_KEY": session_secret,
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_loopback_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_loopback_port()),
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(self.supervisor_wakeup),
            # With the default (5 s) a task's "start running" call can time out while 16 tasks
            # start at once on 2 cores; the worker's retry then meets a task already marked
            # running (409) and the task is lost until the heartbeat timeout fails it.
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": f"{EXECUTION_API_TIMEOUT:.0f}",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_loopback_port()),
            **self.release.environment(LOOPBACK, self.api_port, session_secret),
        }
        return {**_without_ambient_airflow_settings(os.environ), **settings, **self.extra_env}

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> AirflowDeployment:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = HEALTH_TIMEOUT) -> None:
        """Migrate the database, start every component and wait until all report healthy."""
        try:
            self.prepare()
            self.migrate()
            for component in self.components:
                if component == "triggerer" and self.triggerers > 1:
                    self._start_triggerers(timeout)
                else:
                    self.start_component(component)
            self.wait_healthy(timeout)
        except BaseException:
            # Whatever went wrong (even Ctrl-C), leave nothing running.
            self.stop()
            raise

    def prepare(self) -> None:
        """Create ``AIRFLOW_HOME`` and fill its DAGs folder."""
        for folder in (self.dags_folder, self.logs_folder, self.output_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.release.prepare_home(self.home)
        for source in self.dag_files:
            target = self.dags_folder / source.name
            if source.is_dir():
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
            else:
                shutil.copy2(source, target)

    def add_dag_file(self, name: str, text: str) -> Path:
        """Write a DAG file into the DAGs folder (before :meth:`start`, so it is parsed at once)."""
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        path = self.dags_folder / name
        path.write_text(text)
        return path

    def migrate(self) -> None:
        result = self.run_cli(["db", "migrate"], timeout=MIGRATE_TIMEOUT)
        if result.returncode != 0:
            raise DeploymentError(
                f"airflow db migrate failed ({result.returncode}):\n{result.stdout[-4000:]}"
            )

    def run_cli(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """
        Run ``airflow <args>`` against this deployment, killed with its children on timeout.

        SIGINT comes first: ``airflow dags test`` ignores SIGTERM.
        """
        self.output_dir.mkdir(parents=True, exist_ok=True)
        output = self.output_dir / f"cli-{'-'.join(args[:2])}-{time.monotonic_ns()}.out"
        command = [*airflow_command(), *args]
        status = run_bounded(
            command, timeout=timeout, output=output, env=self.environment(), first_signal=signal.SIGINT
        )
        text = output.read_text(errors="replace")
        if status is None:
            raise DeploymentError(
                f"airflow {' '.join(args)} did not finish within {timeout:.0f}s; its output ends:\n{text[-4000:]}"
            )
        return subprocess.CompletedProcess(command, status, text)

    def _start_triggerers(self, timeout: float) -> None:
        """Start the triggerers one after another, each once the previous one has its job id."""
        for component in self.triggerer_components:
            self._start_triggerer(component, timeout)

    def _start_triggerer(self, component: str, timeout: float) -> None:
        known = set(self._triggerer_job_rows()) if self.has_metadata_db() else set()
        self.start_component(component)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            self._check_components_alive()
            new = [job_id for job_id in self._triggerer_job_rows() if job_id not in known]
            if new:
                self.triggerer_job_ids[component] = new[0]
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        raise DeploymentError(f"{component} has no row in the job table after {timeout:.0f}s")

    def add_triggerer(self, timeout: float = HEALTH_TIMEOUT) -> str:
        """
        Start one more triggerer process on the running deployment; return its component name.

        Returns once it has its row in the ``job`` table (:attr:`triggerer_job_ids`). Starting
        it late lets every trigger created before be claimed by the first triggerer alone.
        """
        if "triggerer" not in self.triggerer_job_ids:
            # Only one triggerer has ever run here: the one row of its type is its own.
            (first,) = self._triggerer_job_rows()
            self.triggerer_job_ids["triggerer"] = first
        self.triggerers += 1
        component = self.triggerer_components[-1]
        self._start_triggerer(component, timeout)
        return component

    def has_metadata_db(self) -> bool:
        """Whether the metadata DB exists yet (``airflow db migrate`` creates SQLite's file)."""
        return self.database_path.exists()

    def _triggerer_job_rows(self) -> list[int]:
        if not self.has_metadata_db():
            return []
        rows = self.query("SELECT id FROM job WHERE job_type = ? ORDER BY id", (TRIGGERER_JOB_TYPE,))
        return [int(row[0]) for row in rows]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (``?`` placeholders) against the metadata DB (SQLite); return its rows."""
        uri = f"file:{urllib.parse.quote(str(self.database_path))}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=SQLITE_LOCK_TIMEOUT)) as db:
            return [tuple(row) for row in db.execute(sql, tuple(params)).fetchall()]

    def triggers_by_triggerer(self) -> dict[str, int]:
        """How many triggers each triggerer is assigned (by component name; unknown jobs by id)."""
        names = {job_id: name for name, job_id in self.triggerer_job_ids.items()}
        rows = self.query(
            'SELECT triggerer_id, COUNT(*) FROM "trigger" WHERE triggerer_id IS NOT NULL GROUP BY triggerer_id'
        )
        return {names.get(int(job_id), str(job_id)): int(count) for job_id, count in rows}

    def kill_component(self, component: str) -> float:
        """
        SIGKILL a component and everything it forked (a crash, not a stop); return when (``time.time()``).

        The component is forgotten, so that waiting for runs does not report it as dead.
        """
        proc = self._processes.pop(component)
        killed_at = time.time()
        kill_tree(proc, timeout=STOP_GRACE)
        self.killed[component] = killed_at
        return killed_at

    def pause_component(self, component: str) -> float:
        """
        SIGSTOP a component and everything it forked (a process that stalls: a frozen VM, a long
        pause); return when (``time.time()``). :meth:`resume_component` lets it go on.
        """
        proc = self._processes[component]
        paused_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGSTOP)  # first, so that it forks nothing the snapshot misses
        signal_processes(descendants(proc.pid), signal.SIGSTOP)
        return paused_at

    def resume_component(self, component: str) -> float:
        """SIGCONT a component paused by :meth:`pause_component` and everything it forked."""
        proc = self._processes[component]
        signal_processes(descendants(proc.pid), signal.SIGCONT)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        return time.time()

    def start_component(self, component: str) -> None:
        # "triggerer-2", ... are more processes of the "triggerer" command.
        command = "triggerer" if component in self.triggerer_components else component
        args = self.release.component_args(command, self.api_port, LOOPBACK)
        output = self.output_dir / f"{component}.out"
        self._processes[component] = spawn_in_new_session(
            [*airflow_command(), *args], output=output, env=self.environment(), cwd=self.home
        )

    def stop(self) -> None:
        """Stop every component and all it forked (task processes too). Safe to call again."""
        names = [*self.components, *(name for name in self._processes if name not in self.components)]
        processes = [self._processes.pop(name) for name in names if name in self._processes]
        stop_gracefully(processes, grace=STOP_GRACE, timeout=STOP_GRACE)

    @property
    def running_components(self) -> list[str]:
        return [name for name, proc in self._processes.items() if proc.poll() is None]

    def component_output(self, component: str) -> str:
        try:
            return (self.output_dir / f"{component}.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def assert_alive(self) -> None:
        """Raise ``DeploymentError`` (with its output) if a component has exited by itself."""
        self._check_components_alive()

    def _check_components_alive(self) -> None:
        dead = [name for name, proc in self._processes.items() if proc.poll() is not None]
        if dead:
            name = dead[0]
            raise DeploymentError(
                f"airflow {name} exited with {self._processes[name].returncode}; its output ends:\n"
                f"{self.component_output(name)[-4000:]}"
            )

    # ------------------------------------------------------------------ REST API

    def api(self, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
        """Call the REST API; return the decoded JSON answer or raise ``DeploymentError``."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise APIError(f"{method} {path}: HTTP {error.code}: {detail}", error.code) from None
        except (urllib.error.URLError, OSError) as error:
            raise APIError(f"{method} {path}: {error}", None) from None

    def health(self) -> dict[str, str]:
        """Status of each part the API reports on (``metadatabase``, ``scheduler``, ...)."""
        answer = self.api("GET", self.release.health_path)
        return {part: str((info or {}).get("status")) for part, info in answer.items()}

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> float:
        """Wait until the API answers and every component is healthy; return the seconds it took."""
        started = time.monotonic()
        last = "no answer yet"
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            self._check_components_alive()
            try:
                status = self.health()
            except DeploymentError as error:
                last = str(error)
            else:
                last = str(status)
                if all(status.get(part) == "healthy" for part in self.release.healthy_parts):
                    return time.monotonic() - started
            if time.monotonic() - started >= timeout:
                break
            time.sleep(POLL_INTERVAL)
        raise DeploymentError(f"Airflow not healthy after {timeout:.0f}s: {last}")

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = DAG_PARSE_TIMEOUT) -> None:
        """Wait until the dag-processor has stored each DAG, then make sure it is not paused."""
        pending = set(dag_ids)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            self._check_components_alive()
            with _unless_permanent():
                for dag_id in sorted(pending):
                    if self._dag_is_stored(dag_id):
                        self.api(
                            "PATCH", f"{self.release.api_prefix}/dags/{_quote(dag_id)}", {"is_paused": False}
                        )
                        pending.discard(dag_id)
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
        if pending:
            errors = self._import_errors()
            raise DeploymentError(
                f"DAGs not parsed after {timeout:.0f}s: {sorted(pending)}; import errors: {errors}"
            )

    def _dag_is_stored(self, dag_id: str) -> bool:
        try:
            self.api("GET", f"{self.release.api_prefix}/dags/{_quote(dag_id)}/details")
        except APIError as error:
            if error.status == 404:
                return False
            raise
        return True

    def _import_errors(self) -> list[str]:
        answer = self.api("GET", f"{self.release.api_prefix}/importErrors")
        return [
            f"{item.get('filename')}: {item.get('stack_trace')}" for item in answer.get("import_errors", [])
        ]

    def trigger(self, dag_id: str, run_id: str | None = None, conf: Mapping[str, Any] | None = None) -> str:
        """Start a manual run of ``dag_id``; return its run id."""
        run_id = run_id or f"manual__{dag_id}__{time.time_ns()}"
        body = self.release.run_body(run_id, dict(conf or {}))
        for attempt in range(1, TRIGGER_ATTEMPTS + 1):
            try:
                self.api("POST", f"{self.release.api_prefix}/dags/{_quote(dag_id)}/dagRuns", body)
            except APIError as error:
                # An attempt whose answer was lost may have created the run already.
                if attempt > 1 and error.status == 409:
                    return run_id
                if not error.transient or attempt == TRIGGER_ATTEMPTS:
                    raise
                continue
            return run_id
        raise AssertionError("unreachable")

    def clear_task_instances(
        self, dag_id: str, run_id: str, task_ids: Sequence[str], *, only_failed: bool = False
    ) -> list[dict[str, Any]]:
        """Clear task instances of one run (as a user would: they run again); return those cleared."""
        body = {
            "dry_run": False,
            "dag_run_id": run_id,
            "task_ids": list(task_ids),
            "only_failed": only_failed,
            "reset_dag_runs": True,
        }
        # The clear writes many rows, and SQLite makes it wait for every other writer: it gets
        # time, and is sent again only after a database error (its transaction was rolled back;
        # after a timeout, a second clear could run the tasks once more).
        path = f"{self.release.api_prefix}/dags/{_quote(dag_id)}/clearTaskInstances"
        for attempt in range(1, CLEAR_ATTEMPTS + 1):
            try:
                answer = self.api("POST", path, body, timeout=CLEAR_TIMEOUT)
                return list(answer.get("task_instances", []))
            except APIError as error:
                if error.status != 500 or "Database error" not in str(error) or attempt == CLEAR_ATTEMPTS:
                    raise
                time.sleep(2.0)
        raise AssertionError("unreachable")

    def run_state(self, dag_id: str, run_id: str) -> str:
        answer = self.api("GET", f"{self.release.api_prefix}/dags/{_quote(dag_id)}/dagRuns/{_quote(run_id)}")
        return str(answer["state"])

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        """Every task instance of the run (mapped ones expanded), ordered by task and map index."""
        found: list[TaskInstance] = []
        path = f"{self.release.api_prefix}/dags/{_quote(dag_id)}/dagRuns/{_quote(run_id)}/taskInstances"
        # The API pages its answers; 10 000 pages is far beyond any run this harness drives.
        for page in range(10_000):
            answer = self.api("GET", f"{path}?limit={PAGE_SIZE}&offset={page * PAGE_SIZE}")
            items = answer.get("task_instances", [])
            found.extend(
                TaskInstance(
                    task_id=item["task_id"],
                    map_index=int(item["map_index"]),
                    state=item.get("state"),
                    try_number=int(item.get("try_number") or 0),
                )
                for item in items
            )
            if len(items) < PAGE_SIZE:
                break
        return sorted(found, key=lambda ti: (ti.task_id, ti.map_index))

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        on_progress: Callable[[RunProgress], None] | None = None,
    ) -> str:
        """Wait until the run is ``success`` or ``failed``; return that state."""
        started = time.monotonic()
        for _ in range(int(timeout / POLL_INTERVAL) + 1):
            self._check_components_alive()
            with _unless_permanent():
                state = self.run_state(dag_id, run_id)
                if on_progress is not None:
                    counts = Counter(str(ti.state) for ti in self.task_instances(dag_id, run_id))
                    on_progress(RunProgress(time.monotonic() - started, state, counts))
                if state in FINISHED_RUN_STATES:
                    return state
            if time.monotonic() - started >= timeout:
                break
            time.sleep(POLL_INTERVAL)
        raise DeploymentError(f"Run {run_id} of {dag_id} not finished after {timeout:.0f}s")

    # ------------------------------------------------------------------ logs

    def task_log_files(self, dag_id: str, run_id: str, ti: TaskInstance, try_number: int) -> list[Path]:
        """The worker's log file of one try, then the triggerer's (if the task deferred)."""
        folder = self.logs_folder / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={ti.task_id}"
        if ti.map_index >= 0:
            folder = folder / f"map_index={ti.map_index}"
        worker = folder / f"attempt={try_number}.log"
        triggers = sorted(folder.glob(f"attempt={try_number}.log.trigger.*.log"))
        return [path for path in (worker, *triggers) if path.exists()]

    def task_log(self, dag_id: str, run_id: str, ti: TaskInstance, try_number: int | None = None) -> TaskLog:
        """
        One try's log (default: the latest): the worker's and the trigger's lines interleaved
        by time, as Airflow's log reader shows them (the worker writes a job's last lines, which
        the trigger's event carries, after the trigger's).
        """
        files = []
        for path in self.task_log_files(dag_id, run_id, ti, try_number or ti.try_number):
            source = "trigger" if ".log.trigger." in path.name else "worker"
            lines = path.read_text(errors="replace").splitlines()
            files.append([parse_log_line(source, line) for line in lines if line.strip()])
        return TaskLog(interleaved(files))

    def state_mismatches(self) -> list[str]:
        """Scheduler lines reporting it failed a task whose executor said it had finished."""
        return [
            line for line in self.component_output("scheduler").splitlines() if STATE_MISMATCH_TEXT in line
        ]


@contextlib.contextmanager
def _unless_permanent() -> Iterator[None]:
    """Swallow a transient API failure: the polling loop around it asks again."""
    try:
        yield
    except APIError as error:
        if not error.transient:
            raise


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")
