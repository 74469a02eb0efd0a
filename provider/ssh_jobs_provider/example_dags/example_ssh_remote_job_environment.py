"""
A templated ``.sh`` file with ``environment``: values reach the script literally.

``command`` ends in ``.sh``, so Airflow renders the file (Jinja) before it is sent; the
environment values are passed byte for byte, never expanded by a remote shell.
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
    dag_id="example_ssh_remote_job_environment",
    schedule=None,
    catchup=False,
    template_searchpath=[os.path.join(os.path.dirname(__file__), "scripts")],
    tags=["example", "ssh"],
) as dag:
    # [START howto_environment]
    SSHRemoteJobOperator(
        task_id="report",
        ssh_conn_id="ssh_default",
        command="remote_report.sh",
        environment={
            "REPORT_TITLE": "Nightly report for {{ ds }}",
            "GREETING": "it's $HOME, not expanded",
        },
        remote_base_dir=BASE_DIR,
        cleanup="on_success",
        poll_interval=2,
    )
    # [END howto_environment]
