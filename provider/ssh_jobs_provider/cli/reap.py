"""``airflow-ssh-jobs reap``: remove old directories of finished jobs (a dry run unless ``--delete``)."""

from __future__ import annotations

import sys
from typing import TextIO

from ssh_jobs_provider.cli.common import (
    CommandError,
    Remote,
    checked_base_dir,
    human_age,
    human_bytes,
    table,
)
from ssh_jobs_provider.cli.status import list_jobs
from ssh_jobs_provider.protocol.ops import (
    JobDirectory,
    build_reap_script,
    parse_age,
    parse_reap_output,
    reap_entries,
    select_reapable,
)


def report(
    chosen: list[JobDirectory], results: list[str] | None, now: int, out: TextIO | None = None
) -> None:
    """
    One line per chosen directory: what was (or, in a dry run, would be) done.

    :param results: the removal's answer per directory; ``None`` for a dry run
    :param now: the host's clock
    """
    out = out or sys.stdout
    rows = [["JOB", "STATE", "IDLE", "LOG", "ACTION"]]
    for index, directory in enumerate(chosen):
        action = "would remove" if results is None else results[index]
        idle = None if directory.active is None else now - directory.active
        rows.append(
            [directory.name, directory.state_text, human_age(idle), human_bytes(directory.log_size), action]
        )
    table(rows, out)


def run(
    conn_id: str,
    base_dir: str,
    older_than: str,
    delete: bool,
    host: str | None = None,
    out: TextIO | None = None,
) -> int:
    """
    The command. Exit status 0, or 1 when a removal failed.

    :param conn_id: the Airflow connection
    :param base_dir: the operator's ``remote_base_dir``
    :param older_than: the age, e.g. ``7d`` (since the last change of the directory, log or exit code)
    :param delete: remove; without it, only list what would be removed
    :param host: the host instead of the connection's
    """
    out = out or sys.stdout
    try:
        age = parse_age(older_than)
    except ValueError as error:
        raise CommandError(f"--older-than: {error}", 2) from None
    base = checked_base_dir(base_dir)
    with Remote(conn_id, host) as remote:
        listing = list_jobs(remote, base)
        chosen = select_reapable(listing.directories, listing.now, age)
        if not chosen:
            out.write(f"Nothing to reap under {base}: no finished job idle for more than {older_than}\n")
            return 0
        results = None
        if delete:
            entries = reap_entries(base, chosen)
            results = parse_reap_output(remote.run(build_reap_script(entries)), entries)
    report(chosen, results, listing.now, out)
    if results is None:
        out.write(f"Dry run: {len(chosen)} directories would be removed; add --delete to remove them\n")
        return 0
    removed = results.count("removed")
    out.write(f"Removed {removed} of {len(chosen)} directories under {base}\n")
    return 0 if all(state in ("removed", "absent", "running") for state in results) else 1
