"""
``airflow-ssh-jobs doctor``: is this host ready for remote jobs, and how should it be sized?

Two connections in all, made as the worker's hook makes them (the same settings, host-key
rules and library): the first is timed (TCP connect, key exchange, authentication), carries
five re-keys and five round trips for the medians, the look at the host and the clock; the
second opens channels until the server refuses one, which is its ``MaxSessions``. Each check
is a row of one table; a failed one says what to change, and makes the exit status 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import paramiko

from ssh_jobs_provider.cli import advice
from ssh_jobs_provider.cli.common import CommandError, checked_base_dir, connection_hook, human_bytes, table
from ssh_jobs_provider.hooks._paramiko import ConnectTiming
from ssh_jobs_provider.hooks.connection_settings import SSHConnectionSettings
from ssh_jobs_provider.protocol.doctor import CLOCK_SCRIPT, build_host_probe, parse_clock, parse_host_probe

if TYPE_CHECKING:
    from ssh_jobs_provider.hooks.ssh import SSHHook

#: Channels opened at most when measuring MaxSessions.
MAX_CHANNELS = 32
#: Samples behind each median.
SAMPLES = 5
#: Seconds any one remote step may take; the whole run stays well inside 30 s.
STEP_TIMEOUT = 8.0


@dataclass
class Report:
    """The table being built: rows of (status, check, result), and whether any check failed."""

    rows: list[list[str]] = field(default_factory=list)
    failed: bool = False

    def add(self, status: str, check: str, result: str, fix: str = "") -> None:
        """
        One row; ``fix`` (what to change) goes on its own line below it.

        :param status: ``ok``, ``warn``, ``FAIL`` or ``info``
        """
        self.rows.append([status, check, result])
        if fix:
            self.rows.append(["", "", f"-> {fix}"])
        self.failed = self.failed or status == "FAIL"


@dataclass
class Connected:
    """One connection and what its connect took, in seconds."""

    client: paramiko.SSHClient
    tcp: float
    kex: float
    auth: float

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        assert transport is not None
        return transport


def timed_connect(hook: SSHHook, settings: SSHConnectionSettings) -> Connected:
    """
    ONE connect through ``hook``, as the operator's are made (jump hosts, proxy command, host-key
    policy), timed in parts.

    :raises SSHAuthenticationError: credentials refused (and host-key and connect errors, as the hooks raise them)
    """
    client = hook.connect_with(settings)
    timing = getattr(client, "timing", None) or ConnectTiming()
    return Connected(client, timing.stream, timing.kex, timing.auth)


def count_sessions(transport: paramiko.Transport, limit: int = MAX_CHANNELS) -> int:
    """Open session channels until the server refuses one (or ``limit`` are open); close them all."""
    channels: list[paramiko.Channel] = []
    try:
        while len(channels) < limit:
            try:
                channels.append(transport.open_session(timeout=STEP_TIMEOUT))
            except paramiko.ChannelException:
                break
    finally:
        for channel in channels:
            channel.close()
    return len(channels)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action()`` took."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def host_key_status(
    settings: SSHConnectionSettings, transport: paramiko.Transport
) -> tuple[str, str, str, str]:
    """``(status, check, result, fix)`` of the host-key row."""
    key = transport.get_remote_server_key()
    shown = f"{key.get_name()} SHA256:{key.fingerprint.split(':', 1)[-1]}"
    if settings.no_host_key_check or settings.allow_host_key_change:
        return "warn", "host key", f"{shown}, NOT checked", "pin it: set the connection extra 'host_key'"
    how = "pinned by the 'host_key' extra" if settings.host_key else "found in known_hosts"
    return "ok", "host key", f"{shown}, {how}", ""


def check_connection(
    report: Report, first: Connected, second: Connected | None, settings: SSHConnectionSettings
) -> float:
    """Rows for the connect times, the re-keys and the round trips; returns the handshake p50."""
    transport = first.transport
    round_trips = [
        timed(lambda: transport.global_request("keepalive@openssh.com", wait=True)) for _ in range(SAMPLES)
    ]
    rekeys = [timed(transport.renegotiate_keys) for _ in range(SAMPLES - 1)]
    kex = advice.median([first.kex, *rekeys])
    connects = [first] + ([second] if second else [])
    handshake = advice.median([c.kex + c.auth for c in connects])
    # Through a jump host the stream is ready only after the jump host's own login.
    via = (
        f" via {settings.proxy_jump.address}"
        if settings.proxy_jump
        else " via proxy command"
        if settings.proxy_command
        else ""
    )
    report.add(
        "ok",
        "tcp connect" + via,
        " / ".join(f"{c.tcp * 1000:.1f} ms" for c in connects)
        + f"; round trip p50 of {SAMPLES}: {advice.median(round_trips) * 1000:.1f} ms",
    )
    report.add(
        "ok" if handshake < 2 else "warn",
        "handshake",
        f"key exchange p50 of {SAMPLES}: {kex * 1000:.1f} ms; with authentication: "
        + " / ".join(f"{(c.kex + c.auth) * 1000:.1f} ms" for c in connects),
        "" if handshake < 2 else "a slow handshake holds a MaxStartups place longer: check the host's load",
    )
    return handshake


def check_host(report: Report, probe: dict[str, Any], base_dir: str) -> None:
    """Rows for the tools, the base dir and its space."""
    required, optional = advice.missing_tools(probe["tools"])
    if required:
        report.add("FAIL", "remote tools", "missing: " + ", ".join(required), "install them on the host")
    else:
        report.add("ok", "remote tools", f"all {len(advice.REQUIRED_TOOLS)} required found")
    report.add(
        "ok" if not optional else "info",
        "optional tools",
        "missing: " + "; ".join(optional) if optional else "all found",
    )
    report.add("info", "poll interpreter", f"{probe['poll']} (what 'auto' picks on this host)")
    base = probe["base"]
    where = (
        base_dir
        if base.get("exists") == "1"
        else f"{base_dir} (missing; created by the first submit in {base.get('dir')})"
    )
    if base.get("trusted") != "1":
        report.add(
            "FAIL", "remote_base_dir", f"{where}: {base.get('why', 'cannot be examined')}",
            "submits are refused: make every directory on the way owned by the SSH user or root, "
            "and not writable by others (or sticky)",
        )  # fmt: skip
    elif base.get("writable") != "1":
        report.add(
            "FAIL", "remote_base_dir", f"{where}: not writable by the SSH user",
            f"make {base.get('dir')} writable by the SSH user, or set remote_base_dir to a directory that is",
        )  # fmt: skip
    else:
        report.add("ok", "remote_base_dir", f"{where}: writable, passes the submit's checks")
    if base.get("exec") == "1":
        report.add("ok", "base dir exec", f"files in {base.get('dir')} can be executed")
    elif base.get("exec") == "0":
        # Only a warning: the wrapper starts a #! line's interpreter itself and never needs
        # to execute a file of the job directory; a command of the user's may want to.
        report.add(
            "warn", "base dir exec",
            f"files in {base.get('dir')} cannot be executed (mounted noexec?): jobs run all the same, "
            "the wrapper starts each #! interpreter itself",
            "only a command that executes files it puts in its job directory (or its own $0) needs "
            "remote_base_dir on another file system",
        )  # fmt: skip
    if base.get("left") == "1":
        report.add("FAIL", "doctor clean-up", f"could not remove its probe directory in {base.get('dir')}")
    kib = base.get("kib", "")
    if kib.isdigit():
        free = int(kib) * 1024
        low = free < 1024**3
        report.add(
            "warn" if low else "ok",
            "free space",
            human_bytes(free),
            "job logs fill it: free space" if low else "",
        )
    else:
        report.add("warn", "free space", "unknown (df gave no answer)")


def clock_offset(hook: SSHHook, client: paramiko.SSHClient) -> tuple[float, float]:
    """``(offset, uncertainty)`` in seconds of the host's clock against this machine's."""
    before = time.time()
    _, stdout, _ = hook.run_script(client, CLOCK_SCRIPT, STEP_TIMEOUT)
    after = time.time()
    remote, resolution = parse_clock(stdout)
    return remote - (before + after) / 2, (after - before) / 2 + resolution


def run(
    conn_id: str, host: str | None, fan_out: int | None, base_dir: str, out: TextIO | None = None,
    progress: TextIO | None = None,
) -> int:  # fmt: skip
    """
    The command: the table, then the recommendation; exit status 1 when a check failed.

    :param conn_id: the Airflow connection
    :param host: the host instead of the connection's
    :param fan_out: N, for a recommendation for a fan-out of N jobs
    :param base_dir: the operator's ``remote_base_dir``
    :param progress: where the progress line goes
    """
    out = out or sys.stdout
    progress = progress or sys.stderr
    if fan_out is not None and fan_out < 1:
        raise CommandError("--fan-out must be a number of jobs, at least 1", 2)
    base = checked_base_dir(base_dir)
    hook = connection_hook(conn_id, host)
    settings = hook.settings
    report = Report()

    def step(text: str) -> None:
        progress.write(f"\r\033[Kdoctor {settings.address}: {text}")
        progress.flush()

    step("connecting")
    try:
        first = timed_connect(hook, settings)
    except Exception as error:
        progress.write("\n")
        report.add(
            "FAIL", "connect", f"{type(error).__name__}: {error}", "fix the connection as the message says"
        )
        table([["STATUS", "CHECK", "RESULT"], *report.rows], out)
        return 1
    second = None
    try:
        transport = first.transport
        report.add("ok", "server", f"{transport.remote_version} at {settings.address}")
        auth = getattr(transport.auth_handler, "auth_method", "") or "?"
        report.add("ok", "authentication", f"{auth} as {settings.username}")
        report.add(*host_key_status(settings, transport))
        step("looking at the host")
        _, stdout, _ = hook.run_script(
            first.client,
            build_host_probe(base, [*advice.REQUIRED_TOOLS, *advice.OPTIONAL_TOOLS]),
            STEP_TIMEOUT,
        )
        probe = parse_host_probe(stdout)
        step("clock")
        offset, uncertainty = clock_offset(hook, first.client)
        step("second connection: MaxSessions")
        second = timed_connect(hook, settings)
        sessions = count_sessions(second.transport)
        step(f"re-keys and round trips ({SAMPLES} each)")
        handshake = check_connection(report, first, second, settings)
        check_host(report, probe, base)
        shown = f">= {MAX_CHANNELS} (stopped there)" if sessions >= MAX_CHANNELS else str(sessions)
        report.add(
            "ok" if sessions >= 1 else "FAIL", "MaxSessions", shown,
            "" if sessions >= 1 else "set MaxSessions 1 or more in sshd_config",
        )  # fmt: skip
        skewed = abs(offset) > 5 + uncertainty
        report.add(
            "warn" if skewed else "ok", "clock offset", f"{offset:+.3f} s (+/- {uncertainty:.3f} s)",
            "run NTP on both sides: ages and deadlines compare the two clocks" if skewed else "",
        )  # fmt: skip
    finally:
        progress.write("\r\033[K")
        progress.flush()
        first.client.close()
        if second is not None:
            second.client.close()
    table([["STATUS", "CHECK", "RESULT"], *report.rows], out)
    if fan_out is not None:
        cpus = probe["facts"].get("cpus", "")
        tip = advice.fan_out_advice(
            fan_out, handshake, int(cpus) if cpus.isdigit() else None, sessions,
            advice.openssh_version(transport.remote_version),
        )  # fmt: skip
        write_advice(tip, out)
    return 1 if report.failed else 0


def write_advice(tip: advice.FanOutAdvice, out: TextIO) -> None:
    """The recommendation for ``--fan-out N``, as lines."""
    out.write(f"\nFor a fan-out of {tip.fan_out} jobs on this host:\n")
    out.write(f"  submit mode          {tip.submit_mode}\n")
    out.write(
        f"  pool size            {tip.at_once} (airflow pools set <name> {tip.at_once} '...' --include-deferred)\n"
    )
    out.write(f"  MaxStartups          {tip.max_startups}  (sshd_config)\n")
    out.write(f"  poll_interval        {tip.poll_interval}\n")
    out.write(f"  conn_retry_attempts  {tip.conn_retry_attempts}\n")
    out.write(
        f"  handshake burst      about {tip.burst_seconds:.1f} s of sshd work for {tip.at_once} submits\n"
    )
    for note in tip.notes:
        out.write(f"  note                 {note}\n")
