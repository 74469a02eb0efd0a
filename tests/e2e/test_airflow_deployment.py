"""
The whole path on a real Airflow 3 deployment: worker submits and defers, the triggerer watches.

One deployment (api-server, scheduler, dag-processor, triggerer; LocalExecutor on SQLite)
runs four DAGs at once: two 24-way ``.expand()`` fan-outs, each against an sshd of its own
with ``MaxStartups 10:30:100`` that serves nothing else (so its log counts belong to that
fan-out): one submitting from the workers, one with ``submit_from="triggerer"``; and a
failing and a skipping job against a third sshd.

Every DAG has ``retries=2``. Airflow 3.3's scheduler sometimes fails a resumed deferred
task itself (the executor's late "success" for the deferring attempt arrives while the
resumed attempt is queued or running; the scheduler logs "... finished with state success,
but the task instance's state attribute is ..."). On a busy machine it can hit the same
task twice. A retry hides that from the run's outcome, so the tests check every retry
against the scheduler's log: each retry must be explained by one such message (or by the
same message for a worker process that failed outside the operator), and the
remote job of the failed try must have run to completion with its output in that try's log.
How often it happened is reported in the measurements summary.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_support import REATTACH_TEXT, STOPPED_BY_THE_SCHEDULER, start_sshd, submitted_job_ids

from harness.airflow_deploy import AirflowDeployment, TaskInstance, TaskLog
from harness.remote_jobs import exit_code_of, job_dirs
from harness.sshd import SSHServer
from support.report import report

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

FAN_OUT = 24
#: What a durable retry logs when it takes over the job of an earlier try.
TAKEOVER_LINE = re.compile(
    r"Remote job \S+ of try \d+ (already succeeded|already ended with a skip code|is still \w+: re-attaching)"
)
FANOUT_DAG = "e2e_fanout"
#: The same fan-out, submitted by the triggerer over its shared connection.
TRIGGERER_FANOUT_DAG = "e2e_fanout_from_triggerer"
FANOUTS = (FANOUT_DAG, TRIGGERER_FANOUT_DAG)
FAILING_DAG = "e2e_failing"
SKIPPING_DAG = "e2e_skipping"
FAIL_CODE = 7
SKIP_CODE = 99
RUN_TIMEOUT = 300.0
OUTPUT_LINE = re.compile(r"^e2e shard (\d+) line (\d+)$")
LINES_PER_SHARD = 3
#: A job's output line in the triggerer's own log (its text format), not in an event's repr.
MISROUTED = re.compile(r"\[\w+\s*\] e2e shard \d+ line \d+\s")
#: Most connections one try may open: to submit, to watch (held by the trigger), to clean up.
CONNECTIONS_PER_TRY = 3
#: Most connections of the whole fan-out submitted from the triggerer: its one shared
#: connection, and one more should the scheduler race retry a task after it closed.
TRIGGERER_FANOUT_CONNECTIONS = 2

DAG_HEADER = """\
from __future__ import annotations

from datetime import timedelta

try:
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.11
    from airflow import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: see the test module's docstring (an upstream scheduler race).
DEFAULTS = {{"retries": 2, "retry_delay": timedelta(seconds=1)}}
"""

FANOUT_DAG_TEXT = (
    DAG_HEADER
    + """
# Output spread over ~3 s with poll_interval=1, so the trigger streams it over several polls.
COMMANDS = [
    f"echo 'e2e shard {{i}} line 1'\\nsleep 1\\necho 'e2e shard {{i}} line 2'\\nsleep 2\\necho 'e2e shard {{i}} line 3'\\n"
    for i in range({fan_out})
]

with DAG(dag_id="{dag_id}", schedule=None, catchup=False, max_active_tasks={fan_out}, default_args=DEFAULTS):
    SSHRemoteJobOperator.partial(
        task_id="shard",
        ssh_conn_id={conn_id!r},
        remote_base_dir={base_dir!r},
        cleanup="always",
        poll_interval=1,
        max_active_tis_per_dag={fan_out},
        submit_from={submit_from!r},
    ).expand(command=COMMANDS)
