"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from ssh_jobs_provider import __version__

#: The upstream provider: when it is installed, the ``ssh`` connection type is its own.
UPSTREAM_DISTRIBUTION = "apache-airflow-providers-ssh"

_SSH_CONNECTION_TYPE: dict[str, Any] = {
    "hook-class-name": "ssh_jobs_provider.hooks.ssh.SSHHook",
    "hook-name": "SSH",
    "connection-type": "ssh",
    "ui-field-behaviour": {
        "hidden-fields": ["schema"],
        "relabeling": {"login": "Username"},
        "placeholders": {
            "host": "host name, address, or an alias of the SSH config file",
            "port": "22",
            "extra": '{"key_file": "/opt/airflow/ssh/id_ed25519", "proxy_jump_conn_id": "bastion"}',
        },
    },
}


def upstream_ssh_installed() -> bool:
    """Whether apache-airflow-providers-ssh is installed next to this package."""
    try:
        importlib.metadata.distribution(UPSTREAM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def connection_types() -> list[dict[str, Any]]:
    """
    The connection types this package registers: ``ssh``, unless upstream's provider is installed.

    Both packages read the same ``ssh`` connections. Registering the type twice would make
    Airflow warn and give it to whichever package it found first; during a migration,
    upstream's hook must keep backing the UI, ``conn.get_hook()`` and its own operators.
    """
    return [] if upstream_ssh_installed() else [dict(_SSH_CONNECTION_TYPE)]


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
        "connection-types": connection_types(),
        "triggers": [
            {
                "integration-name": "SSH remote jobs",
                "python-modules": ["ssh_jobs_provider.triggers.ssh_remote_job"],
            }
        ],
    }
