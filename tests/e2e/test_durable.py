"""
Retries, clears, crashes and a triggerer failover on a real Airflow 3 deployment.

One deployment (api-server, scheduler, dag-processor, triggerer; a second triggerer joins
later: Airflow's HA triggerer, with a fast failover: a heartbeat every 2 s, a triggerer
silent for 10 s counted as dead) runs six DAGs against one real sshd. Every remote job
appends a line to a ``launches`` file of this test as its first command, so how many jobs
ran for a task instance is counted on the host, whatever the logs say.

At once:

- ``durable_killed_before_defer``: try 1 SIGKILLs its own task process after the submit
  reply, right before it defers (a worker lost to an OOM kill or a node drain). The retry
  must re-attach to that job: no second job, the job's whole output in try 2's log.
- ``durable_succeeded_then_retried``: try 1 fails after its job succeeded (as when the
  scheduler fails a resumed deferred task). The retry must not run the job again.
- ``durable_failed_job``: the job fails the first time it runs; the retry runs a fresh one.
- ``durable_cleared``: once its run succeeded, its task is cleared through the REST API; the
  deliberate re-run runs a fresh job.
- ``durable_ha_fanout`` and ``durable_ha_fanout_from_triggerer``: 40-way fan-outs, submitting
  from the workers and from the triggerer. Their jobs wait at a gate file, then print a
  numbered line every 0.5 s for 25 s.

Once the four single-task runs have ended and all 80 fan-out tasks are deferred with their
jobs started, the second triggerer starts and the gate opens; once every fan-out task's log
shows output, the triggerer that holds more of their triggers is SIGKILLed with everything it
forked. The other one must pick up its triggers: every task succeeds, no line is lost, lines
are repeated only as one block at the switch and at most those of the dead triggerer's last
seconds (those it had not yet recorded on the host as delivered), and no job runs twice.

The second triggerer joins only once every trigger is claimed: on SQLite, two triggerers
claiming new triggers at the same moment can both start one (no row locks), and the loser
then cancels its copy the way Airflow cancels a trigger for a user action, calling its
``on_kill``. That is a property of the test database, not of the failover tested here.

Every DAG has retries: Airflow 3.3's scheduler sometimes fails a resumed deferred task itself
("... finished with state success, but the task instance's state attribute is queued"); the
tests name it when it happened to the task they judge.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from e2e_support import (
    HA_ENV,
    STOPPED_BY_THE_SCHEDULER,
    TimedLine,
    launch_counts,
    merged_by_time,
    start_sshd,
    wait_until,
)

from harness.airflow_deploy import AirflowDeployment, TaskInstance
from harness.remote_jobs import job_dirs, kill_running_jobs
from harness.sshd import SSHServer
from ssh_jobs_provider.triggers.watch import LOG_WRITE_SECONDS
from support.report import report

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

CONN_ID = "ssh_durable"
KILLED_DAG = "durable_killed_before_defer"
SUCCEEDED_DAG = "durable_succeeded_then_retried"
FAILED_DAG = "durable_failed_job"
CLEARED_DAG = "durable_cleared"
SINGLE_DAGS = (KILLED_DAG, SUCCEEDED_DAG, FAILED_DAG, CLEARED_DAG)
HA_FANOUT_DAG = "durable_ha_fanout"
HA_TRIGGERER_FANOUT_DAG = "durable_ha_fanout_from_triggerer"
#: fan-out dag_id -> submit_from
HA_FANOUTS = {HA_FANOUT_DAG: "worker", HA_TRIGGERER_FANOUT_DAG: "triggerer"}
FAN_OUT = 40
HA_LINES = 50
HA_LINE_SECONDS = 0.5
#: The killed task's job: long enough to be still running when the retry starts.
KILLED_LINES = 30
FAIL_CODE = 3
RETRY_FAILURE_TEXT = "e2e: try 1 fails after its job succeeded"
ALREADY_SUCCEEDED_TEXT = "already succeeded"
#: What Airflow's triggerer logs when it cancels a trigger as for a user action (and calls on_kill).
USER_CANCEL_TEXT = "Trigger cancelled by user action"
#: What the task supervisor logs for a task process that died by a signal.
KILLED_BY_SIGNAL_TEXT = "Process terminated by signal"

#: Airflow's HA triggerer with a fast failover; the threshold is read when Airflow is imported.
START_TIMEOUT = 180.0
SINGLES_TIMEOUT = 240.0
RAMP_TIMEOUT = 240.0
FLOWING_TIMEOUT = 60.0
RUN_TIMEOUT = 300.0
#: The jobs wait at most this long for the gate (polls of 0.2 s), so none is left waiting.
GATE_POLLS = 1500
#: Output of one batch poll reaches the task log within milliseconds; polls are >= 1 s apart.
SAME_POLL_SECONDS = 0.3
#: The seconds of a SIGKILLed triggerer's output that may come again: what it handed to its
#: logger in the last LOG_WRITE_SECONDS before its last poll was not yet recorded on the host,
#: and nor was that poll's own output (polls a second apart here, answered up to 2 s late).
REPEAT_WINDOW_SECONDS = LOG_WRITE_SECONDS + 3.0
#: Lines each fan-out task must have logged before the triggerer is killed.
LINES_BEFORE_KILL = 3
#: Longest tolerated time from the kill to the moved tasks' next output line.
RECOVERY_LIMIT = 90.0

OUTPUT_LINE = re.compile(r"^(\S+) line (\d+)$")
SHARD_LINE = re.compile(r"^shard (\d+) line (\d+)$")
TRIGGER_FILE = re.compile(r"\.log\.trigger\.(\d+)\.log$")

SINGLES_DAG_TEXT = """\
from __future__ import annotations

