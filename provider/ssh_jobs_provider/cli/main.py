"""The ``airflow-ssh-jobs`` command line: arguments, and one-line errors instead of tracebacks."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ssh_jobs_provider.cli.common import CommandError
from ssh_jobs_provider.protocol.identity import DEFAULT_BASE_DIR


def parser() -> argparse.ArgumentParser:
    """The argument parser of the command and its sub-commands."""
    top = argparse.ArgumentParser(
        prog="airflow-ssh-jobs",
        description="Check, list and clean up a host that runs SSH remote jobs for Airflow.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("--conn-id", required=True, help="the Airflow connection of type ssh")
        sub.add_argument("--host", help="the host to use instead of the connection's")
        sub.add_argument(
            "--base-dir",
            default=DEFAULT_BASE_DIR,
            help=f"the operators' remote_base_dir (default {DEFAULT_BASE_DIR})",
        )
        return sub

    doctor = command("doctor", "Check that the host is ready, and measure what sizing needs.")
    doctor.add_argument("--fan-out", type=int, metavar="N", help="recommend settings for N jobs at a time")
    status = command("status", "List the job directories with their state, age and log size.")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reap = command(
        "reap", "Remove directories of finished jobs older than an age (a dry run unless --delete)."
    )
    reap.add_argument(
        "--older-than", required=True, metavar="AGE", help="e.g. 7d, 12h, 30m (since last activity)"
    )
    reap.add_argument("--delete", action="store_true", help="remove them; without it, only list them")
    return top


def keep_stdout_for_the_report() -> None:
    """
    Move the log handlers that write to standard output over to standard error, once Airflow
    has set up its logging: the commands print their report on standard output, and programs
    read it (``status --json``). Airflow 2.11's console handler writes to standard output;
    Airflow 3 logs to standard error already. Level, format and filters (the secrets masker)
    are kept.
    """
    import ssh_jobs_provider._compat  # noqa: F401  (importing Airflow sets up its logging)

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            replacement = logging.StreamHandler(sys.stderr)
            replacement.setLevel(handler.level)
            replacement.setFormatter(handler.formatter)
            for log_filter in handler.filters:
                replacement.addFilter(log_filter)
            root.removeHandler(handler)
            root.addHandler(replacement)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command; its exit status (2 for bad input, before anything ran remotely).

    :param argv: the arguments (default: ``sys.argv[1:]``)
    """
    args = parser().parse_args(argv)
    # The commands report what matters themselves; the libraries' chatter would only bury it
    # (a refused channel is what the MaxSessions check looks for).
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    keep_stdout_for_the_report()
    try:
        if args.command == "doctor":
            from ssh_jobs_provider.cli import doctor

            return doctor.run(args.conn_id, args.host, args.fan_out, args.base_dir)
        if args.command == "status":
            from ssh_jobs_provider.cli import status

            return status.run(args.conn_id, args.base_dir, args.json, args.host)
        from ssh_jobs_provider.cli import reap

        return reap.run(args.conn_id, args.base_dir, args.older_than, args.delete, args.host)
    except CommandError as error:
        sys.stderr.write(f"airflow-ssh-jobs {args.command}: {error}\n")
        return error.status
    except KeyboardInterrupt:
        return 130
