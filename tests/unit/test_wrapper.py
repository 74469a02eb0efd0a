"""
The job's wrapper has two forms, one verb: ``run.sh`` (POSIX sh), which a sh submit starts, and
``perl/wrapper.pl``, which the process a perl submit forked for the job becomes. Fed the same
jobs, hostile ones included, they leave the same records and the same log byte for byte, and
the job finds the same world: environment, working directory, arguments, signals, descriptors,
process group.

Each job is submitted for real by each form (run by the local ``/bin/sh`` and ``perl`` as a host
runs them), in trees whose paths have the same length, and compared once both have ended.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.batch import build_batch_script
from ssh_jobs_provider.protocol.environment import render_env_file
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.scripts import job_files, perl_source
from ssh_jobs_provider.protocol.submit import SubmitEntry, build_submit_script
from support.jobs import stop_jobs_under
from support.protocol import run_sh
from support.waiting import wait_until

TOKEN = "0123456789abcdef0123456789abcdef"
#: The twins' trees: names of one length, so that the logs compare once the tree's path is replaced.
TREES = {"sh": "tw-s", "perl": "tw-p"}
#: What the job tells about the world it finds, into its log. The signal masks are a child's
#: (grep's): what the job's processes inherit, the ignored signals above all.
OBSERVE = r"""
echo "args: $0 $#"
echo "pwd: $(pwd) $PWD"
echo "umask: $(umask)"
echo "stdin: $(readlink /proc/$$/fd/0)"
echo "fds: $(ls /proc/$$/fd | sort -n | tr '\n' ' ')"
grep -E '^Sig(Ign|Blk)' /proc/self/status
[ "$(ps -o pgid= -p $$ | tr -d ' ')" = "$(cat "$SSH_JOBS_JOB_DIR/pid")" ] && echo "in the wrapper's process group"
[ "$(ps -o sid= -p $$ | tr -d ' ')" = "$(cat "$SSH_JOBS_JOB_DIR/pid")" ] && echo "in the wrapper's session"
tr '\0' ' ' < /proc/$PPID/cmdline > "$SSH_JOBS_JOB_DIR/parent"
env -0 | sort -z | tr '\0' '\n'
"""
#: Values that a shell word could get wrong.
HOSTILE_VALUES = {
    "QUOTES": "it's \"quoted\" and 'again'",
    "NEWLINES": "one\ntwo\n\nthree\n",
    "EXPANSIONS": "$HOME $(id) `id` ${PATH} \\ \\n * ? [a]",
    "BLANKS": "  lead and trail \t ",
    "EMPTY": "",
    "UNICODE": "gr\u00fc\u00dfe \u2603 \U0001f600",
    "SAFE": "plain-word_1.2:3,4@5%6+7=8/9",
}


@dataclass(frozen=True)
class Job:
    """A job: ``{root}`` in its command and working directory is its tree's path."""

    command: str
    environment: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    #: Prepares the tree before the submit.
    setup: Callable[[Path], object] | None = None
    #: Variables of the host's environment for the submit (and so for the job).
    host_environment: dict[str, str] = field(default_factory=dict)


def _linked_work_dirs(root: Path) -> None:
    # {root}/a/link -> {root}/real/sub; {root}/a/b exists, {root}/real/b does not.
    (root / "real" / "sub").mkdir(parents=True)
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "link").symlink_to(root / "real" / "sub")


def _text_interpreter(root: Path) -> None:
    # An executable text file without a "#!" line: the kernel refuses it, and the shells
    # (and execvp) run it with /bin/sh instead.
    interpreter = root / "bin" / "text-interpreter"
    interpreter.parent.mkdir()
    interpreter.write_text('echo "interpreted by sh: $0 $# ${1##*/}"\n')
    interpreter.chmod(0o700)


