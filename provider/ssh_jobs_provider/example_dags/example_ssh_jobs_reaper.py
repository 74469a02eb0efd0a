"""
Reap old job directories every day: directories of finished (or killed) jobs idle for more
than 7 days under the operators' ``remote_base_dir`` on the host of ``ssh_default``.

Jobs that were killed, timed out, or whose cleanup failed can leave their directory behind;
``airflow-ssh-jobs reap`` removes those, and never a directory whose job still runs, one that
is not the SSH user's, or a name that is not a job id. The second task prints what is left.
"""

from __future__ import annotations

import os

import pendulum

try:
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task  # type: ignore[attr-defined,no-redef,unused-ignore]

CONN_ID = "ssh_default"
BASE_DIR = os.environ.get("SSH_JOBS_EXAMPLE_BASE_DIR", "/tmp/airflow-ssh-jobs")


def airflow_ssh_jobs(*args: str) -> None:
    """Run ``airflow-ssh-jobs ARGS`` in the worker (its output goes to the task log)."""
    from ssh_jobs_provider.cli.main import main

    status = main(list(args))
    if status != 0:
        raise RuntimeError(f"airflow-ssh-jobs {args[0]} failed with exit status {status}")


with DAG(
    dag_id="example_ssh_jobs_reaper",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["ssh", "example", "operations"],
):

    @task
    def reap() -> None:
        # The same as: airflow-ssh-jobs reap --conn-id ssh_default --older-than 7d --delete
        airflow_ssh_jobs(
            "reap", "--conn-id", CONN_ID, "--base-dir", BASE_DIR, "--older-than", "7d", "--delete"
        )

    @task
    def status() -> None:
        airflow_ssh_jobs("status", "--conn-id", CONN_ID, "--base-dir", BASE_DIR)

    reap() >> status()
