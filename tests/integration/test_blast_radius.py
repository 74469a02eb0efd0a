"""
Nothing one job does changes another job's answer: 50 jobs watched over one connection, one of
them careless in each way a job can be, against a real sshd; and a host whose ``/bin/sh`` is
bash with a full ``/tmp`` (RHEL, Rocky, most HPC login nodes).

Every poll runs in perl and in POSIX sh: both must hold.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.triggers.ssh_remote_job import SSHRemoteJobTrigger
from support.jobs import submit_jobs, trigger_for
from support.report import report
from support.runner import run_triggers
from support.sshd import SSHD_BINARY, SSHServer, use_connection

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = 50
#: The careless job sits in the middle: in a batch, half the healthy jobs come after it.
CARELESS = 20
#: A few failed polls in a row end a watch: a fault that costs healthy jobs their answers shows fast.
RECONNECTS = 2

#: What a careless job does, each after writing a first line. The healthy ones print two lines
#: and exit with a code of their own.
CARELESS_JOBS = {
    # A log whose size promises more than can be read (a sysfs file: a page by stat, two bytes
    # when read): the old sh poll announced the size, delivered fewer bytes and lost the
    # framing of every answer after it.
    "short-read log": 'ln -sf /sys/kernel/profiling "$SSH_JOBS_LOG_FILE"; sleep 2; exit 0',
    # Truncates its own log, then writes more: its new output must still arrive.
    # (Shorter than what was read before: a log cut and regrown past the old offset between two
    # polls cannot be told from one that grew.)
    "truncated log": ': > "$SSH_JOBS_LOG_FILE"; echo cut; sleep 1; exit 0',
    # A process it leaves behind keeps writing after it exited: its watch must still end.
    "leftover writer": "( for i in $(seq 1 100); do seq 1 20000; sleep 0.05; done ) & sleep 0.2; exit 0",
    # Deletes its own job directory: only its own answer says so.
    "deleted job dir": 'rm -rf "$SSH_JOBS_JOB_DIR"; sleep 1; exit 0',
    # A FIFO where the poll records how far the log was delivered: opening it would block
    # the whole batch.
    "fifo in job dir": 'rm -f "$SSH_JOBS_JOB_DIR/delivered"; mkfifo "$SSH_JOBS_JOB_DIR/delivered"; '
    "echo more; sleep 2; exit 0",
}


#: The careless job misbehaves once its first line is in the task log: the poll records how far
#: the log was delivered in the job directory (bounded wait: 30 s).
AFTER_FIRST_LINE_DELIVERED = (
    'i=0; while [ ! -s "$SSH_JOBS_JOB_DIR/delivered" ] && [ "$i" -lt 300 ]; do sleep 0.1; i=$((i + 1)); done'
)


def healthy_job(index: int) -> str:
    return f"echo job{index} line 1; sleep 2; echo job{index} line 2; exit {index % 4}\n"


class RecordingTrigger(SSHRemoteJobTrigger):
    """Keeps the lines and warnings it emits, so that each job's own output can be checked."""

    def _emit(self, delivery: Any) -> None:
        self.emitted = [*getattr(self, "emitted", []), *delivery.lines]
        self.warned = [*getattr(self, "warned", []), *delivery.warnings]
        super()._emit(delivery)


def watch_all(conn_id: str, base_dir: str, commands: list[str]) -> tuple[list[RecordingTrigger], list[Any]]:
    all_paths = submit_jobs(conn_id, base_dir, commands)
    make = functools.partial(
        trigger_for,
        poll_interval=0.5,
        command_timeout=20.0,
        max_reconnect_attempts=RECONNECTS,
        cleanup_policy="always",
    )
    triggers = [RecordingTrigger(**make(conn_id, paths).serialize()[1]) for paths in all_paths]
    try:
        events = asyncio.run(run_triggers(triggers, timeout=180))
    finally:
        stop_leftovers(all_paths[CARELESS].job_dir)
    return triggers, events


