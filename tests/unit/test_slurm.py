"""The Slurm protocol's pure parts: sbatch options, answers, outcomes, the monitor's order of events.

What real Slurm answers is checked against a real cluster in
tests/integration/test_slurm_protocol.py; these pin down the rules on hand-built input,
including the states a single-node test cluster cannot produce (OUT_OF_MEMORY needs cgroups).
"""

from __future__ import annotations

import pytest

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.monitor import PENDING_LIMIT_SECONDS
from ssh_jobs_provider.protocol.reattach import Resume, decide
from ssh_jobs_provider.protocol.slurm import build_slurm_submit_script, parse_slurm_submit_output
from ssh_jobs_provider.protocol.slurm_options import (
    SlurmOptionError,
    refusal_message,
    sbatch_arguments,
    validate_scheduler,
)
from ssh_jobs_provider.protocol.slurm_state import (
    UNKNOWN_CONFIRMATIONS,
    SlurmJobView,
    SlurmMonitor,
    SlurmRecord,
    decode_exit,
    parse_slurm_states,
    slurm_job_status,
    slurm_outcome,
    slurm_section,
)
from ssh_jobs_provider.protocol.submit import SubmitRefused

PATHS = RemoteJobPaths("job1", "/srv/jobs")
TAG = "SSHJOBS1.0123456789abcdef"


def test_options_become_sbatch_long_options_in_order() -> None:
    options = {"partition": "gpu", "time": "02:00:00", "gres": "gpu:1", "cpus_per_task": 4, "exclusive": True}
    assert sbatch_arguments(options) == (
        "--partition=gpu",
        "--time=02:00:00",
        "--gres=gpu:1",
        "--cpus-per-task=4",
        "--exclusive",
    )
    assert sbatch_arguments({"exclusive": False, "qos": None}) == ()
    assert sbatch_arguments(None) == ()


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({"p": "gpu"}, ["'p'", "long names"]),
        ({"--partition": "gpu"}, ["'--partition'", "without dashes"]),
        ({"output": "/tmp/x"}, ["'output'", "log file"]),
        ({"wrap": "true"}, ["'wrap'", "batch script"]),
        ({"array": "1-10"}, ["'array'", "job arrays"]),
        ({"chdir": "/x"}, ["'chdir'", "remote_working_dir"]),
        ({"time": "two hours"}, ["'time'", "02:00:00"]),
        ({"mem": "lots"}, ["'mem'", "4G"]),
        ({"cpus_per_task": 0}, ["'cpus_per_task'", "positive"]),
        ({"partition": "gpu\n#SBATCH --x"}, ["'partition'", "one non-empty line"]),
        ({"partition": ""}, ["'partition'", "one non-empty line"]),
        ({"nodes": 1.5}, ["'nodes'", "float"]),
        (["partition"], ["must be a dict"]),
    ],
)
def test_bad_options_are_refused_naming_the_entry_and_the_fix(options: object, names: list[str]) -> None:
    with pytest.raises(SlurmOptionError) as refused:
        sbatch_arguments(options)  # type: ignore[arg-type]
    for name in names:
        assert name in str(refused.value)


def test_scheduler_is_none_or_slurm() -> None:
    assert validate_scheduler(None) is None
    assert validate_scheduler("slurm") == "slurm"
    with pytest.raises(ValueError, match="'pbs' is not supported"):
        validate_scheduler("pbs")


def test_submit_script_quotes_every_option() -> None:
    script = build_slurm_submit_script(
        PATHS, "echo hi", {}, new_job_token(), None, sbatch_arguments({"comment": "it's $HOME"})
    )
    assert "slurm_launch '--comment=it'\"'\"'s $HOME'" in script


@pytest.mark.parametrize(
    ("text", "decoded"),
    [("0", (0, None)), ("768", (3, None)), ("9", (None, 9)), ("36608", (143, None)), ("3:0", (3, None))],
)
def test_wait_status_is_decoded(text: str, decoded: tuple[int | None, int | None]) -> None:
    assert decode_exit(text) == decoded
    assert decode_exit("0:15") == (None, 15)
    assert decode_exit("") == (None, None)


