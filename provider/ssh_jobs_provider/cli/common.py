"""What the commands share: reading the connection as the hooks do, connecting, and errors."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from ssh_jobs_provider.protocol.identity import validate_base_dir

if TYPE_CHECKING:
    from ssh_jobs_provider.hooks.ssh import SSHHook


class CommandError(Exception):
    """
    A failure to report in one line, without a traceback.

    :param message: what went wrong and what to change
    :param status: the exit status (2: bad input, nothing ran remotely)
    """

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def checked_base_dir(base_dir: str) -> str:
    """
    ``--base-dir`` normalised, as the operator's ``remote_base_dir`` is.

    :raises CommandError: (status 2) a base dir the protocol refuses, with its fix
    """
    try:
        return validate_base_dir(base_dir)
    except ValueError as error:
        raise CommandError(f"--base-dir: {error}", 2) from None


def connection_hook(conn_id: str, host: str | None = None, attempts: int = 2) -> SSHHook:
    """
    The worker's hook for connection ``conn_id`` (``host`` replacing its host), its settings
    resolved as the operator's are: Airflow's lookup (``AIRFLOW_CONN_*`` variables, secrets
    backends, the metadata database), the jump hosts, the SSH config and the host-key policy.

    :raises CommandError: (status 2) an unknown connection or invalid settings
    """
    from ssh_jobs_provider.hooks.ssh import SSHHook

    hook = SSHHook(ssh_conn_id=conn_id, remote_host=host or "", conn_retry_attempts=attempts)
    try:
        hook.settings  # noqa: B018  (read and checked here, before anything connects)
    except (TypeError, ValueError) as error:
        raise CommandError(f"Connection {conn_id!r}: {error}", 2) from None
    except Exception as error:
        if type(error).__name__ not in ("AirflowNotFoundException", "AirflowNotFound"):
            raise CommandError(f"Could not read connection {conn_id!r}: {error}", 2) from error
        variable = "AIRFLOW_CONN_" + conn_id.upper()
        raise CommandError(
            f"Connection {conn_id!r} or a jump host it names is not defined ({error}): create it with "
            f"`airflow connections add <id> --conn-type ssh --conn-host <host> --conn-login <user>` or set "
            f"{variable} (AIRFLOW_CONN_<ID> for a jump host), where this command runs.",
            2,
        ) from None
    return hook


class Remote:
    """
    One connection of the worker's hook (paramiko, refusals retried as the hook does), for
    protocol scripts.

    :param conn_id: the Airflow connection
    :param host: the host instead of the connection's
    """

    def __init__(self, conn_id: str, host: str | None = None) -> None:
        self.hook = connection_hook(conn_id, host)
        try:
            self.client = self.hook.get_conn()
        except Exception as error:
            raise CommandError(f"Could not connect to {self.hook.settings.address}: {error}") from error

    def run(self, script: str, timeout: float = 60.0) -> bytes:
        """Run a protocol script; its stdout."""
        status, stdout, stderr = self.hook.run_script(self.client, script, timeout)
        if status != 0 and not stdout:
            raise CommandError(f"The remote script failed (exit status {status}): {stderr[:300]!r}")
        return stdout

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def human_age(seconds: float | None) -> str:
    """``45s``, ``12m``, ``5h``, ``3d``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def human_bytes(size: float) -> str:
    """``512 B``, ``3.2 KiB``, ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def table(rows: list[list[str]], out: TextIO | None = None) -> None:
    """Print ``rows`` (the first is the header) as left-aligned columns."""
    out = out or sys.stdout
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
