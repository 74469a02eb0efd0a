"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from ssh_jobs_provider import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-ssh-jobs",
        "name": "SSH remote jobs",
        "description": "Run long jobs detached on remote hosts over SSH and watch them from the triggerer.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "SSH remote jobs",
                "external-doc-url": "https://www.openssh.com/",
                "tags": ["protocol"],
            }
        ],
        "operators": [
            {
                "integration-name": "SSH remote jobs",
                "python-modules": ["ssh_jobs_provider.operators.ssh_remote_job"],
            }
        ],
        "hooks": [
            {
                "integration-name": "SSH remote jobs",
                "python-modules": ["ssh_jobs_provider.hooks.ssh"],
            }
        ],
        "connection-types": [
            {"hook-class-name": "ssh_jobs_provider.hooks.ssh.SSHHook", "connection-type": "ssh"},
        ],
        "triggers": [
            {
                "integration-name": "SSH remote jobs",
                "python-modules": ["ssh_jobs_provider.triggers.ssh_remote_job"],
            }
        ],
    }
