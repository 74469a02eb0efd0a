"""
The provider's metrics, sent through Airflow's own ``Stats``: StatsD, Datadog or OpenTelemetry,
whichever the deployment's ``[metrics]`` section switches on, with its prefix, allow and block
lists. Nothing is sent when metrics are off.

Every metric is named ``ssh_jobs.<what>`` and tagged with the SSH ``host`` (plain StatsD carries
tags only with ``[metrics] statsd_influxdb_enabled``; Datadog and OpenTelemetry always do).
The names, their kinds and what each means are in :data:`METRICS`; the docs' Operations page
says when to alert on them. Sending a metric never raises: a broken metrics set-up must not
fail a job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ssh_jobs_provider._compat import airflow_stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    """
    One metric the provider sends.

    :param name: the full name, ``ssh_jobs.<what>``
    :param kind: ``counter``, ``gauge`` or ``timer`` (milliseconds)
    :param meaning: what one count, value or sample stands for
    """

    name: str
    kind: str
    meaning: str


CONNECTS = Metric("ssh_jobs.connects", "counter", "SSH connections opened (worker or triggerer).")
CONNECT_DROPS = Metric(
    "ssh_jobs.connect_drops",
    "counter",
    "Connect attempts dropped or refused before authentication (MaxStartups, resets, timeouts).",
)
SUBMITS = Metric("ssh_jobs.submits", "counter", "Jobs submitted (launched or re-attached) by the operator.")
SUBMIT_RETRIES = Metric("ssh_jobs.submit_retries", "counter", "Submit attempts after the first one.")
BATCH_POLLS = Metric(
    "ssh_jobs.batch_polls", "counter", "Batched polls answered (one exec per host and tick)."
)
BATCH_FAILURES = Metric(
    "ssh_jobs.batch_failures", "counter", "Batched polls that failed (the shared connection is re-opened)."
)
BATCH_DURATION = Metric(
    "ssh_jobs.batch_duration", "timer", "Milliseconds one batched poll took, exec to answer."
)
WATCHED_JOBS = Metric("ssh_jobs.watched_jobs", "gauge", "Jobs the triggerer process watches on the host.")
CLEANUP_FAILURES = Metric(
    "ssh_jobs.cleanup_failures",
    "counter",
    "Kills or cleanups that failed after every attempt: a job directory (or job) left behind.",
)

#: Every metric, in the order the docs list them.
METRICS = (
    CONNECTS,
    CONNECT_DROPS,
    SUBMITS,
    SUBMIT_RETRIES,
    BATCH_POLLS,
    BATCH_FAILURES,
    BATCH_DURATION,
    WATCHED_JOBS,
    CLEANUP_FAILURES,
)


def _send(kind: str, metric: Metric, host: str, value: float = 1) -> None:
    tags = {"host": host}
    try:
        stats = airflow_stats()
        if kind == "incr":
            stats.incr(metric.name, int(value), tags=tags)
        elif kind == "gauge":
            stats.gauge(metric.name, value, tags=tags)
        else:
            stats.timing(metric.name, value, tags=tags)
    except Exception as error:  # metrics are never worth a failed job
        log.debug("Could not send metric %s: %s", metric.name, error)


def connected(host: str) -> None:
    """An SSH connection to ``host`` was opened."""
    _send("incr", CONNECTS, host)


def connect_dropped(host: str) -> None:
    """A connect attempt to ``host`` was dropped or refused before authentication."""
    _send("incr", CONNECT_DROPS, host)


def submitted(host: str) -> None:
    """A job was submitted to ``host`` (launched, or re-attached after a lost reply)."""
    _send("incr", SUBMITS, host)


def submit_retried(host: str) -> None:
    """A submit to ``host`` is tried again."""
    _send("incr", SUBMIT_RETRIES, host)


def batch_polled(host: str, milliseconds: float, watched: int) -> None:
    """A batched poll of ``host`` was answered in ``milliseconds``; ``watched`` jobs are watched."""
    _send("incr", BATCH_POLLS, host)
    _send("timing", BATCH_DURATION, host, milliseconds)
    _send("gauge", WATCHED_JOBS, host, watched)


def batch_failed(host: str, watched: int) -> None:
    """A batched poll of ``host`` failed; ``watched`` jobs are watched."""
    _send("incr", BATCH_FAILURES, host)
    _send("gauge", WATCHED_JOBS, host, watched)


def watching(host: str, watched: int) -> None:
    """``watched`` jobs are now watched on ``host`` (a watch was added or ended)."""
    _send("gauge", WATCHED_JOBS, host, watched)


def cleanup_failed(host: str) -> None:
    """A kill or cleanup on ``host`` failed after every attempt."""
    _send("incr", CLEANUP_FAILURES, host)
