"""
Components killed mid-fan-out on a production-shaped Airflow 3 (PostgreSQL, Redis, CeleryExecutor,
two Celery workers, two triggerers): a Celery worker SIGKILLed while tasks submit, a triggerer
SIGKILLed while it watches, then a graceful triggerer restart. The scenario and its readers are in
``production_scenario.py``; each test here judges one promise from what the run left.
"""

from __future__ import annotations

from collections import Counter

import pytest
from e2e_support import submitted_job_ids
from production_scenario import (
    FAN_OUT,
    KILL_REPEAT_SECONDS,
    MODES,
    ProductionRun,
    exit_code,
    mode_of,
    output_tries,
    recent_lines,
    run_fanouts,
    spread,
    takeovers,
    worker_kill_victims,
)

from harness.remote_jobs import job_dirs
from support.report import report

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.slow,
]

#: What a retry logs when it takes over the still running job of an earlier try.
REATTACHED_TEXT = "re-attaching to it instead of starting another"


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> ProductionRun:
    return run_fanouts(tmp_path_factory.mktemp("production"))


# ---------------------------------------------------------------------------- the tests


def shards(mode: str) -> list[int]:
    return [shard for shard in range(FAN_OUT) if mode_of(shard) == mode]


@pytest.mark.parametrize("mode", MODES)
def test_every_task_ends_with_its_jobs_exit_code(production: ProductionRun, mode: str) -> None:
    tis = {shard: production.tis[shard] for shard in shards(mode)}
    report(
        f"e2e production shape, {FAN_OUT}-way fan-out, the {len(tis)} tasks with submit_from={mode!r}: start "
        f"{production.seconds['start']:.0f}s, all deferred after {production.seconds['ramp']:.0f}s, run "
        f"done after {production.seconds['runs']:.0f}s; states {dict(Counter(state for state, _ in tis.values()))}; "
        f"tries {dict(Counter(tries for _, tries in tis.values()))}; scheduler race lines {len(production.race_lines)}"
    )
    assert sorted(production.tis) == list(range(FAN_OUT))
    expected = {shard: "skipped" if exit_code(shard) else "success" for shard in tis}
    wrong = {shard: state for shard, (state, _) in tis.items() if state != expected[shard]}
    assert not wrong, f"tasks not ended by their job's exit code: {wrong}"
    for shard in tis:
        text = "\n".join(line.event for lines in production.lines[shard].values() for line in lines)
        assert f"exited with code {exit_code(shard)}" in text, (
            f"shard {shard}: no exit code {exit_code(shard)}"
        )
    assert production.state == "success"


@pytest.mark.parametrize("mode", MODES)
def test_one_remote_job_per_task_instance(production: ProductionRun, mode: str) -> None:
    per_task = {shard: production.launches[f"{mode} {shard}"] for shard in shards(mode)}
    report(
        f"e2e production shape, submit_from={mode!r}: remote jobs per task instance "
        f"{dict(Counter(per_task.values()))} (jobs: tasks)"
    )
    assert set(per_task.values()) == {1}, {shard: n for shard, n in per_task.items() if n != 1}
    assert all(len(output_tries(production, shard)) == 1 for shard in per_task)


def test_celery_worker_killed_while_tasks_submit_the_retries_reattach(production: ProductionRun) -> None:
    fault = production.faults["worker"]
    victims = worker_kill_victims(production)
    retried = [production.lines[shard].get(2, []) for shard in victims]
    recoveries = sorted((lines[0].timestamp - fault.at).total_seconds() for lines in retried if lines)
    # Victims whose first try had its submit answered: the job ran before the worker died.
    submitted = [
        shard for shard in victims if submitted_job_ids([x.event for x in production.lines[shard][1]])
    ]
    reattached = [
        shard
        for shard in submitted
        if any(
            REATTACHED_TEXT in x.event for n, lines in production.lines[shard].items() if n > 1 for x in lines
        )
    ]
    report(
        f"e2e production shape, Celery worker {fault.component} SIGKILLed ({fault.detail}), started again "
        f"{production.seconds['worker back']:.0f}s later: {len(victims)} task(s) lost with it (shards "
        f"{victims}: {dict(Counter(mode_of(shard) for shard in victims))}); {len(submitted)} had launched "
        f"their job, {len(reattached)} of those re-attached by a retry; kill -> retry started: {spread(recoveries)}"
    )
    # The premise: the kill took running tasks with it, and Airflow failed and retried them.
    assert victims, "no task ran on the killed Celery worker: the kill tested nothing"
    assert len(recoveries) == len(victims), "a task lost with the worker was not retried"
    assert reattached == submitted, (
        f"retries that did not re-attach: {sorted(set(submitted) - set(reattached))}"
    )
    # Each victim's job ran once (test_one_remote_job_per_task_instance); its output is logged
    # from its first line, by the retry (the line tests judge the rest).
    for shard in victims:
        (stream,) = output_tries(production, shard)
        assert stream.try_number >= 2 and stream.numbers[0] == 1, (
            shard,
            stream.try_number,
            stream.numbers[:5],
        )


def gaps_at_the_kill(production: ProductionRun, shard: int) -> list[tuple[int, int]]:
    """(last line the SIGKILLed triggerer logged, next line logged) where lines went missing between."""
    killed = production.faults["triggerer"].job_id
    (stream,) = output_tries(production, shard)
    return [
        (stream.numbers[k - 1], stream.numbers[k])
        for k in range(1, len(stream.numbers))
        if stream.numbers[k] > stream.numbers[k - 1] + 1
        and stream.writers[k - 1] == killed != stream.writers[k]
    ]


