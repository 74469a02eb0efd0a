"""
The protocol's limits and refusals without a shell: path and environment sizes, encodings,
working directories, refused submits, kill answers, and the rarer monitor outcomes.
"""

from __future__ import annotations

import pytest

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.environment import (
    MAX_ENV_ENTRY_BYTES,
    MAX_ENV_TOTAL_BYTES,
    RESERVED_ENV_PREFIX,
    normalise_environment,
)
from ssh_jobs_provider.protocol.identity import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    RemoteJobPaths,
    require_utf8,
    validate_base_dir,
    validate_working_dir,
)
from ssh_jobs_provider.protocol.kill import KillAnswer, parse_kill_answer, parse_kill_output
from ssh_jobs_provider.protocol.log_stream import _utf8_safe_cut
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.submit import SubmitRefused, parse_submit_output
from support.protocol import answer, header

LONE_SURROGATE = "\udcff"
PATHS = RemoteJobPaths(job_id="job1", base_dir="/srv/jobs")


# --------------------------------------------------------------------------- identity


def test_require_utf8_names_what_cannot_be_encoded() -> None:
    require_utf8("\u00e9t\u00e9 \U0001f680", "command")
    with pytest.raises(
        ValueError, match=r"command cannot be encoded as UTF-8 \(surrogates not allowed at 2\)"
    ):
        require_utf8("ab" + LONE_SURROGATE, "command")


def test_base_dir_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError, match="remote_base_dir cannot be encoded"):
        validate_base_dir("/srv/" + LONE_SURROGATE)


def test_base_dir_leaving_no_room_for_job_files_is_refused_naming_the_limit() -> None:
    parts = ["d" * 100] * 40
    with pytest.raises(
        ValueError, match=f"exceed the {MAX_PATH_BYTES}-byte path limit; use a base dir of at most"
    ):
        validate_base_dir("/" + "/".join(parts))


def test_longest_base_dir_component_is_accepted_and_one_more_byte_refused() -> None:
    assert validate_base_dir("/" + "n" * MAX_NAME_BYTES) == "/" + "n" * MAX_NAME_BYTES
    with pytest.raises(ValueError, match=f"limited to {MAX_NAME_BYTES} bytes"):
        validate_base_dir("/srv/" + "n" * (MAX_NAME_BYTES + 1))


@pytest.mark.parametrize(
    ("working_dir", "expected"),
    [(None, ""), ("~", "~"), ("~/data", "~/data"), ("/srv/a b/$x", "/srv/a b/$x")],
)
def test_valid_working_dirs_are_kept_as_given(working_dir: str | None, expected: str) -> None:
    assert validate_working_dir(working_dir) == expected


