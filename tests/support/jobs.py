"""
Operators, triggers and jobs as every test builds them, and the one way to wait for a condition.

The defaults are the tests' own (quick polls, short timeouts); each can be overridden by the
keyword of the same name, which goes to the operator or trigger unchanged.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.submit import build_submit_script, parse_submit_output
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger

#: The token of every job submitted by :func:`submit_jobs`: :func:`trigger_for` checks it.
TOKEN = new_job_token()
#: Seconds between polls in tests: quick, so that a job of a few lines ends in about a second.
FAST_POLL = 0.2


def make_operator(
    conn_id: str = "ssh_default", base_dir: str | None = None, command: str = "echo hi", **kwargs: Any
) -> SSHRemoteJobOperator:
    """An operator of task ``remote_job`` polling every :data:`FAST_POLL` seconds unless told."""
    kwargs.setdefault("task_id", "remote_job")
    kwargs.setdefault("poll_interval", FAST_POLL)
    return SSHRemoteJobOperator(ssh_conn_id=conn_id, command=command, remote_base_dir=base_dir, **kwargs)


def trigger_for(
    conn_id: str,
    paths: RemoteJobPaths,
    *,
    poll_interval: float = FAST_POLL,
    command_timeout: float = 10.0,
    job_token: str = TOKEN,
    **kwargs: Any,
) -> SSHRemoteJobTrigger:
    """A trigger watching the job at ``paths`` as the operator would defer to it."""
    return SSHRemoteJobTrigger(
        ssh_conn_id=conn_id,
        remote_host=None,
        job_id=paths.job_id,
        job_dir=paths.job_dir,
        log_file=paths.log_file,
        exit_code_file=paths.exit_code_file,
        poll_interval=poll_interval,
        command_timeout=command_timeout,
        job_token=job_token,
        **kwargs,
    )


def submit_jobs(
    conn_id: str, base_dir: str, commands: Sequence[str], job_ids: Sequence[str] | None = None
) -> list[RemoteJobPaths]:
    """
    Start every command as a job (ids ``job000``, ``job001``, ... unless given) over one
    connection of the sync hook, with :data:`TOKEN`. The operator's own submit is tested elsewhere.
    """
    ids = list(job_ids) if job_ids is not None else [f"job{index:03d}" for index in range(len(commands))]
    assert len(ids) == len(commands)
    hook = SSHHook(ssh_conn_id=conn_id)
    all_paths = []
    with hook.get_conn() as client:
        for job_id, command in zip(ids, commands, strict=True):
            paths = RemoteJobPaths(job_id=job_id, base_dir=base_dir)
            _, stdout, _ = hook.run_script(client, build_submit_script(paths, command, {}, TOKEN), timeout=30)
            assert parse_submit_output(stdout).pid is not None
            all_paths.append(paths)
    return all_paths


def start_job(conn_id: str, base_dir: str, command: str, job_id: str = "job") -> RemoteJobPaths:
    """Start one job (see :func:`submit_jobs`)."""
    (paths,) = submit_jobs(conn_id, base_dir, [command], [job_id])
    return paths


def stop_jobs_under(root: Path) -> None:
    """SIGKILL the process group of every wrapper launched under ``root`` (its pid file names it)."""
    for pid_file in root.rglob("pid"):
        text = pid_file.read_text().strip() if pid_file.is_file() else ""
        if text.isdigit() and int(text) > 1:
            try:
                os.killpg(int(text), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
