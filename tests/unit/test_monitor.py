"""JobMonitor fed with synthetic poll answers shaped exactly like the batch script's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import build_batch_script
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.monitor import (
    PENDING_LIMIT_SECONDS,
    VANISHED_CONFIRMATIONS,
    JobMonitor,
    MonitorUpdate,
)
from support.protocol import answer as framed
from support.protocol import batch, only_result, run_batch

#: Every poll here runs in POSIX sh and in perl, which must answer alike.
pytestmark = pytest.mark.usefixtures("poll_interpreter")

PATHS = RemoteJobPaths(job_id="job1", base_dir="/srv/jobs")


def answer(
    *,
    pid: int | str = 4242,
    alive: int = 1,
    exit: int | str = "",
    size: int = 0,
    boot: str = "same",
    claimed: int = 1,
    data: bytes = b"",
) -> bytes:
    """What the batch script prints for one poll entry: its header line, then the log bytes."""
    return framed(pid=pid, alive=alive, exit=exit, size=size, boot=boot, claimed=claimed, data=data)


MISSING = framed(state="missing")


def feed(monitor: JobMonitor, output: bytes, now: float) -> MonitorUpdate:
    """Parse ``output`` as the answer to the monitor's next poll entry, and feed it the status."""
    status = only_result(batch(output), monitor.poll_entry())
    assert isinstance(status, JobStatus)
    return monitor.feed_status(status, now)


def window(monitor: JobMonitor) -> tuple[int, int]:
    """(offset, max_bytes) the monitor's next poll entry asks for."""
    entry = monitor.poll_entry()
    assert f"poll_answer 0 {entry.paths.job_dir} {entry.offset} {entry.max_bytes} " in build_batch_script(
        [entry]
    )
    return entry.offset, entry.max_bytes


class FakeRemote:
    """A job's log and state, answering poll scripts at the offset each script asks for."""

    def __init__(self, log: bytes, **state: object) -> None:
        self.log = log
        self.state = state

    def run(self, monitor: JobMonitor) -> bytes:
        offset, max_bytes = window(monitor)
        return answer(size=len(self.log), data=self.log[offset : offset + max_bytes], **self.state)  # type: ignore[arg-type]


def drive(
    monitor: JobMonitor, remote: FakeRemote, now: float = 1.0, limit: int = 1000
) -> list[MonitorUpdate]:
    updates = []
    for _ in range(limit):
        update = feed(monitor, remote.run(monitor), now)
        updates.append(update)
        if update.outcome or not update.more_now:
            return updates
    raise AssertionError("monitor never settled")


# --------------------------------------------------------------------------- running


def test_running_job_emits_whole_lines_and_keeps_the_partial_one() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)

    update = feed(monitor, answer(size=8, data=b"a\nb\npart"), now=1.0)

    assert update.lines == ["a", "b"]
    assert update.outcome is None
    assert update.more_now is False
    assert monitor.log_offset == 4
    assert window(monitor) == (8, 64)
    assert not monitor.finishing


def test_the_wrapper_pid_is_kept_from_the_first_answer_that_carries_it() -> None:
    # A batch's submit answers before the wrapper has recorded its pid (pending, no pid).
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    feed(monitor, answer(pid="", alive=0, claimed=0), now=1.0)
    assert monitor.wrapper_pid is None
    feed(monitor, answer(pid=4242), now=2.0)
    feed(monitor, answer(pid="", alive=0, exit=0), now=3.0)
    assert monitor.wrapper_pid == 4242


def test_running_job_with_log_ahead_asks_for_more_now() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=4, started_at=0.0)

    update = feed(monitor, answer(size=10, data=b"ab\ncd"[:4]), now=1.0)

    assert update.more_now is True
    assert update.lines == ["ab"]
    assert window(monitor) == (4, 4)


def test_poll_entry_offsets_advance_with_the_data_read() -> None:
    remote = FakeRemote(b"".join(b"line %d\n" % i for i in range(50)))
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=16, started_at=0.0)
    offsets = []
    for _ in range(5):
        offsets.append(window(monitor)[0])
        feed(monitor, remote.run(monitor), now=1.0)

    assert offsets == [0, 16, 32, 48, 64]