@pytest.mark.parametrize(
    ("working_dir", "message"),
    [
        ("", "remote_working_dir is empty: leave it unset"),
        (5, "remote_working_dir is empty"),
        ("/a\0b", "NUL or newline"),
        ("/a\nb", "NUL or newline"),
        ("relative/dir", "absolute path or start with '~/'"),
        ("~user/dir", "absolute path or start with '~/'"),
        ("/" + LONE_SURROGATE, "remote_working_dir cannot be encoded"),
        ("/" + "w" * MAX_PATH_BYTES, f"longer than {MAX_PATH_BYTES} bytes"),
    ],
)
def test_invalid_working_dirs_are_refused_naming_the_fix(working_dir: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_working_dir(working_dir)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- environment


def test_reserved_environment_names_are_refused() -> None:
    with pytest.raises(ValueError, match=f"names starting with '{RESERVED_ENV_PREFIX}' are reserved"):
        normalise_environment({f"{RESERVED_ENV_PREFIX}JOB_DIR": "/x"})


@pytest.mark.parametrize("name", ["UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "BASH_VERSINFO"])
def test_environment_names_the_shell_keeps_read_only_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"the shell keeps {name} read-only"):
        normalise_environment({name: "1"})


def test_optind_is_refused_before_anything_runs() -> None:
    # dash fails the job at `export OPTIND=...` for anything but a number (the empty value too).
    with pytest.raises(ValueError, match="keeps OPTIND for its own option parsing"):
        normalise_environment({"OPTIND": "abc"})


def test_environment_value_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ValueError, match=r"environment\['A'\] cannot be encoded"):
        normalise_environment({"A": LONE_SURROGATE})


def test_largest_environment_entry_is_accepted_and_one_more_byte_refused() -> None:
    largest = "x" * (MAX_ENV_ENTRY_BYTES - len("A="))
    assert normalise_environment({"A": largest}) == {"A": largest}
    with pytest.raises(ValueError, match=f"limited to {MAX_ENV_ENTRY_BYTES} bytes"):
        normalise_environment({"A": largest + "x"})


def test_environment_too_large_in_all_is_refused() -> None:
    count = MAX_ENV_TOTAL_BYTES // (MAX_ENV_ENTRY_BYTES // 2) + 1
    environment = {f"V{i}": "x" * (MAX_ENV_ENTRY_BYTES // 2) for i in range(count)}
    with pytest.raises(ValueError, match=f"more than the {MAX_ENV_TOTAL_BYTES} allowed"):
        normalise_environment(environment)


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("code", ["unsafe", "foreign", "nospace", "io"])
def test_refused_submit_carries_its_code_and_first_reason_line(code: str) -> None:
    output = b"motd\n" + header("submit", error=code) + b"/srv/jobs is owned by uid 65534\nsecond line\n"
    with pytest.raises(SubmitRefused) as info:
        parse_submit_output(output)
    assert (info.value.code, info.value.detail) == (code, "/srv/jobs is owned by uid 65534")
    assert str(info.value) == f"{code}: /srv/jobs is owned by uid 65534"
    assert isinstance(info.value, RemoteJobProtocolError)


def test_refused_submit_without_a_reason_says_so() -> None:
    with pytest.raises(SubmitRefused, match="io: no reason given"):
        parse_submit_output(header("submit", error="io"))


@pytest.mark.parametrize(
    "record",
    [
        b"",
        answer(key=0, pid="x1", alive=0),
        header("poll", key=0, pid=1, len=9) + b"short",
        answer(key=0, pid=1, alive=1) + b"trailing bytes\n",
        b"noise\n" + answer(key=0, pid=1, alive=1),
        answer(key=0, pid=1, alive=1) + answer(key=0, pid=1, alive=1),
        answer(key=1, pid=1, alive=1),
        header("poll", pid=1, alive=1, len=0),
        header("poll", key=0, pid=1, alive=1, len=0).rstrip(b"\n"),
    ],
    ids=[
        "no-record",
        "bad-integer",
        "log-bytes",
        "bytes-after",
        "noise-between",
        "twice",
        "other-key",
        "no-key",
        "cut",
    ],
)
def test_submit_with_a_bad_state_record_is_a_protocol_error(record: bytes) -> None:
    with pytest.raises(RemoteJobProtocolError):
        parse_submit_output(header("submit", os="Linux", launched=1) + record)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"state": "killed"}, ("killed", [])),
        ({"state": "survived", "pids": "12,345"}, ("survived", [12, 345])),
        ({"state": "survived", "pids": "12,,x,7"}, ("survived", [12, 7])),
        ({}, ("", [])),
    ],
)
def test_kill_answer_names_the_survivors(fields: dict[str, object], expected: tuple[str, list[int]]) -> None:
    assert parse_kill_output(b"noise\n" + header("kill", **fields)) == expected