def stop_leftovers(job_dir: str) -> None:
    """Stop what the careless job may have left running (its marker is in its environment)."""
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"SSH_JOBS_JOB_DIR={job_dir}".encode() in environ.read_bytes():
                os.kill(int(environ.parent.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def assert_healthy_jobs_untouched(triggers: list[RecordingTrigger], events: list[Any]) -> None:
    for index, (trigger, event) in enumerate(zip(triggers, events, strict=True)):
        if index == CARELESS:
            continue
        code = index % 4
        assert event is not None, f"job{index} got no event"
        assert (event["status"], event["exit_code"]) == ("success" if code == 0 else "failed", code), (
            index,
            event,
        )
        assert trigger.emitted == [f"job{index} line 1", f"job{index} line 2"], index
        assert getattr(trigger, "warned", []) == [], (index, trigger.warned)


@pytest.mark.load
@pytest.mark.parametrize("careless", list(CARELESS_JOBS))
def test_one_careless_job_costs_the_other_49_nothing(
    poll_conn: str, remote_base_dir: str, careless: str
) -> None:
    commands = [healthy_job(i) for i in range(JOBS)]
    commands[CARELESS] = f"echo careless line 1; {AFTER_FIRST_LINE_DELIVERED}; {CARELESS_JOBS[careless]}\n"

    triggers, events = watch_all(poll_conn, remote_base_dir, commands)

    assert_healthy_jobs_untouched(triggers, events)
    own = events[CARELESS]
    report(f"careless job '{careless}' ({poll_conn}): {own['status']} - {own['message'][:120]}")
    emitted, warned = triggers[CARELESS].emitted, getattr(triggers[CARELESS], "warned", [])
    assert emitted[0] == "careless line 1"
    if careless == "truncated log":
        assert (own["status"], emitted) == ("success", ["careless line 1", "cut"])
        assert any("was cut to" in warning for warning in warned), warned
    elif careless == "leftover writer":
        # Ended, with the job's own code, though its leftover process still writes.
        assert own["status"] == "success"
        assert any("written after the job ended" in warning for warning in warned), warned
    elif careless == "fifo in job dir":
        assert (own["status"], emitted) == ("success", ["careless line 1", "more"])
    elif careless == "deleted job dir":
        assert own["status"] == "error" and "no longer exists" in own["message"]
    elif careless == "short-read log":
        assert own["status"] == "success"


# --------------------------------------------------------------------------- a RHEL-like host


class RhelLikeSSHServer(SSHServer):
    """
    The test sshd in a private mount namespace where ``/bin/sh`` is bash and ``TMPDIR`` is a
    small tmpfs filled to the last byte; bash 5.2 with ``BASH_COMPAT=44`` writes every
    here-document to ``TMPDIR``, as RHEL 8's bash 4.4 does. Nothing outside the namespace sees
    either mount.
    """

    def __init__(self, base_dir: Path, **options: Any) -> None:
        self.full_tmp = Path(base_dir).resolve() / "full-tmp"
        super().__init__(base_dir, **options)

    def _config_lines(self) -> list[str]:
        # SetEnv takes every pair on one line: sshd keeps the first SetEnv it reads.
        return [
            f"SetEnv HOME={self.home_dir} BASH_COMPAT=44 TMPDIR={self.full_tmp}"
            if line.startswith("SetEnv ")
            else line
            for line in super()._config_lines()
        ]

    def _spawn(self) -> None:
        self.full_tmp.mkdir(exist_ok=True)
        namespace_setup = (
            "mount --bind /bin/bash /bin/sh && "
            f"mount -t tmpfs -o size=256k tmpfs {self.full_tmp} && "
            f"{{ dd if=/dev/zero of={self.full_tmp}/fill bs=4096 2>/dev/null; true; }} && "
            f"exec {SSHD_BINARY} -D -f {self.config_path} -E {self.log_path}"
        )
        with self.stdio_path.open("ab") as stdio:
            # unshare execs sh, which execs sshd: the PID is sshd's own, as stop() needs.
            self._proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", namespace_setup],
                stdin=subprocess.DEVNULL,
                stdout=stdio,
                stderr=stdio,
                start_new_session=True,
            )


@pytest.fixture
def rhel_like_sshd(tmp_path: Path) -> Any:
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root")
    server = RhelLikeSSHServer(tmp_path / "sshd-rhel")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("interpreter", ["perl", "sh"])
def test_polls_answer_on_a_host_whose_sh_is_bash_and_whose_tmp_is_full(
    rhel_like_sshd: RhelLikeSSHServer,
    monkeypatch: pytest.MonkeyPatch,
    remote_base_dir: str,
    interpreter: str,
) -> None:
    conn_id = use_connection(
        monkeypatch, rhel_like_sshd, f"ssh_rhel_{interpreter}", poll_interpreter=interpreter
    )
    # The premise: the host's sh is bash, and it cannot write a here-document.
    hook = SSHHook(ssh_conn_id=conn_id)
    with hook.get_conn() as client:
        _, stdout, stderr = hook.run_script(
            client, 'echo "bash=${BASH_VERSION:-}"\ncat <<EOF\nhere\nEOF\n', 30
        )
    assert b"bash=5" in stdout and b"here" not in stdout, (stdout, stderr)

    commands = [f"echo job{i} line 1; sleep 1; echo job{i} line 2; exit {i % 4}\n" for i in range(8)]
    all_paths = submit_jobs(conn_id, remote_base_dir, commands)
    make = functools.partial(
        trigger_for, poll_interval=0.5, command_timeout=20.0, max_reconnect_attempts=RECONNECTS
    )
    triggers = [RecordingTrigger(**make(conn_id, paths).serialize()[1]) for paths in all_paths]
    events = asyncio.run(run_triggers(triggers, timeout=120))

    for index, (trigger, event) in enumerate(zip(triggers, events, strict=True)):
        code = index % 4
        assert (event["status"], event["exit_code"]) == ("success" if code == 0 else "failed", code), event
        assert trigger.emitted == [f"job{index} line 1", f"job{index} line 2"]
