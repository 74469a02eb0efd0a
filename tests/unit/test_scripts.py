"""
The protocol scripts are real POSIX ``sh``: run them with the local ``/bin/sh -s``.

No SSH here: the scripts are fed to a local shell on stdin exactly as the hooks feed them
to the remote one, against job directories under ``tmp_path``. Every job started is killed
(by its process group) at teardown.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, parse_simple_state
from ssh_jobs_provider.protocol.batch import build_cleanup_script
from ssh_jobs_provider.protocol.environment import normalise_environment
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, job_marker
from ssh_jobs_provider.protocol.kill import build_kill_script
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import build_submit_script, parse_submit_output
from support.protocol import poll_once as poll
from support.protocol import run_sh
from support.waiting import wait_until

#: Every poll here runs in POSIX sh and in perl, which must answer alike.
pytestmark = pytest.mark.usefixtures("poll_interpreter")

#: One submit's token: a re-submit with it is the same submit retried (lost reply).
TOKEN = "0123456789abcdef0123456789abcdef"
SCRIPT_TIMEOUT = 30.0

JobFactory = Callable[[], RemoteJobPaths]


# --------------------------------------------------------------------------- helpers


def submit(paths: RemoteJobPaths, command: str, environment: dict[str, str] | None = None) -> JobStatus:
    result = run_sh(build_submit_script(paths, command, environment or {}, TOKEN))
    assert result.returncode == 0, result.stderr
    return parse_submit_output(result.stdout)


def wait_for_exit(paths: RemoteJobPaths) -> int:
    """Wait (bounded) for the detached wrapper to record the exit code and end; return the code."""
    exit_file = Path(paths.exit_code_file)
    wait_until(exit_file.exists, what=f"{exit_file}")
    # The wrapper still writes the clean copy of the record after the first one appeared; a
    # submit as fast as the perl one would otherwise find it alive.
    pid = int(Path(paths.pid_file).read_text())
    wait_until(lambda: not group_exists(pid), what=f"the end of wrapper {pid}")
    return int(exit_file.read_text().split()[0])


def live_group_members(pgid: int) -> list[int]:
    """Pids of the non-zombie processes in process group (or session) ``pgid``."""
    out = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "pgid=", "-o", "sid=", "-o", "stat="],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    members = []
    for row in out.splitlines():
        pid, group, session, stat = row.split(None, 3)
        # Zombies are already dead; how fast they are reaped is up to the host's init.
        if pgid in (int(group), int(session)) and not stat.startswith("Z"):
            members.append(int(pid))
    return members


def group_exists(pgid: int) -> bool:
    """Whether ``kill -0 -pgid`` would succeed (zombies included, as the kill script sees it)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def ps_group(pgid: int) -> list[int]:
    """``ps -o pid= -g <pgid>`` (procps selects by session id; setsid makes them equal), zombies excluded."""
    out = subprocess.run(
        ["ps", "-o", "pid=", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True, check=False
    ).stdout
    return [
        int(row.split()[0]) for row in out.splitlines() if row.strip() and not row.split()[1].startswith("Z")
    ]


def _kill_jobs_under(base: Path) -> None:
    for pid_file in base.glob("*/pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid > 1:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def base_dir(tmp_path: Path) -> Iterator[Path]:
    base = tmp_path / "jobs"
    yield base
    _kill_jobs_under(base)


@pytest.fixture
def new_job(base_dir: Path) -> JobFactory:
    """Each call gives the paths of a fresh, unique job under ``base_dir``."""
    counter = itertools.count()

    def make() -> RemoteJobPaths:
        return RemoteJobPaths(job_id=f"job{next(counter)}", base_dir=str(base_dir))

    return make


# --------------------------------------------------------------------------- submit


def test_submit_creates_job_dir_records_pid_and_reports_launch(new_job: JobFactory) -> None:
    paths = new_job()
    status = submit(paths, "echo hello")

    job_dir = Path(paths.job_dir)
    assert status.launched is True
    assert status.pid is not None
    assert status.remote_os == os.uname().sysname
    assert Path(paths.pid_file).read_text().strip() == str(status.pid)
    assert (job_dir / "claimed").is_dir()
    assert (job_dir / "command.sh").read_bytes() == b"echo hello"
    assert wait_for_exit(paths) == 0
    assert Path(paths.log_file).read_bytes() == b"hello\n"


def test_submit_returns_while_job_runs_detached_in_its_own_session(new_job: JobFactory) -> None:
    paths = new_job()
    started = time.monotonic()
    status = submit(paths, "sleep 30")
    elapsed = time.monotonic() - started

    assert elapsed < 10, "submit must not wait for the command"
    assert status.state is JobState.RUNNING
    assert status.pid is not None
    # setsid: the wrapper leads its own session and process group, detached from ours.
    assert os.getsid(status.pid) == status.pid
    assert os.getpgid(status.pid) == status.pid
    assert os.getsid(status.pid) != os.getsid(0)


def test_exit_code_written_atomically_with_stdout_and_stderr_in_log(new_job: JobFactory) -> None:
    paths = new_job()
    submit(paths, "echo out\necho err >&2\nexit 7\n")

    assert wait_for_exit(paths) == 7
    # The exit code, and the log's size when the job ended (8 bytes: "out\nerr\n").
    assert Path(paths.exit_code_file).read_bytes() == b"7 log=8\n"
    assert not list(Path(paths.job_dir).glob("*.tmp*")), "no temporary file may be left behind"
    assert Path(paths.log_file).read_bytes() == b"out\nerr\n"


def test_command_stdin_is_dev_null(new_job: JobFactory) -> None:
    paths = new_job()
    submit(paths, "if read line; then echo got-input; else echo eof; fi")

    assert wait_for_exit(paths) == 0
    assert Path(paths.log_file).read_bytes() == b"eof\n"


@pytest.mark.parametrize(
    ("command", "exit_code", "log"),
    [
        pytest.param("exit 42", 42, b"", id="exit-n"),
        pytest.param("set -e\necho before\nfalse\necho never\n", 1, b"before\n", id="set-e"),
        pytest.param("printf 'b\\na\\nc\\n' | sort | tr a-z A-Z\n", 0, b"A\nB\nC\n", id="pipeline"),
        pytest.param(
            "cat <<'EOF'\nliteral $HOME `x`\nEOF\necho done\n", 0, b"literal $HOME `x`\ndone\n", id="heredoc"
        ),
        pytest.param(
            'greet() { echo "hi $1"; return 3; }\ngreet you\nexit $?\n', 3, b"hi you\n", id="function"
        ),
        pytest.param("a=2; b=3\necho $((a * b)); echo second\n", 0, b"6\nsecond\n", id="multi-statement"),
        pytest.param("echo first\necho last", 0, b"first\nlast\n", id="no-trailing-newline"),
        pytest.param("echo only # trailing comment, no newline", 0, b"only\n", id="comment-no-newline"),
        pytest.param("for i in 1 2 3; do echo $i; done; exit 0", 0, b"1\n2\n3\n", id="loop"),
    ],
)
def test_command_shell_constructs_run_as_written(
    new_job: JobFactory, command: str, exit_code: int, log: bytes
) -> None:
    paths = new_job()
    submit(paths, command)

    assert wait_for_exit(paths) == exit_code
    assert Path(paths.log_file).read_bytes() == log


def test_shebang_command_runs_with_its_interpreter(new_job: JobFactory) -> None:
    with_shebang, without = new_job(), new_job()
    submit(with_shebang, '#!/bin/sh\necho "${BASH_VERSION:-not-bash}"\n')
    submit(without, 'echo "${BASH_VERSION:-not-bash}"\n')

    assert wait_for_exit(with_shebang) == 0
    assert wait_for_exit(without) == 0
    assert Path(with_shebang.log_file).read_bytes() == b"not-bash\n"
    # Without a shebang the wrapper prefers bash when the host has it.
    if shutil.which("bash"):
        assert Path(without.log_file).read_bytes() != b"not-bash\n"
    else:
        assert Path(without.log_file).read_bytes() == b"not-bash\n"


@pytest.mark.parametrize("form", ["sh", "perl"])
def test_the_wrappers_first_steps_are_recorded_alike_by_either_submit(new_job: JobFactory, form: str) -> None:
    """
    The sh submit's wrapper claims its job and records its start, boot id and pid itself; the
    perl submit takes those steps in the process it forks, which then stays the wrapper
    (``perl/wrapper.pl``, named ``ssh-jobs wrapper <job dir>``). Either way the same files say
    the same, and the command runs in bash where the host has one.
    """
    paths = new_job()
    script = build_submit_script(
        paths, 'echo "${BASH_VERSION:-not-bash}"\nsleep 30\n', {}, TOKEN, interpreter=form
    )
    result = run_sh(script)
    assert result.returncode == 0, result.stderr
    status = parse_submit_output(result.stdout)
    job_dir = Path(paths.job_dir)
    wait_until(lambda: Path(paths.log_file).read_bytes().endswith(b"\n"), what="the job's first line")

    pid = int(Path(paths.pid_file).read_text())
    assert status.pid == pid and status.launched
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if form == "perl":
        assert arguments[0] == f"ssh-jobs wrapper {job_dir}".encode(), arguments
    else:
        assert arguments[:3] == [b"/bin/sh", f"{job_dir}/run.sh".encode(), str(job_dir).encode()], arguments
    stat_fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    assert (job_dir / "start").read_text() == stat_fields[19] + "\n"
    assert (job_dir / "boot_id").read_text() == Path("/proc/sys/kernel/random/boot_id").read_text()
    assert (job_dir / "claimed").is_dir()
    assert not list(job_dir.glob("*.tmp*")), "no temporary file may be left behind"
    assert poll(paths).state == JobState.RUNNING
    first_line = Path(paths.log_file).read_bytes().split(b"\n")[0]
    assert (first_line == b"not-bash") == (shutil.which("bash") is None), first_line


def test_shebang_command_can_pick_a_non_shell_interpreter(new_job: JobFactory) -> None:
    paths = new_job()
    submit(paths, f"#!{sys.executable}\nimport sys\nprint('py', sys.version_info[0])\n")

    assert wait_for_exit(paths) == 0
    assert Path(paths.log_file).read_bytes() == b"py 3\n"


def test_command_bytes_are_stored_verbatim(new_job: JobFactory) -> None:
    command = "echo 'it'\\''s' \"$X\" `echo tick` \\\\ \u00e9\u4e2d\u2603\necho tail"
    paths = new_job()
    submit(paths, command, {"X": "x"})

    assert Path(paths.job_dir, "command.sh").read_bytes() == command.encode("utf-8")
    assert wait_for_exit(paths) == 0
    assert Path(paths.log_file).read_bytes() == "it's x tick \\ \u00e9\u4e2d\u2603\ntail\n".encode()


@pytest.mark.parametrize("command", ["", "   \n\t", "echo a\0b"])
def test_submit_rejects_empty_or_nul_command(command: str) -> None:
    paths = RemoteJobPaths(job_id="j", base_dir="/tmp/never-created")
    with pytest.raises(ValueError, match="command"):
        build_submit_script(paths, command, {}, TOKEN)


# --------------------------------------------------------------------------- environment

_env_counter = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40), min_size=1, max_size=3
    )
)
@example(values=["", "'\\''", "a b  c"])
@example(values=['it\'s "quoted"', "$HOME ${PATH} $(id) `id`", "back\\slash\\n"])
@example(values=["line1\nline2\n", "\u00e9\u4e2d\U0001f642", "-n"])
@example(values=["\r\n\t trailing space ", "*", "~"])
def test_environment_values_reach_the_command_byte_for_byte(base_dir: Path, values: list[str]) -> None:
    paths = RemoteJobPaths(job_id=f"env{next(_env_counter)}", base_dir=str(base_dir))
    environment = normalise_environment({f"V{i}": value for i, value in enumerate(values)})
    command = "\n".join(
        f'printf \'%s\' "$V{i}" > "${{SSH_JOBS_JOB_DIR:?}}/out{i}"' for i in range(len(values))
    )

    submit(paths, command, environment)

    assert wait_for_exit(paths) == 0, Path(paths.log_file).read_bytes()
    for i, value in enumerate(values):
        assert Path(paths.job_dir, f"out{i}").read_bytes() == value.encode("utf-8")