import os
import signal
from datetime import timedelta

from airflow.sdk import DAG
from ssh_jobs_provider._compat import AirflowException

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: one for the test's own failure, one more for the scheduler race (module docstring).
DEFAULTS = {{"retries": 2, "retry_delay": timedelta(seconds=1)}}
BASE_DIR = {base_dir!r}
COMMANDS = {commands!r}


class KilledBeforeDefer(SSHRemoteJobOperator):
    \"\"\"Try 1 dies (SIGKILL, like an OOM kill) after the submit reply, right before it defers.\"\"\"

    def execute(self, context):
        self.e2e_try_number = context["ti"].try_number
        return super().execute(context)

    def _defer(self, context, *args, **kwargs):
        if getattr(self, "e2e_try_number", None) == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        super()._defer(context, *args, **kwargs)


class FailsAfterItsJobSucceeded(SSHRemoteJobOperator):
    \"\"\"Try 1 fails after its job succeeded, as when the scheduler fails a resumed task.\"\"\"

    def execute_complete(self, context, event=None):
        super().execute_complete(context, event)
        if context["ti"].try_number == 1:
            raise AirflowException({retry_failure!r})


def single(dag_id, operator, cleanup):
    with DAG(dag_id=dag_id, schedule=None, catchup=False, default_args=DEFAULTS) as dag:
        operator(
            task_id="job",
            ssh_conn_id={conn_id!r},
            command=COMMANDS[dag_id],
            remote_base_dir=f"{{BASE_DIR}}/{{dag_id}}",
            cleanup=cleanup,
            poll_interval=1,
        )
    return dag


killed = single({killed!r}, KilledBeforeDefer, "always")
succeeded = single({succeeded!r}, FailsAfterItsJobSucceeded, "on_success")
failed = single({failed!r}, SSHRemoteJobOperator, "on_success")
cleared = single({cleared!r}, SSHRemoteJobOperator, "always")
"""

FANOUT_DAG_TEXT = """\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: Airflow's scheduler sometimes fails a resumed deferred task itself (a known race).
DEFAULTS = {{"retries": 2, "retry_delay": timedelta(seconds=1)}}
FANOUTS = {fanouts!r}

for dag_id, (submit_from, base_dir, commands) in FANOUTS.items():
    with DAG(
        dag_id=dag_id, schedule=None, catchup=False, max_active_tasks={fan_out}, default_args=DEFAULTS
    ) as dag:
        SSHRemoteJobOperator.partial(
            task_id="shard",
            ssh_conn_id={conn_id!r},
            remote_base_dir=base_dir,
            cleanup="always",
            poll_interval=1,
            max_active_tis_per_dag={fan_out},
            submit_from=submit_from,
        ).expand(command=commands)
    globals()[dag_id] = dag
