"""Helpers of the end-to-end tests: a real sshd, where the examples are, log parsing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.sshd import SSHD_BINARY, SSHServer

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "provider" / "ssh_jobs_provider" / "example_dags"
#: What the operator logs once per submit: "Remote job <id> on <host>: <state> (pid <pid>)".
SUBMIT_LINE = re.compile(r"^Remote job (\S+) on \S+: \w+ \(pid \S+\)$")
#: What the operator logs when a repeated submit found the job already started.
REATTACH_TEXT = "re-attaching to it instead of launching a second one"


def start_sshd(base_dir: Path, **options: object) -> SSHServer:
    """A real sshd on 127.0.0.1; fails (never skips) when OpenSSH is missing."""
    if not SSHD_BINARY.exists():
        pytest.fail(
            f"{SSHD_BINARY} not found; the e2e tests need a real OpenSSH server "
            "(apt-get install -y openssh-server, or bash dev/setup-env.sh)",
            pytrace=False,
        )
    server = SSHServer(base_dir, **options)  # type: ignore[arg-type]
    server.start()
    return server


def submitted_job_ids(events: list[str]) -> list[str]:
    """Job ids of every submit one try's worker log reports."""
    return [match.group(1) for event in events if (match := SUBMIT_LINE.match(event))]
