"""
An outcome is final only when it is certain: a job whose directory is gone is looked up in the
records of removed jobs, a directory missing once is asked again, and a login shell's banner
cannot hide an answer. Against a real sshd.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult
from support.jobs import TOKEN, make_operator, start_job, trigger_for
from support.runner import run_operator, watch
from support.sshd import use_connection
from support.waiting import wait_until

pytestmark = [pytest.mark.integration]


def remove_after_it_ended(conn_id: str, paths: object) -> None:
    """What the cleanup of an earlier watcher does: record the job's end, remove its directory."""
    entry = CleanupEntry(paths, token=TOKEN)  # type: ignore[arg-type]
    hook = SSHHook(ssh_conn_id=conn_id)
    with hook.get_conn() as client:
        _, stdout, _ = hook.run_script(client, build_batch_script([entry]), 30)
    assert parse_batch_output(stdout, [entry])[0] == CleanupResult("removed")


@pytest.mark.parametrize(
    ("command", "status", "code"), [("echo done\nexit 0\n", "success", 0), ("exit 3\n", "failed", 3)]
)
def test_a_watcher_that_finds_the_directory_removed_reports_the_recorded_exit_code(
    poll_conn: str, remote_base_dir: str, command: str, status: str, code: int
) -> None:
    # A trigger re-created between the cleanup and its event (a triggerer killed, two
    # triggerers during a failover) must neither fail a job that exited 0 nor lose a failed
    # job's exit code.
    paths = start_job(poll_conn, remote_base_dir, command)
    wait_until(lambda: Path(paths.exit_code_file).exists(), what="the job's end")
    remove_after_it_ended(poll_conn, paths)

    _, event = watch(trigger_for(poll_conn, paths))

    assert (event["status"], event["exit_code"]) == (status, code), event
    assert "was not run again" in event["message"]


def test_a_directory_missing_for_one_poll_costs_the_job_nothing(poll_conn: str, remote_base_dir: str) -> None:
    # One failed look (NFS ESTALE, an automount that lapsed): the job is asked again, not failed.
    paths = start_job(poll_conn, remote_base_dir, "echo before\nsleep 5\necho after\nexit 0\n")
    job_dir = Path(paths.job_dir)
    away = job_dir.with_name(job_dir.name + ".away")
    hidden: list[float] = []

    def hide_across_one_tick() -> None:
        # Polls fall on a grid of poll_interval (1 s) of the event loop's clock, which is
        # time.monotonic(): away from 0.3 s after one tick (its poll is done) to 0.5 s after
        # the next, the directory is missing for exactly one poll.
        time.sleep(1.2)
        tick = math.floor(time.monotonic()) + 1
        time.sleep(max(0.0, tick + 0.3 - time.monotonic()))
        os.rename(job_dir, away)
        hidden.append(time.monotonic() - tick)
        time.sleep(max(0.0, tick + 1.5 - time.monotonic()))
        os.rename(away, job_dir)
        hidden.append(time.monotonic() - tick)

    hider = threading.Thread(target=hide_across_one_tick)
    hider.start()
    try:
        lines, event = watch(trigger_for(poll_conn, paths, poll_interval=1.0))
    finally:
        hider.join()
    # The directory was away across exactly one tick (tick + 1), and back before the next one.
    assert hidden[0] < 1.0 and 1.0 < hidden[1] < 2.0, hidden
    assert (event["status"], event["exit_code"]) == ("success", 0), event
    assert lines == ["before", "after"]


def test_a_login_banner_without_a_final_newline_hides_no_answer(
    sshd_factory: object, monkeypatch: pytest.MonkeyPatch, remote_base_dir: str
) -> None:
    sshd = sshd_factory()  # type: ignore[operator]
    # Debian's bash reads ~/.bashrc for every command sshd runs: a banner with no newline after it.
    (sshd.home_dir / ".bashrc").write_text("printf 'Welcome to the cluster'\n")
    conn_id = use_connection(monkeypatch, sshd, "ssh_banner")

    for submit_from in ("worker", "triggerer"):
        base_dir = f"{remote_base_dir}/{submit_from}"
        op = make_operator(conn_id, base_dir, command="echo hello\n", submit_from=submit_from)
        result = run_operator(op)
        assert result.outcome == "success", (submit_from, result.error)
        assert result.trigger_lines[-1] == "hello", submit_from