"""
)

SINGLE_JOB_DAG_TEXT = (
    DAG_HEADER
    + """
with DAG(dag_id="{dag_id}", schedule=None, catchup=False, default_args=DEFAULTS):
    SSHRemoteJobOperator(
        task_id="job",
        ssh_conn_id="ssh_e2e_aux",
        command={command!r},
        remote_base_dir={base_dir!r},
        cleanup={cleanup!r},
        skip_on_exit_code={skip_code!r},
        poll_interval=1,
    )
"""
)


@dataclass
class RunOutcome:
    dag_id: str
    run_id: str
    state: str
    tis: list[TaskInstance]
    #: (map_index, try_number) -> that try's log
    logs: dict[tuple[int, int], TaskLog] = field(default_factory=dict)

    def log(self, ti: TaskInstance, try_number: int | None = None) -> TaskLog:
        return self.logs[(ti.map_index, try_number or ti.try_number)]


@dataclass
class E2EResult:
    runs: dict[str, RunOutcome]
    #: fan-out dag_id -> its job base dir, and what its sshd saw during the runs
    fanout_jobs_dirs: dict[str, Path]
    aux_jobs_dir: Path
    fanout_sshd_counts: dict[str, dict[str, int]]
    #: dag_id -> map index -> how often the scheduler failed that task itself (the race)
    raced: dict[str, Counter[int]]
    race_lines: list[str]
    seconds: dict[str, float]
    #: Job output lines the triggerer wrote to its own log, not to a task's: what Airflow does
    #: with a trigger's lines that reach it after it closed that trigger's log file.
    misrouted: list[str] = field(default_factory=list)


#: fan-out dag_id -> (its connection id, submit_from)
FANOUT_SETUP = {FANOUT_DAG: ("ssh_default", "worker"), TRIGGERER_FANOUT_DAG: ("ssh_e2e_tsubmit", "triggerer")}


def write_dags(deployment: AirflowDeployment, fanout_jobs: dict[str, Path], aux_jobs: Path) -> None:
    for dag_id, (conn_id, submit_from) in FANOUT_SETUP.items():
        deployment.add_dag_file(
            f"{dag_id}.py",
            FANOUT_DAG_TEXT.format(
                dag_id=dag_id,
                fan_out=FAN_OUT,
                base_dir=str(fanout_jobs[dag_id]),
                conn_id=conn_id,
                submit_from=submit_from,
            ),
        )
    single_jobs = [
        (FAILING_DAG, f"echo 'e2e about to fail'\nexit {FAIL_CODE}\n", "on_success", None),
        (SKIPPING_DAG, f"echo 'e2e nothing to do'\nexit {SKIP_CODE}\n", "always", SKIP_CODE),
    ]
    for dag_id, command, cleanup, skip_code in single_jobs:
        deployment.add_dag_file(
            f"{dag_id}.py",
            SINGLE_JOB_DAG_TEXT.format(
                dag_id=dag_id, command=command, base_dir=str(aux_jobs), cleanup=cleanup, skip_code=skip_code
            ),
        )


def raced_tasks(race_lines: list[str]) -> dict[str, Counter[int]]:
    """dag_id -> map index -> how many of the scheduler's race messages name that task."""
    found: dict[str, Counter[int]] = {}
    for line in race_lines:
        match = re.search(r"<TaskInstance: (\S+?)\.\S+ \S+ (?:map_index=(\d+) )?\[", line)
        if match:
            found.setdefault(match.group(1), Counter())[int(match.group(2) or -1)] += 1
    return found