@pytest.mark.parametrize(
    "name", ["1ABC", "A-B", "A B", "", "A=B", "\u00c9T\u00c9", "A;rm -rf /", "\nA", "A\nB"]
)
def test_invalid_environment_names_are_rejected_before_any_script(name: str) -> None:
    with pytest.raises(ValueError, match="Invalid environment variable name"):
        normalise_environment({name: "x"})


def test_environment_name_with_trailing_newline_is_rejected() -> None:
    # Regression: '$' in the name pattern also matched before a trailing newline.
    with pytest.raises(ValueError, match="Invalid environment variable name"):
        normalise_environment({"A\n": "x"})


def test_non_string_environment_name_is_rejected() -> None:
    with pytest.raises(ValueError, match="Invalid environment variable name"):
        normalise_environment({1: "x"})  # type: ignore[dict-item]


def test_nul_in_environment_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="NUL"):
        normalise_environment({"A": "x\0y"})


@pytest.mark.parametrize("value", [None, b"bytes", ["a"], {"a": 1}, ("a",), {"a"}])
def test_non_scalar_environment_values_are_rejected(value: object) -> None:
    with pytest.raises(ValueError, match=r"environment\['A'\]"):
        normalise_environment({"A": value})


def test_scalar_environment_values_are_coerced_to_str() -> None:
    assert normalise_environment({"I": 5, "F": 1.5, "B": True, "S": "s"}) == {
        "I": "5",
        "F": "1.5",
        "B": "True",
        "S": "s",
    }
    assert normalise_environment(None) == {}
    assert normalise_environment({}) == {}