JOBS: dict[str, Job] = {
    "observes its world": Job(OBSERVE, HOSTILE_VALUES),
    "overrides PATH, HOME, PWD and IFS": Job(
        OBSERVE, {"PATH": "/usr/bin:/bin", "HOME": "/nowhere", "PWD": "/set/by/env", "IFS": ":"}
    ),
    "exits 3": Job("echo before\nexit 3\n"),
    "no newline at the end": Job("echo last; exit 4"),
    "kills its own group with TERM": Job("echo before\nkill -TERM 0\nsleep 5\necho never\n"),
    "kills its own group with HUP": Job("echo before\nkill -HUP 0\nsleep 5\necho never\n"),
    "interrupts its own group (ignored)": Job("kill -INT 0\nsleep 0.2\necho after\n"),
    "a #! interpreter with an argument": Job(f"#!{sys.executable} -u\nimport sys\nprint(sys.argv[1:])\n"),
    "a #! line naming nothing": Job('#!  \t \necho "$0" "${BASH_VERSION:-not-bash}"\n'),
    "a #! line with a carriage return": Job("#!/bin/sh\r\necho never\r\n"),
    "a missing #! interpreter": Job("#!/nonexistent/interpreter -x\necho never\n"),
    "a relative #! interpreter that is missing": Job("#!bin/nothing\necho never\n"),
    "a directory as #! interpreter": Job("#!/tmp\necho never\n"),
    "a #! interpreter without execute permission": Job(
        "#!{root}/plain\necho never\n", setup=lambda root: (root / "plain").write_text("echo plain\n")
    ),
    "a missing working directory": Job("echo never\n", working_dir="/nonexistent/dir"),
    "a working directory with . and ..": Job('echo "$PWD $(pwd)"\n', working_dir="/usr/./lib/..//bin/"),
    "the home directory": Job('echo "$PWD"\n', working_dir="~"),
    "a missing directory under home": Job("echo never\n", working_dir="~/no-such-dir-for-ssh-jobs"),
    "deletes its log": Job('echo gone\nrm -f "$SSH_JOBS_LOG_FILE"\n'),
    "puts a FIFO in place of its log": Job('rm -f "$SSH_JOBS_LOG_FILE"\nmkfifo "$SSH_JOBS_LOG_FILE"\n'),
    "blocks the exit record's file": Job('echo blocked\nmkdir "$SSH_JOBS_JOB_DIR/exit_code.tmp"\nexit 5\n'),
    "blocks both exit record files": Job(
        'rm -f "$SSH_JOBS_JOB_DIR/exit_code.new"\nmkdir "$SSH_JOBS_JOB_DIR/exit_code.tmp"\nexit 6\n'
    ),
    "writes a lot without a newline": Job("head -c 300000 /dev/zero | tr '\\0' x\n"),
    "a working directory through a link and ..": Job(
        'echo "$PWD $(pwd)"\n', working_dir="{root}/a/link/../b", setup=_linked_work_dirs
    ),
    "a working directory through a missing directory and ..": Job(
        'echo "$PWD $(pwd)"\n', working_dir="{root}/nonexistent/../a", setup=_linked_work_dirs
    ),
    "a working directory starting with two slashes": Job('echo "$PWD"\n', working_dir="//usr/bin"),
    "a #! interpreter that is a text file": Job(
        "#!{root}/bin/text-interpreter\necho never\n", setup=_text_interpreter
    ),
    "a host that makes perl read UTF-8": Job(
        OBSERVE,
        HOSTILE_VALUES,
        working_dir="{root}/gr\u00fc\u00dfe",
        setup=lambda root: (root / "gr\u00fc\u00dfe").mkdir(),
        host_environment={"PERL_UNICODE": "SDA", "PERLIO": ":utf8"},
    ),
    "a long value no quote is needed for": Job(
        'echo "${#LONG}"\ntr "\\0" " " < /proc/$PPID/cmdline > "$SSH_JOBS_JOB_DIR/parent"\n',
        {"LONG": "x" * 70000},
    ),
    "a full file system at its end": Job(
        'echo full\nln -s /dev/full "$SSH_JOBS_JOB_DIR/fs_probe"\nln -s /dev/full "$SSH_JOBS_JOB_DIR/exit_code.tmp"\nexit 7\n'
    ),
}


