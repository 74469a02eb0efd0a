"""
Fan out remote jobs over one host with ``.expand()``.

Each mapped task submits its command detached on the host, defers, and is watched from
the triggerer; ``cleanup="always"`` removes each job directory once its log has been read.
``max_active_tis_per_dag`` bounds how many submits reach the host's sshd at once. With
``submit_from="triggerer"`` the workers open no SSH connection: the triggerer submits every
job over the one connection it shares for the host, so the whole fan-out is one login. With
``SSH_JOBS_EXAMPLE_SCHEDULER=slurm`` the host is a cluster's login node: each job is queued with
``sbatch`` and watched through one ``squeue`` per tick (see the HPC clusters page).
"""

from __future__ import annotations

import os

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.11
    from airflow import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

FAN_OUT = int(os.environ.get("SSH_JOBS_EXAMPLE_FAN_OUT", "50"))
BASE_DIR = os.environ.get("SSH_JOBS_EXAMPLE_BASE_DIR", "/tmp/airflow-ssh-jobs")
SUBMIT_FROM = os.environ.get("SSH_JOBS_EXAMPLE_SUBMIT_FROM", "worker")
SCHEDULER = os.environ.get("SSH_JOBS_EXAMPLE_SCHEDULER") or None

with DAG(
    dag_id="example_ssh_remote_job_fanout",
    schedule=None,
    catchup=False,
    tags=["example", "ssh"],
) as dag:
    # [START howto_fanout]
    SSHRemoteJobOperator.partial(
        task_id="shard",
        ssh_conn_id="ssh_default",
        remote_base_dir=BASE_DIR,
        cleanup="always",
        poll_interval=2,
        max_active_tis_per_dag=64,
        submit_from=SUBMIT_FROM,
        scheduler=SCHEDULER,
        scheduler_options={"time": "10"} if SCHEDULER == "slurm" else None,
    ).expand(
        command=[
            f"echo 'shard {i} starting on' $(hostname)\nsleep 3\necho 'shard {i} done'\n"
            for i in range(FAN_OUT)
        ],
    )
    # [END howto_fanout]
