"""The airflow-ssh-jobs command against a real sshd: doctor, status and reap."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ssh_jobs_provider.cli.main import main
from ssh_jobs_provider.protocol.identity import make_job_id
from support.jobs import start_job
from support.sshd import use_connection
from support.waiting import wait_until

OLD = time.time() - 10 * 86400


def job_id(n: int) -> str:
    return make_job_id("ops_dag", "task", f"run{n}", -1, 1)


def finished(paths: object) -> bool:
    """The job's exit code is recorded and its wrapper is gone (an exit record counts only then)."""
    job_dir = Path(str(paths.job_dir))  # type: ignore[attr-defined]
    if not (job_dir / "exit_code").exists():
        return False
    try:
        os.kill(int((job_dir / "pid").read_text()), 0)
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return True
    return False


def age(path: Path) -> None:
    """Make a job directory look ten days idle."""
    for item in (path, path / "stdout.log", path / "exit_code", path / "token"):
        if item.exists():
            os.utime(item, (OLD, OLD))


def test_doctor_measures_max_sessions_and_passes(sshd_factory, monkeypatch, remote_base_dir, capsys) -> None:
    server = sshd_factory(max_sessions=3)
    conn = use_connection(monkeypatch, server, "ssh_doctor")
    started = time.monotonic()
    status = main(["doctor", "--conn-id", conn, "--base-dir", remote_base_dir, "--fan-out", "200"])
    out = capsys.readouterr().out
    assert time.monotonic() - started < 30
    assert status == 0, out
    assert any(line.split()[:3] == ["ok", "MaxSessions", "3"] for line in out.splitlines()), out
    assert "publickey" in out and "pinned by the 'host_key' extra" in out
    assert "MaxStartups          100:30:200" in out
    # Two connections in all, and nothing left behind.
    assert server.wait_for_counts(accepted=2)["accepted"] == 2
    assert not Path(remote_base_dir).exists()


def test_doctor_fails_on_a_base_dir_that_is_not_writable(ssh_conn, capsys) -> None:
    status = main(["doctor", "--conn-id", ssh_conn, "--base-dir", "/proc/airflow-ssh-jobs"])
    out = capsys.readouterr().out
    assert status == 1
    line = next(line for line in out.splitlines() if "remote_base_dir" in line)
    assert line.startswith("FAIL") and "not writable by the SSH user" in line, out
    assert "-> make /proc writable by the SSH user, or set remote_base_dir" in out


def test_bad_input_is_refused_before_anything_runs(sshd, ssh_conn, capsys) -> None:
    assert main(["reap", "--conn-id", ssh_conn, "--older-than", "7x"]) == 2
    assert "--older-than: Invalid age '7x'" in capsys.readouterr().err
    assert main(["status", "--conn-id", "no_such_conn"]) == 2
    assert "AIRFLOW_CONN_NO_SUCH_CONN" in capsys.readouterr().err
    assert main(["status", "--conn-id", ssh_conn, "--base-dir", "relative"]) == 2
    assert sshd.counts()["accepted"] == 0


def test_status_shows_the_jobs_started(ssh_conn, remote_base_dir, capsys) -> None:
    done = start_job(ssh_conn, remote_base_dir, "echo twelve-bytes; exit 3", job_id(1))
    running = start_job(ssh_conn, remote_base_dir, "sleep 30", job_id(2))
    wait_until(lambda: finished(done))
    assert main(["status", "--conn-id", ssh_conn, "--base-dir", remote_base_dir, "--json"]) == 0
    jobs = {job["job_id"]: job for job in json.loads(capsys.readouterr().out)["jobs"]}
    assert set(jobs) == {done.job_id, running.job_id}
    assert (jobs[done.job_id]["state"], jobs[done.job_id]["exit_code"], jobs[done.job_id]["log_bytes"]) == (
        "exited", 3, 13,
    )  # fmt: skip
    assert jobs[running.job_id]["state"] == "running"
    assert 0 <= jobs[running.job_id]["age_seconds"] < 60
    assert main(["status", "--conn-id", ssh_conn, "--base-dir", remote_base_dir]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["JOB", "STATE", "AGE", "IDLE", "LOG"]
    assert f"{done.job_id}  exited 3" in "\n".join(lines)


def test_reap_removes_exactly_the_old_finished_job_directories(ssh_conn, remote_base_dir, capsys) -> None:
    old_done = [start_job(ssh_conn, remote_base_dir, f"echo {n}", job_id(n)) for n in (1, 2)]
    new_done = start_job(ssh_conn, remote_base_dir, "echo new", job_id(3))
    old_running = start_job(ssh_conn, remote_base_dir, "sleep 30", job_id(4))
    not_a_job = start_job(ssh_conn, remote_base_dir, "echo other", "job-not-af")
    stray = Path(remote_base_dir, "af_not_a_job_id")
    stray.mkdir()
    wait_until(lambda: all(finished(p) for p in [*old_done, new_done, not_a_job]))
    for paths in [*old_done, old_running, not_a_job]:
        age(Path(paths.job_dir))
    age(stray)
    base = ["reap", "--conn-id", ssh_conn, "--base-dir", remote_base_dir, "--older-than", "7d"]

    assert main(base) == 0
    dry = capsys.readouterr().out
    assert "Dry run: 2 directories would be removed" in dry
    assert all(Path(p.job_dir).exists() for p in old_done)

    assert main([*base, "--delete"]) == 0
    out = capsys.readouterr().out
    assert "Removed 2 of 2 directories" in out
    left = sorted(p.name for p in Path(remote_base_dir).iterdir())
    assert left == sorted([new_done.job_id, old_running.job_id, "job-not-af", "af_not_a_job_id"])
    for paths in old_done:
        assert f"{paths.job_id}  exited 0" in out and "removed" in out