def test_environment_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        normalise_environment([("A", "b")])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- idempotent submit


def test_second_submit_while_running_reattaches_without_relaunching(
    new_job: JobFactory, tmp_path: Path
) -> None:
    counter = tmp_path / "counter"
    paths = new_job()
    command = f"echo run >> '{counter}'\nsleep 1\n"

    first = submit(paths, command)
    second = submit(paths, command)

    assert first.launched is True
    assert second.launched is False
    assert second.pid == first.pid
    assert wait_for_exit(paths) == 0
    assert counter.read_text() == "run\n"


def test_submit_after_job_finished_does_not_rerun_or_rewrite(new_job: JobFactory, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    paths = new_job()
    submit(paths, f"echo run >> '{counter}'; exit 5")
    assert wait_for_exit(paths) == 5

    again = submit(paths, "echo other command; exit 0")

    assert again.launched is False
    assert again.state is JobState.EXITED
    assert again.exit_code == 5
    assert counter.read_text() == "run\n"
    assert Path(paths.job_dir, "command.sh").read_text().startswith("echo run")


def test_concurrent_submits_launch_the_job_once(new_job: JobFactory, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    paths = new_job()
    command = f"echo run >> '{counter}'\nsleep 0.5\n"
    results: list[JobStatus] = []

    def go() -> None:
        results.append(submit(paths, command))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SCRIPT_TIMEOUT)

    assert len(results) == 4
    assert wait_for_exit(paths) == 0
    time.sleep(0.3)  # a second (wrongly) launched command would have appended by now
    assert counter.read_text() == "run\n"
    assert len({status.pid for status in results}) == 1


def test_base_dir_with_spaces_quotes_and_dollars_is_quoted_everywhere(tmp_path: Path) -> None:
    base = tmp_path / "base with 'quote' \"dq\" $HOME `x` ;"
    paths = RemoteJobPaths(job_id="job", base_dir=str(base))
    try:
        status = submit(paths, "echo ok")
        assert status.launched is True
        assert wait_for_exit(paths) == 0
        assert poll(paths).log_data == b"ok\n"
        assert parse_simple_state(run_sh(build_cleanup_script(paths)).stdout, "cleanup") == "removed"
        assert base.is_dir()
        assert not Path(paths.job_dir).exists()
    finally:
        _kill_jobs_under(base)


# --------------------------------------------------------------------------- poll


def _fake_job_dir(base: Path, log: bytes, exit_code: str | None = "0") -> RemoteJobPaths:
    paths = RemoteJobPaths(job_id="fake", base_dir=str(base))
    job_dir = Path(paths.job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    Path(paths.log_file).write_bytes(log)
    Path(paths.pid_file).write_text("2147483646\n")  # no such process
    if exit_code is not None:
        Path(paths.exit_code_file).write_text(f"{exit_code}\n")
    return paths


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    log=st.binary(max_size=300),
    offset=st.integers(min_value=0, max_value=320),
    max_bytes=st.integers(min_value=1, max_value=320),
)
@example(log=b"\xff\xfe\x00bad \xc3( utf-8\r\n\x00", offset=1, max_bytes=5)
def test_poll_returns_header_and_exact_log_window(
    tmp_path: Path, log: bytes, offset: int, max_bytes: int
) -> None:
    paths = _fake_job_dir(tmp_path / "polljobs", log, exit_code="3")

    status = poll(paths, offset, max_bytes)

    assert status.state is JobState.EXITED
    assert status.exit_code == 3
    assert status.log_size == len(log)
    assert status.log_data == log[offset : offset + max_bytes]


def test_poll_of_missing_job_dir_says_missing(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="nothing-here", base_dir=str(tmp_path))
    status = poll(paths)
    assert status.state is JobState.MISSING
    assert status.done


def test_poll_of_dead_pid_without_exit_code_says_vanished(tmp_path: Path) -> None:
    paths = _fake_job_dir(tmp_path, b"partial", exit_code=None)
    status = poll(paths)
    assert status.state is JobState.VANISHED
    assert status.log_data == b"partial"


def test_poll_of_dir_without_pid_says_pending(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="p", base_dir=str(tmp_path))
    Path(paths.job_dir).mkdir(parents=True)
    status = poll(paths)
    assert status.state is JobState.PENDING
    assert status.log_size == 0


def test_poll_of_real_job_reports_final_size_and_binary_log(new_job: JobFactory) -> None:
    paths = new_job()
    submit(paths, "printf 'a\\377\\376\\000z\\n'; printf 'tail-no-newline'")
    assert wait_for_exit(paths) == 0
    expected = b"a\xff\xfe\x00z\ntail-no-newline"

    status = poll(paths, 0, 4)
    rest = poll(paths, 4, 1000)

    assert status.state is JobState.EXITED
    assert status.log_size == len(expected)
    assert status.log_data == expected[:4]
    assert rest.log_data == expected[4:]


@pytest.mark.parametrize(
    ("offset", "max_bytes", "delivered"), [(-1, 10, 0), (0, -1, 0), (0, 10, -1), (-5, -5, -5)]
)
def test_poll_entry_rejects_bad_window(offset: int, max_bytes: int, delivered: int) -> None:
    paths = RemoteJobPaths(job_id="j")
    with pytest.raises(ValueError, match="poll window"):
        PollEntry(paths, offset, max_bytes, delivered=delivered)


def test_poll_entry_rejects_a_malformed_token() -> None:
    with pytest.raises(ValueError, match="Invalid job token"):
        PollEntry(RemoteJobPaths(job_id="j"), 0, 10, token="not-a-token")


# --------------------------------------------------------------------------- kill


def start_process_tree(paths: RemoteJobPaths, command: str, processes: int) -> int:
    """Submit ``command`` and wait until its group has ``processes`` live members; return the group."""
    status = submit(paths, command)
    assert status.pid is not None
    pgid = status.pid
    wait_until(lambda: len(live_group_members(pgid)) >= processes, what="the job's children to start")
    return pgid


def test_kill_terminates_whole_process_tree_and_wrapper_records_143(new_job: JobFactory) -> None:
    paths = new_job()
    pgid = start_process_tree(paths, "sleep 60 &\n(sleep 60; echo never) &\nsh -c 'sleep 60' &\nwait\n", 5)

    result = run_sh(build_kill_script(paths))

    assert parse_simple_state(result.stdout, "kill") == "killed"
    wait_until(lambda: not live_group_members(pgid), what="the process group to be gone")
    assert ps_group(pgid) == []
    assert wait_for_exit(paths) == 143
    assert b"never" not in Path(paths.log_file).read_bytes()


def test_kill_escalates_to_sigkill_when_term_is_ignored(new_job: JobFactory) -> None:
    paths = new_job()
    pgid = start_process_tree(paths, "trap '' TERM\nsleep 60 &\nsleep 60 &\nwait\n", 4)

    started = time.monotonic()
    result = run_sh(build_kill_script(paths, grace_seconds=1))

    assert time.monotonic() - started < 10
    # Killed processes may linger as zombies until init reaps them; kill -0 still sees
    # those, so "survived" can be reported here although nothing is running any more.
    assert parse_simple_state(result.stdout, "kill") in ("killed", "survived")
    wait_until(lambda: not live_group_members(pgid), what="the process group to be gone")
    assert ps_group(pgid) == []
    # SIGKILL also took the wrapper: no exit code, so a poll (once reaped) says vanished.
    assert not Path(paths.exit_code_file).exists()
    wait_until(lambda: poll(paths).state is JobState.VANISHED, what="poll to report the job vanished")


def test_kill_of_finished_job_says_not_running(new_job: JobFactory) -> None:
    paths = new_job()
    submit(paths, "exit 0")
    wait_for_exit(paths)
    wait_until(
        lambda: poll(paths).state is JobState.EXITED and not live_group_members(int(poll(paths).pid or 0))
    )

    assert parse_simple_state(run_sh(build_kill_script(paths)).stdout, "kill") == "not-running"


def test_kill_of_missing_dir_says_missing(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="gone", base_dir=str(tmp_path))
    assert parse_simple_state(run_sh(build_kill_script(paths)).stdout, "kill") == "missing"


def test_kill_script_carries_the_marker_derived_from_its_token(tmp_path: Path) -> None:
    # The kill needs nothing from the job directory to find the job's processes: the marker
    # comes with the script, and is the one the submit wrote.
    paths = RemoteJobPaths(job_id="j", base_dir=str(tmp_path))
    written = dict(job_files("echo hi\n", {}, None, TOKEN))["marker"].strip()

    assert written == job_marker(TOKEN)
    assert build_kill_script(paths, TOKEN).endswith(f"kill_job {paths.job_dir} {TOKEN} 5 {written}\n}}\n")
    assert build_kill_script(paths).endswith(f"kill_job {paths.job_dir} '' 5 ''\n}}\n")


def test_kill_with_a_token_of_a_missing_dir_and_no_marked_process_says_missing(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="gone", base_dir=str(tmp_path))
    assert run_sh(build_kill_script(paths, TOKEN)).stdout.endswith(b"kill state=missing\n")


@pytest.mark.parametrize(("token", "state"), [(TOKEN, "foreign"), ("", "missing")])
def test_kill_of_a_job_path_that_is_no_directory(tmp_path: Path, token: str, state: str) -> None:
    # With a token, something under the job's name that is not its directory is not the job's:
    # nothing is killed. Without one, the answer stays what it always was.
    paths = RemoteJobPaths(job_id="file", base_dir=str(tmp_path))
    Path(paths.job_dir).write_text("not a job\n")

    assert parse_simple_state(run_sh(build_kill_script(paths, token)).stdout, "kill") == state


@pytest.mark.parametrize("pid_content", [None, "", "garbage", "1", "0"])
def test_kill_never_signals_without_a_real_pid(tmp_path: Path, pid_content: str | None) -> None:
    paths = RemoteJobPaths(job_id="nopid", base_dir=str(tmp_path))
    Path(paths.job_dir).mkdir(parents=True)
    if pid_content is not None:
        Path(paths.pid_file).write_text(pid_content)

    assert parse_simple_state(run_sh(build_kill_script(paths)).stdout, "kill") == "not-started"


# --------------------------------------------------------------------------- cleanup


def test_cleanup_removes_only_the_job_dir_then_reports_absent(new_job: JobFactory, base_dir: Path) -> None:
    paths, sibling = new_job(), new_job()
    submit(paths, "echo a")
    submit(sibling, "echo b")
    wait_for_exit(paths)
    wait_for_exit(sibling)
    (base_dir / "unrelated.txt").write_text("keep me")

    first = run_sh(build_cleanup_script(paths))
    second = run_sh(build_cleanup_script(paths))

    assert parse_simple_state(first.stdout, "cleanup") == "removed"
    assert first.returncode == 0
    assert parse_simple_state(second.stdout, "cleanup") == "absent"
    assert not Path(paths.job_dir).exists()
    assert Path(sibling.log_file).read_bytes() == b"b\n"
    assert (base_dir / "unrelated.txt").read_text() == "keep me"


def test_cleanup_removes_read_only_and_nested_content(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="nested", base_dir=str(tmp_path))
    nested = Path(paths.job_dir, "a", "b")
    nested.mkdir(parents=True)
    (nested / "f").write_text("x")
    (Path(paths.job_dir) / ".hidden").write_text("x")

    assert parse_simple_state(run_sh(build_cleanup_script(paths)).stdout, "cleanup") == "removed"
    assert not Path(paths.job_dir).exists()
    assert tmp_path.is_dir()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8, 0.99])