def collect_run(deployment: AirflowDeployment, dag_id: str, run_id: str, state: str) -> RunOutcome:
    outcome = RunOutcome(dag_id, run_id, state, deployment.task_instances(dag_id, run_id))
    for ti in outcome.tis:
        for try_number in range(1, ti.try_number + 1):
            outcome.logs[(ti.map_index, try_number)] = deployment.task_log(dag_id, run_id, ti, try_number)
    return outcome


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, module_sshd: SSHServer) -> E2EResult:
    """Run the three DAGs once on one deployment; the tests below read what happened."""
    base = tmp_path_factory.mktemp("deployment")
    fanout_jobs = {dag_id: base / f"{dag_id}-jobs" for dag_id in FANOUTS}
    aux_jobs = base / "aux-jobs"
    aux_sshd = start_sshd(base / "aux-sshd")
    tsubmit_sshd = start_sshd(base / "tsubmit-sshd", max_startups="10:30:100")
    servers = {FANOUT_DAG: module_sshd, TRIGGERER_FANOUT_DAG: tsubmit_sshd}
    env = {
        **module_sshd.airflow_env("ssh_default"),
        **tsubmit_sshd.airflow_env("ssh_e2e_tsubmit"),
        **aux_sshd.airflow_env("ssh_e2e_aux"),
    }
    deployment = AirflowDeployment(base / "airflow", env=env)
    write_dags(deployment, fanout_jobs, aux_jobs)
    dag_ids = [*FANOUTS, FAILING_DAG, SKIPPING_DAG]
    seconds: dict[str, float] = {}
    try:
        started = time.monotonic()
        deployment.start()
        deployment.wait_for_dags(dag_ids)
        seconds["start"] = time.monotonic() - started
        before = {dag_id: server.counts() for dag_id, server in servers.items()}
        started = time.monotonic()
        run_ids = {dag_id: deployment.trigger(dag_id) for dag_id in dag_ids}
        states = {
            dag_id: deployment.wait_for_run(dag_id, run_id, RUN_TIMEOUT) for dag_id, run_id in run_ids.items()
        }
        seconds["runs"] = time.monotonic() - started
        after = {dag_id: server.counts() for dag_id, server in servers.items()}
        runs = {
            dag_id: collect_run(deployment, dag_id, run_ids[dag_id], states[dag_id]) for dag_id in run_ids
        }
        race_lines = deployment.state_mismatches()
        misrouted = [
            line for line in deployment.component_output("triggerer").splitlines() if MISROUTED.search(line)
        ]
    finally:
        try:
            deployment.stop()
        finally:
            aux_sshd.stop()
            tsubmit_sshd.stop()
    counts = {
        dag_id: {name: after[dag_id][name] - before[dag_id][name] for name in after[dag_id]}
        for dag_id in servers
    }
    return E2EResult(
        runs, fanout_jobs, aux_jobs, counts, raced_tasks(race_lines), race_lines, seconds, misrouted
    )


def shard_lines(log: TaskLog) -> list[tuple[int, int]]:
    return [
        (int(match.group(1)), int(match.group(2)))
        for event in log.events()
        if (match := OUTPUT_LINE.match(event.strip()))
    ]


# ---------------------------------------------------------------------------- the 24-way fan-out


@pytest.mark.parametrize("dag_id", FANOUTS)
def test_fanout_every_task_succeeds(e2e: E2EResult, dag_id: str) -> None:
    run = e2e.runs[dag_id]
    raced = e2e.raced.get(dag_id, Counter())
    races = sum("finished with state success" in line for line in e2e.race_lines)
    report(
        f"e2e {FAN_OUT}-way fan-out {dag_id} on Airflow: start {e2e.seconds['start']:.0f}s, runs "
        f"{e2e.seconds['runs']:.0f}s; scheduler race (resumed deferred task failed by the scheduler) seen "
        f"{races} time(s), other tasks failed by Airflow itself {len(e2e.race_lines) - races}, across the "
        f"{len(e2e.runs)} runs; this fan-out's map index: times {dict(sorted(raced.items()))}"
    )
    assert [ti.map_index for ti in run.tis] == list(range(FAN_OUT))
    assert {ti.state for ti in run.tis} == {"success"}, [(ti.map_index, ti.state) for ti in run.tis]
    assert run.state == "success"
    unexplained = [ti.map_index for ti in run.tis if ti.try_number - 1 > raced[ti.map_index]]
    assert not unexplained, "retried, but not because of the scheduler race: see their earlier tries' logs"