def test_answers_are_read_per_key_and_only_under_the_batch_tag() -> None:
    output = (
        f"{TAG} end\nlog bytes: SSHJOBS1 slurm key=0 state=COMPLETED\n"
        f"{TAG} slurm key=0 job=12 state=PENDING exit=0 from=squeue reason=QOSMaxJobsPerUserLimit\n"
        f"{TAG} slurm key=1 job=13 state=FAILED exit=3:0 from=sacct reason=\n"
        f"{TAG} slurm key=2 state=nojob\n"
        f"{TAG} slurm key=3 job=14 state=error reason=squeue failed (status 1): timed out\n"
    ).encode()
    records = parse_slurm_states(output, TAG)
    assert records[0] == SlurmRecord("PENDING", "12", 0, None, "QOSMaxJobsPerUserLimit", "squeue")
    assert records[1] == SlurmRecord("FAILED", "13", 3, None, "", "sacct")
    assert records[2].state == "nojob"
    assert records[3].reason == "squeue failed (status 1): timed out"


@pytest.mark.parametrize(
    ("record", "status", "code", "words"),
    [
        (SlurmRecord("COMPLETED", "5", 0), "success", 0, "COMPLETED with exit code 0"),
        (SlurmRecord("FAILED", "5", 3), "failed", 3, "FAILED with exit code 3"),
        (SlurmRecord("FAILED", "5", None, 9), "failed", None, "FAILED (signal SIGKILL (9))"),
        (
            SlurmRecord("CANCELLED", "5", None, 15),
            "failed",
            None,
            "CANCELLED (signal SIGTERM (15)): it was cancelled",
        ),
        (
            SlurmRecord("TIMEOUT", "5", None, 15),
            "failed",
            None,
            "TIMEOUT (signal SIGTERM (15)): it reached its time",
        ),
        (SlurmRecord("NODE_FAIL", "5", 143), "failed", None, "NODE_FAIL (exit code 143): its node failed"),
        (
            SlurmRecord("OUT_OF_MEMORY", "5", 0, None),
            "failed",
            None,
            "OUT_OF_MEMORY (exit code 0): it used more",
        ),
        (SlurmRecord("PREEMPTED", "5", 143), "failed", None, "PREEMPTED (exit code 143): a job of higher"),
    ],
)
def test_each_end_state_maps_to_an_outcome(
    record: SlurmRecord, status: str, code: int | None, words: str
) -> None:
    outcome = slurm_outcome(record, "job1")
    assert outcome is not None
    assert (outcome.status, outcome.exit_code) == (status, code)
    assert words in outcome.message
    assert "Slurm job 5" in outcome.message


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"])
def test_active_states_have_no_outcome(state: str) -> None:
    assert slurm_outcome(SlurmRecord(state, "5"), "job1") is None


def test_pending_reason_is_noted_once_per_change() -> None:
    view = SlurmJobView("job1")
    for reason in ["Priority", "Priority", "Resources", "Resources", "Priority"]:
        assert view.feed(SlurmRecord("PENDING", "5", reason=reason)) is None
    view.feed(SlurmRecord("RUNNING", "5"))
    view.feed(SlurmRecord("RUNNING", "5"))
    assert view.take_notes() == [
        "Slurm job 5 (remote job job1) is PENDING: Priority",
        "Slurm job 5 (remote job job1) is PENDING: Resources",
        "Slurm job 5 (remote job job1) is PENDING: Priority",
        "Slurm job 5 (remote job job1) is RUNNING",
    ]
    assert view.take_notes() == []


def test_a_job_slurm_forgot_ends_the_watch_only_after_several_ticks() -> None:
    view = SlurmJobView("job1")
    for _ in range(UNKNOWN_CONFIRMATIONS - 1):
        assert view.feed(SlurmRecord("unknown", "5")) is None
    assert view.feed(SlurmRecord("RUNNING", "5")) is None  # a passing miss resets the count
    for _ in range(UNKNOWN_CONFIRMATIONS - 1):
        assert view.feed(SlurmRecord("unknown", "5")) is None
    outcome = view.feed(SlurmRecord("unknown", "5"))
    assert outcome is not None and outcome.status == "error" and "MinJobAge" in outcome.message


def test_a_failed_query_is_never_an_outcome() -> None:
    view = SlurmJobView("job1")
    for _ in range(10):
        assert view.feed(SlurmRecord("error", "5", reason="squeue failed")) is None
    assert len(view.take_warnings()) == 2  # the first, and once more when it persists
    assert view.take_notes() == []


def status(size: int, data: bytes = b"", state: JobState = JobState.PENDING) -> JobStatus:
    return JobStatus(state=state, log_size=size, log_data=data)


