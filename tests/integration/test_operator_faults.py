"""Lost submit replies, refused cleanups, kills and timeouts, against a real sshd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider._compat import TaskDeferralTimeout
from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.operators.ssh_remote_job import XCOM_KEY, SSHRemoteJobOperator
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.faultproxy import FaultProxy
from support.jobs import make_operator
from support.logs import capture_logs
from support.runner import StandInStateStore, StandInTaskInstance, context_for, submit, watch
from support.sshd import use_connection
from support.waiting import wait_until

pytestmark = pytest.mark.integration


def group_processes(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(pgid)], capture_output=True, text=True).stdout
    # Zombies are already dead; they only wait for their parent to reap them.
    return [line for line in out.splitlines() if line.split()[1:2] != ["Z"]]


def wait_for_processes(pgid: int, count: int, exactly: bool = False) -> None:
    """Wait until process group ``pgid`` has at least (or ``exactly``) ``count`` live processes."""
    wait_until(
        lambda: len(group_processes(pgid)) == count if exactly else len(group_processes(pgid)) >= count,
        what=lambda: f"{count} processes in group {pgid}, not {group_processes(pgid)}",
    )


def wait_until_gone(pgid: int) -> None:
    """Wait until no process of group ``pgid`` is left alive."""
    wait_until(lambda: group_processes(pgid) == [], what=lambda: f"the end of {group_processes(pgid)}")


def submit_until_the_job_ended(op: SSHRemoteJobOperator, counter: Path) -> str:
    """Submit ``op``'s job, wait for its exit record, check it ran once (by ``counter``); what was logged."""
    ti = StandInTaskInstance()
    with capture_logs() as logs:
        submit(op, ti)
    job_dir = Path(ti.xcom[XCOM_KEY]["job_dir"])
    wait_until((job_dir / "exit_code").exists, 15, what="the job's exit record")
    assert counter.read_text().splitlines() == ["launched"], "the job ran exactly once"
    return " ".join(str(entry["event"]) for entry in logs)


def test_lost_submit_reply_reattaches_instead_of_launching_twice(sshd_factory, monkeypatch, tmp_path) -> None:
    # The login shell takes 2.5 s; the first two submit replies (1 s, then 2 s allowed) are lost,
    # but the first submit's script still runs remotely and starts the job.
    server = sshd_factory(login_shell_delay=2.5)
    use_connection(monkeypatch, server, "ssh_slow")
    counter = tmp_path / "launches.txt"
    op = make_operator(
        "ssh_slow",
        str(tmp_path / "jobs"),
        f"echo launched >> {counter}\nsleep 2\n",
        command_timeout=1.0,
        conn_retry_attempts=4,
    )
    # Whether a cut-off attempt got to start the job (the answered one then re-attaches) depends
    # on how far its script ran; what must hold either way: the job ran once, after retries.
    messages = submit_until_the_job_ended(op, counter)
    assert "failed (attempt 1/4)" in messages, messages
    assert server.counts()["accepted"] >= 2


def submit_whose_first_session_ends(sshd_factory, monkeypatch, tmp_path: Path, ending: str) -> str:
    """
    Submit a job through an sshd whose first session runs the submit, its output discarded,
    then ends with the shell command ``ending``; every later session runs normally. The job
    must run once: what was logged.
    """
    first_done = tmp_path / "first-session-done"
    force = tmp_path / "first-session-ends.sh"
    force.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e {first_done} ]; then : > {first_done}; eval "$SSH_ORIGINAL_COMMAND" >/dev/null 2>&1; {ending}; fi\n'
        'eval "exec $SSH_ORIGINAL_COMMAND"\n'
    )
    force.chmod(0o755)
    server = sshd_factory(extra_config=[f"ForceCommand {force}"])
    use_connection(monkeypatch, server, "ssh_forced")
    counter = tmp_path / "launches.txt"
    op = make_operator("ssh_forced", str(tmp_path / "jobs"), f"echo launched >> {counter}\nsleep 1\n")
    return submit_until_the_job_ended(op, counter)


