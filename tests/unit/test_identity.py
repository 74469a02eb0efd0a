"""Job ids, tokens and paths of the remote-job protocol, validated (no shell, no I/O)."""

from __future__ import annotations

import posixpath
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.identity import (
    DEFAULT_BASE_DIR,
    RemoteJobPaths,
    make_job_id,
    validate_base_dir,
    validate_job_id,
)

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