def test_monitor_reads_the_log_once_more_after_slurm_reports_the_end() -> None:
    monitor = SlurmMonitor(PATHS, 0, 1 << 20, started_at=0.0)
    monitor.feed_slurm(SlurmRecord("RUNNING", "5"))
    first = monitor.feed_status(status(6, b"hello\n"), now=1.0)
    assert first.lines == ["hello"] and first.outcome is None
    assert first.progress == ["Slurm job 5 (remote job job1) is RUNNING"]
    assert first.notes == []
    # The job wrote its last line after this tick's log read, then ended before its squeue.
    monitor.feed_slurm(SlurmRecord("FAILED", "5", 3))
    ended = monitor.feed_status(status(6), now=2.0)
    assert ended.outcome is None and ended.more_now
    last = monitor.feed_status(status(11, b"last\n"), now=2.1)
    assert last.lines == ["last"]
    assert last.outcome is not None and (last.outcome.status, last.outcome.exit_code) == ("failed", 3)


def test_monitor_never_takes_a_slurm_job_without_pid_for_one_that_never_started() -> None:
    monitor = SlurmMonitor(PATHS, 0, 4096, started_at=0.0)
    monitor.feed_slurm(SlurmRecord("PENDING", "5", reason="Resources"))
    update = monitor.feed_status(status(0), now=PENDING_LIMIT_SECONDS * 10)
    assert update.outcome is None


def test_monitor_still_notices_a_removed_or_replaced_directory() -> None:
    monitor = SlurmMonitor(PATHS, 0, 4096, started_at=0.0, token=new_job_token())
    monitor.feed_slurm(SlurmRecord("RUNNING", "5"))
    update = monitor.feed_status(status(0, state=JobState.FOREIGN), now=1.0)
    assert update.outcome is not None and update.outcome.leave_remote


def test_submit_answer_and_refusal_message() -> None:
    answer = parse_slurm_submit_output(b"SSHJOBS1 submit os=Linux launched=1 slurm=42\n")
    assert (answer.slurm_job_id, answer.launched, answer.remote_os) == ("42", True, "Linux")
    with pytest.raises(SubmitRefused) as refused:
        parse_slurm_submit_output(
            b"SSHJOBS1 submit error=sbatch\nsbatch (status 1): sbatch: error: Batch job submission failed: "
            b"Requested time limit is invalid (missing or exceeds some limit)\n"
        )
    message = refusal_message(PATHS, refused.value, {"time": "99:00:00"})
    assert "Fix scheduler_options['time'] (given: '99:00:00')" in message
    message = refusal_message(PATHS, refused.value, {})
    assert "Set scheduler_options['time']" in message
    odd = SubmitRefused("sbatch", "sbatch (status 1): something new")
    assert "Check scheduler_options (partition)" in refusal_message(PATHS, odd, {"partition": "x"})


def test_slurm_section_is_empty_without_slurm_jobs() -> None:
    assert slurm_section([]) == ""
    assert "slurm_states 3 /srv/jobs/job1" in slurm_section([(3, PATHS)])


@pytest.mark.parametrize(
    ("record", "resume"),
    [
        (SlurmRecord("PENDING", "5", reason="Priority"), Resume.REATTACH),
        (SlurmRecord("RUNNING", "5"), Resume.REATTACH),
        (SlurmRecord("COMPLETED", "5", 0), Resume.REATTACH),
        (SlurmRecord("FAILED", "5", 99), Resume.REATTACH),  # a skip code: its outcome again, no rerun
        (SlurmRecord("FAILED", "5", 3), Resume.FRESH),
        (SlurmRecord("CANCELLED", "5", None, 15), Resume.FRESH),
        (SlurmRecord("nojob"), Resume.FRESH),
        (SlurmRecord("unknown", "5"), Resume.FRESH),
        (None, Resume.FRESH),
    ],
)
def test_a_retry_reattaches_to_a_slurm_job_slurm_still_has(
    record: SlurmRecord | None, resume: Resume
) -> None:
    directory = status(10)  # no pid: a Slurm job's directory never has one
    assert decide(slurm_job_status(directory, record), {99}, recorded=True) is resume
    gone = status(0, state=JobState.MISSING)
    assert decide(slurm_job_status(gone, record), {99}, recorded=True) is Resume.FRESH


def test_a_failed_slurm_query_never_decides_a_retry() -> None:
    with pytest.raises(RemoteJobProtocolError, match="timed out"):
        slurm_job_status(status(10), SlurmRecord("error", "5", reason="squeue: timed out"))
