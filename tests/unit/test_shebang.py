"""
A ``#!`` command's interpreter is started by the wrapper, which reads the ``#!`` line as Linux does.

The real wrapper (``run.sh``, as the submit writes it) runs here in the foreground under each
POSIX shell this machine has (dash, bash in POSIX mode, BusyBox ash), and so does its perl twin
(``perl/wrapper.pl``), against a job directory
under ``tmp_path``. ``tmp_path`` allows execution, so the kernel can run the same ``command.sh``
directly: whatever the kernel makes of a ``#!`` line, the wrapper must make of it too (the
arguments, ``argv[0]``, ``$0``, the exit code); where it deliberately differs, the test says why.
Without any exec permission on the job directory, see ``tests/integration/test_noexec_base_dir.py``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssh_jobs_provider.protocol.scripts import job_files, perl_source, wrapper_source

TOKEN = "0123456789abcdef0123456789abcdef"
RUN_TIMEOUT = 30.0
#: The shells the wrapper must work in, as ``argv`` prefixes.
SHELLS = {
    "dash": ["dash"],
    "bash-posix": ["bash", "--posix"],
    "busybox-ash": ["busybox", "sh"],
    # The perl twin (perl/wrapper.pl), as the process a perl submit forked runs it.
    "perl-wrapper": ["perl"],
}
#: An interpreter that prints the arguments it was given after its own name.
SHOW_ARGV = f"#!{sys.executable}\nimport sys\nprint(sys.argv[1:])\n"


@pytest.fixture(params=list(SHELLS))
def shell(request: pytest.FixtureRequest) -> list[str]:
    """Each test runs the wrapper under each shell this machine has."""
    argv = SHELLS[request.param]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed (apt-get install -y busybox-static for BusyBox)")
    return argv


@pytest.fixture
def show_argv(tmp_path: Path) -> Path:
    """``<tmp_path>/bin/show-argv``: prints its arguments (itself a ``#!`` script, as Linux allows)."""
    path = tmp_path / "bin" / "show-argv"
    path.parent.mkdir()
    path.write_text(SHOW_ARGV)
    path.chmod(0o700)
    return path


def job_dir_with(tmp_path: Path, command: str, environment: dict[str, str] | None = None) -> Path:
    """A job directory as the submit leaves it (working dir ``tmp_path``), not yet started."""
    job_dir = tmp_path / "jobs" / "job"
    job_dir.mkdir(parents=True, mode=0o700)
    for name, content in (
        *job_files(command, environment or {}, str(tmp_path), TOKEN),
        ("run.sh", wrapper_source()),
    ):
        (job_dir / name).write_text(content)
    (job_dir / "command.sh").chmod(0o700)
    (job_dir / "stdout.log").touch()
    return job_dir


def run_wrapper(shell: list[str], job_dir: Path) -> tuple[int, bytes]:
    """Run the job's wrapper in the foreground under ``shell``: ``(exit code recorded, log)``."""
    argv = [*shell, str(job_dir / "run.sh"), str(job_dir)]
    if shell == ["perl"]:
        bash = shutil.which("bash") or ""
        argv = [
            "perl",
            "-e",
            perl_source("wrapper.pl") + "run_wrapper(@ARGV);\nexit 9;\n",
            str(job_dir),
            bash,
        ]
    subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=True,
    )
    return int((job_dir / "exit_code").read_text().split()[0]), (job_dir / "stdout.log").read_bytes()


