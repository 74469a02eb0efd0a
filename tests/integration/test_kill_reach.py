"""
What a kill reaches, through the operator's and the trigger's ``on_kill`` against a real sshd.

A kill must find every process of the job even when the job has removed its own directory
(the marker comes from the token, not from the directory), must follow a child that its
parent's death on SIGTERM re-parented out of the job's process tree (a host without
``setsid``, played by an sshd whose sessions cannot find it), and must still leave alone a
directory of the same name that is not the job's. Marked processes are found with BusyBox's
tools too (Alpine and other small hosts).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.identity import job_marker
from support.jobs import make_operator
from support.logs import capture_logs
from support.runner import StandInTaskInstance, submit
from support.sshd import use_connection
from support.waiting import wait_until

pytestmark = pytest.mark.integration

#: Where the tools of the sessions that cannot find ``setsid`` come from.
TOOL_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is dead: it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_time(pid: int) -> str | None:
    """``pid``'s start time in clock ticks since boot, to tell it from a later process with its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def marked(marker: str) -> list[int]:
    """The live processes whose environment carries the job marker ``marker``."""
    entry = f"SSH_JOBS_JOB_MARKER={marker}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if entry in environ.split(b"\0") and alive(int(name)):
            found.append(int(name))
    return found


def wrappers_of(job_dir: str) -> list[int]:
    """The live wrappers of the job in ``job_dir``: ``/bin/sh <job_dir>/run.sh <job_dir>``, or the
    perl twin, which names itself ``ssh-jobs wrapper <job_dir>``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = f"{job_dir}/run.sh".encode() in argv or argv[0] == f"ssh-jobs wrapper {job_dir}".encode()
        if ours and alive(int(name)):
            found.append(int(name))
    return found


class StartedProcesses:
    """The processes a test's jobs started: whatever a failed test leaves is SIGKILLed at teardown."""

    def __init__(self) -> None:
        self.markers: list[str] = []
        self.pids: dict[int, str | None] = {}

    def add_marker(self, marker: str) -> None:
        self.markers.append(marker)

    def add_pid(self, pid: int) -> None:
        self.pids[pid] = start_time(pid)

    def stop(self) -> None:
        for marker in self.markers:
            for pid in marked(marker):
                self.pids.setdefault(pid, start_time(pid))
        for pid, started in self.pids.items():
            if started is not None and start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def started() -> Iterator[StartedProcesses]:
    processes = StartedProcesses()
    yield processes
    processes.stop()


def kill_logged(op: SSHRemoteJobOperator, deferred: Any, killer: str) -> list[str]:
    """Kill the job as the worker (operator) or the triggerer (trigger) does; what they logged."""
    with capture_logs() as logs:
        if killer == "worker":
            op.on_kill()
        else:
            asyncio.run(deferred.trigger.on_kill())
    return [str(entry["event"]) for entry in logs]


# --------------------------------------------------------------------------- a job without its directory


@pytest.mark.parametrize("killer", ["worker", "triggerer"])
@pytest.mark.parametrize(
    ("removes", "answer"),
    [
        ('rm -rf "$SSH_JOBS_JOB_DIR"', "killed (its directory was gone: found by the marker"),
        ('rm -f "$SSH_JOBS_JOB_DIR/pid"', "killed"),
    ],
    ids=["directory", "pid-file"],
)
def test_kill_reaches_a_job_that_removed_its_own_files(
    ssh_conn, remote_base_dir, tmp_path, started, killer: str, removes: str, answer: str
) -> None:
    ready = tmp_path / "ready"
    command = f"sleep 3004 &\n{removes}\ntouch {ready}\nsleep 3004\n"
    op = make_operator(ssh_conn, remote_base_dir, command)
    deferred = submit(op, StandInTaskInstance())
    job_dir = deferred.trigger.job_dir
    marker = job_marker(deferred.trigger.job_token)
    started.add_marker(marker)
    wait_until(ready.exists, what="the job to remove its files")
    # The job's shell and its two sleeps.
    wait_until(lambda: len(marked(marker)) >= 3, what=lambda: f"the job's processes, found {marked(marker)}")
    assert not Path(job_dir, "pid").exists()

    logged = kill_logged(op, deferred, killer)

    assert marked(marker) == [], f"the kill left the job's processes running; it logged {logged}"
    assert any(answer in line for line in logged), logged
    # The wrapper carries no marker; it ends once the command it waits for was killed.
    wait_until(lambda: not wrappers_of(job_dir), what="the job's wrapper to end")


# --------------------------------------------------------------------------- a host without setsid