def test_an_empty_submit_answer_is_sent_again_and_the_job_runs_once(
    sshd_factory, monkeypatch, tmp_path
) -> None:
    # The first session's answer never arrives (exit status 0, no output), as seen once under load.
    messages = submit_whose_first_session_ends(sshd_factory, monkeypatch, tmp_path, "exit 0")
    assert "got no answer" in messages and "failed (attempt 1/" in messages, messages


def test_a_submit_whose_shell_is_killed_is_sent_again_and_the_job_runs_once(
    sshd_factory, monkeypatch, tmp_path
) -> None:
    # The first session's shell is killed (SIGKILL) before it answers: the session ends
    # without an exit status, as one cut by the host does. Whether the job started is unknown
    # to the worker: it sends the submit again, which re-attaches.
    messages = submit_whose_first_session_ends(sshd_factory, monkeypatch, tmp_path, "kill -KILL $$")
    assert "ended without an exit status" in messages and "failed (attempt 1/" in messages, messages


def run_leaving_cleanup_to_the_worker(
    base_dir: str, cleanup_retries: int
) -> tuple[SSHRemoteJobOperator, StandInTaskInstance, dict[str, Any], Path]:
    """
    Submit ``echo done`` (cleanup "always") over ``ssh_proxy`` and watch it with a trigger that
    leaves the cleanup to the worker (as when it could not clean up itself); return the
    operator, task instance, event payload and job directory.
    """
    op = make_operator("ssh_proxy", base_dir, "echo done", cleanup="always", cleanup_retries=cleanup_retries)
    ti = StandInTaskInstance()
    _, kwargs = submit(op, ti).trigger.serialize()
    _, payload = watch(SSHRemoteJobTrigger(**{**kwargs, "cleanup_policy": "never"}))
    return op, ti, payload, Path(ti.xcom[XCOM_KEY]["job_dir"])


def test_worker_cleanup_succeeds_on_a_later_attempt_when_the_first_connection_is_refused(
    proxy: FaultProxy, remote_base_dir: str
) -> None:
    op, ti, payload, job_dir = run_leaving_cleanup_to_the_worker(remote_base_dir, cleanup_retries=3)
    assert job_dir.is_dir()

    proxy.refuse_new(1)  # the first cleanup connection is dropped before the banner
    with capture_logs() as logs:
        op.execute_complete(context_for(ti), event=payload)

    assert proxy.refused_total == 1
    assert not job_dir.exists(), "nothing left behind"
    # Only the job's one-line record is left, in the records directory.
    assert os.listdir(remote_base_dir) == [".ssh-jobs-ended"]
    assert any("attempt 1/3" in str(entry["event"]) for entry in logs)


def test_cleanup_that_never_succeeds_says_so_loudly_and_keeps_the_outcome(
    proxy: FaultProxy, remote_base_dir: str
) -> None:
    op, ti, payload, job_dir = run_leaving_cleanup_to_the_worker(remote_base_dir, cleanup_retries=2)

    proxy.refuse_all(True)
    with capture_logs() as logs:
        op.execute_complete(context_for(ti), event=payload)  # no exception: the job succeeded

    errors = [entry for entry in logs if entry.get("log_level") == "error"]
    assert len(errors) == 1
    assert "NOT CLEANED UP" in str(errors[0]["event"]) and str(job_dir) in str(errors[0]["event"])
    assert job_dir.is_dir()


def test_cleanup_never_removes_anything_outside_the_base_directory(
    sshd, ssh_conn: str, remote_base_dir: str, tmp_path
) -> None:
    victim = tmp_path / "outside" / "victim"
    victim.mkdir(parents=True)
    op = make_operator(ssh_conn, remote_base_dir, "true", cleanup="always")
    ti = StandInTaskInstance()
    for forged in (str(victim), f"{remote_base_dir}/../outside/victim", remote_base_dir, "/"):
        event = {"job_id": "x", "job_dir": forged, "status": "success", "done": True, "exit_code": 0}
        with pytest.raises(ValueError, match="Refusing job directory"):
            op.execute_complete(context_for(ti), event=event)
    assert victim.is_dir()