def submit(form: str, root: Path, job: Job) -> Path:
    if job.setup is not None:
        job.setup(root)
    paths = RemoteJobPaths("job", str(root / "jobs"))
    command = job.command.replace("{root}", str(root))
    working_dir = job.working_dir.replace("{root}", str(root)) if job.working_dir else job.working_dir
    script = build_submit_script(paths, command, job.environment, TOKEN, working_dir, form)
    result = run_sh(script, env={**os.environ, **job.host_environment})
    assert result.returncode == 0 and b" launched=1" in result.stdout, (result.stdout, result.stderr)
    return Path(paths.job_dir)


def ended(job_dir: Path) -> Path:
    """``job_dir`` once its wrapper has recorded the end and left."""
    wait_until(lambda: (job_dir / "exit_code").is_file(), what=f"the end of {job_dir}")
    pid = int((job_dir / "pid").read_text())
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), what=f"wrapper {pid} to leave")
    return job_dir


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith(("Z", "X"))
    except (OSError, IndexError):
        return True


def tree(job_dir: Path, root: Path) -> list[tuple[str, str, bytes | None]]:
    """Every entry of the job directory: name, mode, content (the root's path replaced)."""
    found = []
    for path in sorted(job_dir.rglob("*")):
        info = path.lstat()
        content = None
        if stat.S_ISREG(info.st_mode) and path.name not in ("pid", "start", "parent"):
            content = path.read_bytes().replace(str(root).encode(), b"ROOT")
        found.append((str(path.relative_to(job_dir)), stat.filemode(info.st_mode), content))
    return found


@pytest.mark.parametrize("name", list(JOBS))
def test_both_wrappers_run_a_job_alike(name: str, tmp_path: Path) -> None:
    seen = {}
    roots = {form: tmp_path / tree_name for form, tree_name in TREES.items()}
    try:
        for form, root in roots.items():
            root.mkdir(mode=0o700)
            job_dir = ended(submit(form, root, JOBS[name]))
            seen[form] = tree(job_dir, root)
            parent = (job_dir / "parent").read_bytes() if (job_dir / "parent").exists() else b""
            if parent:
                expected = b"ssh-jobs wrapper " if form == "perl" else b"/bin/sh "
                assert parent.startswith(expected), (form, parent)
    finally:
        for root in roots.values():
            stop_jobs_under(root)
    assert seen["perl"] == seen["sh"]
    # Not alike by accident: each job was run, and its end recorded.
    names = [entry[0] for entry in seen["sh"]]
    assert "exit_code" in names and "claimed" in names, names


def test_the_perl_wrapper_stays_the_process_the_submit_forked(tmp_path: Path) -> None:
    # The job's parent is the wrapper whose pid was recorded, under the name it gives itself:
    # no /bin/sh was started for run.sh.
    try:
        job_dir = ended(submit("perl", tmp_path / "tw-p", Job("echo $PPID\n")))
    finally:
        stop_jobs_under(tmp_path)
    assert (job_dir / "stdout.log").read_text().strip() == (job_dir / "pid").read_text().strip()
    assert (job_dir / "exit_code").read_text() == "0 log=" + str(
        len((job_dir / "stdout.log").read_bytes())
    ) + "\n"


def test_a_signal_to_the_group_from_outside_is_recorded_by_both(tmp_path: Path) -> None:
    # The kill verb signals the job's process group, the wrapper included: the wrapper
    # outlives the signal and records how the job ended.
    records = {}
    try:
        for form, tree_name in TREES.items():
            log = submit(form, tmp_path / tree_name, Job("echo started\nsleep 30\n")) / "stdout.log"
            wait_until(lambda log=log: b"started" in log.read_bytes(), what="the job to start")
            os.killpg(int((log.parent / "pid").read_text()), signal.SIGTERM)
            records[form] = (ended(log.parent) / "exit_code").read_text()
    finally:
        stop_jobs_under(tmp_path)
    assert records["perl"] == records["sh"] == "143 log=8\n"