def test_monitor_resumes_at_the_given_log_offset() -> None:
    monitor = JobMonitor(PATHS, log_offset=1234, chunk_size=100, started_at=0.0)
    assert window(monitor) == (1234, 100)
    assert monitor.log_offset == 1234


def test_running_job_never_gets_an_outcome_however_long() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    for now in (1.0, 1000.0, 1e6):
        assert feed(monitor, answer(), now).outcome is None


def test_more_log_bytes_than_the_chunk_is_a_protocol_error() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=4, started_at=0.0)
    with pytest.raises(RemoteJobProtocolError):
        feed(monitor, answer(size=5, data=b"12345"), now=1.0)


# --------------------------------------------------------------------------- exited


@pytest.mark.parametrize(("code", "status"), [(0, "success"), (1, "failed"), (143, "failed")])
def test_exited_job_with_big_log_is_drained_before_the_outcome(code: int, status: str) -> None:
    log = b"".join(b"line %03d\n" % i for i in range(100)) + b"last partial"
    remote = FakeRemote(log, alive=0, exit=code)
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=37, started_at=0.0)

    updates = drive(monitor, remote)

    assert all(u.more_now and u.outcome is None for u in updates[:-1])
    assert len(updates) > len(log) // 37
    final = updates[-1].outcome
    assert final is not None
    assert (final.status, final.exit_code) == (status, code)
    assert f"exited with code {code}" in final.message
    lines = [line for u in updates for line in u.lines]
    assert lines == [f"line {i:03d}" for i in range(100)] + ["last partial"]
    assert monitor.log_offset == len(log)
    assert monitor.finishing


def test_exit_seen_mid_drain_is_kept_even_if_later_polls_differ() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=4, started_at=0.0)
    first = feed(monitor, answer(alive=0, exit=3, size=8, data=b"abc\n"), now=1.0)
    assert first.more_now and first.outcome is None
    # The directory was cleaned up meanwhile (seen twice: once may be a passing miss): the
    # recorded exit still decides the outcome, and the bytes that could not be read are said.
    assert feed(monitor, MISSING, now=2.0).outcome is None
    second = feed(monitor, MISSING, now=3.0)
    assert second.outcome is not None
    assert (second.outcome.status, second.outcome.exit_code) == ("failed", 3)
    assert second.notes == [
        f"4 byte(s) in the log of remote job {PATHS.job_id} were not read: its directory "
        "was removed before they could be."
    ]


def test_a_transient_miss_after_a_restart_does_not_skip_the_resume() -> None:
    # A re-created trigger resumes at the byte an earlier one recorded as delivered; a first
    # answer that misses the directory once must not make it start over from byte 0.
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    assert feed(monitor, MISSING, now=1.0).outcome is None
    resumed = feed(
        monitor, framed(pid=4242, alive=1, exit="", size=12, boot="same", claimed=1, delivered=8), 2.0
    )
    assert resumed.lines == [] and monitor.log_offset == 8


@pytest.mark.parametrize(("recorded", "resumed_at"), [(5, 0), (8, 0), (9, 9)])
def test_a_take_over_resumes_only_beyond_what_the_earlier_try_had_delivered(
    recorded: int, resumed_at: int
) -> None:
    # The earlier try's watchers had recorded 8 bytes (in their try's log) when this try took the
    # job over: only a record beyond them is this try's own.
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0, resume_after=8)
    answer = framed(pid=4242, alive=1, exit="", size=12, boot="same", claimed=1, delivered=recorded)
    feed(monitor, answer, 1.0)
    assert monitor.log.read_offset == resumed_at


def test_exited_job_with_nothing_left_ends_at_once_flushing_the_partial_line() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    assert feed(monitor, answer(size=3, data=b"abc"), now=1.0).lines == []

    update = feed(monitor, answer(alive=0, exit=0, size=3), now=2.0)

    assert update.lines == ["abc"]
    assert update.outcome is not None and update.outcome.status == "success"
    assert monitor.log_offset == 3


# --------------------------------------------------------------------------- vanished, missing, pending