def test_on_kill_kills_the_whole_remote_process_tree(ssh_conn: str, remote_base_dir: str) -> None:
    command = "sleep 300 &\n(sleep 301 | cat) &\nbash -c 'sleep 302; echo never'\nwait\n"
    op = make_operator(ssh_conn, remote_base_dir, command)
    ti = StandInTaskInstance()
    submit(op, ti)
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())
    wait_for_processes(pid, 5)

    op.on_kill()

    wait_until_gone(pid)
    assert Path(ti.xcom[XCOM_KEY]["exit_code_file"]).read_text().split()[0] == "143"


@pytest.mark.parametrize("submit_from", ["worker", "triggerer"])
def test_a_task_killed_before_its_submit_submits_nothing(
    ssh_conn: str, remote_base_dir: str, submit_from: str
) -> None:
    # As when Airflow's scheduler failed a resumed task and its worker process, told to stop, ran
    # execute() once more: on_kill came first, and what follows must not start a job.
    op = make_operator(ssh_conn, remote_base_dir, "echo never", submit_from=submit_from)
    op.on_kill()

    with pytest.raises(RemoteJobError, match="killed before it submitted"):
        op.execute(context_for(StandInTaskInstance()))  # type: ignore[arg-type]
    assert list(Path(remote_base_dir).glob("af_*")) == []


def test_a_task_killed_after_its_submit_neither_takes_its_job_over_nor_submits_again(
    ssh_conn: str, remote_base_dir: str
) -> None:
    # The same try's job is recorded in the task state store: an execute() run again after
    # on_kill must not re-attach to it (and defer a killed task) any more than submit another.
    ti = StandInTaskInstance(state_store=StandInStateStore())
    submit(make_operator(ssh_conn, remote_base_dir, "sleep 30 & wait"), ti)
    op = make_operator(ssh_conn, remote_base_dir, "sleep 30 & wait")
    op.on_kill()

    with pytest.raises(RemoteJobError, match="killed before it submitted"):
        op.execute(context_for(ti))  # type: ignore[arg-type]
    assert len(list(Path(remote_base_dir).glob("af_*"))) == 1


def test_deferral_timeout_kills_the_remote_job_before_failing(ssh_conn: str, remote_base_dir: str) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 300 & wait", timeout=1)
    # Airflow 3.3: the task state store keeps the job's token for the worker that resumes the try
    # (test_durable_retries: what happens without it).
    ti = StandInTaskInstance(state_store=StandInStateStore())
    deferred = submit(op, ti)
    assert deferred.timeout is not None and deferred.timeout.total_seconds() == 1
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())

    # What a worker runs when the scheduler times the deferral out.
    fresh = make_operator(ssh_conn, remote_base_dir, "sleep 300 & wait", timeout=1)
    with pytest.raises(TaskDeferralTimeout):
        fresh.resume_execution("__fail__", {"error": "Trigger timeout"}, context_for(ti))

    wait_until_gone(pid)


def test_trigger_on_kill_stops_the_job(ssh_conn: str, remote_base_dir: str) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 300 & sleep 299; wait")
    ti = StandInTaskInstance()
    deferred = submit(op, ti)
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())

    asyncio.run(deferred.trigger.on_kill())

    wait_until_gone(pid)


class TriggerOfAKnownTask(SSHRemoteJobTrigger):
    """A trigger of try 1 whose task instance Airflow reports as ``now`` (state, deferred try)."""

    now: tuple[str | None, int | None] = (None, None)

    async def _task_now(self) -> tuple[str | None, int | None]:
        return self.now