"""


def single_commands(launches: Path, marks: Path) -> dict[str, str]:
    def launched(dag_id: str) -> str:
        return f"echo {dag_id} >> {launches}\n"

    return {
        KILLED_DAG: launched(KILLED_DAG)
        + f'for i in $(seq 1 {KILLED_LINES}); do echo "killed line $i"; sleep 1; done\n'
        + f"date +%s.%N > {marks / 'killed.end'}\n",
        SUCCEEDED_DAG: launched(SUCCEEDED_DAG)
        + 'echo "succeeded line 1"\nsleep 1\necho "succeeded line 2"\n',
        FAILED_DAG: launched(FAILED_DAG)
        + f"if [ ! -e {marks / 'failed.mark'} ]; then\n"
        + f"  touch {marks / 'failed.mark'}\n  echo 'failing line 1'\n  exit {FAIL_CODE}\nfi\n"
        + "echo 'second line 1'\n",
        CLEARED_DAG: launched(CLEARED_DAG) + 'echo "cleared line 1"\n',
    }


def fanout_commands(dag_id: str, launches: Path, gate: Path) -> list[str]:
    return [
        f"echo '{dag_id} {shard}' >> {launches}\n"
        f"n=0\nwhile [ ! -e {gate} ] && [ $n -lt {GATE_POLLS} ]; do sleep 0.2; n=$((n+1)); done\n"
        f'for i in $(seq 1 {HA_LINES}); do echo "shard {shard} line $i"; sleep {HA_LINE_SECONDS}; done\n'
        for shard in range(FAN_OUT)
    ]


# ---------------------------------------------------------------------------- what the run left


@dataclass
class Run:
    dag_id: str
    run_id: str
    state: str
    tis: list[TaskInstance]
    #: (map_index, try_number) -> that try's log files (worker, then each triggerer's)
    files: dict[tuple[int, int], list[Path]] = field(default_factory=dict)
    #: (map_index, try_number) -> that try's log lines, in the order they were written
    lines: dict[tuple[int, int], list[TimedLine]] = field(default_factory=dict)

    @property
    def ti(self) -> TaskInstance:
        (only,) = self.tis
        return only

    def events(self, ti: TaskInstance, try_number: int) -> list[str]:
        return [line.event for line in self.lines.get((ti.map_index, try_number), [])]

    def shown(self, ti: TaskInstance, try_number: int) -> str:
        """That try's log as a reader sees it (the messages), for assertion messages."""
        return "\n".join(self.events(ti, try_number))

    def text(self, ti: TaskInstance, try_number: int) -> str:
        """That try's log lines as written (exception details included)."""
        return "\n".join(line.raw for line in self.lines.get((ti.map_index, try_number), []))


@dataclass
class DurableResult:
    runs: dict[str, Run]
    #: the cleared DAG's run as it was before the clear
    before_clear: Run
    launches: Counter[str]
    remote_dir: Path
    marks: Path
    #: component -> job id of each triggerer
    triggerer_ids: dict[str, int]
    #: component -> fan-out triggers it held just before the kill
    assigned_at_kill: dict[str, int]
    killed: str
    killed_at: datetime
    scheduler_race_lines: list[str]
    seconds: dict[str, float]

    @property
    def killed_id(self) -> int:
        return self.triggerer_ids[self.killed]


def collect_run(deployment: AirflowDeployment, dag_id: str, run_id: str, state: str) -> Run:
    run = Run(dag_id, run_id, state, deployment.task_instances(dag_id, run_id))
    for ti in run.tis:
        for try_number in range(1, ti.try_number + 1):
            files = deployment.task_log_files(dag_id, run_id, ti, try_number)
            run.files[(ti.map_index, try_number)] = files
            run.lines[(ti.map_index, try_number)] = merged_by_time(files)
    return run