def test_vanished_needs_confirmation_then_errors_mentioning_oom() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    gone = answer(alive=0, size=5, data=b"out\nx")

    updates = [feed(monitor, gone if i == 0 else answer(alive=0, size=5), now=float(i)) for i in range(2)]

    assert VANISHED_CONFIRMATIONS == 2
    assert updates[0].outcome is None
    outcome = updates[1].outcome
    assert outcome is not None
    assert (outcome.status, outcome.exit_code) == ("error", None)
    assert "OOM" in outcome.message
    assert "4242" in outcome.message
    assert PATHS.log_file in outcome.message
    assert updates[0].lines + updates[1].lines == ["out", "x"]


def test_vanished_count_resets_when_the_job_is_seen_alive_again() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    assert feed(monitor, answer(alive=0), now=1.0).outcome is None
    assert feed(monitor, answer(alive=1), now=2.0).outcome is None
    assert feed(monitor, answer(alive=0), now=3.0).outcome is None
    assert feed(monitor, answer(alive=0), now=4.0).outcome is not None


def test_reboot_counts_as_vanished_even_if_the_pid_is_alive() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    for now in (1.0, 2.0):
        update = feed(monitor, answer(alive=1, boot="changed"), now)
    assert update.outcome is not None and update.outcome.status == "error"


def test_a_missing_job_dir_is_believed_only_when_a_second_look_agrees() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)

    # One failed look (NFS ESTALE, an automount): not final, the job is asked again.
    assert feed(monitor, MISSING, now=1.0).outcome is None
    update = feed(monitor, MISSING, now=2.0)

    assert update.outcome is not None
    assert (update.outcome.status, update.outcome.exit_code) == ("error", None)
    assert PATHS.job_dir in update.outcome.message
    assert "no longer exists" in update.outcome.message


def test_a_transient_miss_of_the_job_dir_costs_the_job_nothing() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)

    assert feed(monitor, MISSING, now=1.0).outcome is None
    assert feed(monitor, answer(alive=1), now=2.0).outcome is None
    assert feed(monitor, MISSING, now=3.0).outcome is None  # the count started again
    update = feed(monitor, answer(alive=0, exit=0), now=4.0)
    assert update.outcome is not None and update.outcome.status == "success"


def test_pending_is_tolerated_up_to_the_limit_then_an_error() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=100.0)
    pending = answer(pid="", alive=0, claimed=0)

    assert feed(monitor, pending, now=100.0 + PENDING_LIMIT_SECONDS - 1).outcome is None
    assert feed(monitor, pending, now=100.0 + PENDING_LIMIT_SECONDS).outcome is None
    update = feed(monitor, pending, now=100.0 + PENDING_LIMIT_SECONDS + 1)

    assert update.outcome is not None
    assert update.outcome.status == "error"
    assert "never started" in update.outcome.message


def test_pending_then_running_is_not_an_error() -> None:
    monitor = JobMonitor(PATHS, log_offset=0, chunk_size=64, started_at=0.0)
    assert feed(monitor, answer(pid="", alive=0), now=1.0).outcome is None
    assert feed(monitor, answer(), now=PENDING_LIMIT_SECONDS + 10).outcome is None


# --------------------------------------------------------------------------- with the real batch script


def test_monitor_drains_a_finished_job_through_the_real_batch_script(tmp_path: Path) -> None:
    paths = RemoteJobPaths(job_id="real", base_dir=str(tmp_path))
    Path(paths.job_dir).mkdir(parents=True)
    log = "".join(f"r\u00e9sultat {i}\n" for i in range(150)).encode() + b"\xff end"
    Path(paths.log_file).write_bytes(log)
    Path(paths.pid_file).write_text("2147483646\n")
    Path(paths.exit_code_file).write_text("2\n")
    monitor = JobMonitor(paths, log_offset=0, chunk_size=100, started_at=0.0)

    lines: list[str] = []
    for _ in range(100):
        entry = monitor.poll_entry()
        status = only_result(run_batch([entry]), entry)
        assert isinstance(status, JobStatus)
        update = monitor.feed_status(status, now=1.0)
        lines += update.lines
        if update.outcome:
            break

    assert update.outcome is not None
    assert (update.outcome.status, update.outcome.exit_code) == ("failed", 2)
    assert lines == [f"r\u00e9sultat {i}" for i in range(150)] + ["\ufffd end"]
    assert monitor.log_offset == len(log)
