"""
Skip instead of fail: a job that finds nothing to do exits with a chosen code.

An exit code listed in ``skip_on_exit_code`` marks the task *skipped*; any other
non-zero code fails it with the code in the message.
"""

from __future__ import annotations

import os

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.11
    from airflow import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

BASE_DIR = os.environ.get("SSH_JOBS_EXAMPLE_BASE_DIR", "/tmp/airflow-ssh-jobs")

with DAG(
    dag_id="example_ssh_remote_job_skip",
    schedule=None,
    catchup=False,
    tags=["example", "ssh"],
) as dag:
    # [START howto_skip]
    SSHRemoteJobOperator(
        task_id="maybe_process",
        ssh_conn_id="ssh_default",
        command="if [ ! -e /tmp/incoming.flag ]; then echo 'nothing to do'; exit 99; fi\necho processing\n",
        skip_on_exit_code=99,
        remote_base_dir=BASE_DIR,
        cleanup="always",
        poll_interval=2,
    )
    # [END howto_skip]