def latest_shard_line(deployment: AirflowDeployment, dag_id: str, run_id: str, ti: TaskInstance) -> int:
    """The highest output line number a fan-out task's current try has logged so far."""
    files = deployment.task_log_files(dag_id, run_id, ti, max(ti.try_number, 1))
    numbers = [
        int(match.group(2)) for line in merged_by_time(files) if (match := SHARD_LINE.match(line.event))
    ]
    return max(numbers, default=0)


def write_dags(
    deployment: AirflowDeployment, remote_dir: Path, launches: Path, marks: Path, gate: Path
) -> None:
    deployment.add_dag_file(
        "durable_singles.py",
        SINGLES_DAG_TEXT.format(
            base_dir=str(remote_dir),
            commands=single_commands(launches, marks),
            retry_failure=RETRY_FAILURE_TEXT,
            conn_id=CONN_ID,
            killed=KILLED_DAG,
            succeeded=SUCCEEDED_DAG,
            failed=FAILED_DAG,
            cleared=CLEARED_DAG,
        ),
    )
    fanouts = {
        dag_id: (submit_from, str(remote_dir / dag_id), fanout_commands(dag_id, launches, gate))
        for dag_id, submit_from in HA_FANOUTS.items()
    }
    deployment.add_dag_file(
        "durable_ha_fanouts.py", FANOUT_DAG_TEXT.format(fanouts=fanouts, fan_out=FAN_OUT, conn_id=CONN_ID)
    )


@pytest.fixture(scope="module")
def durable(tmp_path_factory: pytest.TempPathFactory) -> DurableResult:
    """Run the six DAGs once on one deployment with two triggerers; the tests read what happened."""
    base = tmp_path_factory.mktemp("durable")
    remote_dir, marks = base / "remote-jobs", base / "marks"
    launches, gate = base / "launches", base / "gate"
    marks.mkdir()
    sshd: SSHServer = start_sshd(base / "sshd", max_startups="100:30:200")
    deployment = AirflowDeployment(base / "airflow", env={**sshd.airflow_env(CONN_ID), **HA_ENV})
    write_dags(deployment, remote_dir, launches, marks, gate)
    dag_ids = [*SINGLE_DAGS, *HA_FANOUTS]
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        deployment.start(START_TIMEOUT)
        deployment.wait_for_dags(dag_ids)
        seconds["start"] = time.monotonic() - started
        started = time.monotonic()
        run_ids = {dag_id: deployment.trigger(dag_id) for dag_id in dag_ids}
        # The cleared DAG first: its second run overlaps the other single-task runs.
        state = deployment.wait_for_run(CLEARED_DAG, run_ids[CLEARED_DAG], SINGLES_TIMEOUT)
        before_clear = collect_run(deployment, CLEARED_DAG, run_ids[CLEARED_DAG], state)
        deployment.clear_task_instances(CLEARED_DAG, run_ids[CLEARED_DAG], ["job"])
        states = {
            dag_id: deployment.wait_for_run(dag_id, run_ids[dag_id], SINGLES_TIMEOUT)
            for dag_id in SINGLE_DAGS
        }
        seconds["singles"] = time.monotonic() - started

        def fanouts_deferred() -> bool:
            tis = [ti for dag_id in HA_FANOUTS for ti in deployment.task_instances(dag_id, run_ids[dag_id])]
            started_jobs = sum(
                count for tag, count in launch_counts(launches).items() if tag.split()[0] in HA_FANOUTS
            )
            return (
                len(tis) == len(HA_FANOUTS) * FAN_OUT
                and all(ti.state == "deferred" for ti in tis)
                and started_jobs >= len(tis)
            )

        wait_until(
            "every fan-out task deferred with its job started", RAMP_TIMEOUT, fanouts_deferred, deployment
        )
        seconds["ramp"] = time.monotonic() - started
        deployment.add_triggerer()
        seconds["second triggerer"] = time.monotonic() - started
        gate.touch()

        def output_flowing() -> bool:
            return all(
                latest_shard_line(deployment, dag_id, run_ids[dag_id], ti) >= LINES_BEFORE_KILL
                for dag_id in HA_FANOUTS
                for ti in deployment.task_instances(dag_id, run_ids[dag_id])
            )

        wait_until("output of every fan-out task in its log", FLOWING_TIMEOUT, output_flowing, deployment)
        assigned = deployment.triggers_by_triggerer()
        victim = max(deployment.triggerer_components, key=lambda name: assigned.get(name, 0))
        killed_at = deployment.kill_component(victim)
        states.update(
            {dag_id: deployment.wait_for_run(dag_id, run_ids[dag_id], RUN_TIMEOUT) for dag_id in HA_FANOUTS}
        )
        seconds["runs"] = time.monotonic() - started
        runs = {
            dag_id: collect_run(deployment, dag_id, run_ids[dag_id], states[dag_id]) for dag_id in dag_ids
        }
        race_lines = deployment.state_mismatches()
    finally:
        try:
            deployment.stop()
        finally:
            for dag_id in dag_ids:
                kill_running_jobs(remote_dir / dag_id)
            sshd.stop()
    return DurableResult(
        runs=runs,
        before_clear=before_clear,
        launches=launch_counts(launches),
        remote_dir=remote_dir,
        marks=marks,
        triggerer_ids=dict(deployment.triggerer_job_ids),
        assigned_at_kill=assigned,
        killed=victim,
        killed_at=datetime.fromtimestamp(killed_at, tz=timezone.utc),
        scheduler_race_lines=race_lines,
        seconds=seconds,
    )


