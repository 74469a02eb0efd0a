"""
Safe on shared hosts and with careless jobs, through the public operator against a real sshd.

Each test plays a hostile or careless user: another local user squatting job directories,
a job that writes ``exit_code`` in its working directory, a ``PATH`` in ``environment``, a
full file system, a child that leaves the job's session, events and kwargs naming other
directories. Squatters are played by directories owned by ``nobody`` (the tests run as
root, the SSH user of the test sshd).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssh_jobs_provider.exceptions import RemoteJobError
from ssh_jobs_provider.protocol.identity import make_job_id
from support.jobs import make_operator
from support.runner import StandInTaskInstance, context_for, run_operator, submit, watch
from support.waiting import wait_until

pytestmark = pytest.mark.integration

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to nobody / mount a tmpfs")


def job_id_of(ti: StandInTaskInstance) -> str:
    return make_job_id(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; it only waits to be reaped.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def bystander() -> Iterator[int]:
    """An unrelated process of the SSH user: a forged pid file names it. Must never be signalled."""
    process = subprocess.Popen(["sleep", "600"], start_new_session=True)
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def nobody() -> int:
    return pwd.getpwnam("nobody").pw_uid


def forge_job_dir(job_dir: Path, owner: int, pid: int) -> None:
    """What a squatter leaves: a claimed job with a pid, a log and a successful exit code."""
    job_dir.mkdir(parents=True)
    (job_dir / "claimed").mkdir()
    (job_dir / "pid").write_text(f"{pid}\n")
    (job_dir / "launcher").write_text("setsid")
    (job_dir / "stdout.log").write_text("forged output\n")
    (job_dir / "exit_code").write_text("0\n")
    for path in [job_dir, *job_dir.iterdir()]:
        os.chown(path, owner, owner)


def assert_refused_untouched(op, ti, job_dir: Path, bystander: int, sshd, match: str) -> None:
    with pytest.raises(RemoteJobError, match=match) as refused:
        submit(op, ti)
    assert "Nothing was run" in str(refused.value)
    op.on_kill()  # a user killing the task now must not reach the process the pid file names
    time.sleep(0.3)
    assert alive(bystander)
    assert (job_dir / "stdout.log").read_text() == "forged output\n"
    assert (job_dir / "exit_code").read_text().split()[0] == "0"
    assert not (job_dir / "command.sh").exists(), "the submit wrote into a directory it does not own"


# --------------------------------------------------------------------------- 1. squatting


@needs_root
def test_base_dir_squatted_by_another_user_is_refused(ssh_conn, tmp_path, sshd, bystander, nobody) -> None:
    base = tmp_path / "shared-tmp" / "airflow-ssh-jobs"
    ti = StandInTaskInstance()
    forge_job_dir(base / job_id_of(ti), nobody, bystander)
    os.chown(base, nobody, nobody)
    base.chmod(0o777)
    op = make_operator(ssh_conn, str(base), f"touch {tmp_path}/ran")

    assert_refused_untouched(
        op, ti, base / job_id_of(ti), bystander, sshd, f"{base} is owned by uid {nobody}"
    )
    assert not (tmp_path / "ran").exists()


@needs_root
def test_job_dir_squatted_in_a_sticky_shared_base_is_refused(
    ssh_conn, tmp_path, sshd, bystander, nobody
) -> None:
    base = tmp_path / "team-jobs"
    base.mkdir()
    base.chmod(0o1777)  # shared and sticky: others may add entries, so each job dir is checked
    ti = StandInTaskInstance()
    forge_job_dir(base / job_id_of(ti), nobody, bystander)
    op = make_operator(ssh_conn, str(base), f"touch {tmp_path}/ran")

    assert_refused_untouched(op, ti, base / job_id_of(ti), bystander, sshd, f"owner uid {nobody}")
    assert not (tmp_path / "ran").exists()


def test_own_job_dir_left_by_another_submit_is_not_adopted(ssh_conn, tmp_path, sshd, bystander) -> None:
    # Same SSH user, same job id (e.g. a staging deployment with the same DAG and run ids):
    # the directory carries another submit's token, so it is not this task instance's.
    base = tmp_path / "jobs"
    ti = StandInTaskInstance()
    job_dir = base / job_id_of(ti)
    forge_job_dir(job_dir, os.getuid(), bystander)
    base.chmod(0o700)
    job_dir.chmod(0o700)
    (job_dir / "token").write_text("f" * 32 + "\n")
    op = make_operator(ssh_conn, str(base), f"touch {tmp_path}/ran")

    assert_refused_untouched(op, ti, job_dir, bystander, sshd, "created by another submit")


@pytest.mark.parametrize(
    ("layout", "reason"),
    [
        ("base-group-writable", "is writable by group or others"),
        ("parent-world-writable", "is writable by group or others"),
        ("base-is-symlink-to-other-users-dir", "is owned by uid"),
        # The link leads somewhere trusted, but its owner could re-point it at any moment
        # (e.g. between the check and the wrapper sourcing env.sh): never follow it.
        ("base-is-other-users-symlink-to-trusted-dir", "is a symbolic link owned by uid"),
        ("parent-is-other-users-symlink-to-trusted-dir", "is a symbolic link owned by uid"),
    ],
)
@needs_root
def test_untrusted_path_to_the_base_dir_is_refused_before_anything_is_written(
    ssh_conn, tmp_path, nobody, layout: str, reason: str
) -> None:
    parent = tmp_path / "parent"
    base = parent / "jobs"
    base.mkdir(parents=True)
    if layout == "base-group-writable":
        base.chmod(0o770)
        culprit = base
    elif layout == "parent-world-writable":
        parent.chmod(0o777)
        culprit = parent
    elif layout == "base-is-symlink-to-other-users-dir":
        target = tmp_path / "elsewhere"
        target.mkdir()
        os.chown(target, nobody, nobody)
        base.rmdir()
        base.symlink_to(target)
        culprit = target
    else:
        trusted = tmp_path / "trusted"
        (trusted / "jobs").mkdir(parents=True)
        link = base if layout.startswith("base") else parent
        base.rmdir()
        if link == parent:
            parent.rmdir()
        link.symlink_to(trusted if link == parent else trusted / "jobs")
        os.lchown(link, nobody, nobody)
        culprit = link
    op = make_operator(ssh_conn, str(base), f"touch {tmp_path}/ran")

    with pytest.raises(RemoteJobError, match=f"{culprit} {reason}"):
        submit(op, StandInTaskInstance())
    assert not (tmp_path / "ran").exists()
    assert list(Path(base).iterdir()) == []


def test_missing_base_dir_is_created_private(ssh_conn, tmp_path) -> None:
    base = tmp_path / "new" / "jobs"
    result = run_operator(make_operator(ssh_conn, str(base), "echo ok"))

    assert result.outcome == "success", result.error
    assert base.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    job_dir = Path(result.event["job_dir"])
    assert job_dir.stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------- 2. working directory


def test_command_runs_in_the_home_directory_and_cannot_forge_its_exit_code(
    ssh_conn, remote_base_dir, sshd
) -> None:
    # A careless script: writes "exit_code" in its cwd, tidies it, then fails.
    command = "pwd\necho 0 > exit_code\nrm -f ./exit_code ./pid\nexit 5\n"
    result = run_operator(make_operator(ssh_conn, remote_base_dir, command))

    assert result.outcome == "failed"
    assert "exit code 5" in str(result.error)
    assert result.trigger_lines == [str(sshd.home_dir)]
    assert Path(result.event["job_dir"], "exit_code").read_text().split()[0] == "5"


def test_a_job_writing_its_own_exit_record_does_not_end_the_watch(ssh_conn, remote_base_dir) -> None:
    # Even a job that goes looking for the exit record only delays nothing: while the wrapper
    # runs, an exit record does not count, and the wrapper's own record replaces it.
    command = 'echo 0 > "${SSH_JOBS_JOB_DIR:?}/exit_code"\nsleep 1\necho still running\nexit 4\n'
    result = run_operator(make_operator(ssh_conn, remote_base_dir, command))

    assert result.outcome == "failed"
    assert result.event["exit_code"] == 4
    assert result.trigger_lines == ["still running"]


def test_remote_working_dir_and_job_variables(ssh_conn, remote_base_dir, sshd, tmp_path) -> None:
    data = sshd.home_dir / "data"
    data.mkdir()
    (data / "input.txt").write_text("relative input\n")
    # The tidy-up only runs where it is meant to: never wildcard-remove anything else.
    command = (
        f'cat input.txt\n[ "$PWD" = "{data}" ] && rm -rf ./*\n'
        'echo "$SSH_JOBS_JOB_ID $SSH_JOBS_JOB_DIR $SSH_JOBS_LOG_FILE"\n'
    )
    ti = StandInTaskInstance()
    result = run_operator(make_operator(ssh_conn, remote_base_dir, command, remote_working_dir="~/data"), ti)

    assert result.outcome == "success", result.error
    job_dir = result.event["job_dir"]
    assert result.trigger_lines == ["relative input", f"{job_id_of(ti)} {job_dir} {job_dir}/stdout.log"]
    assert not (data / "input.txt").exists()  # the tidy-up happened where it was meant to


def test_missing_working_dir_fails_the_job_with_a_clear_line(ssh_conn, remote_base_dir, tmp_path) -> None:
    result = run_operator(
        make_operator(ssh_conn, remote_base_dir, "echo never", remote_working_dir=str(tmp_path / "nope"))
    )
    assert result.outcome == "failed"
    assert result.trigger_lines == [f"ssh-jobs: cannot enter the working directory {tmp_path / 'nope'}"]


# --------------------------------------------------------------------------- 3. PATH


@pytest.mark.parametrize(
    ("command", "first_line"),
    [
        ('#!/bin/bash\n[[ -n "$BASH_VERSION" ]] && echo shebang-bash\necho "$PATH"\n', "shebang-bash"),
        ('[[ -n "$BASH_VERSION" ]] && echo default-bash\necho "$PATH"\n', "default-bash"),
    ],
)
def test_path_in_environment_applies_to_the_command_not_the_wrapper(
    ssh_conn, remote_base_dir, command: str, first_line: str
) -> None:
    environment = {"PATH": "/opt/conda/bin:$PATH"}  # literal, as documented
    result = run_operator(make_operator(ssh_conn, remote_base_dir, command, environment=environment))

    assert result.outcome == "success", (result.error, result.trigger_lines)
    assert result.trigger_lines == [first_line, "/opt/conda/bin:$PATH"]


# --------------------------------------------------------------------------- 4. full disk


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted at teardown (after the jobs on it have ended)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "small-fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64k"], capture_output=True, check=False)


def test_job_that_fills_the_disk_still_reports_its_exit_code(ssh_conn, small_fs) -> None:
    # An absolute path on the small file system: whatever the job's cwd, only it fills up.
    command = f"echo filling\ndd if=/dev/zero of={small_fs}/jobs/fill bs=64k 2>/dev/null\nexit 0\n"
    result = run_operator(make_operator(ssh_conn, str(small_fs / "jobs"), command))

    assert result.outcome == "success", result.error
    assert result.event["exit_code"] == 0
    assert "was full when it ended" in result.event["message"]


def test_submit_on_a_full_disk_says_so_and_leaves_no_job_dir_behind(ssh_conn, small_fs) -> None:
    fill(small_fs / "filler")
    base = small_fs / "a" / "b" / "jobs"
    op = make_operator(ssh_conn, str(base), "echo never")

    with pytest.raises(RemoteJobError, match=f"the file system holding {base} is full"):
        submit(op, StandInTaskInstance())
    # The base dir stays, empty and private: another submit may have checked it meanwhile,
    # and one that vanished could be re-created by someone else.
    assert list(base.iterdir()) == []
    assert base.stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------- 5. kill


@pytest.mark.parametrize("killer", ["worker", "triggerer"])
def test_kill_reaches_a_child_that_left_the_job_session(ssh_conn, remote_base_dir, tmp_path, killer) -> None:
    child_pid_file = tmp_path / "child.pid"
    command = (
        f"setsid sleep 3001 </dev/null >/dev/null 2>&1 &\necho $! > {child_pid_file}.tmp\n"
        f"mv {child_pid_file}.tmp {child_pid_file}\nsleep 300\n"
    )
    op = make_operator(ssh_conn, remote_base_dir, command)
    deferred = submit(op, StandInTaskInstance())
    wait_until(child_pid_file.exists, what="the child's pid file")
    child = int(child_pid_file.read_text())
    leader = int(Path(deferred.trigger.job_dir, "pid").read_text())
    # ``$!`` is known before the child has run ``setsid``: wait for it to leave the session.
    wait_until(lambda: os.getsid(child) != os.getsid(leader), what="the child to leave the job's session")

    if killer == "worker":
        op.on_kill()
    else:
        asyncio.run(deferred.trigger.on_kill())

    wait_until(lambda: not alive(child) and not alive(leader), what="every job process to die after the kill")


def test_kill_never_signals_a_process_that_reused_the_job_pid(ssh_conn, remote_base_dir, bystander) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "exit 0")
    deferred = submit(op, StandInTaskInstance())
    job_dir = Path(deferred.trigger.job_dir)
    wait_until((job_dir / "exit_code").exists, what="the job's exit record")
    # The job is long gone and the kernel handed its pid to an unrelated process.
    (job_dir / "pid").write_text(f"{bystander}\n")

    op.on_kill()

    time.sleep(0.3)
    assert alive(bystander)


# --------------------------------------------------------------------------- 6. defence in depth


def test_event_naming_another_jobs_directory_is_refused(ssh_conn, remote_base_dir) -> None:
    victim_op = make_operator(ssh_conn, remote_base_dir, "sleep 60")
    victim = submit(victim_op, StandInTaskInstance(map_index=1)).trigger
    op = make_operator(ssh_conn, remote_base_dir, "sleep 60", cleanup="always")
    own = submit(op, StandInTaskInstance(map_index=0)).trigger
    forged = {"job_id": victim.job_id, "job_dir": victim.job_dir, "status": "error", "done": True}

    with pytest.raises(RemoteJobError, match="Refusing a trigger event"):
        op.execute_complete(context_for(StandInTaskInstance(map_index=0)), event=forged)

    victim_pid = int(Path(victim.job_dir, "pid").read_text())
    assert alive(victim_pid) and Path(victim.job_dir).is_dir()
    for operator, trigger in ((victim_op, victim), (op, own)):
        operator.on_kill()
        pid = int(Path(trigger.job_dir, "pid").read_text())
        wait_until(lambda pid=pid: not alive(pid), what=f"job process {pid} to end")


def test_trigger_does_not_remove_or_watch_a_directory_whose_token_changed(ssh_conn, remote_base_dir) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 2\necho done\n", cleanup="always")
    trigger = submit(op, StandInTaskInstance()).trigger
    job_dir = Path(trigger.job_dir)
    (job_dir / "token").write_text("e" * 32 + "\n")  # replaced behind our back

    _, event = watch(trigger, timeout=30)

    assert event["status"] == "error"
    assert event["leave_remote"] is True
    assert job_dir.is_dir()
    with pytest.raises(RemoteJobError, match="no longer carries"):
        op.execute_complete(context_for(StandInTaskInstance()), event=event)
    assert job_dir.is_dir()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environment": {"BIG": "x" * (128 * 1024)}}, "environment entry is limited"),
        ({"environment": {"SSH_JOBS_JOB_DIR": "/x"}}, "reserved"),
        ({"remote_base_dir": ""}, "remote_base_dir is empty"),
        ({"remote_base_dir": "{base}/" + "d/" * 2500}, "path limit"),
        ({"remote_base_dir": "{base}/" + "n" * 300}, "limited to 255 bytes"),
        ({"remote_working_dir": "relative/dir"}, "absolute path or start with '~/'"),
    ],
)
def test_bad_input_fails_before_any_connection(ssh_conn, sshd, remote_base_dir, kwargs, message) -> None:
    base = kwargs.get("remote_base_dir", "{base}").replace("{base}", remote_base_dir)
    others = {name: value for name, value in kwargs.items() if name != "remote_base_dir"}
    op = make_operator(ssh_conn, base, "echo hi", **others)

    with pytest.raises(ValueError, match=message):
        submit(op, StandInTaskInstance())
    time.sleep(0.2)
    assert sshd.counts()["connections"] == 0
    assert not Path(remote_base_dir).exists(), "a refused submit left a tree behind"


def test_kill_of_a_sigterm_ignoring_job_reports_killed_only_when_all_are_gone(
    ssh_conn, remote_base_dir
) -> None:
    command = "trap '' TERM\nsetsid sh -c \"trap '' TERM; sleep 3002\" &\nsleep 3002\n"
    op = make_operator(ssh_conn, remote_base_dir, command)
    deferred = submit(op, StandInTaskInstance())
    job_dir = Path(deferred.trigger.job_dir)
    marker = f"SSH_JOBS_JOB_MARKER={(job_dir / 'marker').read_text().strip()}"

    def marked() -> list[int]:
        return [
            int(p)
            for p in os.listdir("/proc")
            if p.isdigit() and _environ_has(int(p), marker) and alive(int(p))
        ]

    # The job's shell, the escaped child's shell and the two sleeps.
    wait_until(lambda: len(marked()) >= 4, what="the job's processes to carry its marker")

    op.on_kill()

    assert marked() == []


def _environ_has(pid: int, marker: str) -> bool:
    try:
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
