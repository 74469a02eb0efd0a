"""
The phases of one watched job (``triggers/watch.py``): its transitions, and only those; what it
decides on each answer or failure (pure: the clock is passed in); and the log offset it records
on the host as delivered.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.exceptions import FAN_OUT_HINT
from ssh_jobs_provider.protocol.answers import JobState, JobStatus
from ssh_jobs_provider.protocol.batch import BatchNotAnswered, EntryNotAnswered, EntryResult
from ssh_jobs_provider.protocol.cleanup import CleanupResult, CleanupState
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor, Outcome, OutcomeStatus
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import SubmitRefused
from ssh_jobs_provider.retry import BackoffPolicy
from ssh_jobs_provider.triggers.poll_scheduler import PollScheduler
from ssh_jobs_provider.triggers.watch import (
    LOG_WRITE_SECONDS,
    SUBMIT_TICK,
    TRANSITIONS,
    Action,
    Decision,
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
    answer(CleanupResult(CleanupState.REMOVED), 4.0)

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


# --------------------------------------------------------------------------- its decisions


def running(pid: int = 7, data: bytes = b"") -> JobStatus:
    return JobStatus(JobState.RUNNING, pid=pid, log_size=len(data), log_data=data)


def exited(code: int) -> JobStatus:
    return JobStatus(JobState.EXITED, pid=7, exit_code=code)


def cleaning_watch(**kwargs: object) -> Watch:
    """A watch whose job ended with exit code 0 and whose cleanup is now due."""
    watch = make_watch(cleanup="always", **kwargs)
    watch.budget_with(BACKOFF)
    assert watch.on_status(exited(0), now=1.0).action is Action.DELIVER
    assert watch.phase is Phase.CLEANING
    return watch


def final(decision: Decision) -> Outcome:
    assert decision.action is Action.FINISH and decision.delivery is not None
    assert decision.delivery.outcome is not None
    return decision.delivery.outcome


def test_the_answer_to_a_submit_drops_the_files_and_starts_the_watch() -> None:
    watch = make_watch(submit=True)
    status = running(pid=42, data=b"hi\n")

    decision = watch.on_status(status, now=2.3)

    assert decision.action is Action.DELIVER and decision.delivery is not None
    assert decision.delivery.submitted is status and decision.delivery.lines == ["hi"]
    assert watch.phase is Phase.WATCHING and watch.submit_files is None and watch.files_to_submit == ()
    assert watch.next_due == 3.0  # the next tick of its poll_interval
    # A later answer is a plain poll's: no second "submitted".
    later = watch.on_status(running(pid=42), now=3.0).delivery
    assert later is not None and later.submitted is None


def test_a_job_with_more_log_waiting_is_due_again_at_once() -> None:
    watch = make_watch()  # chunk size 4: the first answer carries 4 of the 8 bytes
    status = JobStatus(JobState.RUNNING, pid=7, log_size=8, log_data=b"abc\n")
    assert watch.on_status(status, now=5.5).action is Action.DELIVER
    assert watch.next_due == 5.5


def test_an_ended_job_without_a_cleanup_finishes_with_its_outcome() -> None:
    watch = make_watch()
    outcome = final(watch.on_status(exited(3), now=1.0))
    assert (outcome.status, outcome.exit_code) == (OutcomeStatus.FAILED, 3)
    # Unregistering (and so DONE) is the scheduler's part.
    assert watch.phase is Phase.WATCHING and watch.final_outcome is None


def test_an_ended_job_whose_cleanup_is_wanted_holds_its_outcome_until_the_cleanup_answers() -> None:
    watch = cleaning_watch()
    assert watch.next_due == 1.0  # in the very next batch
    assert watch.final_outcome is not None and watch.final_outcome.status is OutcomeStatus.SUCCESS

    decision = watch.on_cleanup(CleanupResult(CleanupState.REMOVED), now=1.1)

    assert final(decision) is watch.final_outcome
    assert decision.delivery is not None and decision.delivery.cleaned_up is True


@pytest.mark.parametrize("state", [CleanupState.FAILED, CleanupState.RUNNING])
def test_a_failed_cleanup_waits_then_gives_up_with_the_real_outcome(state: CleanupState) -> None:
    watch = cleaning_watch(cleanup_retries=2)

    waiting = watch.on_cleanup(CleanupResult(state), now=2.0)

    assert waiting == Decision(Action.WAIT)
    assert 2.0 + BACKOFF.ceiling(1) / 2 <= watch.next_due <= 2.0 + BACKOFF.ceiling(1)
    assert watch.cleanups.history == (f"cleanup {state.value}",)
    decision = watch.on_cleanup(CleanupResult(state), now=5.0)
    assert final(decision).status is OutcomeStatus.SUCCESS
    assert decision.delivery is not None and decision.delivery.cleaned_up is False


def test_a_directory_no_longer_ours_is_left_alone() -> None:
    watch = cleaning_watch()
    decision = watch.on_cleanup(CleanupResult(CleanupState.FOREIGN), now=1.1)
    assert final(decision).leave_remote is True
    assert decision.delivery is not None and decision.delivery.cleaned_up is False
    assert "no longer carries this job's token" in decision.delivery.warnings[0]


@pytest.mark.parametrize("resent", [False, True])
def test_a_refused_submit_is_final_and_says_whether_an_earlier_send_may_have_started_it(
    resent: bool,
) -> None:
    watch = make_watch(submit=True)
    if resent:  # an earlier batch reached the host, and its answer was lost
        watch.on_sent()
    refused = SubmitRefused("unsafe", "/base is writable by group or others")

    outcome = final(watch.on_answer(refused, now=1.0))

    assert outcome.status is OutcomeStatus.ERROR and outcome.never_started is not resent
    assert watch.submit_sent


def test_only_a_submitting_watch_remembers_that_a_batch_reached_the_host() -> None:
    watch = make_watch()
    assert watch.on_sent() is False and watch.submit_sent is False
    submitting = make_watch(submit=True)
    assert submitting.on_sent() is False and submitting.on_sent() is True


def test_an_answer_missing_for_one_job_counts_against_its_budget_alone() -> None:
    watch = make_watch(submit=True)
    watch.budget_with(BACKOFF)
    missing = EntryNotAnswered("no answer for job")

    decisions = [watch.on_answer(missing, now=float(n)) for n in range(3)]

    assert [d.action for d in decisions] == [Action.DELIVER, Action.DELIVER, Action.FINISH]
    assert watch.next_due == 2.0 + SUBMIT_TICK
    first = decisions[0].delivery
    assert first is not None and "failed (1/" in first.warnings[0]
    outcome = final(decisions[-1])
    assert outcome.message.startswith("Could not submit remote job job (3 failed attempt(s)")
    assert outcome.never_started is False  # each of those batches reached the host


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError("reset"), "Lost the SSH connection while watching remote job job"),
        (BatchNotAnswered(5), "The host stopped answering the polls of remote job job: 3 batches"),
    ],
)
def test_a_watch_whose_polls_keep_failing_ends_as_lost(error: BaseException, said: str) -> None:
    watch = make_watch()
    watch.budget_with(BACKOFF)
    warnings = [watch.on_batch_failed(error, delay=2.0) for _ in range(2)]
    assert all(d.action is Action.DELIVER for d in warnings)
    assert warnings[0].delivery is not None and "retrying in 2.0s" in warnings[0].delivery.warnings[0]

    outcome = final(watch.on_batch_failed(error, delay=2.0))

    assert outcome.watch_lost and said in outcome.message and FAN_OUT_HINT in outcome.message


def test_a_lost_connection_never_turns_a_cleaned_up_job_into_a_lost_one() -> None:
    watch = cleaning_watch(cleanup_retries=1)
    assert watch.on_batch_failed(OSError("reset"), delay=1.0).action is Action.DELIVER
    decision = watch.on_batch_failed(OSError("reset"), delay=1.0)
    assert final(decision).status is OutcomeStatus.SUCCESS
    assert decision.delivery is not None and decision.delivery.cleaned_up is False


@pytest.mark.parametrize(
    ("submit", "said"),
    [
        (True, "Could not submit remote job job (0 failed attempt(s)"),
        (False, "Watching remote job failed: denied"),
    ],
)
def test_a_broken_batch_ends_the_watch_with_an_error(submit: bool, said: str) -> None:
    outcome = final(make_watch(submit=submit).on_batch_broken(PermissionError("denied")))
    assert outcome.status is OutcomeStatus.ERROR and outcome.message.startswith(said)


def test_a_broken_batch_during_the_cleanup_reports_the_real_outcome() -> None:
    decision = cleaning_watch().on_batch_broken(PermissionError("denied"))
    assert final(decision).status is OutcomeStatus.SUCCESS
    assert decision.delivery is not None and decision.delivery.cleaned_up is False


def test_a_broken_session_ends_the_watch_with_an_internal_error() -> None:
    outcome = final(make_watch().on_session_error(RuntimeError("bug")))
    assert outcome.message == "Internal error in the SSH host session: bug"


ANSWERS: list[EntryResult] = [
    running(),
    JobStatus(JobState.RUNNING, pid=7, log_size=8, log_data=b"abc\n"),
    exited(0),
    exited(2),
    JobStatus(JobState.MISSING),
    EntryNotAnswered("lost"),
    CleanupResult(CleanupState.REMOVED),
    CleanupResult(CleanupState.FAILED),
    CleanupResult(CleanupState.FOREIGN),
]


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.sampled_from(["never", "on_success", "always"]),
    st.lists(st.one_of(st.integers(0, len(ANSWERS) - 1), st.just(-1)), max_size=30),
)
def test_every_decision_keeps_the_watch_consistent(submit: bool, cleanup: str, steps: list[int]) -> None:
    """
    Whatever comes in (answers fitting the entry sent, failed batches), the watch only makes
    transitions of the table, holds its files exactly while submitting and its outcome exactly
    while cleaning, and hands over an outcome exactly when it finishes.
    """
    watch = make_watch(submit=submit, cleanup=cleanup, cleanup_retries=2)
    watch.budget_with(BACKOFF)
    for now, step in enumerate(steps, start=1):
        cleaning = watch.phase is Phase.CLEANING
        if step < 0:
            decision = watch.on_batch_failed(OSError("reset"), delay=1.0)
        else:
            answer = ANSWERS[step]
            if isinstance(answer, CleanupResult) is not cleaning and not isinstance(answer, EntryNotAnswered):
                continue  # a cleanup entry is answered by a cleanup result, any other by a status
            decision = watch.on_answer(answer, float(now))
        before = watch.phase
        assert (watch.submit_files is not None) is (watch.phase is Phase.SUBMITTING)
        assert (watch.final_outcome is not None) is (watch.phase is Phase.CLEANING)
        delivery = decision.delivery
        if decision.action is Action.WAIT:
            assert delivery is None and cleaning
        else:
            assert delivery is not None
            assert (delivery.outcome is not None) is (decision.action is Action.FINISH)
        if decision.action is Action.FINISH:
            assert watch.advance(Event.FINISHED) is Phase.DONE, before
            break


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
