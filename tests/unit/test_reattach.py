"""Which earlier job a durable try takes over: the pure decisions, and the real lookup script."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import JobState, JobStatus
from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.reattach import (
    TRIES_KEY,
    JobRecord,
    Resume,
    build_lookup_script,
    cycle_start,
    decide,
    lookup_entries,
    records_of,
    store_value,
)
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import SubmitEntry
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
        (JobStatus(JobState.RUNNING, pid=5), True, Resume.REATTACH),
        (JobStatus(JobState.RUNNING, pid=5), False, Resume.FRESH),  # by name: nothing proves it ours
        (JobStatus(JobState.PENDING), True, Resume.FRESH),
        (JobStatus(JobState.EXITED, pid=5, exit_code=0), True, Resume.REATTACH),
        (JobStatus(JobState.EXITED, exit_code=0, removed=True), True, Resume.DONE),
        (JobStatus(JobState.EXITED, exit_code=99, removed=True), True, Resume.DONE),
        (JobStatus(JobState.EXITED, pid=5, exit_code=0), False, Resume.FRESH),
        (JobStatus(JobState.EXITED, exit_code=0, removed=True), False, Resume.FRESH),
        (JobStatus(JobState.EXITED, pid=5, exit_code=3), True, Resume.FRESH),
        (JobStatus(JobState.VANISHED, pid=5), True, Resume.FRESH),
        (JobStatus(JobState.MISSING), True, Resume.FRESH),
        (JobStatus(JobState.FOREIGN), True, Resume.FRESH),
    ],
)
def test_only_a_proven_running_or_succeeded_job_is_taken_over(
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


def test_every_try_s_record_is_kept_and_the_latest_also_where_earlier_versions_read_it() -> None:
    one = JobRecord("af_d_t_t1_0123456789abcdef", "/srv/jobs", TOKEN, 1, "failed", 3)
    two = JobRecord("af_d_t_t2_0123456789abcdef", "/srv/jobs", new_job_token(), 2)
    # Try 3 took over try 2's job: it keeps that job's record, with its token.
    value = store_value({1: one, 2: two, 3: two})
    assert records_of(value) == {1: one, 2: two, 3: two}
    assert JobRecord.from_value(value) == two  # what an earlier version reads
    assert sorted(value[TRIES_KEY]) == ["1", "2", "3"]


def test_the_one_record_of_an_earlier_version_counts_as_its_try_s() -> None:
    old = JobRecord("af_d_t_t2_0123456789abcdef", "/srv/jobs", TOKEN, 2, "success", 0)
    assert records_of(old.to_value()) == {2: old}


def test_junk_in_the_stored_value_is_no_record() -> None:
    good = JobRecord("af_d_t_t1_0123456789abcdef", "/srv/jobs", TOKEN, 1)
    assert records_of(None) == {} and records_of("x") == {} and records_of({"job_id": "a"}) == {}
    junk = {"x": good.to_value(), "2": {"token": "nope"}, "3": "x", "4": good.to_value()}
    # A try never watches a later try's job: a record under an earlier try than its own is junk.
    later = JobRecord("af_d_t_t5_0123456789abcdef", "/srv/jobs", TOKEN, 5)
    assert records_of({TRIES_KEY: {**junk, "1": later.to_value()}}) == {4: good}


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


# --------------------------------------------------------------------------- what the worker keeps


def test_the_store_keeps_every_try_of_the_cycle_and_each_try_s_outcome() -> None:
    import logging

    from ssh_jobs_provider.operators import durable, job_records
    from ssh_jobs_provider.protocol.reattach import STATE_KEY
    from support.runner import StandInStateStore, StandInTaskInstance, context_for

    log = logging.getLogger("test")
    store = StandInStateStore()
    # Cleared after try 2 (max_tries = 2 + 2): the cycle starts at try 3.
    ti = StandInTaskInstance(try_number=2, max_tries=2, state_store=store)
    base = "/srv/jobs"
    old = JobRecord(durable.job_id_of(ti, 1), base, TOKEN, 1)
    store.set(STATE_KEY, old.to_value())  # as an earlier build stored it
    assert job_records.read_records(context_for(ti), log) == {1: old}

    cleared = StandInTaskInstance(try_number=3, max_tries=4, state_store=store)
    three = JobRecord(durable.job_id_of(cleared, 3), base, new_job_token(), 3)
    job_records.remember(
        context_for(cleared), job_records.read_records(context_for(cleared), log), three, 2, log
    )
    assert records_of(store.get(STATE_KEY)) == {3: three}  # the earlier cycle's record is not kept

    fourth = cleared.next_try()
    stored = job_records.read_records(context_for(fourth), log)
    job_records.remember(context_for(fourth), stored, three, 2, log)  # try 4 took try 3's job over
    job_records.remember_outcome(context_for(fourth), three.job_id, "failed", 3, log)
    done = JobRecord(three.job_id, base, three.token, 3, "failed", 3)
    assert records_of(store.get(STATE_KEY)) == {3: done, 4: done}
    assert job_records.watched_record(context_for(fourth), log) == done

    fifth = fourth.next_try()
    found = durable.earlier_records(
        context_for(fifth), base, 2, job_records.read_records(context_for(fifth), log)
    )
    # Proven, once; try 4 submitted nothing under its own name, which is only looked up (and reported).
    assert found == [(done, True), (JobRecord(durable.job_id_of(fifth, 4), base, "", 4), False)]
    assert durable.earlier_records(context_for(fifth), "/elsewhere", 2, {3: done, 4: done}) == [
        (JobRecord(durable.job_id_of(fifth, 4), "/elsewhere", "", 4), False),
        (JobRecord(durable.job_id_of(fifth, 3), "/elsewhere", "", 3), False),
    ]
