"""
Submits from the triggerer, as the host session decides about them: pure code, a fake clock,
and real batch scripts run by the local shell where the answer matters.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssh_jobs_provider.exceptions import FAN_OUT_HINT, SSHAuthenticationError
from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import JobMonitor
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.refusals import POSIX_HINT
from ssh_jobs_provider.protocol.scripts import job_files
from ssh_jobs_provider.protocol.submit import SubmitEntry, SubmitRefused
from ssh_jobs_provider.retry import BackoffPolicy
from ssh_jobs_provider.triggers.poll_scheduler import SUBMIT_BATCH_BYTES, SUBMIT_TICK, PollScheduler, Watch
from ssh_jobs_provider.triggers.poll_scheduler import SUBMITS_PER_BATCH as PER_BATCH
from ssh_jobs_provider.triggers.poll_scheduler import SUBMITS_PER_PERL_BATCH as PER_PERL_BATCH
from support.protocol import run_sh
from support.waiting import wait_until

BACKOFF = BackoffPolicy(initial=2.0, maximum=8.0)


def submit_watch(job: str = "j", base: str = "/base", command: str = "echo hi\n", **kwargs) -> Watch:
    kwargs.setdefault("poll_interval", 5.0)
    kwargs.setdefault("command_timeout", 10.0)
    kwargs.setdefault("max_reconnect_attempts", 2)
    token = new_job_token()
    monitor = JobMonitor(
        RemoteJobPaths(job, base), log_offset=0, chunk_size=65536, started_at=0.0, token=token
    )
    return Watch(monitor=monitor, submit_files=job_files(command, {}, None, token), **kwargs)


def running(pid: int = 7, launched: bool = True) -> JobStatus:
    return JobStatus(JobState.RUNNING, pid=pid, launched=launched, remote_os="Linux")


def test_a_submit_is_due_at_the_next_submit_tick_not_at_the_poll_grid() -> None:
    watch = submit_watch(poll_interval=30.0)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.3)

    assert watch.next_due == SUBMIT_TICK
    (entry,) = scheduler.entries(scheduler.due(SUBMIT_TICK), SUBMIT_TICK)
    assert isinstance(entry, SubmitEntry)
    assert entry.token == watch.monitor.token and entry.files == watch.submit_files


def test_submits_beyond_one_batch_wait_for_the_next_one_at_once() -> None:
    watches = [submit_watch(f"j{i}") for i in range(PER_BATCH + 7)]
    scheduler = PollScheduler(BACKOFF)
    for watch in watches:
        scheduler.add(watch, 0.0)

    first = scheduler.due(1.0)
    assert len(first) == PER_BATCH
    scheduler.apply(first, {key: running() for key in range(len(first))}, 1.0)
    assert scheduler.due(1.0) == watches[PER_BATCH:]


def test_a_host_that_submits_in_perl_takes_a_fan_out_in_one_batch_as_far_as_its_bytes_allow() -> None:
    scheduler = PollScheduler(BACKOFF)
    scheduler.submits_per_batch = PER_PERL_BATCH
    fan_out = [submit_watch(f"j{i}") for i in range(1000)]
    # Commands as long as a trigger may carry (40 000 bytes): the bytes decide, not the count.
    large = [submit_watch(f"big{i}", command="x" * 40_000) for i in range(300)]
    for watch in fan_out + large:
        scheduler.add(watch, 0.0)

    first = scheduler.due(1.0)
    assert first[:1000] == fan_out
    carried = sum(len(content) for w in first for _, content in w.submit_files or ())
    assert len(first) < 1300 and SUBMIT_BATCH_BYTES - 41_000 < carried <= SUBMIT_BATCH_BYTES
    scheduler.apply(first, {key: running() for key in range(len(first))}, 1.0)
    assert scheduler.due(1.0) == large[len(first) - 1000 :]


def test_one_submit_larger_than_the_byte_budget_still_goes_alone() -> None:
    scheduler = PollScheduler(BACKOFF)
    huge = submit_watch("huge", command="x" * (SUBMIT_BATCH_BYTES + 1))
    scheduler.add(huge, 0.0)
    assert scheduler.due(1.0) == [huge]


def test_the_answer_ends_the_submit_and_the_job_is_polled_from_then_on() -> None:
    watch = submit_watch()
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    ((_, delivery),) = scheduler.apply([watch], {0: running(pid=42)}, 1.0)

    assert delivery.submitted is not None and delivery.submitted.pid == 42
    assert watch.submit_files is None
    (entry,) = scheduler.entries([watch], 1.0)
    assert type(entry) is PollEntry


def test_a_refused_submit_is_final_and_says_nothing_was_started() -> None:
    watch = submit_watch()
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    refused = SubmitRefused("unsafe", "/base is writable by group or others (mode drwxrwx---) and not sticky")
    ((_, delivery),) = scheduler.apply([watch], {0: refused}, 1.0)

    assert delivery.outcome is not None and delivery.outcome.never_started
    assert "Refusing remote_base_dir /base" in delivery.outcome.message
    assert "Nothing was run" in delivery.outcome.message
    assert scheduler.idle


def test_a_submit_that_never_reached_the_host_fails_with_the_fan_out_hint() -> None:
    watch = submit_watch(max_reconnect_attempts=1)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    scheduler.batch_error([watch], OSError("connection refused"), 1.0, sent=False)
    _, deliveries = scheduler.batch_error([watch], OSError("connection refused"), 4.0, sent=False)

    ((_, delivery),) = deliveries
    assert delivery.outcome is not None and delivery.outcome.never_started
    assert "No job was started" in delivery.outcome.message and FAN_OUT_HINT in delivery.outcome.message


def test_a_submit_whose_answer_was_lost_may_have_started_its_job() -> None:
    watch = submit_watch(max_reconnect_attempts=0)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    _, deliveries = scheduler.batch_error([watch], TimeoutError("no answer"), 1.0, sent=True)

    ((_, delivery),) = deliveries
    assert delivery.outcome is not None and not delivery.outcome.never_started
    assert "may have started" in delivery.outcome.message


def test_a_host_that_does_not_run_the_script_is_named_as_not_posix() -> None:
    watch = submit_watch(max_reconnect_attempts=0)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    ((_, delivery),) = scheduler.apply([watch], {0: RemoteJobProtocolError("no answer")}, 1.0)

    assert delivery.outcome is not None and POSIX_HINT in delivery.outcome.message


def test_credentials_that_fail_end_the_submit_at_once_without_a_job() -> None:
    watch = submit_watch(max_reconnect_attempts=5)
    scheduler = PollScheduler(BACKOFF)
    scheduler.add(watch, 0.0)

    delay, deliveries = scheduler.batch_error(
        [watch], SSHAuthenticationError("Authentication failed: check login and key_file"), 1.0, sent=False
    )

    assert delay is None
    ((_, delivery),) = deliveries
    assert delivery.outcome is not None and delivery.outcome.never_started
    assert "check login and key_file" in delivery.outcome.message


# --------------------------------------------------------------------------- the real script


def submit_entry(base: Path, job: str, command: str, token: str | None = None) -> SubmitEntry:
    token = token or new_job_token()
    return SubmitEntry(
        RemoteJobPaths(job, str(base)),
        0,
        65536,
        token=token,
        files=job_files(command, {}, None, token),
    )


def run(entries: list, interpreter: str) -> dict:
    result = run_sh(build_batch_script(entries, interpreter=interpreter))
    assert result.returncode == 0, result.stderr
    return parse_batch_output(result.stdout, entries)


def launches(base: Path) -> list[str]:
    path = base.parent / "launches"
    return path.read_text().split() if path.exists() else []


def test_a_batch_of_submits_starts_each_job_once_and_a_resend_re_attaches(
    tmp_path: Path, poll_interpreter: str
) -> None:
    base = tmp_path / "jobs"
    entries = [
        submit_entry(base, f"job{i}", f"echo job{i} >> {tmp_path}/launches\necho out{i}\nsleep 2\n")
        for i in range(12)
    ]

    first = run(entries, poll_interpreter)
    # A batch answers without waiting for the wrappers' pids (the next batch is not held back):
    # they come with the next poll.
    assert all(isinstance(r, JobStatus) and r.launched is True for r in first.values()), first
    pid_files = [Path(e.paths.pid_file) for e in entries]
    wait_until(lambda: all(p.is_file() and p.read_text().strip() for p in pid_files), what="every pid")
    again = run(entries, poll_interpreter)

    assert all(isinstance(r, JobStatus) and r.launched is False for r in again.values()), again
    assert [r.pid for r in again.values()] == [int(p.read_text()) for p in pid_files]
    assert all(r.remote_os for r in first.values())
    assert sorted(launches(base)) == sorted(f"job{i}" for i in range(12))
    assert oct(os.stat(base).st_mode & 0o777) == "0o700"


def test_one_refused_submit_spares_the_others_and_leaves_nothing(
    tmp_path: Path, poll_interpreter: str
) -> None:
    base = tmp_path / "jobs"
    base.mkdir(mode=0o700)
    planted = base / "planted"
    planted.mkdir(mode=0o700)
    (planted / "token").write_text("0" * 32 + "\n")
    entries = [
        submit_entry(base, "ok1", "echo one\n"),
        submit_entry(base, "planted", "echo never\n"),
        submit_entry(base, "ok2", "echo two\n"),
    ]

    results = run(entries, poll_interpreter)

    assert isinstance(results[1], SubmitRefused) and results[1].code == "foreign"
    assert "created by another submit" in results[1].detail
    assert isinstance(results[0], JobStatus) and isinstance(results[2], JobStatus)
    assert results[0].launched and results[2].launched
    assert sorted(p.name for p in planted.iterdir()) == ["token"]


def test_an_untrusted_base_dir_refuses_every_submit_into_it(tmp_path: Path, poll_interpreter: str) -> None:
    base = tmp_path / "shared"
    base.mkdir()
    base.chmod(0o775)
    entries = [submit_entry(base, f"job{i}", "echo hi\n") for i in range(3)]

    results = run(entries, poll_interpreter)

    assert all(isinstance(r, SubmitRefused) and r.code == "unsafe" for r in results.values()), results
    assert list(base.iterdir()) == []


def test_every_send_of_a_submit_writes_the_same_marker_and_no_token() -> None:
    token, other = new_job_token(), new_job_token()
    marker = dict(job_files("echo hi\n", {}, None, token))["marker"]

    assert dict(job_files("echo hi\n", {}, None, token))["marker"] == marker  # a re-created trigger's
    assert dict(job_files("echo hi\n", {}, None, other))["marker"] != marker
    assert token not in marker and len(marker.strip()) == 32