@pytest.mark.parametrize(
    ("fields", "expected", "described"),
    [
        ({"state": "killed"}, KillAnswer("killed"), "killed"),
        (
            {"state": "killed", "dir": "missing"},
            KillAnswer("killed", directory_missing=True),
            "killed (its directory was gone: found by the marker in their environment)",
        ),
        (
            {"state": "survived", "pids": "12", "dir": "missing"},
            KillAnswer("survived", (12,), directory_missing=True),
            "survived (its directory was gone: found by the marker in their environment)",
        ),
        ({"state": "missing"}, KillAnswer("missing"), "missing"),
    ],
)
def test_kill_answer_says_when_the_job_directory_was_gone(
    fields: dict[str, object], expected: KillAnswer, described: str
) -> None:
    # A kill that found the job's processes by their marker alone killed something: it must
    # not read like "missing" (nothing to do), and the log says how they were found.
    answer = parse_kill_answer(header("kill", **fields))
    assert answer == expected
    assert answer.describe() == described
    assert parse_kill_output(header("kill", **fields)) == (expected.state, list(expected.survivors))


def test_kill_answer_of_another_verb_is_a_protocol_error() -> None:
    with pytest.raises(RemoteJobProtocolError, match="No 'SSHJOBS1 kill' answer"):
        parse_kill_output(header("cleanup", state="removed"))


# --------------------------------------------------------------------------- log stream and monitor


@pytest.mark.parametrize(("data", "cut"), [(b"\x80", 1), (b"\x80\x80\x80", 3), (b"", 0), (b"a\xe2\x82", 1)])
def test_utf8_safe_cut_of_short_data(data: bytes, cut: int) -> None:
    assert _utf8_safe_cut(data) == cut


def test_monitor_resumes_where_an_earlier_watcher_delivered() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)

    update = monitor.feed_status(JobStatus(JobState.RUNNING, pid=1, log_size=100, delivered=40), now=1.0)

    assert (update.lines, update.more_now, update.outcome) == ([], True, None)
    assert monitor.log_offset == 40
    entry = monitor.poll_entry(max_bytes=16, delivered=7)
    assert (entry.offset, entry.max_bytes, entry.delivered) == (40, 16, 7)
    assert monitor.poll_entry(max_bytes=1000).max_bytes == 64, "never more than the chunk size"


def test_delivered_offset_is_only_honoured_on_the_first_answer() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    monitor.feed_status(JobStatus(JobState.RUNNING, pid=1, log_size=3, log_data=b"ab\n"), now=1.0)

    update = monitor.feed_status(JobStatus(JobState.RUNNING, pid=1, log_size=3, delivered=40), now=2.0)

    assert update.more_now is False
    assert monitor.log_offset == 3


def test_foreign_job_dir_ends_the_watch_leaving_the_remote_alone() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0, token="a" * 32)

    update = monitor.feed_status(JobStatus(JobState.FOREIGN), now=1.0)

    assert update.outcome is not None
    assert (update.outcome.status, update.outcome.exit_code, update.outcome.leave_remote) == (
        "error",
        None,
        True,
    )
    assert "no longer carries this task instance's token" in update.outcome.message
    assert PATHS.job_dir in update.outcome.message


def test_vanished_on_a_full_disk_says_the_exit_code_could_not_be_recorded() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    gone = JobStatus(JobState.VANISHED, pid=77, disk_full=True)

    updates = [monitor.feed_status(gone, now=float(i)) for i in range(2)]

    outcome = updates[-1].outcome
    assert updates[0].outcome is None and outcome is not None
    assert (outcome.status, outcome.exit_code, outcome.leave_remote) == ("error", None, False)
    assert "is full: the exit code could not be recorded" in outcome.message
    assert "77" in outcome.message and PATHS.log_file in outcome.message


def test_exit_on_a_full_disk_keeps_the_code_and_warns_the_log_may_be_incomplete() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)

    update = monitor.feed_status(JobStatus(JobState.EXITED, pid=7, exit_code=0, disk_full=True), now=1.0)

    assert update.outcome is not None
    assert (update.outcome.status, update.outcome.exit_code) == ("success", 0)
    assert "was full when it ended: its log may be incomplete" in update.outcome.message
