"""Job ids, path validation and answer parsing of the remote-job protocol (no shell, no I/O)."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import (
    JobState,
    JobStatus,
    RemoteJobProtocolError,
    parse_batch_output,
    parse_simple_state,
    parse_submit_output,
)
from ssh_jobs_provider.protocol.batch import PollEntry
from ssh_jobs_provider.protocol.identity import (
    DEFAULT_BASE_DIR,
    RemoteJobPaths,
    make_job_id,
    validate_base_dir,
    validate_job_id,
)
from support.protocol import answer, batch, header, only_result

PATH_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")

ids = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=80)
task_keys = st.tuples(ids, ids, ids, st.integers(-1, 10**6), st.integers(0, 10**4))


# --------------------------------------------------------------------------- job ids


def test_job_id_is_deterministic_and_stable_across_versions() -> None:
    first = make_job_id("my_dag", "my.task", "manual__2024-01-01T00:00:00+00:00", 3, 1)
    assert first == make_job_id("my_dag", "my.task", "manual__2024-01-01T00:00:00+00:00", 3, 1)
    # Pinned: a changed derivation would orphan jobs submitted before an upgrade.
    assert first == "af_my_dag_my_task_m3_t1_ad0567a9c6611b9a"


def test_unmapped_task_has_no_map_part() -> None:
    assert "_m" not in make_job_id("d", "t", "r", -1, 1).removeprefix("af_d_t")
    assert "_m0_" in make_job_id("d", "t", "r", 0, 1)


@pytest.mark.parametrize(
    "other",
    [
        ("dag2", "task", "run", 0, 1),
        ("dag", "task2", "run", 0, 1),
        ("dag", "task", "run2", 0, 1),
        ("dag", "task", "run", 1, 1),
        ("dag", "task", "run", -1, 1),
        ("dag", "task", "run", 0, 2),
        # Same slug, different identity: the digest must tell them apart.
        ("dag!", "task", "run", 0, 1),
        ("dag", "task", "run?", 0, 1),
    ],
)
def test_job_id_differs_when_any_part_of_the_task_instance_differs(
    other: tuple[str, str, str, int, int],
) -> None:
    assert make_job_id("dag", "task", "run", 0, 1) != make_job_id(*other)


@settings(max_examples=200)
@given(a=task_keys, b=task_keys)
def test_distinct_task_instances_get_distinct_job_ids(
    a: tuple[str, str, str, int, int], b: tuple[str, str, str, int, int]
) -> None:
    if a != b:
        assert make_job_id(*a) != make_job_id(*b)
    else:
        assert make_job_id(*a) == make_job_id(*b)


@settings(max_examples=200)
@given(key=task_keys)
@example(key=("\u00e9t\u00e9/../..", "t\u00e2che \U0001f680", "run\n$(rm -rf /)", 7, 2))
@example(key=("", "", "", -1, 0))
@example(key=("a" * 500, "b" * 500, "c" * 500, 10**6, 10**4))
def test_job_id_is_always_one_valid_path_component(key: tuple[str, str, str, int, int]) -> None:
    job_id = make_job_id(*key)
    assert PATH_COMPONENT.fullmatch(job_id), job_id
    assert validate_job_id(job_id) == job_id
    paths = RemoteJobPaths(job_id=job_id)
    assert posixpath.dirname(paths.job_dir) == DEFAULT_BASE_DIR


@pytest.mark.parametrize(
    "bad", ["", ".hidden", "..", ".", "a/b", "../x", "-x", "_x", "a b", "a" * 201, "\u00e9"]
)
def test_invalid_job_ids_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="Invalid job id"):
        validate_job_id(bad)
    with pytest.raises(ValueError, match="Invalid job id"):
        RemoteJobPaths(job_id=bad)


def test_longest_valid_job_id_is_accepted() -> None:
    assert validate_job_id("a" * 200) == "a" * 200


def test_job_id_with_trailing_newline_is_rejected() -> None:
    # Regression: '$' in the id pattern also matched before a trailing newline.
    with pytest.raises(ValueError, match="Invalid job id"):
        validate_job_id("ab\n")
    with pytest.raises(ValueError, match="Invalid job id"):
        RemoteJobPaths.from_job_dir("/srv/jobs/ab\n", "/srv/jobs")


# --------------------------------------------------------------------------- base dir


@pytest.mark.parametrize(
    ("given_dir", "normalised"),
    [
        ("/tmp/airflow-ssh-jobs", "/tmp/airflow-ssh-jobs"),
        ("/tmp/jobs/", "/tmp/jobs"),
        ("//tmp//jobs", "/tmp/jobs"),
        ("///srv/./jobs/.", "/srv/jobs"),
        ("/home/user name/jobs $x", "/home/user name/jobs $x"),
    ],
)
def test_validate_base_dir_accepts_and_normalises_absolute_paths(given_dir: str, normalised: str) -> None:
    assert validate_base_dir(given_dir) == normalised


@pytest.mark.parametrize(
    ("bad", "fix"),
    [
        ("jobs", "absolute path"),
        ("./jobs", "/home/<user>/airflow-ssh-jobs"),
        ("~", "'~' path"),
        ("~/jobs", "'~' path"),
        ("/tmp/../etc", "'..'"),
        ("/tmp/jobs/..", "'..'"),
        ("/", "must not be '/'"),
        ("//", "must not be '/'"),
        ("/./", "must not be '/'"),
        ("/tmp/a\0b", "NUL or newline"),
        ("/tmp/a\nb", "NUL or newline"),
        ("", "remote_base_dir is empty: leave it unset"),
    ],
)
def test_validate_base_dir_rejects_unsafe_paths_naming_the_fix(bad: str, fix: str) -> None:
    with pytest.raises(ValueError, match="remote_base_dir") as info:
        validate_base_dir(bad)
    assert fix in str(info.value)


def test_validate_base_dir_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="remote_base_dir"):
        validate_base_dir(None)  # type: ignore[arg-type]


@settings(max_examples=300)
@given(st.text(st.sampled_from("/a.~\n\0 "), max_size=12) | st.text(max_size=20))
def test_validate_base_dir_result_is_always_a_safe_absolute_normalised_path(candidate: str) -> None:
    try:
        result = validate_base_dir(candidate)
    except ValueError:
        return
    assert result.startswith("/")
    assert not result.startswith("//")
    assert result != "/"
    assert posixpath.normpath(result) == result
    assert ".." not in result.split("/")
    assert "\0" not in result and "\n" not in result


# --------------------------------------------------------------------------- job dir guard


def test_from_job_dir_accepts_a_direct_child_of_base() -> None:
    paths = RemoteJobPaths.from_job_dir("/srv/jobs/job1/", "/srv/jobs/")
    assert paths == RemoteJobPaths(job_id="job1", base_dir="/srv/jobs")
    assert paths.job_dir == "/srv/jobs/job1"
    assert paths.log_file == "/srv/jobs/job1/stdout.log"
    assert paths.exit_code_file == "/srv/jobs/job1/exit_code"
    assert paths.pid_file == "/srv/jobs/job1/pid"


def test_from_job_dir_defaults_to_the_default_base() -> None:
    assert RemoteJobPaths.from_job_dir(f"{DEFAULT_BASE_DIR}/j", None).base_dir == DEFAULT_BASE_DIR


@pytest.mark.parametrize(
    "job_dir",
    [
        "",
        "/srv/jobs",
        "/srv/jobs/",
        "/srv/jobs/a/b",
        "/srv/jobs/../etc",
        "/srv/jobs/..",
        "/srv/jobs/.",
        "/srv/jobsX/a",
        "/srv/a",
        "/etc/passwd",
        "srv/jobs/a",
        "/srv/jobs/a/../../etc",
        "/",
    ],
)
def test_from_job_dir_refuses_anything_not_directly_under_base(job_dir: str) -> None:
    with pytest.raises(ValueError, match=r"Refusing job directory|Invalid job id"):
        RemoteJobPaths.from_job_dir(job_dir, "/srv/jobs")


segments = st.sampled_from(["", ".", "..", "srv", "jobs", "j1", "a b", ".x", "~", "x\ny", "j\n", "\u00e9"])


@settings(max_examples=500)
@given(
    base=st.lists(st.sampled_from(["srv", "jobs", "tmp", "a.b", "x y"]), min_size=1, max_size=3).map(
        lambda parts: "/" + "/".join(parts)
    ),
    prefix=st.sampled_from(["", "/", "//", "/srv/jobs/", "/srv/", "/srv/jobs/j1/"]),
    parts=st.lists(segments, max_size=5),
    tail=st.sampled_from(["", "/", "//"]),
)
@example(base="/srv/jobs", prefix="/srv/jobs/", parts=["..", "etc"], tail="")
@example(base="/srv/jobs", prefix="/srv/jobs/", parts=["j1", ".."], tail="/")
def test_from_job_dir_never_yields_a_dir_outside_base(
    base: str, prefix: str, parts: list[str], tail: str
) -> None:
    job_dir = prefix + "/".join(parts) + tail
    try:
        paths = RemoteJobPaths.from_job_dir(job_dir, base)
    except ValueError:
        return
    assert posixpath.dirname(paths.job_dir) == validate_base_dir(base)
    assert paths.job_id not in ("", ".", "..")
    assert PATH_COMPONENT.fullmatch(paths.job_id)
    assert posixpath.normpath(paths.job_dir) == paths.job_dir


def test_as_dict_carries_identity_and_paths() -> None:
    paths = RemoteJobPaths(job_id="j", base_dir="/b")
    assert paths.as_dict() == {
        "job_id": "j",
        "job_dir": "/b/j",
        "log_file": "/b/j/stdout.log",
        "exit_code_file": "/b/j/exit_code",
        "pid_file": "/b/j/pid",
        "remote_os": "posix",
    }


# --------------------------------------------------------------------------- parsers


#: The batch entry the poll answers below are parsed for (window as asked, unless a test says).
ENTRY = PollEntry(RemoteJobPaths(job_id="j", base_dir="/srv/jobs"), offset=0, max_bytes=100)


def parse_poll(output: bytes, max_bytes: int = 100) -> JobStatus:
    """The one poll answer of a batch of one asking for ``max_bytes`` log bytes."""
    status = only_result(output, PollEntry(ENTRY.paths, 0, max_bytes))
    assert isinstance(status, JobStatus)
    return status


RUNNING = {"pid": 42, "alive": 1, "exit": "", "size": 10, "boot": "same", "claimed": 1}


def test_submit_header_is_found_after_login_shell_noise() -> None:
    noise = (
        b"Welcome to Ubuntu\n"
        b"Last login: yesterday\n"
        b"motd mentions SSHJOBS1 submit pid=1 exit=9 mid-line\n"
        b"\xff\xfe binary noise\n"
    )
    output = noise + header("submit", os="Linux", launched=1) + header("poll", key=0, **RUNNING, len=0)

    status = parse_submit_output(output)

    assert status == JobStatus(
        JobState.RUNNING, pid=42, exit_code=None, log_size=10, remote_os="Linux", launched=True
    )


def test_submit_launched_zero_means_reattached() -> None:
    status = parse_submit_output(header("submit", os="Darwin", launched=0) + header("poll", key=0, **RUNNING))
    assert status.launched is False
    assert status.remote_os == "Darwin"


def test_poll_returns_the_bytes_after_the_header_verbatim() -> None:
    log = b"line\n" + header("poll", key=0, pid=1, exit=0, len=0) + b"SSHJOBS1 end\n\xff\x00tail"
    output = b"noise\n" + batch(answer(**RUNNING, data=log))
    status = parse_poll(output, max_bytes=len(log))
    assert status.log_data == log
    assert status.state is JobState.RUNNING


def test_poll_with_more_bytes_than_asked_is_a_protocol_error() -> None:
    with pytest.raises(RemoteJobProtocolError, match="more than"):
        parse_poll(batch(answer(**RUNNING, data=b"12345")), max_bytes=4)


GARBAGE = [
    b"",
    b"bash: /bin/sh: No such file or directory\n",
    b"'/bin/sh' is not recognized as an internal or external command\r\n",
    b"xSSHJOBS1 poll key=0 pid=1 len=0\n",  # not at a line start
    b"SSHJOBS1 submit key=0 pid=1 len=0\n",  # another verb
    b"SSHJOBS1 submit pid=1\n",  # another verb, without a key
    b"SSHJOBS2 poll key=0 pid=1 len=0\n",
]
#: Answers cut short: nothing may follow them, not even the end line.
TRUNCATED = [
    b"SSHJOBS1 poll key=0 pid=1 alive=1",  # no end of line
    b"SSHJOBS1 poll key=0 pid=1 alive=1 len=0",  # no end of line, though every field is there
    b"SSHJOBS1 poll key=0 pid=1 len=9\nshort",  # fewer bytes than announced
]


@pytest.mark.parametrize(
    "output", [batch(g) for g in GARBAGE] + [batch(g, end=False) for g in GARBAGE + TRUNCATED]
)
def test_poll_garbage_raises_a_value_error_subclass(output: bytes) -> None:
    with pytest.raises(RemoteJobProtocolError):
        parse_poll(output, max_bytes=100)
    assert issubclass(RemoteJobProtocolError, ValueError)


@pytest.mark.parametrize("field", ["pid", "exit", "size", "delivered"])
def test_non_integer_field_is_a_protocol_error(field: str) -> None:
    # alive=0: while the wrapper lives, an exit record is not read at all (see below).
    with pytest.raises(RemoteJobProtocolError, match="integer"):
        parse_poll(batch(answer(**{**RUNNING, "alive": 0, field: "12x"})), max_bytes=10)


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"pid": 42, "alive": 1, "exit": "", "boot": "same"}, JobState.RUNNING),
        ({"pid": 42, "alive": 1, "exit": "", "boot": "unknown"}, JobState.RUNNING),
        # An exit record next to a live wrapper was not written by the wrapper (which writes it
        # as it ends): the job wrote it, or the wrapper is about to exit. Not final yet.
        ({"pid": 42, "alive": 1, "exit": 0, "boot": "same"}, JobState.RUNNING),
        ({"pid": 42, "alive": 0, "exit": 137, "boot": "changed"}, JobState.EXITED),
        ({"pid": "", "alive": 0, "exit": 3, "boot": "unknown"}, JobState.EXITED),
        ({"pid": "", "alive": 0, "exit": "", "boot": "unknown"}, JobState.PENDING),
        ({"pid": 42, "alive": 0, "exit": "", "boot": "same"}, JobState.VANISHED),
        ({"pid": 42, "alive": 1, "exit": "", "boot": "changed"}, JobState.VANISHED),
        ({"state": "missing"}, JobState.MISSING),
        ({"state": "foreign"}, JobState.FOREIGN),
    ],
)
def test_job_state_derivation(fields: dict[str, object], state: JobState) -> None:
    status = parse_poll(batch(answer(**fields)), max_bytes=1)
    assert status.state is state
    done = (JobState.EXITED, JobState.VANISHED, JobState.MISSING, JobState.FOREIGN)
    assert status.done is (state in done)


def test_exit_code_and_size_are_parsed() -> None:
    status = parse_poll(batch(answer(pid=7, alive=0, exit=143, size=999, boot="same")), max_bytes=1)
    assert (status.pid, status.exit_code, status.log_size, status.launched) == (7, 143, 999, None)


@pytest.mark.parametrize(
    ("fields", "disk_full"),
    [({"full": 1}, True), ({"note": "nospace"}, True), ({"full": 0, "note": ""}, False), ({}, False)],
)
def test_full_disk_is_read_from_either_field(fields: dict[str, object], disk_full: bool) -> None:
    status = parse_poll(batch(answer(pid=7, alive=0, exit=0, **fields)))
    assert status.disk_full is disk_full


def test_delivered_offset_is_parsed() -> None:
    assert parse_poll(batch(answer(**RUNNING, delivered=1234))).delivered == 1234


@pytest.mark.parametrize("verb", ["kill", "cleanup"])
@pytest.mark.parametrize("state", ["killed", "survived", "not-running", "missing", "removed", "absent"])
def test_simple_state_is_parsed_after_noise(verb: str, state: str) -> None:
    assert parse_simple_state(b"noise\n" + header(verb, state=state), verb) == state


def test_simple_state_of_the_wrong_verb_is_a_protocol_error() -> None:
    with pytest.raises(RemoteJobProtocolError, match="cleanup"):
        parse_simple_state(header("kill", state="killed"), "cleanup")


def test_an_answer_glued_to_a_banner_without_a_final_newline_is_found() -> None:
    # A login shell's banner may end without a newline: the first header then starts mid-line.
    glued = b"Welcome to the cluster" + header("submit", os="Linux", launched=1)
    status = parse_submit_output(glued + header("poll", key=0, **RUNNING, len=0))
    assert (status.state, status.launched) == (JobState.RUNNING, True)
    tag = "SSHJOBS1.0123456789abcdef"
    batch_answer = f"Welcome{tag} poll key=0 pid=1 alive=1 exit= size=0 len=0\n{tag} end\n".encode()
    entry = PollEntry(RemoteJobPaths("job", "/tmp/jobs"), 0, 10)
    assert parse_batch_output(batch_answer, [entry], tag)[0] == JobStatus(JobState.RUNNING, pid=1)