@pytest.fixture
def no_setsid_conn(sshd_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection to an sshd whose sessions find every tool but ``setsid`` (as on macOS)."""
    tools = tmp_path / "tools-without-setsid"
    tools.mkdir()
    for directory in map(Path, TOOL_DIRS):
        for tool in sorted(directory.iterdir()) if directory.is_dir() else []:
            if tool.name != "setsid" and not (tools / tool.name).exists():
                (tools / tool.name).symlink_to(tool)
    home = tmp_path / "home-without-setsid"
    home.mkdir()
    # sshd takes the first SetEnv line only: HOME (a clean shell, as the fixture's) goes along.
    server = sshd_factory(extra_config=[f"SetEnv HOME={home} PATH={tools}"])
    return use_connection(monkeypatch, server, "ssh_no_setsid")


def test_kill_without_setsid_follows_a_child_reparented_after_sigterm(
    no_setsid_conn, remote_base_dir, tmp_path, started
) -> None:
    # The child sheds the marker: on a host without /proc (macOS, BSD) no marker is visible to
    # the kill, which then knows the job's processes by the tree under the wrapper alone. The
    # job's shell dies on SIGTERM, the wrapper ends, and the child (which ignores SIGTERM) is
    # re-parented out of that tree.
    child_file = tmp_path / "child.pid"
    child = f'trap "" TERM; echo $$ > {child_file}.tmp; mv {child_file}.tmp {child_file}; exec sleep 3005'
    command = f"env -u SSH_JOBS_JOB_MARKER sh -c '{child}' &\nwait\n"
    op = make_operator(no_setsid_conn, remote_base_dir, command)
    deferred = submit(op, StandInTaskInstance())
    job_dir = Path(deferred.trigger.job_dir)
    assert (job_dir / "launcher").read_text() == "nohup", "the sessions must not find setsid"
    wait_until(child_file.exists, what="the child's pid file")
    pid = int(child_file.read_text())
    started.add_pid(pid)
    started.add_marker(job_marker(deferred.trigger.job_token))
    wrapper = int((job_dir / "pid").read_text())
    assert os.getsid(wrapper) != wrapper, "without setsid the wrapper leads no session of its own"
    # The pid file is written just before the child's exec of sleep: wait for the exec.
    wait_until(
        lambda: Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x003005\x00",
        what="the child to become the sleep",
    )
    assert b"SSH_JOBS_JOB_MARKER=" not in Path(f"/proc/{pid}/environ").read_bytes()

    logged = kill_logged(op, deferred, "worker")

    killed = any("kill -> killed" in line for line in logged)
    survived = any(f"processes [{pid}] survived" in line for line in logged)
    assert killed or survived, logged
    assert not (killed and alive(pid)), f"the kill reported killed while {pid} runs: {logged}"
    assert not alive(pid), logged  # a sleep cannot withstand SIGKILL: it must be gone


# --------------------------------------------------------------------------- a host with BusyBox's tools


@pytest.fixture
def busybox_conn(sshd_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A connection to an sshd whose sessions find BusyBox's tools only (as on Alpine)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox not found; install it with: apt-get install -y busybox-static", pytrace=False)
    tools = tmp_path / "busybox-tools"
    tools.mkdir()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout
    for applet in applets.split():
        (tools / applet).symlink_to(busybox)
    home = tmp_path / "home-busybox"
    home.mkdir()
    server = sshd_factory(extra_config=[f"SetEnv HOME={home} PATH={tools}"])
    return use_connection(monkeypatch, server, "ssh_busybox")


def test_kill_with_busybox_tools_finds_a_marked_child_outside_the_job_tree(
    busybox_conn, remote_base_dir, tmp_path, started
) -> None:
    # The child leaves the job's session, and its parent shell ends at once: it is neither in
    # the job's process group nor in its tree, and only its marker says that it is the job's.
    child_file = tmp_path / "child.pid"
    child = f"setsid sleep 3008 </dev/null >/dev/null 2>&1 & echo $! > {child_file}.tmp; mv {child_file}.tmp {child_file}"
    op = make_operator(busybox_conn, remote_base_dir, f"sh -c '{child}'\nsleep 3008\n")
    deferred = submit(op, StandInTaskInstance())
    marker = job_marker(deferred.trigger.job_token)
    started.add_marker(marker)
    wait_until(child_file.exists, what="the child's pid file")
    pid = int(child_file.read_text())
    started.add_pid(pid)
    wait_until(lambda: pid in marked(marker), what="the child to carry the job's marker")
    assert os.getsid(pid) == pid
    assert Path(f"/proc/{pid}/exe").resolve() == Path(shutil.which("busybox") or "").resolve()

    logged = kill_logged(op, deferred, "worker")

    assert not alive(pid), f"the kill left the job's child running; it logged {logged}"
    assert any("kill -> killed" in line for line in logged), logged


# --------------------------------------------------------------------------- not the job's directory


@pytest.mark.parametrize("killer", ["worker", "triggerer"])
def test_kill_leaves_alone_a_directory_that_carries_another_token(
    ssh_conn, remote_base_dir, started, killer: str
) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "sleep 3006\n")
    deferred = submit(op, StandInTaskInstance())
    job_dir = Path(deferred.trigger.job_dir)
    marker = job_marker(deferred.trigger.job_token)
    started.add_marker(marker)
    wait_until(lambda: len(marked(marker)) >= 1, what="the job's processes")
    wrapper = int((job_dir / "pid").read_text())
    # Replaced behind the task's back: the directory is another submit's now, and so is what
    # runs in it, whatever environment it carries.
    (job_dir / "token").write_text("e" * 32 + "\n")

    logged = kill_logged(op, deferred, killer)

    assert any("foreign" in line or "not this task instance's" in line for line in logged), logged
    assert marked(marker) and alive(wrapper), "a kill refused as foreign must signal nothing"