@pytest.mark.parametrize("mode", MODES)
def test_lines_are_lost_or_repeated_only_where_a_triggerer_left_and_at_most_its_last_seconds(
    production: ProductionRun, mode: str
) -> None:
    """
    Away from the two triggerers that left, the log is exact. Where one left, its last
    KILL_REPEAT_SECONDS may come again: what the host had not yet recorded as delivered. For the
    SIGKILLed one that is the promise; the gracefully stopped one should repeat nothing (the
    test below), but a stop that overruns Airflow's 10 s grace ends in a SIGKILL too.
    """
    killed, restarted = production.faults["triggerer"].job_id, production.faults["restart"].job_id
    assert killed is not None and restarted is not None
    most_repeated = 0
    for shard in shards(mode):
        (stream,) = output_tries(production, shard)
        where = (
            f"shard {shard} try {stream.try_number}: {list(zip(stream.numbers, stream.writers, strict=True))}"
        )
        most_repeated = max(most_repeated, stream.repeated)
        assert stream.printed is not None and stream.numbers[-1] == stream.printed, where
        lost_at_kill = sum(after - before - 1 for before, after in gaps_at_the_kill(production, shard))
        assert stream.lost == lost_at_kill, f"lines lost away from the SIGKILL: {where}"
        for k in range(1, len(stream.numbers)):
            previous, current = stream.numbers[k - 1], stream.numbers[k]
            if current == previous + 1 or (previous, current) in gaps_at_the_kill(production, shard):
                continue
            left = stream.writers[k - 1]
            # Only where a triggerer left, once, from the next writer: at most its last seconds.
            assert current <= previous and left in (killed, restarted) and stream.writers[k] != left, where
            assert previous - current + 1 <= recent_lines(stream, left, KILL_REPEAT_SECONDS), where
    report(
        f"e2e production shape, submit_from={mode!r}: lines repeated per task at most {most_repeated}, only "
        f"where a triggerer left (at most its last {KILL_REPEAT_SECONDS:.1f}s); none lost or "
        "repeated anywhere else"
    )


@pytest.mark.parametrize("mode", MODES)
def test_no_line_lost_at_the_sigkill(production: ProductionRun, mode: str) -> None:
    gaps = {shard: found for shard in shards(mode) if (found := gaps_at_the_kill(production, shard))}
    lost = sum(after - before - 1 for found in gaps.values() for before, after in found)
    report(
        f"e2e production shape, submit_from={mode!r}: lines lost at the triggerer SIGKILL {lost} in "
        f"{len(gaps)} of {len(shards(mode))} tasks (last line the dead triggerer logged -> next line: "
        f"{dict(list(gaps.items())[:5])})"
    )
    assert not gaps


@pytest.mark.xfail(
    reason="exact when the stopping triggerer's last offset records are answered within its shutdown "
    "(measured: 0 of 100 tasks repeated a line); in a full test run on a loaded machine 73 of 98 "
    "triggers waited out their record, the stop overran Airflow's 10 s grace and ended in SIGKILL",
    strict=False,
)
@pytest.mark.parametrize("mode", MODES)
def test_graceful_restart_hands_over_at_the_exact_line(production: ProductionRun, mode: str) -> None:
    restarted = production.faults["restart"].job_id
    repeats: dict[int, int] = {}
    for shard in shards(mode):
        (stream,) = output_tries(production, shard)
        for k in range(1, len(stream.writers)):
            if (
                stream.writers[k - 1] == restarted != stream.writers[k]
                and stream.numbers[k] <= stream.numbers[k - 1]
            ):
                repeats[shard] = stream.numbers[k - 1] - stream.numbers[k] + 1
    report(
        f"e2e production shape, submit_from={mode!r}: graceful restart, tasks with lines repeated "
        f"{len(repeats)} of {len(shards(mode))} (lines: tasks {dict(Counter(repeats.values()))})"
    )
    assert not repeats


def test_triggerer_killed_and_restarted_their_tasks_move_and_resume(production: ProductionRun) -> None:
    killed, restarted = production.faults["triggerer"], production.faults["restart"]
    after_kill, after_restart = takeovers(production, killed), takeovers(production, restarted)
    report(
        f"e2e production shape, triggerer {killed.component} SIGKILLed while watching ({killed.detail}): "
        f"every trigger on the other after {production.seconds['failover']:.0f}s; kill -> next line from "
        f"another triggerer: {spread(after_kill)}. Graceful restart of {restarted.component} "
        f"({restarted.detail}, stop took {production.seconds['graceful stop']:.0f}s): stop -> next line: "
        f"{spread(after_restart)}"
    )
    assert after_kill, "the SIGKILL moved no task: nothing was tested"
    assert after_restart, "the graceful restart moved no task: nothing was tested"


def test_connections_per_host_equal_the_live_triggerers_holding_its_triggers(
    production: ProductionRun,
) -> None:
    samples = production.samples
    report(
        f"e2e production shape: connections to the host per triggerer, most at once {production.sampler.peak}; "
        f"{len(samples)} samples over the run"
    )
    too_many = [(phase, conns) for phase, _, conns in samples if any(n > 1 for n in conns.values())]
    assert not too_many, too_many
    for phase in ("two triggerers", "after the failover", "after the restart"):
        seen = [(held, conns) for name, held, conns in samples if name == phase]
        steady = [
            conns for held, conns in seen if conns == {name: int(held.get(name, 0) > 0) for name in conns}
        ]
        assert steady, f"{phase}: no sample with one connection per triggerer holding triggers: {seen[-5:]}"
    two = [conns for name, _, conns in samples if name == "two triggerers"]
    assert any(sum(conns.values()) == 2 for conns in two), two[-5:]


def test_no_job_directory_left(production: ProductionRun) -> None:
    left = job_dirs(production.remote_dir)
    assert not left, left
