"""The trigger against a real sshd: one held connection, reconnects, limits, and exact log delivery."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from ssh_jobs_provider.utils.remote_job import (
    RemoteJobPaths,
    build_submit_script,
    new_job_token,
    parse_submit_output,
)
from support.report import report
from support.runner import run_trigger

#: The token of every job these tests submit: their triggers check it like the operator's.
TOKEN = new_job_token()

pytestmark = pytest.mark.integration


def start_job(conn_id: str, base_dir: str, command: str, job_id: str = "job") -> RemoteJobPaths:
    """Submit a job directly with the sync hook (the operator's own submit is tested elsewhere)."""
    paths = RemoteJobPaths(job_id=job_id, base_dir=base_dir)
    hook = SSHHook(ssh_conn_id=conn_id)
    with hook.get_conn() as client:
        _, stdout, _ = hook.run_script(client, build_submit_script(paths, command, {}, TOKEN), timeout=30)
    assert parse_submit_output(stdout).pid is not None
    return paths


def trigger_for(conn_id: str, paths: RemoteJobPaths, **kwargs) -> SSHRemoteJobTrigger:
    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("command_timeout", 10.0)
    kwargs.setdefault("job_token", TOKEN)
    return SSHRemoteJobTrigger(
        ssh_conn_id=conn_id,
        remote_host=None,
        job_id=paths.job_id,
        job_dir=paths.job_dir,
        log_file=paths.log_file,
        exit_code_file=paths.exit_code_file,
        **kwargs,
    )


def watch(trigger: SSHRemoteJobTrigger, timeout: float = 120) -> tuple[list[str], dict]:
    logs, events = asyncio.run(run_trigger(trigger, timeout))
    assert len(events) == 1, events
    lines = [entry["event"] for entry in logs if entry.get("log_level") == "info"]
    return lines, events[0].payload


def test_trigger_holds_one_connection_for_the_whole_watch(sshd, ssh_conn: str, remote_base_dir: str) -> None:
    paths = start_job(ssh_conn, remote_base_dir, "for i in $(seq 1 10); do echo line $i; sleep 0.2; done")
    before = sshd.counts()
    lines, event = watch(trigger_for(ssh_conn, paths, poll_interval=0.1))
    after = sshd.counts()

    assert event["status"] == "success"
    assert lines == [f"line {i}" for i in range(1, 11)]
    assert after["accepted"] - before["accepted"] == 1
    assert after["sessions"] - before["sessions"] >= 5, "it really polled many times over that connection"


def test_several_megabytes_written_just_before_exit_arrive_exactly(
    ssh_conn: str, remote_base_dir: str
) -> None:
    # ~6 MB of numbered lines, all written at the very end, then exit.
    command = "sleep 0.5\nseq 1 800000 | sed 's/^/row /'\nexit 0\n"
    paths = start_job(ssh_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(ssh_conn, paths, log_chunk_size=256 * 1024), timeout=300)

    assert event["status"] == "success"
    expected = [f"row {i}" for i in range(1, 800001)]
    assert len(lines) == len(expected)
    assert lines == expected
    assert event["log_offset"] == os.path.getsize(paths.log_file)


def test_multibyte_character_split_by_a_chunk_boundary_comes_out_whole(
    ssh_conn: str, remote_base_dir: str
) -> None:
    # 1023 ASCII bytes then a 3-byte character: every 1024-byte chunk boundary cuts it.
    command = "printf '%1023s' '' | tr ' ' 'a'\nprintf '\\342\\202\\254 euro\\n'\nprintf 'end\\n'\n"
    paths = start_job(ssh_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(ssh_conn, paths, log_chunk_size=1024))

    assert event["status"] == "success"
    assert lines == ["a" * 1023 + "\u20ac euro", "end"]


def test_invalid_bytes_become_replacement_characters(ssh_conn: str, remote_base_dir: str) -> None:
    command = "printf 'ok \\377\\376 bad\\n\\303\\n'\nprintf 'tail-no-newline \\300'\n"
    paths = start_job(ssh_conn, remote_base_dir, command)
    lines, event = watch(trigger_for(ssh_conn, paths))

    assert event["status"] == "success"
    assert lines == ["ok \ufffd\ufffd bad", "\ufffd", "tail-no-newline \ufffd"]


def test_vanished_process_ends_with_a_clear_error_within_a_few_polls(
    ssh_conn: str, remote_base_dir: str
) -> None:
    paths = start_job(ssh_conn, remote_base_dir, "echo started\nsleep 300\n")
    pid = int(Path(paths.pid_file).read_text())
    os.killpg(pid, signal.SIGKILL)  # like the OOM killer: no chance to write an exit code

    started = time.monotonic()
    lines, event = watch(trigger_for(ssh_conn, paths, poll_interval=0.5))

    assert event["status"] == "error"
    assert event["exit_code"] is None
    assert "without writing an exit code" in event["message"]
    assert lines == ["started"]
    assert time.monotonic() - started < 10


def test_trigger_survives_sshd_stopped_for_seconds_and_restarted(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    paths = start_job(ssh_conn, remote_base_dir, "for i in $(seq 1 30); do echo tick $i; sleep 0.2; done")
    trigger = trigger_for(ssh_conn, paths, poll_interval=0.3, max_reconnect_attempts=8, command_timeout=5)

    def outage() -> None:
        time.sleep(1.0)
        sshd.stop()  # also kills the per-connection sshd process: the held connection drops
        time.sleep(3.0)
        sshd.start()

    thread = threading.Thread(target=outage)
    thread.start()
    try:
        lines, event = watch(trigger)
    finally:
        thread.join()

    assert event["status"] == "success", event
    assert lines == [f"tick {i}" for i in range(1, 31)], "no line lost or duplicated across the reconnect"
    assert sshd.counts()["accepted"] >= 3, "submit, first watch connection, and at least one reconnect"


def test_max_sessions_1_still_completes(sshd_factory, monkeypatch, remote_base_dir: str) -> None:
    server = sshd_factory(max_sessions=1)
    for name, value in server.airflow_env(conn_id="ssh_one").items():
        monkeypatch.setenv(name, value)
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
    for name, value in server.airflow_env(conn_id="ssh_none").items():
        monkeypatch.setenv(name, value)
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
    paths = start_job(ssh_conn, remote_base_dir, "for i in $(seq 1 40); do echo t$i; sleep 0.25; done")
    trigger = trigger_for(ssh_conn, paths, poll_interval=0.2, max_reconnect_attempts=2, command_timeout=5)

    def outages() -> None:
        for _ in range(3):
            time.sleep(1.5)
            sshd.restart()

    thread = threading.Thread(target=outages)
    thread.start()
    try:
        lines, event = watch(trigger)
    finally:
        thread.join()
    assert event["status"] == "success", event
    assert lines == [f"t{i}" for i in range(1, 41)]
