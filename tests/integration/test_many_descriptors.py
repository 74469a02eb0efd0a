"""
A worker process with more than 1024 open files submits and kills a job, against a real sshd.

``select.select()`` refuses descriptors above ``FD_SETSIZE`` (1024); a busy worker (many
connections, log files, pipes) has such descriptors, and every new socket or pipe it opens gets
one. The worker's hook must wait on its channels some other way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ssh_jobs_provider
from support.waiting import wait_until

pytestmark = pytest.mark.integration

#: Descriptors the worker holds open before it connects: its next ones are all above 1024.
HELD_DESCRIPTORS = 1100
#: Seconds the worker process may take (Airflow's import alone takes several on a busy machine).
WORKER_TIMEOUT = 180

WORKER = """
import json, os, resource, sys

held = int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
wanted = held + 200
if soft < wanted:
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
descriptors = [os.open(os.devnull, os.O_RDONLY) for _ in range(held)]
probe = os.open(os.devnull, os.O_RDONLY)
os.close(probe)

from ssh_jobs_provider.operators.ssh_remote_job import XCOM_KEY
from support.jobs import make_operator
from support.runner import StandInTaskInstance, submit

op = make_operator(sys.argv[1], sys.argv[2], "sleep 300 & sleep 299; wait")
ti = StandInTaskInstance()
submit(op, ti)
job = ti.xcom[XCOM_KEY]
print(json.dumps({"next_descriptor": probe, "pid_file": job["pid_file"], "exit_code_file": job["exit_code_file"]}), flush=True)
op.on_kill()
"""


def test_a_worker_with_more_than_1024_open_files_submits_and_kills_a_job(
    ssh_conn: str, remote_base_dir: str
) -> None:
    tests_dir = Path(__file__).resolve().parents[1]
    path = [
        str(Path(ssh_jobs_provider.__file__).resolve().parents[1]),  # the provider these tests import
        str(tests_dir),
        str(tests_dir.parent / "dev"),
        os.environ.get("PYTHONPATH", ""),
    ]
    worker = subprocess.run(
        [sys.executable, "-c", WORKER, ssh_conn, remote_base_dir, str(HELD_DESCRIPTORS)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)},
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT,
    )
    reports = [line for line in worker.stdout.splitlines() if line.startswith("{")]
    job = json.loads(reports[-1]) if reports else None
    try:
        assert worker.returncode == 0, f"the worker failed:\n{worker.stderr[-3000:]}"
        assert job is not None and job["next_descriptor"] > 1024, job
        # The kill ended the job: the wrapper recorded the SIGTERM and no process is left.
        exit_code_file = Path(job["exit_code_file"])
        wait_until(exit_code_file.exists, what=f"{exit_code_file} after the kill")
        assert exit_code_file.read_text().split()[0] == "143"
        pid = int(Path(job["pid_file"]).read_text())
        wait_until(lambda: not _group_alive(pid), what=f"the end of process group {pid}")
    finally:
        # Whatever the worker left running, also when it failed before it could report the job.
        for pid_file in Path(remote_base_dir).glob("*/pid"):
            _kill_group(int(pid_file.read_text()))


def _group_alive(pgid: int) -> bool:
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    # Zombies are already dead; they only wait for their parent to reap them.
    return any(not state.startswith("Z") for state in out.split())


def _kill_group(pgid: int) -> None:
    """Stop a job the worker could not stop (it runs as this user, in a session of its own)."""
    try:
        os.killpg(pgid, 9)
    except OSError:  # already gone
        pass
