"""Which earlier job a durable try takes over: the pure decisions, and the real lookup script."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, parse_batch_output
from ssh_jobs_provider.protocol.batch import CleanupEntry, SubmitEntry, build_batch_script
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.reattach import (
    JobRecord,
    Resume,
    build_lookup_script,
    cycle_start,
    decide,
    lookup_entries,
)
from ssh_jobs_provider.protocol.scripts import job_files
from support.protocol import run_sh

TOKEN = new_job_token()


# --------------------------------------------------------------------------- cycles


@pytest.mark.parametrize(
    ("try_number", "max_tries", "retries", "start"),
    [
        (1, 2, 2, 1),  # the first run: max_tries == retries
        (3, 2, 2, 1),  # its last retry
        (4, 5, 2, 4),  # cleared after try 3: max_tries = 3 + 2, the cycle starts at try 4
        (5, 5, 2, 4),
        (2, 1, 0, 2),  # no retries, cleared after try 1: max_tries = 1 + 0
        (3, None, 2, 3),  # unknown max_tries: look at nothing earlier
    ],
)
def test_the_cycle_starts_at_the_first_run_or_after_the_last_clear(
    try_number: int, max_tries: int | None, retries: int, start: int
) -> None:
    assert cycle_start(try_number, max_tries, retries) == start


@given(st.integers(1, 50), st.integers(0, 10), st.integers(0, 60))
def test_the_cycle_never_starts_after_the_try_or_before_the_first(
    try_number: int, retries: int, cleared: int
) -> None:
    max_tries = retries + min(cleared, try_number - 1)
    assert 1 <= cycle_start(try_number, max_tries, retries) <= try_number


# --------------------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("status", "recorded", "resume"),
    [
        (JobStatus(JobState.RUNNING, pid=5), False, Resume.REATTACH),
        (JobStatus(JobState.PENDING), True, Resume.FRESH),
        (JobStatus(JobState.EXITED, pid=5, exit_code=0), True, Resume.REATTACH),
        (JobStatus(JobState.EXITED, exit_code=0, removed=True), True, Resume.DONE),
        (JobStatus(JobState.EXITED, exit_code=99, removed=True), True, Resume.DONE),
        (JobStatus(JobState.EXITED, pid=5, exit_code=0), False, Resume.FRESH),  # by name: running only
        (JobStatus(JobState.EXITED, pid=5, exit_code=3), True, Resume.FRESH),
        (JobStatus(JobState.VANISHED, pid=5), True, Resume.FRESH),
        (JobStatus(JobState.MISSING), True, Resume.FRESH),
        (JobStatus(JobState.FOREIGN), True, Resume.FRESH),
    ],
)
def test_only_a_running_or_succeeded_job_is_taken_over(
    status: JobStatus, recorded: bool, resume: Resume
) -> None:
    assert decide(status, skip_codes=(99,), recorded=recorded) is resume


def test_a_record_round_trips_and_junk_is_no_record() -> None:
    record = JobRecord("af_d_t_t1_0123456789abcdef", "/srv/jobs", TOKEN, 1)
    assert JobRecord.from_value(record.to_value()) == record
    assert "outcome" not in record.to_value()  # the store refuses None values
    done = JobRecord.from_value({**record.to_value(), "outcome": "success", "exit_code": 0})
    assert done is not None and (done.outcome, done.exit_code) == ("success", 0)
    for junk in (None, "x", [], {"job_id": "a"}, {**record.to_value(), "token": "nope"}):
        assert JobRecord.from_value(junk) is None
    assert JobRecord.from_value({**record.to_value(), "base_dir": "relative"}) is None
    assert JobRecord.from_value({**record.to_value(), "job_id": "../escape"}) is None


# --------------------------------------------------------------------------- the real script


def submit(base: Path, job: str, command: str) -> SubmitEntry:
    paths = RemoteJobPaths(job, str(base))
    return SubmitEntry(paths, 0, 65536, token=TOKEN, files=job_files(command, {}, None, TOKEN))


def wait_for_exit(paths: RemoteJobPaths) -> None:
    """Until the host itself says the job exited (its wrapper gone, the exit record read)."""
    record = JobRecord(paths.job_id, paths.base_dir, TOKEN, 1)
    deadline = time.monotonic() + 10
    while True:
        (status,) = parse_batch_output(
            run_sh(build_lookup_script([record])).stdout, lookup_entries([record])
        ).values()
        if isinstance(status, JobStatus) and status.state is JobState.EXITED:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_the_lookup_tells_running_exited_removed_and_missing_jobs_apart(tmp_path: Path) -> None:
    base = tmp_path / "jobs"
    entries = [
        submit(base, "running", "sleep 5\n"),
        submit(base, "exited", "exit 0\n"),
        submit(base, "removed", "exit 4\n"),
    ]
    assert run_sh(build_batch_script(entries)).returncode == 0
    for entry in entries[1:]:
        wait_for_exit(entry.paths)
    removed = entries[2].paths
    assert run_sh(build_batch_script([CleanupEntry(removed, token=TOKEN)])).returncode == 0
    assert (base / ".ssh-jobs-ended" / "removed").read_text() == f"{TOKEN} 4\n"
    records = [JobRecord(e.paths.job_id, str(base), TOKEN, 1) for e in entries]
    records += [JobRecord("never", str(base), TOKEN, 1), JobRecord("removed", str(base), new_job_token(), 1)]

    out = run_sh(build_lookup_script(records)).stdout
    results = parse_batch_output(out, lookup_entries(records))

    states = [(r.state, r.exit_code, r.removed) for r in results.values() if isinstance(r, JobStatus)]
    assert states == [
        (JobState.RUNNING, None, False),
        (JobState.EXITED, 0, False),
        (JobState.EXITED, 4, True),
        (JobState.MISSING, None, False),
        (JobState.MISSING, None, False),  # a record with another token is not this job's
    ]


def test_a_submit_sent_again_after_its_job_was_removed_reports_it_and_starts_nothing(tmp_path: Path) -> None:
    base = tmp_path / "jobs"
    launches = tmp_path / "launches"
    entry = submit(base, "once", f"echo run >> {launches}\nexit 0\n")
    assert run_sh(build_batch_script([entry])).returncode == 0
    wait_for_exit(entry.paths)
    assert run_sh(build_batch_script([CleanupEntry(entry.paths, token=TOKEN)])).returncode == 0

    for interpreter in ("sh", "perl"):
        out = run_sh(build_batch_script([entry], interpreter=interpreter)).stdout
        (result,) = parse_batch_output(out, [entry]).values()
        assert isinstance(result, JobStatus)
        assert (result.state, result.exit_code, result.removed, result.launched) == (
            JobState.EXITED,
            0,
            True,
            False,
        )
    assert launches.read_text() == "run\n"
    assert not Path(entry.paths.job_dir).exists()
