"""The phases of one watched job (``triggers/watch.py``): its transitions, and only those."""

from __future__ import annotations

import pytest

from ssh_jobs_provider.protocol.answers import CleanupResult, JobState, JobStatus
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.retry import BackoffPolicy
from ssh_jobs_provider.triggers.poll_scheduler import PollScheduler
from ssh_jobs_provider.triggers.watch import TRANSITIONS, Event, Phase, Watch, WatchStateError

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