def output_numbers(lines: list[TimedLine], pattern: re.Pattern[str] = OUTPUT_LINE) -> list[int]:
    return [int(match.group(2)) for line in lines if (match := pattern.match(line.event.strip()))]


def race_note(result: DurableResult, dag_id: str) -> str:
    raced = [line for line in result.scheduler_race_lines if f"<TaskInstance: {dag_id}." in line]
    return f" (the scheduler itself failed this task {len(raced)} time(s): {raced})" if raced else ""


# ---------------------------------------------------------------------------- 1. worker killed before defer


def test_worker_killed_before_defer_the_retry_runs_no_second_job(durable: DurableResult) -> None:
    run = durable.runs[KILLED_DAG]
    ti = run.ti
    # The premise: try 1 submitted its job and died by SIGKILL before deferring (no trigger ran for it).
    assert ti.try_number >= 2, f"try 1 was not retried: {ti}"
    assert "Remote job" in run.text(ti, 1) and "killed line" not in run.text(ti, 1), run.shown(ti, 1)
    assert KILLED_BY_SIGNAL_TEXT in run.text(ti, 1), run.shown(ti, 1)
    assert not [path for path in run.files[(ti.map_index, 1)] if ".log.trigger." in path.name]
    launched = durable.launches[KILLED_DAG]
    report(
        f"e2e durable, worker SIGKILLed after the submit reply and before defer(): {launched} remote job(s) "
        f"launched for the task instance ({ti.try_number} tries)"
    )
    assert launched == 1, (
        f"the retry launched a second remote job while the first still ran: {launched} jobs for one task instance"
    )
    assert (run.state, ti.state) == ("success", "success")
    # The retry's log holds the job's whole output from its first line, once.
    final = run.lines[(ti.map_index, ti.try_number)]
    assert output_numbers(final) == list(range(1, KILLED_LINES + 1)), run.shown(ti, ti.try_number)
    ended = float((durable.marks / "killed.end").read_text())
    retry_started = final[0].timestamp.timestamp() if final else float("nan")
    report(
        f"e2e durable, worker SIGKILLed before defer(): the retry started {ended - retry_started:.1f}s before "
        "the job ended (positive: it re-attached to a running job)"
    )


# ---------------------------------------------------------------------------- 2. job succeeded, task retried


def tries_saying(run: Run, ti: TaskInstance, text: str) -> list[int]:
    """The tries after the first whose log holds ``text``."""
    return [n for n in range(2, ti.try_number + 1) if text in run.text(ti, n)]