def test_a_script_cut_short_in_transit_runs_not_at_all(tmp_path: Path, fraction: float) -> None:
    paths = RemoteJobPaths(job_id="cut", base_dir=str(tmp_path / "jobs"))
    script = build_submit_script(paths, f"touch {tmp_path}/ran", {}, TOKEN)

    result = run_sh(script[: int(len(script) * fraction)])

    assert result.returncode != 0
    assert not (tmp_path / "jobs").exists()
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("recorded", "alive"), [("same", True), ("other", False)])
def test_without_proc_the_wrapper_is_recognised_by_its_ps_start_time(
    tmp_path: Path, recorded: str, alive: bool
) -> None:
    # Hosts without /proc (macOS, BSD) record `ps -o lstart=` instead: a live pid whose start
    # time differs from the record is another process that got the same pid.
    process = subprocess.Popen(["sleep", "30"])
    try:
        job = tmp_path / "jobs" / "noproc"
        job.mkdir(parents=True)
        started = " ".join(
            subprocess.run(
                ["ps", "-o", "lstart=", "-p", str(process.pid)], capture_output=True, text=True
            ).stdout.split()
        )
        (job / "start").write_text(f"ps:{started if recorded == 'same' else 'Thu Jan  1 00:00:00 1970'}\n")
        (job / "pid").write_text(f"{process.pid}\n")
        status = poll(RemoteJobPaths("noproc", str(tmp_path / "jobs")))
        assert status.state is (JobState.RUNNING if alive else JobState.VANISHED)
    finally:
        process.kill()
        process.wait()
