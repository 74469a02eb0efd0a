"""A 120-way simultaneous submit, like a large ``.expand()`` hitting one host at once."""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.hooks import handshake_turns, shared_login
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from support.logs import capture_logs
from support.report import report
from support.runner import StandInTaskInstance, submit
from support.sshd import use_connection

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 120
#: Drops (and so retried submits) a loaded machine may still see with turns: a few of 120.
RARE_DROPS = 3


def _submit_one(index: int, base_dir: str, started_file: str, barrier: Any, results: Any) -> None:
    """Runs in a forked worker process: build the operator, wait for the start gun, submit."""
    op = SSHRemoteJobOperator(
        task_id="fan_out",
        ssh_conn_id="ssh_test",
        command='echo "$JOB_INDEX" >> "$STARTED_FILE"\n',
        environment={"JOB_INDEX": str(index), "STARTED_FILE": started_file},
        remote_base_dir=base_dir,
    )
    ti = StandInTaskInstance(task_id="fan_out", map_index=index)
    barrier.wait(timeout=120)
    began = time.monotonic()
    with capture_logs() as logs:
        # Only warnings are wanted: the libraries' debug lines would slow 120 processes down.
        logging.getLogger().setLevel(logging.WARNING)
        try:
            submit(op, ti)
        except BaseException as error:
            outcome, detail = "error", f"{type(error).__name__}: {error}"
        else:
            outcome, detail = "ok", ""
    # What made this submit try again, if anything (its retry loop says so at WARNING).
    retried = [
        str(entry["event"])
        for entry in logs
        if entry.get("log_level") == "warning" and "(attempt " in str(entry["event"])
    ]
    results.put((index, outcome, detail, time.monotonic() - began, retried))


@pytest.mark.load
@pytest.mark.parametrize("share_login", ["auto", False], ids=["by_default", "turns_alone"])
def test_120_way_simultaneous_submit_against_default_max_startups(
    sshd_factory, monkeypatch, tmp_path: Path, share_login: str | bool
) -> None:
    server = sshd_factory(max_startups="10:30:100", max_sessions=10)
    use_connection(monkeypatch, server, "ssh_test", share_login=share_login)
    # Brokers end soon after the burst (not 30 s later), while this test's sshd still runs.
    monkeypatch.setattr(shared_login, "BROKER_IDLE_SECONDS", 3.0)
    # The turns are what is tested, not how long a worker waits for one before it goes ahead
    # without (60 s): on a machine loaded enough, 120 handshakes 8 at a time take longer.
    monkeypatch.setattr(handshake_turns, "DEFAULT_TURN_WAIT", 600.0)
    base_dir = str(tmp_path / "jobs")
    started_file = str(tmp_path / "started.txt")

    ctx = multiprocessing.get_context("fork")  # imports are done: forking is cheap on 2 cores
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=_submit_one, args=(i, base_dir, started_file, barrier, results), daemon=True)
        for i in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    began = time.monotonic()
    barrier.wait(timeout=120)  # release all 120 at once

    outcomes = []
    try:
        for _ in range(WORKERS):
            outcomes.append(results.get(timeout=300))
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    wall = time.monotonic() - began

    failures = [o for o in outcomes if o[1] != "ok"]
    counts = server.counts()
    # Every job appends its index once; wait (bounded) for the detached jobs to finish.
    deadline = time.monotonic() + 60
    started: list[str] = []
    while time.monotonic() < deadline:
        started = Path(started_file).read_text().split() if Path(started_file).exists() else []
        if len(started) >= WORKERS:
            break
        time.sleep(0.2)
    slowest = max(o[3] for o in outcomes)
    report(
        f"120-way submit (MaxStartups 10:30:100, share_login={share_login}): failed={len(failures)} jobs_started={len(started)} "
        f"handshakes_accepted={counts['accepted']} tcp_connections={counts['connections']} "
        f"drops={counts['drops']} penalty_drops={counts['penalty_drops']} slowest_submit={slowest:.1f}s burst_wall={wall:.1f}s "
        f"retried={sum(bool(o[4]) for o in outcomes)}"
    )

    retries = [(o[0], line) for o in outcomes for line in o[4]]
    assert failures == [], failures[:5]
    # The workers of this machine took turns (handshake_slots 8, below MaxStartups' 10). sshd
    # counts a login as unauthenticated until its listener process hears of it, a moment after
    # the client did: on a loaded machine the turn's next holder can come first, and a rare drop
    # remains (retried, never a failure; in one CI run, one drop in 120 against OpenSSH 10 in a
    # container, and one extra login against the local sshd). Without turns such a burst is
    # dropped by the dozen.
    assert counts["drops"] <= RARE_DROPS and len(retries) <= RARE_DROPS, (counts, retries)
    assert counts["connections"] <= WORKERS + RARE_DROPS, (counts, retries)
    assert sorted(started, key=int) == [str(i) for i in range(WORKERS)], "each job started exactly once"
    assert len(list(Path(base_dir).iterdir())) == WORKERS
    if share_login == "auto":
        # The burst's submits met each other's handshakes: most went over one broker's login.
        # Those that came before any other held a turn, or while the broker logged in and its
        # socket was not yet there, logged in themselves.
        assert counts["accepted"] <= WORKERS // 4, counts
