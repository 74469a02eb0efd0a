"""The Slurm scripts against a real Slurm (slurmctld, slurmd, munge started by the test run).

The scripts are fed to ``/bin/sh -s`` as the hooks feed them to a login node; what they
answer is parsed by the pure code the trigger uses. One end state per test, each produced
the way it happens on a cluster (an exit code, a signal, scancel, a time limit, a failed
node, preemption), and read back from Slurm's own record.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ssh_jobs_provider.protocol.answers import JobStatus
from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.kill import parse_kill_answer
from ssh_jobs_provider.protocol.ops import build_reap_script, parse_reap_output
from ssh_jobs_provider.protocol.reattach import JobRecord, Resume, build_lookup_script, decide, lookup_entries
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, as_whole, batch_tag, job_files, script_prelude
from ssh_jobs_provider.protocol.slurm import (
    SlurmSubmitCall,
    build_slurm_cancel_script,
    build_slurm_submit_script,
    parse_slurm_submit_output,
    slurm_batch_submits,
)
from ssh_jobs_provider.protocol.slurm_options import refusal_message, sbatch_arguments
from ssh_jobs_provider.protocol.slurm_state import (
    SlurmJobView,
    SlurmRecord,
    build_slurm_states_script,
    parse_slurm_states,
    slurm_job_status,
    slurm_section,
)
from ssh_jobs_provider.protocol.submit import SubmitRefused
from support.slurm import SlurmCluster, run_sh_slurm, wait_for

pytestmark = pytest.mark.slurm


def submit(
    cluster: SlurmCluster,
    base: Path,
    command: str,
    options: dict[str, object] | None = None,
    name: str = "job",
    token: str | None = None,
) -> tuple[RemoteJobPaths, str, str]:
    """Submit ``command``; (paths, token, Slurm job id)."""
    paths = RemoteJobPaths(name, str(base))
    token = token or new_job_token()
    script = build_slurm_submit_script(
        paths, command, {"GREETING": "hello there"}, token, None, sbatch_arguments(options)
    )
    answer = parse_slurm_submit_output(run_sh_slurm(cluster, script))
    assert answer.slurm_job_id.isdigit(), answer
    return paths, token, answer.slurm_job_id


def states(cluster: SlurmCluster, jobs: list[RemoteJobPaths]) -> dict[int, SlurmRecord]:
    tag = batch_tag()
    output = run_sh_slurm(cluster, build_slurm_states_script(list(enumerate(jobs)), tag))
    assert output.endswith(f"{tag} end\n".encode()), output
    return parse_slurm_states(output, tag)


def record_of(cluster: SlurmCluster, paths: RemoteJobPaths) -> SlurmRecord:
    return states(cluster, [paths])[0]


def wait_until_ended(cluster: SlurmCluster, paths: RemoteJobPaths, timeout: float = 60.0) -> SlurmRecord:
    seen: list[SlurmRecord] = []

    def ended() -> bool:
        seen.append(record_of(cluster, paths))
        return seen[-1].ended

    wait_for(ended, timeout, f"Slurm to end {paths.job_id}")
    return seen[-1]


def outcome_of(paths: RemoteJobPaths, record: SlurmRecord) -> tuple[str, int | None, str]:
    view = SlurmJobView(paths.job_id)
    outcome = view.feed(record)
    assert outcome is not None
    return outcome.status, outcome.exit_code, outcome.message


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "remote-jobs"


def test_completed_job_keeps_its_shebang_sbatch_lines_environment_and_log(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    command = (
        "#!/bin/sh\n#SBATCH --job-name=from-the-script\n#SBATCH --comment=kept\n"
        'echo "$GREETING from $SLURM_JOB_NAME in $SSH_JOBS_JOB_ID"\necho to stderr >&2\n'
    )
    paths, _, slurm_id = submit(slurm_cluster, base, command)
    record = wait_until_ended(slurm_cluster, paths)
    assert (record.state, record.exit_code, record.signal, record.source) == ("COMPLETED", 0, None, "squeue")
    assert outcome_of(paths, record)[:2] == ("success", 0)
    log = (base / "job" / "stdout.log").read_text()
    assert log == "hello there from from-the-script in job\nto stderr\n"
    shown = slurm_cluster.run(["squeue", "-h", "-t", "all", "-j", slurm_id, "-o", "%k"]).strip()
    assert shown == "kept"


def test_failed_job_gives_its_exit_code_decoded_from_the_raw_wait_status(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    paths, _, _ = submit(slurm_cluster, base, "echo failing; exit 3")
    record = wait_until_ended(slurm_cluster, paths)
    assert (record.state, record.exit_code, record.signal) == ("FAILED", 3, None)
    status, code, message = outcome_of(paths, record)
    assert (status, code) == ("failed", 3)
    assert "FAILED with exit code 3" in message
    assert (base / "job" / "stdout.log").read_text() == "failing\n"


def test_job_killed_by_a_signal_names_the_signal(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, _, _ = submit(slurm_cluster, base, "#!/bin/sh\nkill -KILL $$\n")
    record = wait_until_ended(slurm_cluster, paths)
    assert (record.state, record.exit_code, record.signal) == ("FAILED", None, 9)
    status, code, message = outcome_of(paths, record)
    assert (status, code) == ("failed", None)
    assert "SIGKILL (9)" in message


def test_scancel_leaves_the_job_cancelled(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, token, slurm_id = submit(slurm_cluster, base, "echo started; sleep 300")
    wait_for(lambda: record_of(slurm_cluster, paths).state == "RUNNING", 30, "RUNNING")
    foreign = parse_kill_answer(
        run_sh_slurm(slurm_cluster, build_slurm_cancel_script(paths, new_job_token()))
    )
    assert foreign.state == "foreign"
    assert record_of(slurm_cluster, paths).state == "RUNNING"
    answer = parse_kill_answer(run_sh_slurm(slurm_cluster, build_slurm_cancel_script(paths, token)))
    assert answer.state == "cancelled"
    record = wait_until_ended(slurm_cluster, paths)
    assert record.state == "CANCELLED"
    status, code, message = outcome_of(paths, record)
    assert (status, code) == ("failed", None)
    assert f"Slurm job {slurm_id}) ended CANCELLED" in message


def test_pending_reason_is_told_once_per_change(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, _, slurm_id = submit(slurm_cluster, base, "echo ran", {"hold": True})
    view = SlurmJobView(paths.job_id)
    for _ in range(3):
        assert view.feed(record_of(slurm_cluster, paths)) is None
    assert view.take_notes() == [f"Slurm job {slurm_id} (remote job job) is PENDING: JobHeldUser"]
    slurm_cluster.run(["scontrol", "release", slurm_id])
    outcome = None
    deadline = time.monotonic() + 60
    while outcome is None and time.monotonic() < deadline:
        outcome = view.feed(record_of(slurm_cluster, paths))
        time.sleep(0.1)
    assert outcome is not None and outcome.status == "success"
    notes = view.take_notes()
    assert notes[0].endswith("PENDING: None") or "PENDING" not in notes[0]
    assert notes[-1] == f"Slurm job {slurm_id} (remote job job) is COMPLETED"


def test_one_query_answers_many_jobs_and_jobs_without_an_id(slurm_cluster: SlurmCluster, base: Path) -> None:
    jobs = [submit(slurm_cluster, base, f"exit {n}", name=f"job{n}")[0] for n in range(5)]
    never = RemoteJobPaths("never-submitted", str(base))
    for paths in jobs:
        wait_until_ended(slurm_cluster, paths)
    records = states(slurm_cluster, [*jobs, never])
    assert [records[n].exit_code for n in range(5)] == [0, 1, 2, 3, 4], records
    assert [records[n].state for n in range(5)] == ["COMPLETED"] + ["FAILED"] * 4
    assert records[5].state == "nojob"


def test_refused_sbatch_names_the_option_and_leaves_nothing(slurm_cluster: SlurmCluster, base: Path) -> None:
    options: dict[str, object] = {"partition": "no-such-partition"}
    paths = RemoteJobPaths("refused", str(base))
    script = build_slurm_submit_script(paths, "true", {}, new_job_token(), None, sbatch_arguments(options))
    with pytest.raises(SubmitRefused) as refused:
        parse_slurm_submit_output(run_sh_slurm(slurm_cluster, script))
    assert refused.value.code == "sbatch"
    message = refusal_message(paths, refused.value, options)
    assert "invalid partition" in message.lower()
    assert "scheduler_options['partition'] (given: 'no-such-partition')" in message
    assert not (base / "refused").exists()


def test_resent_submit_reattaches_to_the_queued_job(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, token, slurm_id = submit(slurm_cluster, base, "sleep 300")
    again = build_slurm_submit_script(paths, "sleep 300", {}, token, None, ())
    answer = parse_slurm_submit_output(run_sh_slurm(slurm_cluster, again))
    assert (answer.slurm_job_id, answer.launched) == (slurm_id, False)
    assert slurm_cluster.run(["squeue", "-h", "-n", "batch.sh", "-o", "%i"]).split().count(slurm_id) == 1
    run_sh_slurm(slurm_cluster, build_slurm_cancel_script(paths, token))


@pytest.mark.slow
def test_time_limit_gives_timeout(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, _, slurm_id = submit(slurm_cluster, base, "echo started; sleep 300", {"time": "5"})
    wait_for(lambda: record_of(slurm_cluster, paths).state == "RUNNING", 30, "RUNNING")
    # A limit already passed: slurmctld ends the job at its next limit check (every 30 s)
    # instead of after the minute a --time=1 would take.
    slurm_cluster.run(["scontrol", "update", f"JobId={slurm_id}", "TimeLimit=0"])
    record = wait_until_ended(slurm_cluster, paths, timeout=90)
    assert record.state == "TIMEOUT"
    status, code, message = outcome_of(paths, record)
    assert (status, code) == ("failed", None)
    assert "ended TIMEOUT" in message and "time limit" in message


def test_failed_node_gives_node_fail(slurm_cluster: SlurmCluster, base: Path) -> None:
    paths, _, _ = submit(slurm_cluster, base, "sleep 300", {"no_requeue": True})
    wait_for(lambda: record_of(slurm_cluster, paths).state == "RUNNING", 30, "RUNNING")
    slurm_cluster.run(["scontrol", "update", "NodeName=localhost", "State=DOWN", "Reason=test-node-fail"])
    try:
        record = wait_until_ended(slurm_cluster, paths)
    finally:
        # Refused while the node still finishes the killed job ("Invalid node state"): again.
        def resumed() -> bool:
            slurm_cluster.run(["scontrol", "update", "NodeName=localhost", "State=RESUME"], check=False)
            return slurm_cluster.node_idle()

        wait_for(resumed, 60, "the node to be idle again")
    assert record.state == "NODE_FAIL"
    assert "ended NODE_FAIL" in outcome_of(paths, record)[2]


def test_preempted_job_gives_preempted(slurm_cluster: SlurmCluster, base: Path) -> None:
    # The whole node for the low-priority job, so the urgent one must take it back.
    whole = {"cpus_per_task": slurm_cluster.cpus, "no_requeue": True}
    paths, _, _ = submit(slurm_cluster, base, "sleep 300", whole, name="low")
    wait_for(lambda: record_of(slurm_cluster, paths).state == "RUNNING", 30, "RUNNING")
    urgent, token, _ = submit(slurm_cluster, base, "sleep 300", {"partition": "urgent"}, name="urgent")
    record = wait_until_ended(slurm_cluster, paths)
    run_sh_slurm(slurm_cluster, build_slurm_cancel_script(urgent, token))
    assert record.state == "PREEMPTED"
    assert "ended PREEMPTED" in outcome_of(paths, record)[2]


def test_a_job_that_aged_out_of_squeue_is_answered_by_sacct(tmp_path: Path, base: Path) -> None:
    # A cluster of its own that forgets finished jobs after 2 s (the run's keeps them a day).
    cluster = SlurmCluster(tmp_path / "forgetful", min_job_age=2)
    cluster.start()
    try:
        paths, _, slurm_id = submit(cluster, base, "exit 5")
        wait_for(lambda: slurm_id not in cluster.job_ids() and bool(cluster.jobcomp_text()), 120, "MinJobAge")
        record = record_of(cluster, paths)
    finally:
        cluster.stop()
    assert (record.state, record.exit_code, record.source) == ("FAILED", 5, "sacct")


def test_a_batch_submits_many_jobs_in_one_script_and_refuses_only_the_bad_one(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    token = new_job_token()
    calls = [
        SlurmSubmitCall(
            key,
            RemoteJobPaths(f"batch{key}", str(base)),
            token,
            job_files(f"echo batch {key}", {}, None, token),
            sbatch_arguments({"partition": "nowhere"} if key == 3 else {"time": "5"}),
        )
        for key in range(10)
    ]
    tag = batch_tag()
    script = as_whole(script_prelude(tag) + slurm_batch_submits(calls) + 'echo "$answer_tag end"\n')
    output = run_sh_slurm(slurm_cluster, script).decode()
    lines = output.splitlines()
    launched = sorted(int(line.split("key=")[1].split()[0]) for line in lines if "launched=1" in line)
    assert launched == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    refused = [line for line in lines if "error=sbatch" in line]
    assert len(refused) == 1 and "key=3 " in refused[0]
    assert "invalid partition" in output.lower()
    assert not (base / "batch3").exists()
    records = states(slurm_cluster, [call.paths for call in calls])
    assert records[3].state == "nojob"
    assert len({records[key].slurm_job_id for key in launched}) == 9
    # Sent again (its answer was lost): every job is found claimed, nothing is queued twice.
    again = run_sh_slurm(slurm_cluster, script).decode()
    assert sum("launched=0" in line for line in again.splitlines()) == 9
    ids_again = states(slurm_cluster, [call.paths for call in calls])
    assert [ids_again[key].slurm_job_id for key in launched] == [
        records[key].slurm_job_id for key in launched
    ]


def test_the_job_runs_in_its_working_directory(
    slurm_cluster: SlurmCluster, base: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    paths = RemoteJobPaths("in-work", str(base))
    script = build_slurm_submit_script(paths, "pwd", {}, new_job_token(), str(work), ())
    parse_slurm_submit_output(run_sh_slurm(slurm_cluster, script))
    assert wait_until_ended(slurm_cluster, paths).state == "COMPLETED"
    assert (base / "in-work" / "stdout.log").read_text() == f"{work}\n"


def test_a_time_over_the_partition_limit_is_refused_naming_the_option(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    options: dict[str, object] = {"time": "2:00:00"}  # the partition allows 60 minutes
    paths = RemoteJobPaths("too-long", str(base))
    script = build_slurm_submit_script(paths, "true", {}, new_job_token(), None, sbatch_arguments(options))
    with pytest.raises(SubmitRefused) as refused:
        parse_slurm_submit_output(run_sh_slurm(slurm_cluster, script))
    message = refusal_message(paths, refused.value, options)
    assert "time limit" in message.lower()
    assert "Fix scheduler_options['time'] (given: '2:00:00')" in message
    assert not (base / "too-long").exists()


def test_a_reaper_keeps_the_directory_of_a_slurm_job_slurm_still_has(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    paths, token, _ = submit(slurm_cluster, base, "sleep 300", name="af_reaped")
    wait_for(lambda: record_of(slurm_cluster, paths).state == "RUNNING", 30, "RUNNING")
    entries = [CleanupEntry(paths, token)]
    assert parse_reap_output(run_sh_slurm(slurm_cluster, build_reap_script(entries)), entries) == ["running"]
    assert (base / "af_reaped" / "stdout.log").exists()
    run_sh_slurm(slurm_cluster, build_slurm_cancel_script(paths, token))
    wait_until_ended(slurm_cluster, paths)
    assert parse_reap_output(run_sh_slurm(slurm_cluster, build_reap_script(entries)), entries) == ["removed"]
    assert not (base / "af_reaped").exists()


def test_a_retry_after_the_cleanup_ends_like_the_job_instead_of_running_it_again(
    slurm_cluster: SlurmCluster, base: Path
) -> None:
    ok, ok_token, _ = submit(slurm_cluster, base, "true", name="af_ok")
    failed, failed_token, _ = submit(slurm_cluster, base, "exit 3", name="af_failed")
    wait_until_ended(slurm_cluster, ok)
    wait_until_ended(slurm_cluster, failed)
    states(slurm_cluster, [ok, failed])  # the tick that sees the end records the exit code
    assert (base / "af_ok" / "exit_code").read_text().split()[0] == "0"
    assert (base / "af_failed" / "exit_code").read_text().split()[0] == "3"
    entries = [CleanupEntry(ok, ok_token), CleanupEntry(failed, failed_token)]
    run_sh_slurm(slurm_cluster, build_batch_script(entries))
    assert not (base / "af_ok").exists()
    records = [
        JobRecord(ok.job_id, ok.base_dir, ok_token, 1),
        JobRecord(failed.job_id, failed.base_dir, failed_token, 1),
    ]
    script = build_lookup_script(records) + slurm_section([(0, ok), (1, failed)])
    output = run_sh_slurm(slurm_cluster, script)
    found = parse_batch_output(output, lookup_entries(records))
    queued = parse_slurm_states(output, PROTOCOL_TAG)
    decisions = []
    for key in (0, 1):
        result = found[key]
        assert isinstance(result, JobStatus)
        decisions.append(decide(slurm_job_status(result, queued.get(key)), (), recorded=True))
    assert decisions == [Resume.DONE, Resume.FRESH]
