"""
What ``doctor`` concludes, as pure functions: the median of samples, the remote tools the
protocol needs, and the settings it recommends for a fan-out. No I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Tools the remote-job scripts run (``protocol/sh/*.sh``), each needed by every job.
REQUIRED_TOOLS = (
    "sh", "ls", "tail", "head", "wc", "dd", "df", "awk", "sed", "grep", "tr", "ps", "id", "kill",
    "mkdir", "mv", "rm", "chmod", "sleep", "uname", "date",
)  # fmt: skip
#: Tools used when the host has them, with what happens without.
OPTIONAL_TOOLS = {
    "setsid": "jobs start under nohup, and a kill walks the process tree instead of the session",
    "nohup": "needed when setsid is missing",
    "perl": "polls run in POSIX sh (a few processes per tick instead of one)",
    "stat": "reap and status read ages with perl instead",
    "bash": "commands without a #! line run under /bin/sh",
}
#: How much faster than the default jobs are probed at most: the docs' "a few dozen per second".
PROBES_PER_SECOND = 25
#: The OpenSSH release that penalises sources for failed or unauthenticated connections.
PENALTIES_SINCE = (9, 8)


def median(samples: Sequence[float]) -> float:
    """The p50 of ``samples`` (the mean of the middle two for an even count)."""
    if not samples:
        raise ValueError("median() of no samples")
    ordered = sorted(samples)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def missing_tools(found: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """
    The required tools missing, and the optional ones missing with what that means.

    :param found: tool name -> whether ``command -v`` found it
    """
    required = [tool for tool in REQUIRED_TOOLS if not found.get(tool, False)]
    optional = [f"{tool} ({why})" for tool, why in OPTIONAL_TOOLS.items() if not found.get(tool, False)]
    if found.get("setsid", False):
        optional = [entry for entry in optional if not entry.startswith("nohup ")]
    elif not found.get("nohup", False):
        required.append("setsid or nohup")
    return required, optional


def openssh_version(banner: str) -> tuple[int, int] | None:
    """``(9, 2)`` for a banner such as ``SSH-2.0-OpenSSH_9.2p1 Debian-2``; ``None`` for another server."""
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", banner)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class FanOutAdvice:
    """
    Settings for a fan-out of ``fan_out`` jobs against one host.

    :param fan_out: the jobs of one fan-out
    :param at_once: jobs that submit and run at once (a pool with ``--include-deferred``)
    :param max_startups: ``MaxStartups`` for ``sshd_config``
    :param poll_interval: the operator's ``poll_interval``
    :param conn_retry_attempts: the operator's ``conn_retry_attempts``
    :param submit_mode: how the tasks should reach the host
    :param burst_seconds: about how long the host needs for the burst of handshakes
    :param notes: anything else to change
    """

    fan_out: int
    at_once: int
    max_startups: str
    poll_interval: int
    conn_retry_attempts: int
    submit_mode: str
    burst_seconds: float
    notes: tuple[str, ...]


def fan_out_advice(
    fan_out: int,
    handshake_seconds: float,
    cores: int | None,
    max_sessions: int | None,
    server_version: tuple[int, int] | None,
) -> FanOutAdvice:
    """
    The recommendation for ``--fan-out N``, after the rules of the docs' sizing page.

    :param fan_out: N, the jobs of one fan-out against this host
    :param handshake_seconds: the measured handshake (banner, key exchange, authentication)
    :param cores: the host's online processors, when known
    :param max_sessions: the measured ``MaxSessions``, when known
    :param server_version: the server's OpenSSH ``(major, minor)``, when it is OpenSSH
    """
    if fan_out < 1:
        raise ValueError("--fan-out must be at least 1")
    at_once = fan_out if fan_out <= 100 else max(100, math.ceil(fan_out / 2))
    start = max(10, at_once)
    max_startups = f"{start}:30:{max(100, 2 * start)}"
    poll_interval = max(5, math.ceil(at_once / PROBES_PER_SECOND / 5) * 5)
    retries = 5 if fan_out < 1000 else 8
    if at_once == fan_out and fan_out <= 10:
        mode = "all at once: the default MaxStartups 10:30:100 takes the burst, no pool needed"
    elif at_once == fan_out:
        mode = f"all at once, with MaxStartups start >= {fan_out}"
    else:
        mode = (
            f"through a pool of {at_once} slots created with --include-deferred "
            f"(or max_active_tis_per_dag={at_once}): {fan_out} jobs in waves"
        )
    # Handshakes of a burst overlap; the host's processors share their CPU work.
    burst = at_once * handshake_seconds / max(1, cores or 1)
    notes = []
    if max_sessions is not None and max_sessions < 1:
        notes.append("MaxSessions must be at least 1: every submit and poll opens one channel")
    if server_version is not None and server_version >= PENALTIES_SINCE:
        notes.append(
            "OpenSSH >= 9.8 penalises sources for dropped handshakes: put Airflow's worker and "
            "triggerer addresses in PerSourcePenaltyExemptList"
        )
    return FanOutAdvice(fan_out, at_once, max_startups, poll_interval, retries, mode, burst, tuple(notes))
