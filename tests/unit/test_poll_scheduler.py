"""The host session's decisions, without asyncio or a network: a fake clock and parsed answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ssh_jobs_provider.exceptions import FAN_OUT_HINT
from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.submit import build_submit_script, parse_submit_output
from ssh_jobs_provider.retry import BackoffPolicy
from ssh_jobs_provider.triggers.poll_scheduler import (
    COALESCE_SECONDS,
    MAX_BATCH_BYTES,
    MIN_WINDOW,
    PollScheduler,
    Watch,
    next_tick,
)
from support.protocol import run_sh

BACKOFF = BackoffPolicy(initial=2.0, maximum=8.0)


def make_watch(job: str = "j", chunk: int = 64, **kwargs) -> Watch:
    kwargs.setdefault("poll_interval", 1.0)
    kwargs.setdefault("command_timeout", 10.0)
    kwargs.setdefault("max_reconnect_attempts", 2)
    monitor = JobMonitor(RemoteJobPaths(job, "/base"), log_offset=0, chunk_size=chunk, started_at=0.0)
    return Watch(monitor=monitor, **kwargs)


def running(data: bytes = b"", size: int | None = None) -> JobStatus:
    return JobStatus(JobState.RUNNING, pid=7, log_size=len(data) if size is None else size, log_data=data)


def exited(code: int, data: bytes = b"") -> JobStatus:
    return JobStatus(JobState.EXITED, pid=7, exit_code=code, log_size=len(data), log_data=data)


def scheduler_with(*watches: Watch, now: float = 0.0) -> PollScheduler:
    scheduler = PollScheduler(BACKOFF)
    for watch in watches:
        scheduler.add(watch, now)
    return scheduler


# --------------------------------------------------------------------------- timing


def test_watches_are_aligned_on_their_interval_grid_and_polled_together() -> None:
    early, late = make_watch("a", poll_interval=5.0), make_watch("b", poll_interval=5.0)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(early, 0.4)
    scheduler.add(late, 3.9)

    assert early.next_due == late.next_due == 5.0
    assert scheduler.due(4.9) == []
    assert scheduler.due(5.0 - COALESCE_SECONDS) == [early, late]
    assert next_tick(10.0, 5.0) == 15.0


def test_next_wake_is_the_earliest_due_but_never_inside_a_backoff() -> None:
    assert PollScheduler(BACKOFF).next_wake() == float("inf")
    watch = make_watch()
    scheduler = scheduler_with(watch)
    assert scheduler.next_wake() == 1.0
    scheduler.batch_failed([watch], OSError("reset"), now=1.0)
    assert scheduler.next_wake() == scheduler.backoff_until > 1.0
    assert scheduler.due(scheduler.backoff_until - 0.01) == []
    assert scheduler.due(scheduler.backoff_until) == [watch]


def test_remove_is_idempotent_and_deactivates() -> None:
    watch = make_watch()
    scheduler = scheduler_with(watch)
    scheduler.remove(watch)
    scheduler.remove(watch)
    assert scheduler.watches == [] and not watch.active


# --------------------------------------------------------------------------- entries


def test_entries_share_the_batch_byte_budget_but_every_job_gets_a_minimum_window() -> None:
    big = [make_watch(f"big{i}", chunk=MAX_BATCH_BYTES) for i in range(2)]
    small = make_watch("small", chunk=1024)
    scheduler = scheduler_with(*big, small)

    first, second, third = scheduler.entries([*big, small], 0.0)

    assert isinstance(first, PollEntry) and first.max_bytes == MAX_BATCH_BYTES
    assert isinstance(second, PollEntry) and second.max_bytes == MIN_WINDOW
    assert isinstance(third, PollEntry) and third.max_bytes == 1024  # never more than its own chunk
    assert scheduler.timeout([*big, small]) == 10.0


def test_a_finished_job_awaiting_cleanup_gets_a_cleanup_entry_with_its_token() -> None:
    token = new_job_token()
    watch = make_watch(cleanup="always")
    watch.monitor.token = token
    scheduler = scheduler_with(watch)
    scheduler.apply([watch], {0: exited(0)}, now=1.0)

    (entry,) = scheduler.entries([watch], 1.0)

    assert entry == CleanupEntry(watch.monitor.paths, token=token)
    assert watch.offset_record().token == token


# --------------------------------------------------------------------------- answers


def test_log_lines_are_delivered_and_a_backlog_is_read_again_at_once() -> None:
    watch = make_watch(chunk=4)
    scheduler = scheduler_with(watch)

    ((_, delivery),) = scheduler.apply([watch], {0: running(b"ab\nc", size=10)}, now=1.0)

    assert delivery.lines == ["ab"] and delivery.outcome is None
    assert watch.next_due == 1.0  # more log waits: no sleep
    scheduler.apply([watch], {0: running(b"", size=4)}, now=1.5)
    assert watch.next_due == 2.0  # caught up: back on the grid


def test_an_exit_without_cleanup_ends_the_watch_with_its_outcome() -> None:
    watch = make_watch()
    scheduler = scheduler_with(watch)

    ((_, delivery),) = scheduler.apply([watch], {0: exited(3, b"last\n")}, now=1.0)

    assert delivery.lines == ["last"]
    assert delivery.outcome is not None and delivery.outcome.status == "failed"
    assert delivery.cleaned_up is None
    assert scheduler.watches == []


@pytest.mark.parametrize(("state", "cleaned_up"), [("removed", True), ("absent", True)])
def test_cleanup_follows_the_exit_over_the_same_session(state: str, cleaned_up: bool) -> None:
    watch = make_watch(cleanup="on_success")
    scheduler = scheduler_with(watch)
    ((_, first),) = scheduler.apply([watch], {0: exited(0)}, now=1.0)
    assert first.outcome is None and watch.next_due == 1.0

    ((_, final),) = scheduler.apply([watch], {0: CleanupResult(state)}, now=1.1)

    assert final.outcome is not None and final.outcome.status == "success"
    assert final.cleaned_up is cleaned_up
    assert scheduler.watches == []


def test_a_failed_cleanup_is_retried_then_left_to_the_operator() -> None:
    watch = make_watch(cleanup="always", cleanup_retries=2)
    scheduler = scheduler_with(watch)
    scheduler.apply([watch], {0: exited(1)}, now=1.0)

    assert scheduler.apply([watch], {0: CleanupResult("failed")}, now=2.0) == []
    assert 2.0 + BACKOFF.ceiling(1) / 2 <= watch.next_due <= 2.0 + BACKOFF.ceiling(1)
    ((_, final),) = scheduler.apply([watch], {0: CleanupResult("failed")}, now=5.0)

    assert final.outcome is not None and final.outcome.exit_code == 1
    assert final.cleaned_up is False


def test_a_directory_that_is_no_longer_ours_is_left_alone_by_everybody() -> None:
    watch = make_watch(cleanup="always")
    scheduler = scheduler_with(watch)
    scheduler.apply([watch], {0: exited(0)}, now=1.0)

    ((_, final),) = scheduler.apply([watch], {0: CleanupResult("foreign")}, now=1.1)

    assert final.outcome is not None and final.outcome.leave_remote is True
    assert final.cleaned_up is False
    assert "no longer carries" in final.warnings[0]


def test_an_error_outcome_is_never_followed_by_a_cleanup() -> None:
    watch = make_watch(cleanup="always")
    scheduler = scheduler_with(watch)

    # A missing directory is believed on the second look (the first may be a transient miss).
    ((_, first),) = scheduler.apply([watch], {0: JobStatus(JobState.MISSING)}, now=1.0)
    assert first.outcome is None
    ((_, final),) = scheduler.apply([watch], {0: JobStatus(JobState.MISSING)}, now=2.0)

    assert final.outcome is not None and final.outcome.status == "error"
    assert scheduler.watches == []


# --------------------------------------------------------------------------- failures


def test_a_misframed_answer_costs_one_unit_of_that_jobs_budget_only() -> None:
    bad, good = make_watch("bad"), make_watch("good")
    scheduler = scheduler_with(bad, good)

    out = scheduler.apply([bad, good], {0: RemoteJobProtocolError("misframed"), 1: running()}, now=1.0)

    assert [watch for watch, _ in out] == [bad, good]
    assert "failed (1/2)" in out[0][1].warnings[0]
    assert (bad.failures, good.failures) == (1, 0)
    assert bad.next_due == 2.0


def test_failed_batches_back_off_for_everybody_and_use_up_each_budget() -> None:
    watch = make_watch(max_reconnect_attempts=2)
    scheduler = scheduler_with(watch)

    for attempt in (1, 2):
        delay, ((_, warning),) = scheduler.batch_failed([watch], OSError("reset"), now=float(attempt))
        assert BACKOFF.ceiling(attempt) / 2 <= delay <= BACKOFF.ceiling(attempt)
        assert f"({attempt}/2)" in warning.warnings[0] and "retrying in" in warning.warnings[0]
    _, ((_, final),) = scheduler.batch_failed([watch], OSError("reset"), now=3.0)

    assert final.outcome is not None and final.outcome.status == "error"
    assert "after 2 reconnect attempt(s)" in final.outcome.message and FAN_OUT_HINT in final.outcome.message
    assert scheduler.failures == 3


def test_a_successful_answer_restores_the_budget() -> None:
    watch = make_watch(max_reconnect_attempts=1)
    scheduler = scheduler_with(watch)
    scheduler.batch_failed([watch], OSError("reset"), now=1.0)

    scheduler.apply([watch], {0: running()}, now=5.0)

    assert (watch.failures, scheduler.failures) == (0, 0)
    _, ((_, again),) = scheduler.batch_failed([watch], OSError("reset"), now=6.0)
    assert again.outcome is None


def test_a_stuck_cleanup_reports_the_real_outcome_once_its_retries_are_used() -> None:
    watch = make_watch(cleanup="always", cleanup_retries=1, max_reconnect_attempts=5)
    scheduler = scheduler_with(watch)
    scheduler.apply([watch], {0: exited(0)}, now=1.0)

    scheduler.batch_failed([watch], OSError("reset"), now=2.0)
    _, ((_, final),) = scheduler.batch_failed([watch], OSError("reset"), now=3.0)

    assert final.outcome is not None and final.outcome.status == "success"
    assert final.cleaned_up is False


def test_a_broken_batch_ends_every_job_in_it() -> None:
    pending_cleanup = make_watch("c", cleanup="always")
    plain = make_watch("p")
    scheduler = scheduler_with(pending_cleanup, plain)
    scheduler.apply([pending_cleanup], {0: exited(0)}, now=1.0)

    out = dict(scheduler.batch_broken([pending_cleanup, plain], PermissionError("denied")))

    assert out[pending_cleanup].outcome is not None and out[pending_cleanup].outcome.status == "success"
    assert out[pending_cleanup].cleaned_up is False
    assert out[plain].outcome is not None and "denied" in out[plain].outcome.message
    assert scheduler.watches == []


def test_an_internal_error_ends_every_watch_instead_of_a_hang() -> None:
    watches = [make_watch(f"j{i}") for i in range(3)]
    scheduler = scheduler_with(*watches)

    out = scheduler.abandon(RuntimeError("bug"))

    assert [w for w, _ in out] == watches
    assert all(d.outcome is not None and "Internal error" in d.outcome.message for _, d in out)


def test_inactive_watches_are_skipped() -> None:
    watch = make_watch()
    scheduler = scheduler_with(watch)
    scheduler.remove(watch)
    assert scheduler.apply([watch], {0: running(b"x\n")}, now=1.0) == []
    assert scheduler.batch_failed([watch], OSError(), now=1.0)[1] == []


# --------------------------------------------------------------------------- with a real shell


def test_scheduler_drains_real_jobs_through_the_real_batch_script(tmp_path: Path) -> None:
    """Submit two jobs with the real scripts on a local /bin/sh, then poll them to the end."""
    token = new_job_token()
    commands = {
        "one": "for i in 1 2 3; do echo one $i; done\n",
        "two": "printf 'two\\n%.0s' $(seq 1 500)\nexit 4\n",
    }
    watches = []
    for job, command in commands.items():
        paths = RemoteJobPaths(job, str(tmp_path / "jobs"))
        assert parse_submit_output(run_sh(build_submit_script(paths, command, {}, token)).stdout).launched
        monitor = JobMonitor(paths, 0, 1024, started_at=0.0, token=token)
        watches.append(Watch(monitor, 0.05, 10.0, 3, cleanup="always"))
    scheduler = PollScheduler(BACKOFF)
    for watch in watches:
        scheduler.add(watch, 0.0)
    lines: dict[str, list[str]] = {"one": [], "two": []}
    outcomes = {}
    deadline = time.monotonic() + 30
    now = 0.0
    while scheduler.watches and time.monotonic() < deadline:
        now += 0.05
        due = scheduler.due(now)
        if not due:
            continue
        entries = scheduler.entries(due, now)
        for watch, delivery in scheduler.apply(
            due, parse_batch_output(run_sh(build_batch_script(entries)).stdout, entries), now
        ):
            lines[watch.monitor.paths.job_id] += delivery.lines
            if delivery.outcome is not None:
                outcomes[watch.monitor.paths.job_id] = (delivery.outcome.exit_code, delivery.cleaned_up)
        time.sleep(0.01)

    assert lines == {"one": ["one 1", "one 2", "one 3"], "two": ["two"] * 500}
    assert outcomes == {"one": (0, True), "two": (4, True)}
    assert not (tmp_path / "jobs" / "one").exists() and not (tmp_path / "jobs" / "two").exists()


@pytest.mark.parametrize(("reconnects", "cleanups"), [(0, 3), (2, 10), (5, 1)])
def test_a_finished_job_is_never_reported_lost_while_only_its_cleanup_fails(
    reconnects: int, cleanups: int
) -> None:
    watch = make_watch(cleanup="always", cleanup_retries=cleanups, max_reconnect_attempts=reconnects)
    scheduler = scheduler_with(watch)
    scheduler.apply([watch], {0: exited(0)}, now=1.0)

    final = None
    for attempt in range(1, 20):
        _, deliveries = scheduler.batch_failed([watch], OSError("reset"), now=float(attempt))
        final = next((d for _, d in deliveries if d.outcome is not None), None)
        if final is not None:
            break

    assert final is not None and final.outcome is not None
    assert (final.outcome.status, final.outcome.exit_code, final.cleaned_up) == ("success", 0, False)