def test_retry_of_a_task_whose_job_succeeded_runs_no_second_job(durable: DurableResult) -> None:
    run = durable.runs[SUCCEEDED_DAG]
    ti = run.ti
    # The premise: try 1's job succeeded (its whole output streamed), then try 1 failed, by the
    # test's own exception or by the scheduler race, which is the case this test stands for.
    assert ti.try_number >= 2, f"try 1 was not retried: {ti}"
    numbers = output_numbers(run.lines[(ti.map_index, 1)])
    # Whole, unless the scheduler race stopped the resumed try 1 before it wrote the last lines
    # the trigger's event carried: then those the trigger logged itself.
    stopped = STOPPED_BY_THE_SCHEDULER in run.text(ti, 1)
    assert numbers == [1, 2] or (stopped and numbers == [1, 2][: len(numbers)]), run.shown(ti, 1)
    how = "the test's exception" if RETRY_FAILURE_TEXT in run.text(ti, 1) else "the scheduler race"
    assert how != "the scheduler race" or race_note(durable, SUCCEEDED_DAG), run.shown(ti, 1)
    launched = durable.launches[SUCCEEDED_DAG]
    report(
        f"e2e durable, task retried after its job succeeded (try 1 failed by {how}): {launched} remote job(s) "
        f"launched for the task instance ({ti.try_number} tries)"
    )
    assert launched == 1, f"the retry ran the job that had succeeded again: {launched} jobs"
    assert (run.state, ti.state) == ("success", "success")
    # Said by the retry that ran (the scheduler race can lose a try on the way: its log then
    # holds Airflow's pre-execute lines only).
    assert tries_saying(run, ti, ALREADY_SUCCEEDED_TEXT), run.shown(ti, ti.try_number)


def test_retry_of_a_task_whose_job_succeeded_points_to_its_output(durable: DurableResult) -> None:
    """
    Once the job's directory was removed (``cleanup``), its output is gone from the host: the
    retry says which try's log holds it, and that log does, whole. Keeping the output on the host
    for a retry that rarely comes would cost every task its disk space.
    """
    run = durable.runs[SUCCEEDED_DAG]
    ti = run.ti
    assert ti.try_number >= 2
    assert tries_saying(run, ti, "Its output is in the log of try 1"), run.shown(ti, ti.try_number)
    assert output_numbers(run.lines[(ti.map_index, 1)]) == [1, 2], run.shown(ti, 1)


# ---------------------------------------------------------------------------- 3. job failed


def test_retry_after_a_failed_job_runs_a_fresh_job(durable: DurableResult) -> None:
    run = durable.runs[FAILED_DAG]
    ti = run.ti
    first = run.text(ti, 1)
    # Said by the resumed try 1, unless the scheduler race stopped it before it ran.
    assert f"exited with code {FAIL_CODE}" in first or STOPPED_BY_THE_SCHEDULER in first, run.shown(ti, 1)
    launched = durable.launches[FAILED_DAG]
    report(f"e2e durable, retry after a failed job: {launched} remote jobs launched ({ti.try_number} tries)")
    assert launched == 2, f"{launched} jobs{race_note(durable, FAILED_DAG)}"
    assert (run.state, ti.state) == ("success", "success")
    # The fresh job ran in a later try (the scheduler race can lose a try on the way).
    later = [n for n in range(2, ti.try_number + 1) if "second line 1" in run.events(ti, n)]
    assert later, run.shown(ti, ti.try_number)


# ---------------------------------------------------------------------------- 4. task cleared


def test_cleared_task_runs_a_fresh_job(durable: DurableResult) -> None:
    before, run = durable.before_clear, durable.runs[CLEARED_DAG]
    assert (before.state, before.ti.state) == ("success", "success"), before.ti
    launched = durable.launches[CLEARED_DAG]
    report(f"e2e durable, a cleared task: {launched} remote jobs launched (one before, one after the clear)")
    ti = run.ti
    # Every try's log, when it fails: which try launched, re-attached or lost what.
    tries = "\n".join(run.shown(ti, n) for n in range(1, ti.try_number + 1))
    assert launched == 2, f"{launched} jobs{race_note(durable, CLEARED_DAG)}\n{tries}"
    assert (run.state, ti.state) == ("success", "success"), ti
    assert ti.try_number > before.ti.try_number, (before.ti, ti)
    # The fresh job's output is in a try after the clear (the scheduler race can lose the first
    # one: the job then runs, or is re-attached to, in the next).
    after_clear = range(before.ti.try_number + 1, ti.try_number + 1)
    assert any("cleared line 1" in run.events(ti, n) for n in after_clear), run.shown(ti, ti.try_number)


