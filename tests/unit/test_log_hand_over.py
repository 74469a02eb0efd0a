"""How the job's output reaches the task log from a trigger: logged, handed over, waited for."""

from __future__ import annotations

import asyncio

import pytest

from ssh_jobs_provider.operators.remote_steps import handed_over_lines
from ssh_jobs_provider.protocol.monitor import Outcome, OutcomeStatus
from ssh_jobs_provider.triggers import ssh_remote_job
from ssh_jobs_provider.triggers.delivery import Delivery
from ssh_jobs_provider.triggers.log_hand_over import (
    FINAL_LINES_IN_EVENT_BYTES,
    LOG_LINGER_SECONDS,
    LogHandOver,
    split_final_lines,
)
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from ssh_jobs_provider.triggers.watch import LOG_WRITE_SECONDS

SUCCESS = Outcome(OutcomeStatus.SUCCESS, 0, "done")


def test_the_final_lines_fit_the_event_and_nothing_is_dropped_or_doubled() -> None:
    lines = [f"line {n} " + "x" * 300 for n in range(200)] + ["", "tab\there", "carriage\rreturn"]
    logged, handed = split_final_lines(lines)
    assert logged + handed == lines  # every line once, in order
    assert 0 < sum(len(line.encode()) + 1 for line in handed) <= FINAL_LINES_IN_EVENT_BYTES
    chunk = "".join(f"{line}\n" for line in handed)
    assert handed_over_lines({"log_chunk": chunk}) == handed
    assert handed_over_lines({"log_chunk": ""}) == [] and handed_over_lines({}) == []


def test_only_the_final_read_is_handed_over_and_only_what_does_not_fit_is_logged() -> None:
    feed = LogHandOver()
    assert feed.lines_to_log(Delivery(lines=["one"]), now=1.0) == ["one"]
    assert feed.handed_over == []
    big = ["x" * 1000 for _ in range(30)]  # more than the event carries
    logged = feed.lines_to_log(Delivery(lines=big, outcome=SUCCESS), now=2.0)

    assert logged and logged + feed.handed_over == big
    assert feed.last_logged_at == 2.0
    assert feed.lines_to_log(Delivery(lines=["last"], outcome=SUCCESS), now=3.0) == []
    assert feed.handed_over == ["last"] and feed.last_logged_at == 2.0


def test_the_event_and_the_linger_count_from_the_line_logged_last() -> None:
    feed = LogHandOver()
    assert feed.seconds_before_event(5.0) == 0 and feed.seconds_to_linger(5.0) == 0  # logged nothing
    feed.lines_to_log(Delivery(lines=["one"]), now=10.0)

    assert feed.seconds_before_event(10.5) == pytest.approx(LOG_WRITE_SECONDS - 0.5)
    assert feed.seconds_before_event(10.0 + LOG_WRITE_SECONDS) == 0
    assert feed.seconds_to_linger(11.0) == pytest.approx(LOG_LINGER_SECONDS - 1.0)
    assert feed.seconds_to_linger(10.0 + LOG_LINGER_SECONDS) == 0


def fired_trigger(logged_seconds_ago: float) -> SSHRemoteJobTrigger:
    trigger = SSHRemoteJobTrigger("c", None, "j", "/b/j", "/b/j/stdout.log", "/b/j/exit_code")
    trigger._fired = True
    trigger._log_hand_over.last_logged_at = asyncio.get_running_loop().time() - logged_seconds_ago
    return trigger


async def lingered(trigger: SSHRemoteJobTrigger) -> bool:
    """Whether its cleanup() was still waiting after a moment; it is then cancelled, and must end quietly."""
    cleanup = asyncio.create_task(trigger.cleanup())
    await asyncio.sleep(0.3)
    waiting = not cleanup.done()
    cleanup.cancel()
    await cleanup  # no CancelledError: the triggerer's cancel ends the wait, nothing else
    return waiting


def test_a_trigger_that_fired_stays_in_cleanup_until_cancelled_while_its_last_lines_are_recent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ssh_remote_job, "TRIGGER_LOG_WRITTEN_APART", True)  # Airflow 3, whichever runs here

    async def scenario() -> tuple[bool, bool]:
        return await lingered(fired_trigger(1.0)), await lingered(fired_trigger(LOG_LINGER_SECONDS))

    recent, old = asyncio.run(scenario())
    assert recent, "lines logged a second ago: it lingers (the triggerer cancels it once it moved on)"
    assert not old, "lines old enough: it returns at once"


def test_on_airflow_2_a_trigger_that_fired_does_not_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 2 writes a trigger's log in the trigger's own process, in order: nothing to wait for."""
    monkeypatch.setattr(ssh_remote_job, "TRIGGER_LOG_WRITTEN_APART", False)

    async def scenario() -> bool:
        return await lingered(fired_trigger(1.0))

    assert not asyncio.run(scenario())


def test_a_trigger_cancelled_while_its_event_waits_logs_the_lines_the_event_was_to_carry_once() -> None:
    feed = LogHandOver()
    feed.lines_to_log(Delivery(lines=["one"]), now=1.0)
    assert feed.leaving() == []
    feed.lines_to_log(Delivery(lines=["two", "three"], outcome=SUCCESS), now=1.5)
    assert feed.leaving() == ["two", "three"] and feed.leaving() == []
