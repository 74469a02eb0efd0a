"""Helpers of the end-to-end tests: a real sshd, where the examples are, log parsing, job counts."""

from __future__ import annotations

import heapq
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.airflow_deploy import AirflowDeployment, DeploymentError
from harness.sshd import SSHD_BINARY, SSHServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "provider" / "ssh_jobs_provider" / "example_dags"
#: What the operator logs once per submit: "Remote job <id> on <host>: <state> (pid <pid>)".
SUBMIT_LINE = re.compile(r"^Remote job (\S+) on \S+: \w+ \(pid \S+\)$")
#: What the operator logs when a repeated submit found the job already started.
REATTACH_TEXT = "re-attaching to it instead of launching a second one"
#: What Airflow logs in a resumed try that its scheduler failed before the try could run (the
#: scheduler race): such a try never writes what the trigger's event carried.
STOPPED_BY_THE_SCHEDULER = "Server indicated the task shouldn't be running anymore"


def start_sshd(base_dir: Path, **options: object) -> SSHServer:
    """A real sshd on 127.0.0.1; fails (never skips) when OpenSSH is missing."""
    if not SSHD_BINARY.exists():
        pytest.fail(
            f"{SSHD_BINARY} not found; the e2e tests need a real OpenSSH server "
            "(apt-get install -y openssh-server, or bash dev/setup-env.sh)",
            pytrace=False,
        )
    server = SSHServer(base_dir, **options)  # type: ignore[arg-type]
    server.start()
    return server


def submitted_job_ids(events: list[str]) -> list[str]:
    """Job ids of every submit one try's worker log reports."""
    return [match.group(1) for event in events if (match := SUBMIT_LINE.match(event))]


@dataclass(frozen=True)
class TimedLine:
    """One task-log line with the time it was written and the file it is in."""

    timestamp: datetime
    event: str
    path: Path
    #: the line as written (JSON, with exception details if any)
    raw: str


def read_timed_lines(path: Path) -> list[TimedLine]:
    """The lines of one task-log file (JSON lines) that carry a timestamp, in file order."""
    found: list[TimedLine] = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("timestamp"), str):
            stamp = datetime.fromisoformat(entry["timestamp"])
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=timezone.utc)
            found.append(TimedLine(stamp, str(entry.get("event", "")), path, raw))
    return found


def merged_by_time(paths: list[Path]) -> list[TimedLine]:
    """The lines of several log files of one try (worker, triggerers) in the order they were written.

    Each file keeps its own order; files are interleaved by timestamp.
    """
    return list(heapq.merge(*(read_timed_lines(path) for path in paths), key=lambda line: line.timestamp))


def launch_counts(launches: Path) -> Counter[str]:
    """How many remote jobs wrote each tag into a ``launches`` file (one line per job start)."""
    if not launches.exists():
        return Counter()
    return Counter(line.strip() for line in launches.read_text().splitlines() if line.strip())


#: Airflow's HA triggerer with a fast failover: a heartbeat every 2 s, a triggerer silent for
#: TRIGGERER_DEAD_AFTER seconds counted as dead (an integer: Airflow reads it at import).
TRIGGERER_DEAD_AFTER = 10
HA_ENV = {
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_DEAD_AFTER),
}


def wait_until(what: str, timeout: float, check: Callable[[], bool], deployment: AirflowDeployment) -> float:
    """Poll ``check()`` each second until it is true; return the seconds it took."""
    started = time.monotonic()
    for _ in range(int(timeout) + 1):
        deployment.assert_alive()
        if check():
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            break
        time.sleep(1.0)
    raise DeploymentError(f"{what}: not reached within {timeout:.0f}s")