def run_by_the_kernel(job_dir: Path, working_dir: Path) -> tuple[int, bytes]:
    """Execute ``command.sh`` directly, as the wrapper did before: ``(exit code, output)``."""
    result = subprocess.run(
        [str(job_dir / "command.sh")],
        cwd=working_dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return result.returncode, result.stdout


# The first lines are templates: {argv} is the show-argv interpreter, {py} this Python.
@pytest.mark.parametrize(
    "command",
    [
        pytest.param("#!{argv}\nignored\n", id="no-argument"),
        pytest.param("#! \t {argv}\nignored\n", id="blanks-before-the-interpreter"),
        pytest.param("#!{argv} \t \nignored\n", id="blanks-after-the-interpreter"),
        pytest.param("#!{argv} -x\nignored\n", id="one-argument"),
        pytest.param("#!{argv}   one  two\tthree \t \nignored\n", id="argument-with-blanks-is-one"),
        pytest.param("#!{argv} 'q' \"d\" \\b $HOME `id` * ;|&\nignored\n", id="argument-is-literal"),
        pytest.param("#!{argv} last", id="no-newline"),
        pytest.param("#!bin/show-argv relative\nignored\n", id="relative-interpreter-from-working-dir"),
        pytest.param(
            "#!{py}\nimport sys\nprint(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:-1], sys.argv)\n",
            id="argv0-of-the-interpreter",
        ),
        pytest.param('#!/bin/sh\necho "$0" "$#"\nexit 3\n', id="sh-dollar-zero-and-exit-code"),
        pytest.param(
            "#!/usr/bin/env python3\nimport sys\nprint(sys.argv)\nsys.exit(4)\n",
            id="env-finds-the-interpreter",
        ),
    ],
)
def test_the_wrapper_reads_the_shebang_line_as_the_kernel_does(
    shell: list[str], show_argv: Path, tmp_path: Path, command: str
) -> None:
    job_dir = job_dir_with(
        tmp_path, command.replace("{argv}", str(show_argv)).replace("{py}", sys.executable)
    )

    expected = run_by_the_kernel(job_dir, tmp_path)
    assert run_wrapper(shell, job_dir) == expected
    assert str(job_dir / "command.sh").encode() in expected[1], "the script's path reaches the interpreter"


def test_a_long_shebang_line_is_read_whole(shell: list[str], show_argv: Path, tmp_path: Path) -> None:
    # Linux looks at the file's first 256 bytes only and cuts the argument there; the wrapper
    # has no reason to: the whole argument reaches the interpreter.
    argument = "a" * 300 + " z"
    job_dir = job_dir_with(tmp_path, f"#!{show_argv} {argument}\n")

    assert run_wrapper(shell, job_dir) == (0, f"{[argument, str(job_dir / 'command.sh')]}\n".encode())


@pytest.mark.parametrize("line", ["#!", "#!  \t "])
def test_a_shebang_line_naming_no_interpreter_runs_with_bin_sh(
    shell: list[str], tmp_path: Path, line: str
) -> None:
    # The kernel refuses such a file, and a shell that asked it to execute one runs it itself
    # (dash with /bin/sh, bash with bash): the wrapper runs it with /bin/sh, whichever runs it.
    job_dir = job_dir_with(tmp_path, f'{line}\necho "$0" "${{BASH_VERSION:-not-bash}}"\n')

    assert run_wrapper(shell, job_dir) == (0, f"{job_dir / 'command.sh'} not-bash\n".encode())


def test_a_shebang_line_with_windows_line_ending_is_refused_with_the_reason(
    shell: list[str], tmp_path: Path
) -> None:
    # The kernel would look for an interpreter named "/bin/sh\r" and report it not found, the
    # carriage return invisible in the message.
    job_dir = job_dir_with(tmp_path, "#!/bin/sh\r\necho never\r\n")

    code, log = run_wrapper(shell, job_dir)
    assert code == 126
    assert b"carriage return" in log and b"never" not in log


def test_the_environment_cannot_change_how_the_command_is_started(shell: list[str], tmp_path: Path) -> None:
    # env.sh runs right before the command and may set any name, the wrapper's own variables too.
    clobbered = {
        "jd": "/nonexistent",
        "first": "#!/bin/false",
        "shell": "/bin/false",
        "sb_interp": "/bin/false",
        "sb_arg": "-c",
    }
    with_shebang = job_dir_with(tmp_path / "a", '#!/bin/sh\necho "shebang $jd"\n', clobbered)
    without = job_dir_with(tmp_path / "b", 'echo "plain $shell"\n', clobbered)

    assert run_wrapper(shell, with_shebang) == (0, b"shebang /nonexistent\n")
    assert run_wrapper(shell, without) == (0, b"plain /bin/false\n")