@pytest.mark.parametrize(
    ("state", "deferred_try", "killed"),
    [
        ("deferred", 1, False),
        ("deferred", 2, True),  # a later try is deferred: the task was cleared and ran again
        ("failed", None, True),
        ("success", None, True),
        (None, None, True),
    ],
)
def test_trigger_on_kill_spares_the_job_of_a_task_still_deferred_in_the_same_try(
    ssh_conn: str, remote_base_dir: str, state: str | None, deferred_try: int | None, killed: bool
) -> None:
    """
    Airflow 3.3 cancels a trigger that moved to another triggerer like one a user cancelled:
    while the same try is still deferred, another triggerer watches its job, which must run on.
    """
    op = make_operator(ssh_conn, remote_base_dir, "sleep 300 & sleep 299; wait")
    ti = StandInTaskInstance()
    _, kwargs = submit(op, ti).trigger.serialize()
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())
    trigger = TriggerOfAKnownTask(**kwargs)
    trigger.task_instance = ti  # type: ignore[assignment]
    trigger.now = (state, deferred_try)

    asyncio.run(trigger.on_kill())

    if killed:
        wait_until_gone(pid)
    else:
        time.sleep(1)
        os.kill(pid, 0)  # still running
        asyncio.run(SSHRemoteJobTrigger(**kwargs).on_kill())
        wait_until_gone(pid)


def test_trigger_error_event_kills_the_job_so_it_never_runs_unwatched(
    ssh_conn: str, remote_base_dir: str
) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 300 & wait")
    ti = StandInTaskInstance()
    submit(op, ti)
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())
    event = {
        **{k: ti.xcom[XCOM_KEY][k] for k in ("job_id", "job_dir", "log_file", "exit_code_file")},
        "status": "error",
        "done": True,
        "exit_code": None,
        "message": "Lost the SSH connection",
    }
    with pytest.raises(Exception, match="Lost the SSH connection"):
        op.execute_complete(context_for(ti), event=event)
    wait_until_gone(pid)


def test_kill_finds_the_job_group_even_after_its_leader_died(ssh_conn: str, remote_base_dir: str) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 300 &\nsleep 301 &\nwait\n")
    ti = StandInTaskInstance()
    submit(op, ti)
    pid = int(Path(ti.xcom[XCOM_KEY]["pid_file"]).read_text())
    wait_for_processes(pid, 3)
    os.kill(pid, 9)  # only the wrapper: its children live on, orphaned, in the same group
    wait_for_processes(pid, 3, exactly=True)

    op.on_kill()

    wait_until_gone(pid)


def test_trigger_cleanup_that_fails_falls_back_to_the_worker_which_retries(
    ssh_conn: str, remote_base_dir: str
) -> None:
    """A busy mount point makes rm -rf fail for real, first in the trigger, then in the worker."""
    import threading

    op = make_operator(ssh_conn, remote_base_dir, "echo done", cleanup="always", cleanup_retries=4)
    ti = StandInTaskInstance()
    deferred = submit(op, ti)
    job_dir = Path(ti.xcom[XCOM_KEY]["job_dir"])
    busy = job_dir / "busy"
    busy.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "none", str(busy)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to make rm -rf fail: {mounted.stderr.decode().strip()}")
    try:
        _, kwargs = deferred.trigger.serialize()
        trigger = SSHRemoteJobTrigger(**{**kwargs, "cleanup_retries": 2})
        _, event = watch(trigger)
        assert event["status"] == "success" and event["cleaned_up"] is False
        assert job_dir.is_dir()

        unmount = threading.Timer(1.5, lambda: subprocess.run(["umount", str(busy)], check=True))
        unmount.start()
        with capture_logs() as logs:
            op.execute_complete(context_for(ti), event=event)
        unmount.join()
    finally:
        subprocess.run(["umount", str(busy)], capture_output=True)
    assert not job_dir.exists()
    assert any("Cleanup of" in str(entry["event"]) and "attempt 1/4" in str(entry["event"]) for entry in logs)