# ---------------------------------------------------------------------------- 5. triggerer failover


@dataclass(frozen=True)
class TryStream:
    """One fan-out try's output as the task log holds it."""

    numbers: list[int]
    #: positions where the next line is not the one after the previous line
    breaks: list[int]
    lost: int
    repeated: int
    #: the switch from the killed triggerer's file to another one: repeats allowed there
    switches: list[int]


def try_stream(lines: list[TimedLine]) -> TryStream:
    shard_lines = [line for line in lines if SHARD_LINE.match(line.event.strip())]
    numbers = output_numbers(shard_lines, SHARD_LINE)
    breaks = [k for k in range(1, len(numbers)) if numbers[k] != numbers[k - 1] + 1]
    switches = [k for k in range(1, len(shard_lines)) if shard_lines[k].path != shard_lines[k - 1].path]
    lost = len(set(range(1, HA_LINES + 1)) - set(numbers))
    return TryStream(numbers, breaks, lost, len(numbers) - len(set(numbers)), switches)


def triggerer_of(path: Path) -> int | None:
    match = TRIGGER_FILE.search(path.name)
    return int(match.group(1)) if match else None


def last_seconds_before_kill(lines: list[TimedLine], killed_id: int) -> int:
    """
    How many output lines the killed triggerer wrote in its last REPEAT_WINDOW_SECONDS: what the
    host had not yet recorded as delivered (a hand-over counts once LOG_WRITE_SECONDS old, and
    the record goes with the next poll).
    """
    mine = [line for line in lines if triggerer_of(line.path) == killed_id and SHARD_LINE.match(line.event)]
    if not mine:
        return 0
    last = mine[-1].timestamp
    return sum((last - line.timestamp).total_seconds() <= REPEAT_WINDOW_SECONDS for line in mine)


@dataclass(frozen=True)
class Move:
    map_index: int
    try_number: int
    repeated: int
    #: lines the killed triggerer wrote in its last REPEAT_WINDOW_SECONDS (a repeat's bound)
    last_seconds: int
    #: kill -> first output line the other triggerer wrote to this try's log, seconds
    recovery: float


def moves(result: DurableResult, dag_id: str) -> list[Move]:
    """The fan-out tries whose trigger the kill moved to the other triggerer."""
    run = result.runs[dag_id]
    found = []
    for (map_index, try_number), lines in sorted(run.lines.items()):
        output = [line for line in lines if SHARD_LINE.match(line.event)]
        if not any(triggerer_of(line.path) == result.killed_id for line in output):
            continue
        after = [
            line
            for line in output
            if triggerer_of(line.path) not in (None, result.killed_id) and line.timestamp > result.killed_at
        ]
        if not after:
            continue
        stream = try_stream(lines)
        found.append(
            Move(
                map_index,
                try_number,
                stream.repeated,
                last_seconds_before_kill(lines, result.killed_id),
                (after[0].timestamp - result.killed_at).total_seconds(),
            )
        )
    return found


def user_cancels(run: Run) -> list[tuple[int, int]]:
    """The tries whose trigger Airflow cancelled as for a user action (calling on_kill)."""
    return [
        key for key, lines in sorted(run.lines.items()) if any(USER_CANCEL_TEXT in x.event for x in lines)
    ]


@pytest.mark.parametrize("dag_id", HA_FANOUTS)
def test_ha_failover_every_task_succeeds(durable: DurableResult, dag_id: str) -> None:
    run = durable.runs[dag_id]
    report(
        f"e2e durable, two triggerers, {FAN_OUT}-way fan-out {dag_id} (submit_from={HA_FANOUTS[dag_id]!r}): "
        f"start {durable.seconds['start']:.0f}s, single-task runs {durable.seconds['singles']:.0f}s, all "
        f"deferred after {durable.seconds['ramp']:.0f}s, all runs {durable.seconds['runs']:.0f}s; triggers "
        f"per triggerer just before the kill {durable.assigned_at_kill} (killed: {durable.killed}); tries "
        f"{dict(Counter(ti.try_number for ti in run.tis))}; scheduler race lines "
        f"{len(durable.scheduler_race_lines)}; triggers cancelled as for a user action "
        f"(shard, try) {user_cancels(run)}"
    )
    assert [ti.map_index for ti in run.tis] == list(range(FAN_OUT))
    assert {ti.state for ti in run.tis} == {"success"}, [(ti.map_index, ti.state) for ti in run.tis]
    assert run.state == "success"