# --------------------------------------------------------------------------- env.sh, read by perl

ENV_NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
ENV_VALUES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)


def perl_reads(env_file: Path) -> list[tuple[str, str]] | None:
    """What ``environment_of`` makes of ``env_file``: its pairs, None where it leaves it to sh."""
    driver = (
        perl_source("wrapper.pl")
        + "my $pairs = environment_of($ARGV[0]);\n"
        + 'if (defined $pairs) { print "ok\\0", map { "$_->[0]\\0$_->[1]\\0" } @$pairs } else { print "sh\\0" }\n'
    )
    result = subprocess.run(["perl", "-e", driver, str(env_file)], capture_output=True, check=True)
    fields = result.stdout.split(b"\0")[:-1]
    if fields[0] == b"sh":
        return None
    values = [field.decode("utf-8") for field in fields[1:]]
    return list(zip(values[0::2], values[1::2], strict=True))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=6))
def test_perl_reads_every_environment_the_submit_writes(tmp_path: Path, environment: dict[str, str]) -> None:
    env_file = tmp_path / "env.sh"
    env_file.write_bytes(render_env_file(environment).encode("utf-8"))
    assert perl_reads(env_file) == list(environment.items())


@pytest.mark.parametrize(
    "text",
    [
        "export A=$(id)\n",
        "export A='unterminated\n",
        "A=1\n",
        "export A=1",
        "export A=1; id\n",
        "export A=1\nid\n",
        "export 1A=x\n",
        'export A="double"\n',
    ],
)
def test_perl_leaves_an_env_file_it_did_not_write_to_sh(tmp_path: Path, text: str) -> None:
    env_file = tmp_path / "env.sh"
    env_file.write_text(text)
    assert perl_reads(env_file) is None


# --------------------------------------------------------------------------- where they part


def test_a_binary_the_kernel_cannot_run_is_refused_by_both(tmp_path: Path) -> None:
    # An interpreter the kernel refuses (ENOEXEC) that holds a NUL byte, as a binary for
    # another machine does: neither wrapper hands it to /bin/sh as a script. Their words
    # differ here only: the sh wrapper's are its shell's.
    records = {}
    for form, tree_name in TREES.items():
        root = tmp_path / tree_name
        binary = root / "bin" / "foreign"
        binary.parent.mkdir(parents=True)
        binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + b"\x00\xff" * 64 + b"\necho fed to sh\n")
        binary.chmod(0o700)
        job_dir = ended(submit(form, root, Job(f"#!{binary}\necho never\n")))
        records[form] = (
            (job_dir / "exit_code").read_text().split()[0],
            (job_dir / "stdout.log").read_bytes(),
        )
    assert records["perl"][0] == records["sh"][0] == "126"
    assert b"not an executable file for this machine" in records["perl"][1]
    assert b"fed to sh" not in records["perl"][1] + records["sh"][1]


def test_an_env_file_perl_did_not_write_is_left_to_run_sh(tmp_path: Path) -> None:
    # The perl submit's process then execs run.sh ("recorded": it has claimed the job and
    # recorded its pid already), which sources the file as every sh wrapper does.
    paths = RemoteJobPaths("job", str(tmp_path / "jobs"))
    files = tuple(
        (name, 'export GREETING="$(echo sourced)"\n' if name == "env.sh" else content)
        for name, content in job_files(
            'echo "$GREETING"\ntr "\\0" " " < /proc/$PPID/cmdline\n', {}, None, TOKEN
        )
    )
    result = run_sh(
        build_batch_script([SubmitEntry(paths, 0, 0, token=TOKEN, files=files)], interpreter="perl")
    )
    assert result.returncode == 0, result.stderr
    try:
        job_dir = ended(Path(paths.job_dir))
    finally:
        stop_jobs_under(tmp_path)
    log = (job_dir / "stdout.log").read_text()
    assert log.startswith(f"sourced\n/bin/sh {job_dir}/run.sh {job_dir} recorded "), log
    assert (job_dir / "exit_code").read_text().startswith("0 log=")
