"""The e2e harness itself: it must stop exactly what it started, and judge task logs correctly."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import demo
from harness.airflow_deploy import RunProgress, parse_log_line
from harness.airflow_release import Release
from harness.processes import (
    is_same_live_process,
    process_id,
    run_bounded,
    spawn_in_new_session,
    terminate_tree,
)
from harness.remote_jobs import job_dirs, kill_running_jobs

pytestmark = pytest.mark.e2e


def wait_for_file(path: Path, lines: int = 1, timeout: float = 10.0) -> str:
    """The file's text once it holds ``lines`` lines."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if path.exists() and len(path.read_text().split("\n")) > lines:
            return path.read_text()
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{path} did not get {lines} line(s) within {timeout}s")


def test_terminate_tree_reaches_children_that_left_the_session(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"setsid sleep 60 & echo $! >> {pids}; sleep 60 & echo $! >> {pids}; wait"
    proc = spawn_in_new_session(["bash", "-c", script], output=tmp_path / "out")
    children = [process_id(int(pid)) for pid in wait_for_file(pids, lines=2).split()]
    terminate_tree(proc, timeout=5)
    assert proc.returncode is not None
    assert not any(child and is_same_live_process(*child) for child in children)


def test_terminate_tree_after_a_normal_exit_stops_what_stayed_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    proc = spawn_in_new_session(["bash", "-c", f"sleep 60 & echo $! > {pid_file}"], output=tmp_path / "out")
    orphan = process_id(int(wait_for_file(pid_file)))
    proc.wait(timeout=10)
    assert orphan is not None and is_same_live_process(*orphan)
    terminate_tree(proc, timeout=5)
    assert not is_same_live_process(*orphan)


def test_run_bounded_stops_a_program_that_ignores_sigterm(tmp_path: Path) -> None:
    # Like `airflow dags test`: deaf to SIGTERM, stopped by SIGINT.
    script = "trap '' TERM; trap 'exit 130' INT; while :; do sleep 0.1; done"
    started = time.monotonic()
    status = run_bounded(
        ["bash", "-c", script], timeout=1, output=tmp_path / "out", first_signal=signal.SIGINT
    )
    assert status is None
    assert time.monotonic() - started < 5, "SIGINT should have stopped it well before SIGKILL"


def test_kill_running_jobs_only_touches_verified_job_leaders(tmp_path: Path) -> None:
    base = tmp_path / "jobs"
    job = base / "af_demo_shard_m0_t1_0123456789abcdef"
    job.mkdir(parents=True)
    # Like the real wrapper: it records its pid and stays the leader while the command runs.
    (job / "run.sh").write_text("echo $$ > pid.tmp; mv pid.tmp pid; sleep 60\n")
    wrapper = subprocess.Popen(
        ["setsid", "/bin/sh", f"{job}/run.sh"], cwd=job, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_file(job / "pid")
        impostor = base / "af_not_ours_0123456789abcdef"
        impostor.mkdir()
        (impostor / "pid").write_text(str(os.getpid()))
        assert [path.name for path in job_dirs(base)] == sorted([job.name, impostor.name])
        assert kill_running_jobs(base) == 1
        assert wrapper.wait(timeout=10) == -signal.SIGKILL
    finally:
        if wrapper.poll() is None:
            # The wrapper leads its own group (setsid): take its child along.
            os.killpg(wrapper.pid, signal.SIGKILL)
            wrapper.wait(timeout=10)


def test_log_lines_are_parsed_as_json_or_kept_verbatim() -> None:
    record = parse_log_line("trigger", '{"event": "shard 1 done", "level": "info"}')
    assert (record.source, record.level, record.event) == ("trigger", "info", "shard 1 done")
    assert parse_log_line("worker", "not json").event == "not json"


def test_airflow_2_text_log_lines_are_parsed_too() -> None:
    line = "[2026-12-06T13:10:00.123+0000] {ssh_remote_job.py:212} INFO - Remote job j on h: running (pid 7)"
    record = parse_log_line("worker", line)
    assert (record.level, record.event, record.raw) == ("info", "Remote job j on h: running (pid 7)", line)
    # A traceback's continuation line is kept as it is.
    assert parse_log_line("worker", "  File 'x.py', line 3").event == "  File 'x.py', line 3"


@pytest.mark.parametrize(
    ("major", "web", "health"),
    [(2, "webserver", "/api/v1/health"), (3, "api-server", "/api/v2/monitor/health")],
)
def test_each_release_has_its_components_and_api(major: int, web: str, health: str) -> None:
    release = Release(major)
    assert release.web_component == web and release.health_path == health
    assert release.components[1:] == (
        ("scheduler", "dag-processor", "triggerer") if major >= 3 else ("scheduler", "triggerer")
    )
    # Airflow 2.11 may not be given a null logical date.
    assert ("logical_date" in release.run_body("r", {})) is (major >= 3)


@pytest.mark.parametrize(
    ("events", "complete"),
    [
        (["noise", "shard 3 starting on vm", "x", "shard 3 done"], True),
        (["shard 3 done", "shard 3 starting on vm"], False),  # out of order
        (["shard 3 starting on vm"], False),  # missing its last line
        (["shard 3 starting on vm", "shard 4 done", "shard 3 done"], False),  # another task's line
    ],
)
def test_demo_judges_a_task_log(events: list[str], complete: bool) -> None:
    own, foreign = demo.shard_lines(events, 3)
    assert demo.TaskReport(3, "success", 1, own, foreign).output_complete is complete


def test_demo_progress_without_a_terminal_prints_plain_throttled_lines() -> None:
    stream = io.StringIO()
    progress = demo.ProgressLine(stream)
    for elapsed in range(3):
        progress.update(RunProgress(float(elapsed), "running", Counter({"running": 2})))
    progress.update(RunProgress(3.0, "success", Counter({"success": 2})))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == ["  [   0s] run running: 2 running", "  [   3s] run success: 2 success"]


def test_demo_rejects_a_bad_task_count() -> None:
    with pytest.raises(SystemExit):
        demo.parse_args(["--tasks", "0"])
    assert demo.parse_args([]).tasks == 50
    assert sys.modules["demo"].DAG_ID == "example_ssh_remote_job_fanout"


def test_demo_tells_the_scheduler_race_from_a_failed_worker() -> None:
    template = (
        "[error] Executor LocalExecutor(parallelism=32) reported that the task instance <TaskInstance: "
        "example_ssh_remote_job_fanout.shard manual__1 map_index={index} [running] ti_id=x> finished with "
        "state {state}, but the task instance's state attribute is running."
    )
    rows = dict(
        demo.airflow_side_rows(
            [template.format(index=2, state="success"), template.format(index=7, state="failed")]
        )
    )
    assert "(map index 2)" in rows["Scheduler race"]
    assert "(map index 7)" in rows["Worker failures"]
    assert demo.airflow_side_rows([]) == []
