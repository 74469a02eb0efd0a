"""
What a refused submit tells the user: what was wrong, and what to change. Pure code.

Shared by both submit paths (the worker's, and the triggerer's batches), so that an error
reads the same whichever one met it.
"""

from __future__ import annotations

from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.submit import SubmitRefused

#: Said whenever a host did not run a script at all.
POSIX_HINT = "SSHRemoteJobOperator needs a POSIX host with /bin/sh; Windows hosts are not supported."


def refusal_message(paths: RemoteJobPaths, refused: SubmitRefused) -> str:
    """What a refused submit tells the user: what was wrong, and what to change."""
    nothing = "Nothing was run and nothing was left behind."
    if refused.code == "unsafe":
        return (
            f"Refusing remote_base_dir {paths.base_dir}: {refused.detail}. Every directory on the way to it must "
            "be owned by the SSH user or root and not writable by group or others unless sticky (as sshd's "
            "StrictModes), or other users could replace job files. Fix the owner or mode (e.g. chmod go-w), "
            f"or set remote_base_dir to a directory of the SSH user's, e.g. '/home/<user>/airflow-ssh-jobs'. {nothing}"
        )
    if refused.code == "foreign":
        return (
            f"Refusing to use the job directory {paths.job_dir}: {refused.detail}. This task instance did not "
            "create it (another user, or another Airflow deployment with the same DAG and run ids, may have). "
            f"Check who made it and remove it, or give each deployment its own remote_base_dir. {nothing}"
        )
    if refused.code == "nospace":
        return (
            f"Could not submit remote job {paths.job_id}: {refused.detail}. Free space there or set "
            f"remote_base_dir to another file system. {nothing}"
        )
    return (
        f"Could not submit remote job {paths.job_id}: {refused.detail}. Check that remote_base_dir is "
        f"writable by the SSH user. {nothing}"
    )
