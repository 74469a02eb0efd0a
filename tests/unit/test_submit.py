"""
The two forms of the submit (POSIX sh, one perl process) are one verb: fed the same fixtures,
hostile ones included, they answer byte for byte alike and leave the same files behind; and
the perl form starts no process but the job's wrapper.

Each form runs in a tree of its own whose path has the same length as the other's, so that
every answer (framed refusals count their bytes) compares whole once the tree's path is
replaced. Run by the local ``/bin/sh`` and ``perl`` exactly as a host runs them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssh_jobs_provider.protocol.batch import build_batch_script
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import SubmitEntry, build_submit_script
from support.jobs import stop_jobs_under
from support.protocol import run_sh
from support.waiting import wait_until

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "f" * 32
FOREIGN_UID = 4242
#: Long enough to outlive the test; every job is killed (by its pid, which the test started) at the end.
COMMAND = "sleep 60\n"
#: The twins' trees: names of one length, so that byte counts in the answers compare.
TREES = {"sh": "tw-s", "perl": "tw-p"}
#: Fields of a poll answer that depend on when the wrapper got to record its pid, not on the
#: form that launched it (a batch answers without waiting for it).
RACY = re.compile(rb" (pid|alive|claimed|boot)=\S*")

Fixture = Callable[[Path], str]
FIXTURES: dict[str, Fixture] = {}


def fixture(name: str, root_only: bool = False) -> Callable[[Fixture], Fixture]:
    """Register a layout: a function that prepares a tree and returns the base dir to submit into."""

    def register(build: Fixture) -> Fixture:
        if not root_only or os.geteuid() == 0:
            FIXTURES[name] = build
        return build

    return register


def job_dir(base: Path) -> Path:
    base.mkdir(parents=True, mode=0o700, exist_ok=True)
    return base / "job"


@fixture("fresh, parents missing")
def _fresh(root: Path) -> str:
    return str(root / "a" / "b c" / "base")


@fixture("a quote and blanks in the base dir")
def _quoted(root: Path) -> str:
    (root / "it's  here").mkdir(mode=0o700)
    return str(root / "it's  here" / "base")


@fixture("base writable by others, not sticky")
def _writable(root: Path) -> str:
    (root / "open").mkdir()
    (root / "open").chmod(0o777)
    return str(root / "open" / "base")


@fixture("base writable by others and sticky")
def _sticky(root: Path) -> str:
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    return str(root / "tmp" / "base")


@fixture("group-writable base, setgid")
def _setgid(root: Path) -> str:
    (root / "shared").mkdir()
    (root / "shared").chmod(0o2770)
    return str(root / "shared")


@fixture("base owned by another user", root_only=True)
def _foreign_owner(root: Path) -> str:
    (root / "theirs").mkdir(mode=0o700)
    os.chown(root / "theirs", FOREIGN_UID, FOREIGN_UID)
    return str(root / "theirs" / "base")


@fixture("a link of another user's on the way", root_only=True)
def _foreign_link(root: Path) -> str:
    (root / "real").mkdir(mode=0o700)
    (root / "via").symlink_to(root / "real")
    os.lchown(root / "via", FOREIGN_UID, FOREIGN_UID)
    return str(root / "via" / "base")


@fixture("our link to a directory writable by others")
def _link_to_open(root: Path) -> str:
    (root / "open").mkdir()
    (root / "open").chmod(0o777)
    (root / "via").symlink_to("open/./")
    return str(root / "via" / "base")


@fixture("our relative link through .. to a good directory")
def _good_link(root: Path) -> str:
    (root / "d1" / "real").mkdir(parents=True, mode=0o700)
    (root / "d2").mkdir(mode=0o700)
    (root / "d2" / "via").symlink_to("../d1/real")
    return str(root / "d2" / "via" / "base")


@fixture("a dangling link as the base dir")
def _dangling(root: Path) -> str:
    (root / "gone").symlink_to(root / "nowhere")
    return str(root / "gone")


@fixture("a file as the base dir")
def _file_base(root: Path) -> str:
    (root / "file").write_text("x")
    return str(root / "file")


@fixture("a file on the way to the base dir")
def _file_parent(root: Path) -> str:
    (root / "file").write_text("x")
    return str(root / "file" / "sub" / "base")


@fixture("the job dir is a file")
def _job_file(root: Path) -> str:
    job_dir(root / "base").write_text("planted")
    return str(root / "base")


@fixture("the job dir is a link to a directory")
def _job_link(root: Path) -> str:
    (root / "elsewhere").mkdir(mode=0o700)
    job_dir(root / "base").symlink_to(root / "elsewhere")
    return str(root / "base")


@fixture("the job dir is open to the group")
def _job_open(root: Path) -> str:
    job_dir(root / "base").mkdir(mode=0o750)
    (root / "base" / "job").chmod(0o750)
    return str(root / "base")


@fixture("the job dir is another user's", root_only=True)
def _job_theirs(root: Path) -> str:
    job_dir(root / "base").mkdir(mode=0o700)
    os.chown(root / "base" / "job", FOREIGN_UID, FOREIGN_UID)
    return str(root / "base")


def _job_with(root: Path, token: str | None, claimed: bool = False) -> Path:
    job = job_dir(root / "base")
    job.mkdir(mode=0o700)
    if token is not None:
        (job / "token").write_text(token)
    if claimed:
        (job / "claimed").mkdir()
    return job


@fixture("another submit's token")
def _other_token(root: Path) -> str:
    _job_with(root, OTHER_TOKEN + "\n")
    return str(root / "base")


@fixture("our token with a carriage return (Windows line end)")
def _crlf_token(root: Path) -> str:
    _job_with(root, TOKEN + "\r\n")
    return str(root / "base")


@fixture("our token amid blanks")
def _blank_token(root: Path) -> str:
    _job_with(root, f" \t{TOKEN}  \nmore\n")
    return str(root / "base")


@fixture("claimed without a token")
def _claimed_no_token(root: Path) -> str:
    _job_with(root, None, claimed=True)
    return str(root / "base")


@fixture("a submit that stopped before its token (taken over)")
def _no_token(root: Path) -> str:
    _job_with(root, None)
    return str(root / "base")


@fixture("a FIFO where the token goes (taken over, never read)")
def _token_fifo(root: Path) -> str:
    job = _job_with(root, None)
    os.mkfifo(job / "token")
    return str(root / "base")


@fixture("our token, not claimed yet (a lost reply)")
def _ours_unclaimed(root: Path) -> str:
    _job_with(root, TOKEN + "\n")
    return str(root / "base")


@fixture("our token, claimed (re-attach)")
def _ours_claimed(root: Path) -> str:
    _job_with(root, TOKEN + "\n", claimed=True)
    return str(root / "base")


@fixture("a directory where a file of the job goes")
def _dir_in_the_way(root: Path) -> str:
    (_job_with(root, TOKEN + "\n") / "command.sh").mkdir()
    return str(root / "base")


@fixture("an ended record of this job (a re-created trigger)")
def _ended(root: Path) -> str:
    records = root / "base" / ".ssh-jobs-ended"
    records.mkdir(parents=True, mode=0o700)
    (records / "job").write_text(f"{TOKEN} 3\n")
    return str(root / "base")


@fixture("an ended record of another submit's")
def _ended_other(root: Path) -> str:
    records = root / "base" / ".ssh-jobs-ended"
    records.mkdir(parents=True, mode=0o700)
    (records / "job").write_text(f"{OTHER_TOKEN} 3\n")
    return str(root / "base")


@fixture("an ended record in a records dir open to others")
def _ended_open(root: Path) -> str:
    records = root / "base" / ".ssh-jobs-ended"
    records.mkdir(parents=True)
    records.chmod(0o777)
    (records / "job").write_text(f"{TOKEN} 3\n")
    return str(root / "base")


# --------------------------------------------------------------------------- running both forms


@pytest.fixture
def twin_roots(tmp_path: Path) -> Iterator[dict[str, Path]]:
    roots = {form: tmp_path / name for form, name in TREES.items()}
    yield roots
    for root in roots.values():
        stop_jobs_under(root)


def tree(root: Path) -> list[tuple[str, str, bytes | None]]:
    """Every entry under ``root``: its path, ``ls``-style mode and content (pid and start time left out)."""
    found = []
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = None
        if stat.S_ISREG(info.st_mode) and path.name not in ("pid", "start"):
            content = path.read_bytes()
        found.append((str(path.relative_to(root)), stat.filemode(info.st_mode), content))
    return found


def wait_for_wrappers(root: Path) -> None:
    """Until every launched job (a launcher file) has recorded its pid: then the trees compare."""

    def settled() -> bool:
        return all(Path(launcher.parent, "pid").is_file() for launcher in root.rglob("launcher"))

    wait_until(settled, what=f"the wrappers under {root}")


def worker_answer(form: str, base: str) -> bytes:
    paths = RemoteJobPaths(job_id="job", base_dir=base)
    result = run_sh(build_submit_script(paths, COMMAND, {"GREETING": "it's"}, TOKEN, "~", form))
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", list(FIXTURES))
def test_the_worker_submit_answers_alike_in_sh_and_perl(name: str, twin_roots: dict[str, Path]) -> None:
    seen = {}
    for form, root in twin_roots.items():
        root.mkdir(mode=0o700)
        base = FIXTURES[name](root)
        answer = worker_answer(form, base)
        wait_for_wrappers(root)
        seen[form] = (re.sub(rb"pid=\d+", b"pid=P", answer.replace(str(root).encode(), b"ROOT")), tree(root))
    assert seen["perl"] == seen["sh"]
    # Not alike by accident: every fixture gives the answer its layout calls for.
    assert seen["sh"][0].startswith(b"SSHJOBS1 submit "), seen["sh"][0]


def test_a_batch_of_every_fixture_answers_alike_in_sh_and_perl(twin_roots: dict[str, Path]) -> None:
    seen = {}
    for form, root in twin_roots.items():
        root.mkdir(mode=0o700)
        entries = []
        for index, build in enumerate(FIXTURES.values()):
            # Each fixture in a tree of its own; the same job id in each.
            (root / f"f{index:02d}").mkdir(mode=0o700)
            base = build(root / f"f{index:02d}")
            files = job_files(COMMAND, {}, None, TOKEN)
            entries.append(SubmitEntry(RemoteJobPaths("job", base), 0, 0, token=TOKEN, files=files))
        result = run_sh(build_batch_script(entries, interpreter=form))
        assert result.returncode == 0, result.stderr
        wait_for_wrappers(root)
        answer = RACY.sub(rb" \1=X", result.stdout.replace(str(root).encode(), b"ROOT"))
        seen[form] = (answer, tree(root))
    assert seen["perl"] == seen["sh"]
    answer = seen["sh"][0]
    # Every kind of answer is in there: launched, re-attached, refused, and ended.
    for expected in (
        b"launched=1",
        b"launched=0",
        b"error=unsafe",
        b"error=foreign",
        b"error=io",
        b"ended=3",
    ):
        assert expected in answer, expected


@pytest.mark.parametrize("perl", ["missing", "broken"])
def test_the_worker_submit_falls_back_to_sh_without_a_working_perl(tmp_path: Path, perl: str) -> None:
    # A PATH with every tool the sh form uses, and no perl, or one that cannot run the program.
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in (
        "ls",
        "id",
        "mkdir",
        "mv",
        "chmod",
        "setsid",
        "uname",
        "tr",
        "sleep",
        "rm",
        "df",
        "wc",
        "bash",
    ):
        real = shutil.which(tool)
        assert real, tool
        (tools / tool).symlink_to(real)
    if perl == "broken":
        (tools / "perl").write_text("#!/bin/sh\necho 'syntax error at - line 1' >&2\nexit 255\n")
        (tools / "perl").chmod(0o755)
    paths = RemoteJobPaths("job", str(tmp_path / "jobs"))
    script = build_submit_script(paths, COMMAND, {}, TOKEN)
    try:
        result = subprocess.run(
            ["/bin/sh", "-s"],
            input=script.encode(),
            capture_output=True,
            timeout=30,
            env={"PATH": str(tools)},
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(b"SSHJOBS1 submit os=Linux launched=1\n"), result.stdout
        assert Path(paths.pid_file).is_file()
    finally:
        stop_jobs_under(tmp_path)


# --------------------------------------------------------------------------- processes per submit

COUNTED = ("ls", "id", "mkdir", "mv", "chmod", "setsid", "nohup", "uname", "tr", "sleep", "wc", "df", "rm")


@pytest.fixture
def counting_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose tools log each start by the submit (not by a job or its wrapper), then run the real tool."""
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "calls"
    translate = shutil.which("tr")  # the real one: the shims call it, and tr is counted too
    for tool in COUNTED:
        real = shutil.which(tool)
        assert real, tool
        (shims / tool).write_text(
            "#!/bin/sh\n"
            f'case $({translate} "\\0" " " < /proc/$PPID/cmdline) in *run.sh*|*command.sh*) ;; *) echo {tool} >> "{calls}" ;; esac\n'
            f'exec {real} "$@"\n'
        )
        (shims / tool).chmod(0o755)
    return dict(os.environ, PATH=f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}"), calls


def test_the_perl_submit_starts_nothing_but_the_wrapper(
    tmp_path: Path, counting_path: tuple[dict[str, str], Path]
) -> None:
    env, calls = counting_path
    started = {}
    try:
        for form in ("sh", "perl"):
            paths = RemoteJobPaths("job", str(tmp_path / form / "a" / "base"))
            result = run_sh(build_submit_script(paths, COMMAND, {}, TOKEN, None, form), env=env)
            assert result.stdout.startswith(b"SSHJOBS1 submit os=Linux launched=1\n"), result
            started[form] = sorted(calls.read_text().split()) if calls.exists() else []
            calls.unlink(missing_ok=True)
    finally:
        stop_jobs_under(tmp_path)
    assert started["perl"] == []
    # The sh form: an ls per component on the way, the directory, every file, the launch.
    assert {"ls", "mkdir", "mv", "chmod", "setsid"} <= set(started["sh"]), started["sh"]
    assert len(started["sh"]) > 15