@pytest.mark.parametrize("dag_id", HA_FANOUTS)
def test_ha_failover_runs_one_remote_job_per_task(durable: DurableResult, dag_id: str) -> None:
    per_task = [durable.launches[f"{dag_id} {shard}"] for shard in range(FAN_OUT)]
    report(
        f"e2e durable, triggerer failover {dag_id}: remote jobs launched per task instance "
        f"{dict(sorted(Counter(per_task).items()))} (jobs: tasks)"
    )
    assert per_task == [1] * FAN_OUT, (
        f"jobs per shard (where not 1): { ({shard: n for shard, n in enumerate(per_task) if n != 1}) }; "
        f"triggers cancelled as for a user action (shard, try): {user_cancels(durable.runs[dag_id])}"
    )


@pytest.mark.parametrize("dag_id", HA_FANOUTS)
def test_ha_failover_loses_no_line_and_repeats_only_the_dead_triggerers_last_seconds(
    durable: DurableResult, dag_id: str
) -> None:
    run = durable.runs[dag_id]
    moved = {(move.map_index, move.try_number): move for move in moves(durable, dag_id)}
    lost = repeated = 0
    for (map_index, try_number), lines in sorted(run.lines.items()):
        stream = try_stream(lines)
        where = f"shard {map_index} try {try_number}: {stream.numbers}"
        lost += stream.lost
        repeated = max(repeated, stream.repeated)
        assert stream.numbers and stream.numbers[0] == 1 and stream.numbers[-1] == HA_LINES, where
        assert stream.lost == 0, where
        # Any repeat is one block, where the log switches from one triggerer to the other.
        assert all(
            k in stream.switches and stream.numbers[k] <= stream.numbers[k - 1] for k in stream.breaks
        ), where
        if stream.repeated:
            move = moved.get((map_index, try_number))
            assert move is not None, f"lines repeated without a move to the other triggerer: {where}"
            assert stream.repeated <= move.last_seconds, (
                f"{where}: more than its last seconds ({move.last_seconds})"
            )
    report(
        f"e2e durable, triggerer failover {dag_id}: lines lost {lost}, lines repeated per try at most "
        f"{repeated}; repeated per moved try {Counter(move.repeated for move in moved.values())}, lines of "
        f"the dead triggerer's last {REPEAT_WINDOW_SECONDS:.1f}s {Counter(move.last_seconds for move in moved.values())} "
        "(lines: tries)"
    )


@pytest.mark.parametrize("dag_id", HA_FANOUTS)
def test_ha_failover_moves_the_dead_triggerers_tasks_and_they_resume(
    durable: DurableResult, dag_id: str
) -> None:
    found = moves(durable, dag_id)
    recoveries = sorted(move.recovery for move in found)
    summary = (
        f"median {statistics.median(recoveries):.1f}s, max {recoveries[-1]:.1f}s, min {recoveries[0]:.1f}s"
        if recoveries
        else "none"
    )
    report(
        f"e2e durable, triggerer failover {dag_id}: {len(found)} tries moved off the SIGKILLed triggerer; "
        f"recovery (kill -> first output line from the other triggerer): {summary}"
    )
    assert found, "the kill moved no fan-out task: the test did not exercise a failover"
    assert recoveries[-1] <= RECOVERY_LIMIT, recoveries


@pytest.mark.parametrize("dag_id", HA_FANOUTS)
def test_ha_failover_leaves_no_job_directory(durable: DurableResult, dag_id: str) -> None:
    left = job_dirs(durable.remote_dir / dag_id)
    assert not left, left
