"""The trigger against a real sshd: one held connection, reconnects, limits, and exact log delivery."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from support.jobs import start_job, trigger_for
from support.report import report
from support.runner import watch, while_running
from support.sshd import use_connection
from support.waiting import wait_until

pytestmark = pytest.mark.integration


def test_trigger_holds_one_connection_for_the_whole_watch(sshd, poll_conn: str, remote_base_dir: str) -> None:
    paths = start_job(poll_conn, remote_base_dir, "for i in $(seq 1 10); do echo line $i; sleep 0.2; done")
    before = sshd.counts()
    lines, event = watch(trigger_for(poll_conn, paths, poll_interval=0.1))
    after = sshd.counts()

    assert event["status"] == "success"
    assert lines == [f"line {i}" for i in range(1, 11)]
    assert after["accepted"] - before["accepted"] == 1
    assert after["sessions"] - before["sessions"] >= 5, "it really polled many times over that connection"


@pytest.mark.load
def test_several_megabytes_written_just_before_exit_arrive_exactly(
    poll_conn: str, remote_base_dir: str
) -> None:
    # ~6 MB of numbered lines, all written at the very end, then exit.
    command = "sleep 0.5\nseq 1 800000 | sed 's/^/row /'\nexit 0\n"
    paths = start_job(poll_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(poll_conn, paths, log_chunk_size=256 * 1024), timeout=300)

    assert event["status"] == "success"
    expected = [f"row {i}" for i in range(1, 800001)]
    assert len(lines) == len(expected)
    assert lines == expected
    assert event["log_offset"] == os.path.getsize(paths.log_file)


def test_multibyte_character_split_by_a_chunk_boundary_comes_out_whole(
    poll_conn: str, remote_base_dir: str
) -> None:
    # 1023 ASCII bytes then a 3-byte character: every 1024-byte chunk boundary cuts it.
    command = "printf '%1023s' '' | tr ' ' 'a'\nprintf '\\342\\202\\254 euro\\n'\nprintf 'end\\n'\n"
    paths = start_job(poll_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(poll_conn, paths, log_chunk_size=1024))

    assert event["status"] == "success"
    assert lines == ["a" * 1023 + "\u20ac euro", "end"]


def test_invalid_bytes_become_replacement_characters(poll_conn: str, remote_base_dir: str) -> None:
    command = "printf 'ok \\377\\376 bad\\n\\303\\n'\nprintf 'tail-no-newline \\300'\n"
    paths = start_job(poll_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(poll_conn, paths))

    assert event["status"] == "success"
    assert lines == ["ok \ufffd\ufffd bad", "\ufffd", "tail-no-newline \ufffd"]


def test_vanished_process_ends_with_a_clear_error_within_a_few_polls(
    poll_conn: str, remote_base_dir: str
) -> None:
    paths = start_job(poll_conn, remote_base_dir, "echo started\nsleep 300\n")
    wait_until(lambda: Path(paths.log_file).read_text() == "started\n", what="the job's first line")
    pid = int(Path(paths.pid_file).read_text())
    os.killpg(pid, signal.SIGKILL)  # like the OOM killer: no chance to write an exit code

    started = time.monotonic()
    lines, event = watch(trigger_for(poll_conn, paths, poll_interval=0.5))

    assert event["status"] == "error"
    assert event["exit_code"] is None
    assert "without writing an exit code" in event["message"]
    assert lines == ["started"]
    assert time.monotonic() - started < 10


def test_auto_asks_the_host_once_and_polls_in_perl(
    sshd, ssh_conn: str, remote_base_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    paths = start_job(ssh_conn, remote_base_dir, "echo one\nsleep 1\necho two\n")
    with caplog.at_level(logging.INFO, logger="ssh_jobs_provider.triggers.host_session"):
        lines, event = watch(trigger_for(ssh_conn, paths, poll_interval=0.2))
    assert event["status"] == "success" and lines == ["one", "two"]
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Polls of jobs on")]
    assert chosen == [f"Polls of jobs on {sshd.user}@{sshd.host}:{sshd.port} run in perl"]


def watch_ticking_job_through(
    outage: Callable[[], None],
    conn_id: str,
    base_dir: str,
    line: str,
    count: int,
    pause: float,
    **kwargs: Any,
) -> None:
    """Watch a job printing ``<line>1`` ... ``<line><count>`` while ``outage`` runs; every line must arrive once."""
    paths = start_job(conn_id, base_dir, f"for i in $(seq 1 {count}); do echo {line}$i; sleep {pause}; done")
    trigger = trigger_for(conn_id, paths, command_timeout=5, **kwargs)
    lines, event = while_running(outage, lambda: watch(trigger))
    assert event["status"] == "success", event
    assert lines == [f"{line}{i}" for i in range(1, count + 1)], (
        "no line lost or duplicated across the reconnect"
    )


def test_trigger_survives_sshd_stopped_for_seconds_and_restarted(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    def outage() -> None:
        time.sleep(1.0)
        sshd.stop()  # also kills the per-connection sshd process: the held connection drops
        time.sleep(3.0)
        sshd.start()

    watch_ticking_job_through(
        outage, ssh_conn, remote_base_dir, "tick ", 30, 0.2, poll_interval=0.3, max_reconnect_attempts=8
    )
    assert sshd.counts()["accepted"] >= 3, "submit, first watch connection, and at least one reconnect"


def test_max_sessions_1_still_completes(sshd_factory, monkeypatch, remote_base_dir: str) -> None:
    server = sshd_factory(max_sessions=1)
    use_connection(monkeypatch, server, "ssh_one")
    paths = start_job("ssh_one", remote_base_dir, "for i in 1 2 3 4 5; do echo n$i; sleep 0.2; done")
    before = server.counts()
    lines, event = watch(trigger_for("ssh_one", paths, poll_interval=0.1))
    after = server.counts()

    assert event["status"] == "success", event
    assert lines == [f"n{i}" for i in range(1, 6)]
    # sshd frees a closed session's slot a moment late, so a back-to-back channel can be
    # refused; the refusal is absorbed on the same connection, never by reconnecting.
    assert after["accepted"] - before["accepted"] == 1
    assert after["sessions"] - before["sessions"] >= 5
    report(
        f"MaxSessions 1: trigger polls={after['sessions'] - before['sessions']} refusals absorbed={after['session_refusals']}"
    )


def test_max_sessions_0_ends_in_an_error_event_after_the_budget(sshd_factory, monkeypatch, tmp_path) -> None:
    server = sshd_factory(max_sessions=0)
    use_connection(monkeypatch, server, "ssh_none")
    paths = RemoteJobPaths(job_id="never", base_dir=str(tmp_path / "jobs"))
    trigger = trigger_for("ssh_none", paths, max_reconnect_attempts=2, command_timeout=5)

    started = time.monotonic()
    _, event = watch(trigger, timeout=60)
    elapsed = time.monotonic() - started

    assert event["status"] == "error"
    assert "2 reconnect attempt(s)" in event["message"]
    assert "MaxSessions" in event["message"]
    assert elapsed < 30
    # Budget 2 means 3 failed polls in all, each on a fresh connection.
    assert server.counts()["accepted"] == 3


def test_reconnect_budget_resets_only_after_a_successful_poll(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    """Three outages, each needing 1-2 reconnects, with a budget of 2: survives because polls succeed in between."""

    def outages() -> None:
        for _ in range(3):
            time.sleep(1.5)
            sshd.restart()

    watch_ticking_job_through(
        outages, ssh_conn, remote_base_dir, "t", 40, 0.25, poll_interval=0.2, max_reconnect_attempts=2
    )
