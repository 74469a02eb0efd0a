"""Inspect and stop the jobs the provider launched under one ``remote_base_dir`` on this machine.

The demo's and the tests' "remote" host is the local sshd, so a run's job directories
are local paths. Jobs run detached (``setsid``), outside any process tree we started, so
an interrupted run finds them through the ``pid`` file each job directory holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

#: Every job id the operator makes starts with this (see ``make_job_id``).
JOB_ID_PREFIX = "af_"


def job_dirs(base_dir: Path) -> list[Path]:
    """Job directories directly under ``base_dir`` (none if it does not exist)."""
    if not base_dir.is_dir():
        return []
    return sorted(
        path for path in base_dir.iterdir() if path.is_dir() and path.name.startswith(JOB_ID_PREFIX)
    )


def exit_code_of(job_dir: Path) -> int | None:
    """The job's exit code, or None while it has not ended (or never started)."""
    try:
        return int((job_dir / "exit_code").read_text().split()[0])
    except (FileNotFoundError, ValueError):
        return None


def _running_job_leader(job_dir: Path) -> int | None:
    """The pid of the job's wrapper if it is still running, verified by its command line."""
    try:
        pid = int((job_dir / "pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        leads_its_group = os.getpgid(pid) == pid
    except (FileNotFoundError, ProcessLookupError, ValueError, OSError):
        return None
    if pid <= 1 or not leads_its_group or f"{job_dir}/run.sh" not in cmdline:
        return None
    return pid


def kill_running_jobs(base_dir: Path) -> int:
    """SIGKILL the process group of every job still running under ``base_dir``; return how many."""
    killed = 0
    for job_dir in job_dirs(base_dir):
        pid = _running_job_leader(job_dir)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
            killed += 1
    return killed
