"""
The two ways a batch polls (POSIX sh in phases, one perl process) answer alike, and start as
few processes as they promise; the probe that picks one.

Run by the local ``/bin/sh`` and ``perl`` exactly as a host runs them (see support.protocol).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, parse_simple_state
from ssh_jobs_provider.protocol.batch import Entry, build_batch_script, build_probe_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CLEANUPS_PER_CALL, CleanupEntry
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.poll import SIZES_PER_LS, PollEntry
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG
from support.protocol import run_sh

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "f" * 32
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
DEAD_PID = "2147483646"
#: A file whose size (4096, a page) promises more than it holds when read ("0\n").
SHORT_READ_FILE = Path("/sys/kernel/profiling")


def answer_of(entries: list[Entry], interpreter: str, env: dict[str, str] | None = None) -> bytes:
    result = run_sh(build_batch_script(entries, interpreter=interpreter), timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def live_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that stays alive through the module: a job's wrapper stand-in."""
    process = subprocess.Popen(["sleep", "300"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def zombie_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process that has exited and is not reaped through the module: a wrapper whose parent is slow to."""
    process = subprocess.Popen(["true"])
    for _ in range(500):
        if process_state(process.pid) == "Z":
            break
        time.sleep(0.01)
    assert process_state(process.pid) == "Z", "the stand-in never became a zombie"
    try:
        yield process
    finally:
        process.wait()


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: field 3 (the state) on."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(") ") + 2 :].split()


def process_state(pid: int) -> str:
    return stat_fields(pid)[0]


def start_time(pid: int) -> str:
    """What the wrapper records in ./start: field 22 of /proc/PID/stat."""
    return stat_fields(pid)[19]


# One job directory's state, drawn: each file absent (None) or with content that the wrapper
# would write, or that something else wrote (garbage).
JOB_STATES = st.fixed_dictionaries(
    {
        "dir": st.sampled_from(
            ["ours", "token", "other-token", "missing", "link", "file", "removed", "removed-other-token"]
        ),
        "pid": st.sampled_from([None, "", "abc", "0", "1", "live", DEAD_PID, " live \n", "zombie"]),
        "start": st.sampled_from([None, "", "live", "zombie", "123", "ps:Tue Dec  1 00:00:00 2026"]),
        "boot_id": st.sampled_from([None, "now", "other-boot"]),
        "exit_code": st.sampled_from(
            [
                *(None, "0", "3", "3 nospace", "x", " 7  junk", "12 nospace extra", ""),
                *("0 log=5", "3 log=7 nospace", "9 log=junk", "4 nospace log=12", "5 log= log=3"),
            ]
        ),
        # What a careless job may leave in its directory: a FIFO where a file is read or
        # written (a poll must never block on it), a log whose size promises more than can be
        # read (a sysfs file: 4096 bytes by stat, a few when read).
        "hostile": st.sampled_from([None, "delivered-fifo", "pid-fifo", "exit-fifo", "short-log"]),
        "log": st.one_of(st.none(), st.binary(max_size=300)),
        "delivered": st.sampled_from([None, "5", "junk", "100000"]),
        "claimed": st.booleans(),
        "offset": st.integers(0, 400),
        "max_bytes": st.integers(0, 400),
        "deliver": st.integers(0, 400),
    }
)


def make_state(
    base: Path, job_id: str, state: dict[str, object], live_pid: int, zombie_pid: int = 0
) -> tuple[RemoteJobPaths, str]:
    """Lay out ``state`` as ``base/job_id``; return the job's paths and the token to poll with."""
    job = RemoteJobPaths(job_id=job_id, base_dir=str(base))
    job_dir = Path(job.job_dir)
    base.mkdir(parents=True, exist_ok=True)
    kind = state["dir"]
    token = TOKEN if kind in ("token", "other-token", "removed", "removed-other-token") else ""
    if kind == "missing":
        return job, token
    if kind in ("removed", "removed-other-token"):
        # Removed after it ended: only its record is left, in the private records directory.
        records = base / ".ssh-jobs-ended"
        records.mkdir(mode=0o700, exist_ok=True)
        recorded = TOKEN if kind == "removed" else OTHER_TOKEN
        code = str(state["exit_code"] or "").split()
        (records / job_id).write_text(f"{recorded} {code[0] if code else ''}\n")
        return job, token
    if kind == "file":
        job_dir.write_text("not a directory")
        return job, token
    target = base / f".{job_id}.target" if kind == "link" else job_dir
    target.mkdir()
    if kind == "link":
        job_dir.symlink_to(target)
    if kind == "token":
        (target / "token").write_text(TOKEN + "\n")
    if kind == "other-token":
        (target / "token").write_text(OTHER_TOKEN + "\n")

    def put(name: str, value: object) -> None:
        if value is not None:
            text = str(value).replace("live", str(live_pid)).replace("zombie", str(zombie_pid))
            (target / name).write_text(text + "\n")

    put("pid", state["pid"])
    starts = {"live": live_pid, "zombie": zombie_pid}
    put("start", start_time(starts[str(state["start"])]) if state["start"] in starts else state["start"])
    if state["boot_id"] is not None and BOOT_ID.exists():
        put("boot_id", BOOT_ID.read_text().strip() if state["boot_id"] == "now" else state["boot_id"])
    put("exit_code", state["exit_code"])
    put("delivered", state["delivered"])
    if state["log"] is not None:
        (target / "stdout.log").write_bytes(state["log"])  # type: ignore[arg-type]
    if state["claimed"]:
        (target / "claimed").mkdir()
    hostile = state["hostile"]
    if hostile in ("delivered-fifo", "pid-fifo", "exit-fifo"):
        name = {"delivered-fifo": "delivered", "pid-fifo": "pid", "exit-fifo": "exit_code"}[str(hostile)]
        (target / name).unlink(missing_ok=True)
        os.mkfifo(target / name)
    if hostile == "short-log" and SHORT_READ_FILE.exists():
        (target / "stdout.log").unlink(missing_ok=True)
        (target / "stdout.log").symlink_to(SHORT_READ_FILE)
    return job, token


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(states=st.lists(JOB_STATES, min_size=1, max_size=6))
def test_perl_and_sh_answer_every_job_state_alike(
    tmp_path_factory: pytest.TempPathFactory,
    live_process: subprocess.Popen[bytes],
    zombie_process: subprocess.Popen[bytes],
    states: list[dict[str, object]],
) -> None:
    root = tmp_path_factory.mktemp("alike")
    seen: dict[str, tuple[bytes, dict[int, object], list[str | None]]] = {}
    for interpreter in ("sh", "perl"):
        base = root / interpreter / "jobs"
        entries: list[Entry] = []
        for i, state in enumerate(states):
            job, token = make_state(base, f"job{i}", state, live_process.pid, zombie_process.pid)
            entries.append(
                PollEntry(
                    job, int(state["offset"]), int(state["max_bytes"]), int(state["deliver"]), token=token
                )  # type: ignore[call-overload]
            )
        raw = answer_of(entries, interpreter)
        results = parse_batch_output(raw, entries)
        recorded = [
            Path(e.paths.job_dir, "delivered").read_text()
            if Path(e.paths.job_dir, "delivered").is_file()
            else None
            for e in entries
        ]
        seen[interpreter] = (raw, dict(results), recorded)
    # The same answer byte for byte, the same results, the same records left behind.
    assert seen["perl"] == seen["sh"]


@pytest.mark.parametrize("interpreter", ["sh", "perl"])
def test_a_wrapper_that_exited_but_is_not_reaped_yet_has_ended(
    tmp_path: Path, zombie_process: subprocess.Popen[bytes], interpreter: str
) -> None:
    """Its exit record counts at once: a slow init (or one that never reaps) does not hold the job's end back."""
    state = {**ENDED, "pid": "zombie", "start": "zombie"}
    job, token = make_state(tmp_path / "jobs", "job", state, os.getpid(), zombie_process.pid)
    entry = PollEntry(job, 0, 100, 0, token=token)

    ((_, status),) = parse_batch_output(answer_of([entry], interpreter), [entry]).items()

    assert isinstance(status, JobStatus)
    assert (status.state, status.exit_code, status.pid) == (JobState.EXITED, 0, zombie_process.pid)


#: A job that ended with exit code 0 after writing "done", its wrapper's pid and start filled in.
ENDED: dict[str, object] = {
    "dir": "token",
    "boot_id": "now",
    "exit_code": "0 log=5",
    "hostile": None,
    "log": b"done\n",
    "delivered": None,
    "claimed": True,
    "offset": 0,
    "max_bytes": 100,
    "deliver": 0,
}


def test_sh_finds_the_sizes_of_many_jobs_in_several_base_dirs(tmp_path: Path) -> None:
    entries: list[Entry] = []
    expected: dict[int, bytes] = {}
    for base_index in range(3):
        base = tmp_path / f"base {base_index}"  # a space in the path, and ls sorting it
        for i in range(SIZES_PER_LS + 7 if base_index == 0 else 5):
            job = RemoteJobPaths(job_id=f"j{(i * 7919) % 1000}.{i}-x", base_dir=str(base))
            Path(job.job_dir).mkdir(parents=True)
            log = f"{base_index}:{i}\n".encode() * (i % 4)
            Path(job.log_file).write_bytes(log)
            Path(job.exit_code_file).write_text("0\n")
            expected[len(entries)] = log
            entries.append(PollEntry(job, 0, 1000))
    entries.insert(3, CleanupEntry(RemoteJobPaths(job_id="gone", base_dir=str(tmp_path / "base 0"))))
    expected = {(k if k < 3 else k + 1): v for k, v in expected.items()}
    for interpreter in ("sh", "perl"):
        results = parse_batch_output(answer_of(entries, interpreter), entries)
        for key, log in expected.items():
            result = results[key]
            assert isinstance(result, JobStatus), (interpreter, key, result)
            assert (result.state, result.log_size, result.log_data) == (JobState.EXITED, len(log), log)


def test_a_log_that_ls_cannot_size_is_measured_on_its_own(tmp_path: Path) -> None:
    # stdout.log a symbolic link to the real log: `ls -lnL` follows it, a dangling one it cannot.
    base = tmp_path / "jobs"
    good = RemoteJobPaths(job_id="linked", base_dir=str(base))
    Path(good.job_dir).mkdir(parents=True)
    (tmp_path / "real.log").write_bytes(b"through a link\n")
    Path(good.log_file).symlink_to(tmp_path / "real.log")
    Path(good.exit_code_file).write_text("0\n")
    dangling = RemoteJobPaths(job_id="dangling", base_dir=str(base))
    Path(dangling.job_dir).mkdir()
    Path(dangling.log_file).symlink_to(tmp_path / "nowhere.log")
    entries: list[Entry] = [PollEntry(good, 0, 100), PollEntry(dangling, 0, 100)]
    for interpreter in ("sh", "perl"):
        results = parse_batch_output(answer_of(entries, interpreter), entries)
        assert results[0] == JobStatus(
            JobState.EXITED, exit_code=0, log_size=15, log_data=b"through a link\n"
        )
        assert results[1] == JobStatus(JobState.PENDING)


# --------------------------------------------------------------------------- processes per batch

COUNTED_TOOLS = ("ls", "wc", "tail", "head", "ps", "df", "id", "rm", "find")


@pytest.fixture
def counting_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """A PATH whose tools log each start to a file, then run the real tool."""
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "calls"
    for tool in COUNTED_TOOLS:
        real = shutil.which(tool)
        assert real, tool
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho {tool} >> "{calls}"\nexec {real} "$@"\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{shims}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return env, calls


def started(calls: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if calls.exists():
        for line in calls.read_text().split():
            counts[line] = counts.get(line, 0) + 1
    calls.unlink(missing_ok=True)
    return counts


def test_processes_grow_with_batches_not_with_jobs(
    tmp_path: Path, counting_path: tuple[dict[str, str], Path], live_process: subprocess.Popen[bytes]
) -> None:
    env, calls = counting_path
    base = tmp_path / "jobs"
    entries: list[Entry] = []
    for i in range(40):
        job = RemoteJobPaths(job_id=f"job{i}", base_dir=str(base))
        Path(job.job_dir).mkdir(parents=True)
        Path(job.job_dir, "token").write_text(TOKEN + "\n")
        Path(job.job_dir, "pid").write_text(f"{live_process.pid}\n")
        Path(job.job_dir, "start").write_text(start_time(live_process.pid) + "\n")
        Path(job.log_file).write_bytes(b"x\n" * (i + 1))
        # Half the logs grew since the last poll (offset below their size), half did not.
        entries.append(PollEntry(job, 0 if i % 2 else 2 * (i + 1), 1000, token=TOKEN))
    for interpreter, expected in (
        ("perl", {}),
        # sh: one ls for the sizes, and per log that grew a tail | head (| dd) and one head
        # that holds the window to its announced length; none per other job.
        ("sh", {"ls": 1, "tail": 20, "head": 40}),
    ):
        results = parse_batch_output(answer_of(entries, interpreter, env), entries)
        assert all(isinstance(r, JobStatus) and r.state is JobState.RUNNING for r in results.values())
        assert started(calls) == expected, interpreter


# --------------------------------------------------------------------------- the probe


def probe(env: dict[str, str]) -> str:
    result = run_sh(build_probe_script(), env=env)
    assert result.returncode == 0, result.stderr
    return parse_simple_state(result.stdout, "probe")


def test_the_probe_finds_perl_here() -> None:
    assert shutil.which("perl"), "the test machine has perl (Debian's perl-base is essential)"
    assert probe(dict(os.environ)) == "perl"
    assert run_sh(build_probe_script()).stdout == f"{PROTOCOL_TAG} probe state=perl\n".encode()


def test_the_probe_falls_back_to_sh_without_perl_or_with_a_broken_one(tmp_path: Path) -> None:
    assert probe({"PATH": str(tmp_path / "nothing-here")}) == "sh"
    broken = tmp_path / "bin"
    broken.mkdir()
    fake = broken / "perl"
    fake.write_text("#!/bin/sh\necho 'perl: cannot run' >&2\nexit 2\n")
    fake.chmod(0o755)
    assert probe({"PATH": f"{broken}:/usr/bin:/bin"}) == "sh"


def test_a_batch_runs_in_perl_or_sh_only() -> None:
    with pytest.raises(ValueError, match="'perl' or 'sh'"):
        build_batch_script([], interpreter="auto")


# --------------------------------------------------------------------------- cleanups


def own_job_dir(base: Path, job_id: str, token: str = TOKEN) -> RemoteJobPaths:
    """A finished job's directory as the wrapper leaves it, with hidden files and a subdirectory."""
    job = RemoteJobPaths(job_id=job_id, base_dir=str(base))
    job_dir = Path(job.job_dir)
    (job_dir / "claimed").mkdir(parents=True)
    for name in ("stdout.log", "exit_code", "pid", ".hidden", "..odd", "name with spaces"):
        (job_dir / name).write_text("x\n")
    (job_dir / "token").write_text(token + "\n")
    return job


def test_many_cleanups_take_a_few_processes_and_remove_only_what_is_theirs(
    tmp_path: Path, counting_path: tuple[dict[str, str], Path]
) -> None:
    env, calls = counting_path
    base = tmp_path / "jobs"
    ours = [own_job_dir(base, f"done{i}") for i in range(150)]
    other_token = own_job_dir(base, "replaced", token=OTHER_TOKEN)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "precious").write_text("keep\n")
    link = RemoteJobPaths(job_id="linked", base_dir=str(base))
    Path(link.job_dir).symlink_to(tmp_path / "elsewhere")
    not_a_dir = RemoteJobPaths(job_id="plainfile", base_dir=str(base))
    Path(not_a_dir.job_dir).write_text("a file\n")
    absent = RemoteJobPaths(job_id="absent", base_dir=str(base))
    unchecked = own_job_dir(base, "old-watcher")  # a watcher from before tokens: owner only
    entries: list[Entry] = [CleanupEntry(job, token=TOKEN) for job in ours]
    entries += [
        CleanupEntry(other_token, token=TOKEN),
        CleanupEntry(link, token=TOKEN),
        CleanupEntry(not_a_dir, token=TOKEN),
        CleanupEntry(absent, token=TOKEN),
        CleanupEntry(unchecked),
    ]
    results = parse_batch_output(answer_of(entries, "sh", env), entries)
    states = [getattr(results[key], "state", results[key]) for key in range(len(entries))]
    assert states == ["removed"] * 150 + ["foreign", "foreign", "foreign", "absent", "removed"]
    # Each removed job leaves its record (token and exit code) in a private directory, nothing else.
    records = base / ".ssh-jobs-ended"
    assert sorted(p.name for p in records.iterdir()) == sorted(
        [f"done{i}" for i in range(150)] + ["old-watcher"]
    )
    assert (records / "done7").read_text() == f"{TOKEN} \n"
    assert records.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in base.iterdir() if p != records) == [
        "linked",
        "plainfile",
        "replaced",
    ]
    assert (tmp_path / "elsewhere" / "precious").read_text() == "keep\n"
    assert len(list(Path(other_token.job_dir).iterdir())) == 8  # untouched
    # Two calls of at most CLEANUPS_PER_CALL directories: one ls and two rm each, and one c
    # (one ls) for the link, whose line ls writes differently; one ls checks the records
    # directory (once per base dir), and one find per call removes records past their time.
    assert len(entries) > CLEANUPS_PER_CALL
    assert started(calls) == {"ls": 2 + 1 + 1, "rm": 4, "id": 1, "find": 2}


# --------------------------------------------------------------------------- BusyBox tools


@pytest.fixture
def busybox_path(tmp_path: Path) -> dict[str, str]:
    """A PATH of BusyBox applets only (its dd reports records, not bytes), as on Alpine."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is needed (dev/setup-env.sh installs busybox-static)")
    applets = tmp_path / "busybox-bin"
    applets.mkdir()
    for tool in (
        "dd",
        "head",
        "tail",
        "wc",
        "ls",
        "ps",
        "df",
        "id",
        "awk",
        "sed",
        "rm",
        "find",
        "sleep",
        "perl",
    ):
        if tool != "perl":
            (applets / tool).symlink_to(busybox)
    return dict(os.environ, PATH=str(applets))


@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
def test_a_short_read_keeps_every_other_answer_with_busybox_tools(
    tmp_path: Path, busybox_path: dict[str, str], shell: str
) -> None:
    assert SHORT_READ_FILE.exists(), "the short-read fixture needs a sysfs file"
    base = tmp_path / "jobs"
    entries: list[Entry] = []
    for i in range(5):
        job = RemoteJobPaths(job_id=f"job{i}", base_dir=str(base))
        Path(job.job_dir).mkdir(parents=True)
        Path(job.exit_code_file).write_text(f"{i} log=6\n")
        if i == 2:
            Path(job.log_file).symlink_to(SHORT_READ_FILE)  # 4096 bytes by stat, 2 when read
        else:
            Path(job.log_file).write_bytes(f"line {i}\n".encode())
        entries.append(PollEntry(job, 0, 1000))
    script = build_batch_script(entries, interpreter="sh").encode()
    command = ["/bin/sh", "-s"] if shell == "/bin/sh" else [shutil.which("busybox") or "busybox", "sh", "-s"]
    result = subprocess.run(command, input=script, capture_output=True, timeout=60, env=busybox_path)
    results = parse_batch_output(result.stdout, entries)
    for i in (0, 1, 3, 4):
        assert results[i] == JobStatus(
            JobState.EXITED, exit_code=i, log_size=7, log_end=6, log_data=f"line {i}\n".encode()
        ), (i, results[i], result.stderr)
    short = results[2]
    assert isinstance(short, JobStatus) and short.log_short and short.exit_code == 2
    # BusyBox's dd does not say how many bytes it copied: none are believed, and the window is
    # simply read again; never more than were real.
    assert short.log_data in (b"", b"0\n")
