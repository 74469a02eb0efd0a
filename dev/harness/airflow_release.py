"""
What a throwaway deployment (:mod:`harness.airflow_deploy`) does differently on Airflow 2.11.

Airflow 3 runs an API server (REST API v2, and the execution API the task processes call), a
scheduler, a dag-processor and a triggerer. Airflow 2.11 has a webserver instead (REST API v1,
the Flask app), parses DAGs inside the scheduler, and its task processes write to the metadata
database themselves. Its task logs are text lines (``[time] {file:line} LEVEL - message``), not
JSON. The harness reads the release of the interpreter it runs in: the one whose ``airflow``
command it starts.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

#: A task-log line of Airflow 2: ``[2026-12-06T13:10:00.123+0000] {file.py:12} INFO - message``.
TEXT_LOG_LINE = re.compile(r"^\[(?P<time>[^\]]+)\] \{(?P<where>[^}]*)\} (?P<level>[A-Z]+) - (?P<message>.*)$")

#: The Flask app's settings file: anonymous callers of the loopback-only REST API act as Admin.
WEBSERVER_CONFIG = """\
# Written by the test harness for a throwaway deployment on 127.0.0.1: no login.
from flask_appbuilder.const import AUTH_DB

AUTH_TYPE = AUTH_DB
AUTH_ROLE_PUBLIC = "Admin"
WTF_CSRF_ENABLED = False
"""


def installed_airflow() -> tuple[int, int]:
    """The ``(major, minor)`` of the Airflow installed next to this interpreter."""
    major, minor = importlib.metadata.version("apache-airflow").split(".")[:2]
    return int(major), int(minor)


@dataclass(frozen=True)
class Release:
    """The parts of a deployment that depend on the Airflow release."""

    major: int

    @property
    def components(self) -> tuple[str, ...]:
        if self.major >= 3:
            return ("api-server", "scheduler", "dag-processor", "triggerer")
        # 2.11: DAGs are parsed by the scheduler (no standalone dag-processor).
        return ("webserver", "scheduler", "triggerer")

    @property
    def web_component(self) -> str:
        return self.components[0]

    @property
    def api_prefix(self) -> str:
        return "/api/v2" if self.major >= 3 else "/api/v1"

    @property
    def health_path(self) -> str:
        return f"{self.api_prefix}/monitor/health" if self.major >= 3 else "/api/v1/health"

    @property
    def healthy_parts(self) -> tuple[str, ...]:
        if self.major >= 3:
            return ("metadatabase", "scheduler", "triggerer", "dag_processor")
        return ("metadatabase", "scheduler", "triggerer")

    def environment(self, host: str, port: int, session_secret: str) -> dict[str, str]:
        """Settings only this release reads (3.x's are in the deployment's own environment)."""
        if self.major >= 3:
            return {}
        return {
            "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": host,
            "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(port),
            "AIRFLOW__WEBSERVER__BASE_URL": f"http://{host}:{port}",
            "AIRFLOW__WEBSERVER__WORKERS": "1",
            "AIRFLOW__WEBSERVER__SECRET_KEY": session_secret,
            # No periodic restart of the gunicorn worker: needless CPU on 2 cores.
            "AIRFLOW__WEBSERVER__WORKER_REFRESH_BATCH_SIZE": "0",
            "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.default",
            # Airflow 2 refuses the LocalExecutor on SQLite unless told not to check (its own
            # tests' switch). Its writers then take turns on SQLite's lock, as Airflow 3's do.
            "_AIRFLOW__SKIP_DATABASE_EXECUTOR_COMPATIBILITY_CHECK": "1",
            "AIRFLOW__SCHEDULER__STANDALONE_DAG_PROCESSOR": "False",
            "AIRFLOW__WEBSERVER__EXPOSE_CONFIG": "False",
        }

    def prepare_home(self, home: Path) -> None:
        """Files the release reads from ``AIRFLOW_HOME`` before it starts."""
        if self.major < 3:
            (home / "webserver_config.py").write_text(WEBSERVER_CONFIG)

    def component_args(self, component: str, port: int, host: str) -> list[str]:
        """The ``airflow`` arguments that start ``component``."""
        if component == "webserver":
            return ["webserver", "--hostname", host, "--port", str(port), "--workers", "1"]
        args = [component]
        if component in ("scheduler", "triggerer"):
            args.append("--skip-serve-logs")
        return args

    def run_body(self, run_id: str, conf: dict[str, object]) -> dict[str, object]:
        """The body of a "trigger a DAG run" request."""
        if self.major >= 3:
            return {"dag_run_id": run_id, "logical_date": None, "conf": conf}
        # 2.11 sets the logical date to now when none is given (it may not be null).
        return {"dag_run_id": run_id, "conf": conf}


def parse_text_line(line: str) -> tuple[str, str, str] | None:
    """The ``(level, message, time)`` of an Airflow 2 task-log line, or ``None`` for any other line."""
    match = TEXT_LOG_LINE.match(line)
    if match is None:
        return None
    return match.group("level").lower(), match.group("message"), match.group("time")
