"""``airflow-ssh-jobs status``: the job directories under a base dir, one line each."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ssh_jobs_provider.cli.common import (
    CommandError,
    Remote,
    checked_base_dir,
    human_age,
    human_bytes,
    table,
)
from ssh_jobs_provider.protocol.answers import RemoteJobProtocolError
from ssh_jobs_provider.protocol.ops import JobDirectory, Listing, build_listing_script, parse_listing


def list_jobs(remote: Remote, base_dir: str) -> Listing:
    """Run the ONE listing script over ``remote``."""
    try:
        return parse_listing(remote.run(build_listing_script(base_dir)))
    except RemoteJobProtocolError as error:
        raise CommandError(f"Could not list {base_dir}: {error}") from None


def as_record(directory: JobDirectory, now: int) -> dict[str, Any]:
    """
    One directory for ``--json`` (no token).

    :param now: the host's clock
    """
    return {
        "job_id": directory.name,
        "state": directory.state.value,
        "exit_code": directory.exit_code,
        "pid": directory.pid,
        "age_seconds": None if directory.created is None else now - directory.created,
        "idle_seconds": None if directory.active is None else now - directory.active,
        "log_bytes": directory.log_size,
    }


def render(listing: Listing, base_dir: str, as_json: bool, out: TextIO | None = None) -> None:
    """
    Print the listing: a table, or one JSON document.

    :param base_dir: the directory listed, for the heading
    :param as_json: print JSON instead of a table
    """
    out = out or sys.stdout
    records = [as_record(d, listing.now) for d in listing.directories]
    if as_json:
        json.dump({"base_dir": base_dir, "host_time": listing.now, "jobs": records}, out, indent=2)
        out.write("\n")
        return
    if not records:
        out.write(f"No job directories under {base_dir}\n")
        return
    rows = [["JOB", "STATE", "AGE", "IDLE", "LOG"]]
    for directory, record in zip(listing.directories, records, strict=True):
        rows.append(
            [
                directory.name,
                directory.state_text,
                human_age(record["age_seconds"]),
                human_age(record["idle_seconds"]),
                human_bytes(directory.log_size),
            ]
        )
    table(rows, out)


def run(conn_id: str, base_dir: str, as_json: bool, host: str | None = None) -> int:
    """
    The command: list, print, exit status 0.

    :param conn_id: the Airflow connection
    :param base_dir: the operator's ``remote_base_dir``
    :param as_json: print JSON instead of a table
    :param host: the host instead of the connection's
    """
    base = checked_base_dir(base_dir)
    with Remote(conn_id, host) as remote:
        listing = list_jobs(remote, base)
    render(listing, base, as_json)
    return 0
