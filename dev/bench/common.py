"""
What the driver scripts share. Runs under either implementation's virtualenv.

Only the standard library, Airflow and structlog are used here, so that the same driver code
drives this provider and ``apache-airflow-providers-ssh`` alike. Each implementation is
reached through its public API only: the operator class (``execute``/``execute_complete``
with a stand-in task instance) and the trigger rebuilt from ``serialize()``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: implementation name -> (operator module, class, distribution name)
IMPLEMENTATIONS: dict[str, tuple[str, str, str]] = {
    "ours": (
        "ssh_jobs_provider.operators.ssh_remote_job",
        "SSHRemoteJobOperator",
        "airflow-provider-ssh-jobs",
    ),
    "upstream": (
        "airflow.providers.ssh.operators.ssh_remote_job",
        "SSHRemoteJobOperator",
        "apache-airflow-providers-ssh",
    ),
}

CONN_ID = "bench_ssh"
DAG_ID = "bench_fanout"
TASK_ID = "remote_job"


def operator_class(impl: str) -> type:
    module_name, class_name, _ = IMPLEMENTATIONS[impl]
    return getattr(importlib.import_module(module_name), class_name)


def versions(impl: str) -> dict[str, str]:
    """Versions of what this driver runs with."""
    found: dict[str, str] = {"python": sys.version.split()[0]}
    for dist in (IMPLEMENTATIONS[impl][2], "apache-airflow", "asyncssh", "paramiko"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "missing"
    module = importlib.import_module(IMPLEMENTATIONS[impl][0])
    found["operator_file"] = str(getattr(module, "__file__", ""))
    return found


@dataclass
class StandInTaskInstance:
    """The task-instance fields both operators read; XCom pushes are kept."""

    run_id: str
    map_index: int
    dag_id: str = DAG_ID
    task_id: str = TASK_ID
    try_number: int = 1
    xcom: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        return self.xcom.get(kwargs.get("key", "ssh_remote_job"))

    def context(self) -> dict[str, Any]:
        return {"ti": self, "task_instance": self}


def job_command(index: int, seconds: float, deadline: int | None = None) -> str:
    """
    A job that writes a line, runs ``seconds``, writes a line half-way and one at the end.

    With ``deadline`` (epoch seconds) the job ends at that instant instead, so that jobs
    submitted at different times all end together. It is ONE simple command (``sh -c '...'``):
    apache-airflow-providers-ssh 7.0.1 appends its log redirection to the end of the command
    text, so with ``a; b`` or a multi-line command only the last part's output would reach
    the log, whatever the fan-out.
    """
    if seconds <= 0:
        return f'sh -c \'echo "job {index} start"; echo "job {index} end"\''
    if deadline is None:
        half = round(seconds / 2, 2)
        return (
            f'sh -c \'echo "job {index} start"; sleep {half}; echo "job {index} middle"; '
            f'sleep {half}; echo "job {index} end"\''
        )
    middle = int(deadline - seconds / 2)
    return (
        f'sh -c \'echo "job {index} start"; '
        f't=$(({middle} - $(date +%s))); [ "$t" -gt 0 ] && sleep "$t"; echo "job {index} middle"; '
        f't=$(({int(deadline)} - $(date +%s))); [ "$t" -gt 0 ] && sleep "$t"; echo "job {index} end"\''
    )


def launch_job_command(index: int, launch_file: str) -> str:
    """
    The job of the submit-modes scenario: it records its own start (``<index> <epoch>`` in
    ``launch_file``, so the host itself counts how often each job ran), then writes the lines
    of ``job_command(index, 0)``. One simple command, for the reason ``job_command`` gives.
    """
    return (
        f'sh -c \'echo "{index} $(date +%s.%N)" >> {launch_file}; echo "job {index} start"; '
        f'echo "job {index} end"\''
    )


def expected_lines(index: int, seconds: float) -> list[str]:
    if seconds <= 0:
        return [f"job {index} start", f"job {index} end"]
    return [f"job {index} start", f"job {index} middle", f"job {index} end"]


def line_job_command(index: int, deadline: int) -> str:
    """
    A job that writes ``job <index> line <k>`` (k = 0, 1, ...) once a second until
    ``deadline`` (epoch seconds), then ``job <index> end``: the job of the scaling scenario.

    ONE perl process for the whole job, forking nothing per line: thousands of these run at
    once on the benchmark machine, where a shell loop around ``sleep 1`` would fork a process
    per job per second. Time::HiRes (core perl) ends the last sleep at the deadline itself, so
    every job ends at the same instant and the end-to-event latency has an exact origin.
    Line 0 is written before the first deadline check: every job writes at least one line.
    One simple command, for the reason ``job_command`` gives.
    """
    loop = (
        f'for ($i = 0; ; $i++) {{ print "job {index} line $i\\n"; $t = {int(deadline)} - time; '
        "last if $t <= 0; sleep($t < 1 ? $t : 1) }"
    )
    return f"perl -MTime::HiRes=time,sleep -e '$| = 1; {loop} print \"job {index} end\\n\"'"


def line_sequence_ok(index: int, lines: list[str]) -> bool:
    """Whether ``lines`` are ``job <index> line 0``, ``line 1``, ... (no gap, no repeat), then the end line."""
    if len(lines) < 2 or lines[-1] != f"job {index} end":
        return False
    return lines[:-1] == [f"job {index} line {k}" for k in range(len(lines) - 1)]


# ------------------------------------------------------------------------------ logging

#: Lines logged at INFO by the trigger of task i: in the triggerer these go to that task's log.
TRIGGER_LINES: dict[int, list[str]] = {}
#: WARNING and above, per task (reconnects, retries, cleanup trouble).
WARNINGS: dict[int, list[str]] = {}
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "exception": 40, "critical": 50}


def _capture(logger: Any, method_name: str, event_dict: dict[str, Any]) -> Any:
    import structlog

    level = _LEVELS.get(str(event_dict.get("level", method_name)).lower(), 20)
    task = event_dict.get("bench_task")
    message = str(event_dict.get("event", ""))
    args = event_dict.get("positional_args")
    if args:
        with contextlib.suppress(Exception):
            message = message % tuple(args)
    if task is not None:
        if level == 20:
            TRIGGER_LINES.setdefault(int(task), []).append(message)
        elif level >= 30:
            WARNINGS.setdefault(int(task), []).append(message[:300])
    elif level >= 40:
        sys.stderr.write(f"[{method_name}] {message[:500]}\n")
    raise structlog.DropEvent


def configure_logging() -> None:
    """
    Same logging for both implementations: structured log lines are captured per task
    (bound with ``bench_task``, as the triggerer binds its trigger id) and nothing is printed;
    the standard-library loggers (paramiko, asyncssh) are held at WARNING for both.
    """
    import structlog

    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, _capture],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.ERROR)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("asyncssh", "paramiko", "paramiko.transport", "airflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


def bind_task(index: int) -> None:
    import structlog

    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(bench_task=index)


# ------------------------------------------------------------------------------ measurement


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu_seconds() -> float:
    """CPU time of every child process reaped so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def proc_status_kib(field_name: str, pid: int | str = "self") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), or 0."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def now() -> float:
    """CLOCK_MONOTONIC: comparable across the processes of one machine."""
    return time.monotonic()


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)


def short_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:400]