@pytest.mark.parametrize("dag_id", FANOUTS)
def test_fanout_logs_hold_each_tasks_own_output_in_order(e2e: E2EResult, dag_id: str) -> None:
    run = e2e.runs[dag_id]
    report(
        f"e2e fan-out {dag_id}: job output lines the triggerer wrote to its own log, not a task's: {len(e2e.misrouted)}"
    )
    for ti in run.tis:
        expected = [(ti.map_index, line) for line in range(1, LINES_PER_SHARD + 1)]
        for try_number in range(1, ti.try_number + 1):
            log = run.log(ti, try_number)
            if TAKEOVER_LINE.search(log.text) and "its whole output follows" not in log.text:
                continue  # a retry that ended like the earlier try's job: its output is in that try's log
            found = shard_lines(log)
            assert found == expected, (
                f"shard {ti.map_index} try {try_number}: its lines {found}; in the triggerer's own log "
                f"instead of a task's: {[line for line in e2e.misrouted if f'shard {ti.map_index} ' in line]}; "
                f"the task log:\n{log.text}"
            )
            # The job's output reached the log through the trigger, not at the end through the worker.
            assert [line for line in log.events("trigger") if OUTPUT_LINE.match(line.strip())]


def submits_of(dag_id: str, log: TaskLog) -> list[str]:
    """The job ids one try's log reports as submitted, from where that fan-out submits."""
    return submitted_job_ids(log.events("worker" if FANOUT_SETUP[dag_id][1] == "worker" else "trigger"))


@pytest.mark.parametrize("dag_id", FANOUTS)
def test_fanout_each_try_launched_exactly_one_remote_job(e2e: E2EResult, dag_id: str) -> None:
    run = e2e.runs[dag_id]
    relaunched = taken_over = 0
    for ti in run.tis:
        job_ids = []
        for try_number in range(1, ti.try_number + 1):
            log = run.log(ti, try_number)
            submitted = submits_of(dag_id, log)
            # A retry (durable=True) either takes over the earlier try's job or submits its own.
            took_over = bool(TAKEOVER_LINE.search(log.text))
            assert len(submitted) + took_over == 1, (
                f"shard {ti.map_index} try {try_number}: submits {submitted}"
            )
            assert REATTACH_TEXT not in log.text, f"shard {ti.map_index} try {try_number} submitted twice"
            job_ids.extend(submitted)
            taken_over += took_over
        relaunched += len(job_ids) - 1
    report(
        f"e2e fan-out {dag_id}: remote jobs launched again by a race-induced retry: {relaunched}; "
        f"earlier jobs taken over by a retry: {taken_over}"
    )
    assert relaunched == 0, "a retry after the scheduler race must not run the job again"


@pytest.mark.parametrize("dag_id", FANOUTS)
def test_fanout_leaves_no_job_directory(e2e: E2EResult, dag_id: str) -> None:
    run = e2e.runs[dag_id]
    # A try the scheduler failed before it could resume never ran its clean-up; its job
    # must still have ended normally (exit code 0), not be left running.
    excusable = {
        job_id
        for ti in run.tis
        for try_number in range(1, ti.try_number)
        for job_id in submits_of(dag_id, run.log(ti, try_number))
    }
    left = job_dirs(e2e.fanout_jobs_dirs[dag_id])
    report(
        f"e2e fan-out {dag_id}: job directories left behind: {len(left)} (of them after a scheduler race: "
        f"{sum(path.name in excusable for path in left)})"
    )
    assert all(path.name in excusable and exit_code_of(path) == 0 for path in left), left


