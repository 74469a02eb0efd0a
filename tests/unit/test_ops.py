"""The pure decisions of the airflow-ssh-jobs command: ages, what reap selects, the fan-out advice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.cli import advice
from ssh_jobs_provider.protocol.answers import JobState
from ssh_jobs_provider.protocol.identity import is_made_job_id, make_job_id
from ssh_jobs_provider.protocol.ops import JobDirectory, parse_age, select_reapable

NOW = 1_800_000_000
DAY = 86400

job_ids = st.builds(
    make_job_id, st.text(max_size=60), st.text(max_size=60), st.text(max_size=20),
    st.integers(-1, 5000), st.integers(0, 99),
)  # fmt: skip
other_names = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True),
    job_ids.map(lambda name: name + "x"),
    job_ids.map(lambda name: name.replace("af_", "ag_", 1)),
)
directories = st.builds(
    JobDirectory,
    name=st.one_of(job_ids, other_names),
    state=st.sampled_from(list(JobState)),
    exit_code=st.none() | st.integers(0, 255),
    active=st.none() | st.integers(NOW - 60 * DAY, NOW + DAY),
)


@given(st.lists(directories, max_size=30), st.integers(1, 30 * DAY))
def test_reap_selects_exactly_the_old_finished_job_directories(dirs: list[JobDirectory], age: int) -> None:
    chosen = select_reapable(dirs, NOW, age)
    expected = [
        d
        for d in dirs
        if is_made_job_id(d.name)
        and d.state in (JobState.EXITED, JobState.VANISHED, JobState.PENDING)
        and d.active is not None
        and NOW - d.active > age
    ]
    assert chosen == expected
    assert all(d.state is not JobState.RUNNING for d in chosen)


@given(job_ids)
def test_every_id_make_job_id_makes_is_recognised(name: str) -> None:
    assert is_made_job_id(name)


@given(other_names)
def test_other_names_are_not_job_ids(name: str) -> None:
    assert not is_made_job_id(name)


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 7 * DAY), ("12h", 43200), ("30m", 1800), ("90s", 90), ("2w", 14 * DAY), ("1d12h", 129600)]
)  # fmt: skip
def test_ages(text: str, seconds: int) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "7x", "d", "-1d", "0d", "7 days"])
def test_bad_ages_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"7d, 12h, 30m|longer than 0"):
        parse_age(text)


def test_fan_out_advice_follows_the_sizing_rules() -> None:
    small = advice.fan_out_advice(8, 0.05, 2, 10, (9, 2))
    assert small.max_startups == "10:30:100" and "no pool needed" in small.submit_mode
    large = advice.fan_out_advice(500, 0.05, 4, 10, (10, 0))
    assert (large.at_once, large.max_startups, large.poll_interval) == (250, "250:30:500", 10)
    assert "pool of 250" in large.submit_mode
    assert any("PerSourcePenaltyExemptList" in note for note in large.notes)
    assert advice.fan_out_advice(1000, 0.05, None, None, None).conn_retry_attempts == 8


def test_tools_missing_are_named() -> None:
    found = dict.fromkeys(advice.REQUIRED_TOOLS, True) | {"perl": False, "setsid": False, "nohup": False}
    required, optional = advice.missing_tools(found)
    assert required == ["setsid or nohup"]
    assert any(entry.startswith("perl ") for entry in optional)
    assert advice.median([5, 1, 3, 2, 4]) == 3
