"""
The phases of one watched job (``triggers/watch.py``): its transitions, and only those; and the
log offset it records on the host as delivered.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import CleanupResult, JobState, JobStatus
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.retry import BackoffPolicy
from ssh_jobs_provider.triggers.poll_scheduler import PollScheduler
from ssh_jobs_provider.triggers.watch import (
    LOG_WRITE_SECONDS,
    TRANSITIONS,
    Event,
    Phase,
    Watch,
    WatchStateError,
)

BACKOFF = BackoffPolicy(initial=2.0, maximum=8.0)


def make_watch(submit: bool = False, **kwargs: object) -> Watch:
    token = new_job_token()
    monitor = JobMonitor(
        RemoteJobPaths("job", "/base"), log_offset=0, chunk_size=4, started_at=0.0, token=token
    )
    files = job_files("echo hi\n", {}, None, token) if submit else None
    return Watch(
        monitor=monitor,
        poll_interval=1.0,
        command_timeout=10.0,
        max_reconnect_attempts=2,
        submit_files=files,
        **kwargs,
    )  # type: ignore[arg-type]


def test_every_phase_but_done_can_finish_and_done_is_final() -> None:
    for phase in Phase:
        if phase is Phase.DONE:
            assert not any(start is Phase.DONE for start, _ in TRANSITIONS)
        else:
            assert TRANSITIONS[phase, Event.FINISHED] is Phase.DONE


def test_a_transition_not_in_the_table_is_refused() -> None:
    watch = make_watch()
    assert watch.phase is Phase.WATCHING
    with pytest.raises(WatchStateError, match="WATCHING cannot take SUBMITTED"):
        watch.advance(Event.SUBMITTED)
    watch.advance(Event.FINISHED)
    with pytest.raises(WatchStateError, match="DONE cannot take FINISHED"):
        watch.advance(Event.FINISHED)


def test_a_triggerer_submitted_job_goes_through_every_phase_in_order() -> None:
    watch = make_watch(submit=True, cleanup="always")
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, now=0.0)
    seen = [watch.phase]

    def answer(result: object, now: float) -> None:
        scheduler.apply([watch], {0: result}, now)  # type: ignore[dict-item]
        if watch.phase is not seen[-1]:
            seen.append(watch.phase)

    answer(JobStatus(JobState.RUNNING, pid=7, log_size=0), 1.0)  # the submit's answer
    answer(JobStatus(JobState.EXITED, pid=7, exit_code=0, log_size=8, log_data=b"abc\n"), 2.0)  # 4 of 8 read
    answer(JobStatus(JobState.EXITED, pid=7, exit_code=0, log_size=8, log_data=b"def\n"), 3.0)  # drained
    answer(CleanupResult("removed"), 4.0)

    assert seen == [Phase.SUBMITTING, Phase.WATCHING, Phase.DRAINING, Phase.CLEANING, Phase.DONE]
    assert scheduler.watches == []


def test_a_job_that_ends_drained_without_cleanup_is_done_at_once() -> None:
    watch = make_watch()
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, now=0.0)
    ((_, delivery),) = scheduler.apply([watch], {0: JobStatus(JobState.EXITED, pid=7, exit_code=3)}, 1.0)
    assert delivery.outcome is not None and watch.phase is Phase.DONE and not watch.active


def test_removing_a_watch_twice_is_harmless() -> None:
    watch = make_watch()
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, now=0.0)
    scheduler.remove(watch)
    scheduler.remove(watch)
    assert watch.phase is Phase.DONE


# --------------------------------------------------------------------------- the recorded offset


def test_an_offset_is_recorded_as_delivered_only_once_its_lines_had_time_to_reach_the_task_log() -> None:
    watch = make_watch()
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)
    watch.record_delivered(100, now=10.0)
    watch.record_delivered(250, now=11.0)

    def recorded(now: float) -> int:
        (entry,) = scheduler.entries([watch], now)
        return entry.delivered  # type: ignore[union-attr]

    assert recorded(10.0 + LOG_WRITE_SECONDS - 0.01) == 0
    assert recorded(10.0 + LOG_WRITE_SECONDS) == 100
    assert recorded(11.0 + LOG_WRITE_SECONDS) == 250
    assert watch.handed_over == 250


def test_a_trigger_leaving_while_its_triggerer_lives_records_all_it_handed_over() -> None:
    watch = make_watch()
    watch.record_delivered(100, now=10.0)
    assert watch.settled(10.5) == 0
    assert watch.offset_record().delivered == 100


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 10**6)), max_size=20), st.floats(0, 200))
def test_the_recorded_offset_never_passes_what_was_handed_over_long_enough_ago(
    hand_overs: list[tuple[float, int]], asked_at: float
) -> None:
    watch = make_watch()
    now = 0.0
    handed: list[tuple[float, int]] = []
    for gap, offset in hand_overs:
        now += gap
        watch.record_delivered(offset, now)
        handed.append((now, offset))
    settled_by = [offset for at, offset in handed if at + LOG_WRITE_SECONDS <= now + asked_at]
    assert watch.settled(now + asked_at) == max(settled_by, default=0)
    assert watch.settled(now + asked_at) <= watch.handed_over