@pytest.mark.parametrize("dag_id", FANOUTS)
def test_fanout_holds_one_connection_per_phase(e2e: E2EResult, dag_id: str) -> None:
    run = e2e.runs[dag_id]
    counts = e2e.fanout_sshd_counts[dag_id]
    tries = sum(ti.try_number for ti in run.tis)
    report(
        f"e2e fan-out {dag_id} sshd (MaxStartups 10:30:100): {counts['accepted']} handshakes for {FAN_OUT} "
        f"tasks ({counts['accepted'] / FAN_OUT:.2f} per task, {tries} tries), {counts['sessions']} exec "
        f"sessions, {counts['drops']} drops, {counts['session_refusals']} MaxSessions refusals"
    )
    if FANOUT_SETUP[dag_id][1] == "triggerer":
        # One login for the whole fan-out: the workers open no connection at all.
        assert 0 < counts["accepted"] <= TRIGGERER_FANOUT_CONNECTIONS
        assert counts["drops"] == 0
        return
    # Submit, watch and clean-up use at most one connection each (watching may share one
    # across tasks); reconnecting per poll would need many more. Nothing here breaks a
    # connection, so no try has a reason to reconnect.
    assert 0 < counts["accepted"] <= CONNECTIONS_PER_TRY * tries


# ---------------------------------------------------------------------------- failing and skipping jobs


def shows_job_line(log: TaskLog, line: str) -> bool:
    """
    Whether a try's log shows the job's ``line``. The last lines travel in the trigger's event and
    the resumed task writes them; a try the scheduler race stopped before it ran never does (a
    known limit: the job's own log on the host keeps them).
    """
    return line in log.events() or STOPPED_BY_THE_SCHEDULER in log.text


def test_failing_command_fails_the_task_with_its_exit_code(e2e: E2EResult) -> None:
    run = e2e.runs[FAILING_DAG]
    (ti,) = run.tis
    assert (run.state, ti.state) == ("failed", "failed")
    raced = e2e.raced.get(FAILING_DAG, Counter())[-1]
    for try_number in range(1, ti.try_number + 1):
        log = run.log(ti, try_number)
        # A try that the scheduler race failed before its resumption even started has no resumed
        # part at all (its worker log ends at the deferral, not even Airflow's message): excused
        # when the scheduler's own log names the race for this task and a later try followed.
        never_resumed = sum("Pre Execute" in event for event in log.events("worker")) == 1
        excused = raced > 0 and never_resumed and try_number < ti.try_number
        assert shows_job_line(log, "e2e about to fail") or excused, log.text
    # The last try says why (an earlier one may have been ended by the scheduler race before
    # it could: the module's docstring).
    assert f"failed with exit code {FAIL_CODE}" in run.log(ti).text, run.log(ti).text
    # cleanup="on_success" keeps a failed job's directory, with its log and exit code, for inspection.
    kept = [path for path in job_dirs(e2e.aux_jobs_dir) if FAILING_DAG in path.name]
    assert len(kept) == ti.try_number
    assert all(exit_code_of(path) == FAIL_CODE for path in kept)
    assert all("e2e about to fail" in (path / "stdout.log").read_text() for path in kept)


def test_skip_code_skips_the_task(e2e: E2EResult) -> None:
    run = e2e.runs[SKIPPING_DAG]
    (ti,) = run.tis
    assert (run.state, ti.state) == ("success", "skipped")
    # The job ran in try 1. A retry (after the scheduler race failed the resumed try) ends like
    # it without running it again (durable=True), and says where its output is.
    first = run.log(ti, 1)
    assert shows_job_line(first, "e2e nothing to do"), first.text
    for try_number in range(2, ti.try_number + 1):
        assert TAKEOVER_LINE.search(run.log(ti, try_number).text), run.log(ti, try_number).text
    assert f"exited with skip code {SKIP_CODE}" in run.log(ti).text, run.log(ti).text
    assert not [path for path in job_dirs(e2e.aux_jobs_dir) if SKIPPING_DAG in path.name]
