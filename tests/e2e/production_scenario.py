"""
The scenario of ``test_production_shape.py``: its DAGs, the run with its faults, and readers of what
the run left (task logs, the host's launches file, connection samples).

Components killed mid-fan-out on a production-shaped Airflow 3: PostgreSQL, Redis, CeleryExecutor.

One deployment (:class:`harness.production.ProductionDeployment`: api-server, scheduler,
dag-processor, two Celery workers, two triggerers; Airflow's own recovery shortened to seconds,
see ``FAST_TASK_RECOVERY_ENV`` and ``HA_ENV``) runs one fan-out of FAN_OUT mapped tasks against
one real sshd, in both submit modes: even shards submit from the worker, odd ones from the
triggerer (``expand_kwargs``). Every remote job appends a line to a ``launches`` file as
its first command (jobs are counted on the host, whatever the logs say), waits at a gate file,
prints a numbered line every LINE_SECONDS until the test has done its faults (a ``finish`` file;
at least MIN_LINES lines, at most MAX_LINES), says how many it printed, and exits with its
shard's code: 0, or SKIP_CODE for every tenth shard (the operator's ``skip_on_exit_code``, so
the task must end ``skipped``). Lasting as long as the faults take keeps the test right on a
slow machine without making it long on a fast one.

The faults, in order, all on the same runs:

1. While the workers submit, the Celery worker that runs the most tasks is SIGKILLed with its
   task processes (an OOM kill, a lost node), and started again as a service manager would.
   Airflow fails the killed task instances once their heartbeats stop; each retry must
   re-attach to the job of the killed try, never launch a second one.
2. Once every task is deferred and its output flows, the triggerer holding the most triggers is
   SIGKILLed. The other one takes its triggers: no line lost, at most the dead triggerer's last
   tick repeated. A replacement triggerer starts.
3. The surviving original triggerer is restarted gracefully (SIGTERM, then a new process): its
   triggers move without a repeated line.

Throughout, the connections each triggerer holds to the sshd are read from ``/proc``: never
more than one per triggerer, one for each triggerer that holds triggers of the host.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from e2e_support import HA_ENV, TimedLine, launch_counts, merged_by_time, start_sshd, wait_until

from harness.airflow_deploy import TaskInstance
from harness.production import (
    FAST_TASK_RECOVERY_ENV,
    TRIGGER_LOG_FILE,
    ConnectionSampler,
    ProductionDeployment,
)
from harness.remote_jobs import kill_running_jobs
from harness.sshd import SSHServer
from ssh_jobs_provider.triggers.watch import LOG_WRITE_SECONDS

CONN_ID = "ssh_production"
DAG_ID = "production_fanout"
MODES = ("worker", "triggerer")
FAN_OUT = 100
MIN_LINES = 10
#: The jobs stop at this many lines even if the test never says so (300 s).
MAX_LINES = 600
LINE_SECONDS = 0.5
SKIP_CODE = 99
#: The jobs wait at most this long for the gate (polls of 0.2 s), so none is left waiting.
GATE_POLLS = 1500
#: The Celery worker is killed once this many of the worker-mode jobs were launched, at a moment
#: when at least KILL_WITH_RUNNING task instances run (not yet deferred) and the busiest worker
#: holds at least KILL_WORKER_WITH task processes: how many tasks are still in a worker at a
#: given launch count varies from run to run, and a task process may be one that already deferred.
KILL_WORKER_AFTER = 15
KILL_WORKER_WITH = 2
KILL_WITH_RUNNING = 4
LINES_BEFORE_KILL = 2
START_TIMEOUT = 240.0
RAMP_TIMEOUT = 300.0
FLOWING_TIMEOUT = 90.0
FAILOVER_TIMEOUT = 90.0
RUN_TIMEOUT = 420.0
#: Lines of one batch poll reach the task log milliseconds apart; polls are >= 1 s apart.
SAME_POLL_SECONDS = 0.4
#: The seconds of a SIGKILLed triggerer's output that may come again: what it handed to its logger
#: in the last LOG_WRITE_SECONDS before its last poll was not yet recorded on the host as
#: delivered, and nor was that poll's own output (polls a second apart, answered up to 2 s late
#: on this busy machine).
KILL_REPEAT_SECONDS = LOG_WRITE_SECONDS + 3.0
SHARD_LINE = re.compile(r"^shard (\d+) line (\d+)$")
PRINTED_LINE = re.compile(r"^shard (\d+) printed (\d+) lines$")

DAG_TEXT = """\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: a task whose Celery worker was killed is failed by Airflow and must come back; and
# Airflow's scheduler sometimes fails a resumed deferred task itself (a known race).
DEFAULTS = {{"retries": 3, "retry_delay": timedelta(seconds=1)}}
TASKS = {tasks!r}

with DAG(
    dag_id={dag_id!r}, schedule=None, catchup=False, max_active_tasks={fan_out}, default_args=DEFAULTS
) as dag:
    SSHRemoteJobOperator.partial(
        task_id="shard",
        ssh_conn_id={conn_id!r},
        remote_base_dir={base_dir!r},
        cleanup="always",
        poll_interval=1,
        skip_on_exit_code={skip_code},
        max_active_tis_per_dag={fan_out},
    ).expand_kwargs(TASKS)
"""


def mode_of(shard: int) -> str:
    return MODES[shard % 2]


def exit_code(shard: int) -> int:
    """Every fifth shard (as many in each mode) ends with the skip code."""
    return SKIP_CODE if shard % 5 == 4 else 0


def tasks(launches: Path, gate: Path, finish: Path) -> list[dict[str, str]]:
    """The mapped tasks' arguments: each shard's command and submit mode."""
    return [
        {"command": command, "submit_from": mode_of(shard)}
        for shard, command in enumerate(commands(launches, gate, finish))
    ]


def commands(launches: Path, gate: Path, finish: Path) -> list[str]:
    return [
        f"echo '{mode_of(shard)} {shard}' >> {launches}\n"
        f"n=0\nwhile [ ! -e {gate} ] && [ $n -lt {GATE_POLLS} ]; do sleep 0.2; n=$((n+1)); done\n"
        f'i=0\nwhile [ $i -lt {MAX_LINES} ]; do\n  i=$((i+1))\n  echo "shard {shard} line $i"\n'
        f"  if [ $i -ge {MIN_LINES} ] && [ -e {finish} ]; then break; fi\n  sleep {LINE_SECONDS}\ndone\n"
        f'echo "shard {shard} printed $i lines"\n'
        f"exit {exit_code(shard)}\n"
        for shard in range(FAN_OUT)
    ]


# ---------------------------------------------------------------------------- the run


@dataclass
class Fault:
    """One component stopped on purpose: which, how, when (wall clock), and its triggerer job id."""

    component: str
    how: str
    at: datetime
    job_id: int | None = None
    #: what was going on at that moment, for the report
    detail: str = ""


@dataclass
class ProductionRun:
    state: str
    #: map_index -> (final state, try number)
    tis: dict[int, tuple[str | None, int]]
    #: map_index -> try -> that try's lines in the order written
    lines: dict[int, dict[int, list[TimedLine]]]
    launches: Counter[str]
    remote_dir: Path
    faults: dict[str, Fault]
    #: triggerer job id -> component
    triggerers: dict[int, str]
    sampler: ConnectionSampler
    #: each sample: (phase, triggers held per triggerer, connections to the host per live triggerer)
    samples: list[tuple[str, dict[str, int], dict[str, int]]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    race_lines: list[str] = field(default_factory=list)


def sample(deployment: ProductionDeployment, run: ProductionRun, phase: str) -> None:
    held = deployment.triggers_by_triggerer()
    run.samples.append((phase, held, run.sampler.sample()))


def run_fanouts(base: Path) -> ProductionRun:
    remote_dir, launches, gate, finish = (
        base / name for name in ("remote-jobs", "launches", "gate", "finish")
    )
    sshd: SSHServer = start_sshd(base / "sshd", max_startups="100:30:200")
    deployment = ProductionDeployment(
        base / "airflow", env={**sshd.airflow_env(CONN_ID), **HA_ENV, **FAST_TASK_RECOVERY_ENV}
    )
    deployment.add_dag_file(
        "production_fanout.py",
        DAG_TEXT.format(
            tasks=tasks(launches, gate, finish),
            dag_id=DAG_ID,
            base_dir=str(remote_dir),
            fan_out=FAN_OUT,
            conn_id=CONN_ID,
            skip_code=SKIP_CODE,
        ),
    )
    run = ProductionRun("", {}, {}, Counter(), remote_dir, {}, {}, ConnectionSampler(deployment, sshd.port))
    try:
        started = time.monotonic()
        deployment.start(START_TIMEOUT)
        deployment.wait_for_dags([DAG_ID])
        run.seconds["start"] = time.monotonic() - started
        started = time.monotonic()
        run_id = deployment.trigger(DAG_ID)
        kill_a_celery_worker_while_tasks_submit(deployment, run, launches, run_id)
        wait_until(
            "every task deferred with its job launched",
            RAMP_TIMEOUT,
            lambda: sample(deployment, run, "ramp") or all_deferred(deployment, run_id, launches),
            deployment,
        )
        run.seconds["ramp"] = time.monotonic() - started
        gate.touch()
        wait_until(
            "output of every task in its log",
            FLOWING_TIMEOUT,
            lambda: sample(deployment, run, "two triggerers") or flowing(deployment, run_id),
            deployment,
        )
        survivor = kill_the_busiest_triggerer(deployment, run)
        restart_gracefully(deployment, run, survivor)
        wait_until(
            "output of every task after the graceful restart",
            FLOWING_TIMEOUT,
            lambda: (
                sample(deployment, run, "after the restart")
                or flowing(deployment, run_id, since=run.faults["restart"].at, lines=1)
            ),
            deployment,
        )
        finish.touch()
        wait_until(
            "the run finished",
            RUN_TIMEOUT,
            lambda: sample(deployment, run, "after the restart") or run_finished(deployment, run_id),
            deployment,
        )
        run.seconds["runs"] = time.monotonic() - started
        collect(deployment, run, run_id)
    finally:
        try:
            deployment.stop()
        finally:
            kill_running_jobs(remote_dir)
            sshd.stop()
    run.launches = launch_counts(launches)
    return run


def launched(launches: Path, mode: str | None = None) -> int:
    """How many jobs were launched (of one submit mode, if given)."""
    return sum(n for tag, n in launch_counts(launches).items() if mode in (None, tag.split()[0]))


def kill_a_celery_worker_while_tasks_submit(
    deployment: ProductionDeployment, run: ProductionRun, launches: Path, run_id: str
) -> None:
    """Fault 1: SIGKILL the Celery worker running the most tasks mid-submit, then start it again."""
    chosen: dict[str, int] = {}

    def busiest_holds_tasks() -> bool:
        if launched(launches, "worker") < KILL_WORKER_AFTER:
            return False
        running = sum(1 for ti in deployment.task_instances(DAG_ID, run_id) if ti.state == "running")
        chosen.clear()
        chosen.update({name: len(deployment.task_processes(name)) for name in deployment.celery_workers})
        return running >= KILL_WITH_RUNNING and max(chosen.values(), default=0) >= KILL_WORKER_WITH

    wait_until(
        f"{KILL_WORKER_AFTER} worker-mode jobs launched, {KILL_WITH_RUNNING} tasks running and a Celery "
        f"worker holding {KILL_WORKER_WITH} task processes",
        RAMP_TIMEOUT,
        busiest_holds_tasks,
        deployment,
    )
    victim = max(chosen, key=lambda name: chosen[name])
    running = chosen[victim]
    fault = Fault(victim, "SIGKILL", utc(deployment.kill_component(victim)))
    fault.detail = f"{launched(launches, 'worker')} worker-mode jobs launched, {running} task processes on it"
    run.faults["worker"] = fault
    deployment.restart_worker(victim)
    run.seconds["worker back"] = (utc(time.time()) - fault.at).total_seconds()


def all_deferred(deployment: ProductionDeployment, run_id: str, launches: Path) -> bool:
    tis = deployment.task_instances(DAG_ID, run_id)
    return len(tis) == FAN_OUT and all(ti.state == "deferred" for ti in tis) and launched(launches) >= FAN_OUT


def flowing(
    deployment: ProductionDeployment,
    run_id: str,
    since: datetime | None = None,
    lines: int = LINES_BEFORE_KILL,
) -> bool:
    """Every task's current try logged ``lines`` output lines (after ``since``, if given)."""
    return all(
        lines_logged(deployment, run_id, ti, since) >= lines
        for ti in deployment.task_instances(DAG_ID, run_id)
    )


def kill_the_busiest_triggerer(deployment: ProductionDeployment, run: ProductionRun) -> str:
    """Fault 2: SIGKILL the triggerer holding the most triggers; return the other one once it holds all."""
    held = deployment.triggers_by_triggerer()
    dead = max(deployment.live_triggerers, key=lambda name: held.get(name, 0))
    survivor = next(name for name in deployment.live_triggerers if name != dead)
    fault = Fault(dead, "SIGKILL", utc(deployment.kill_component(dead)), deployment.triggerer_job_ids[dead])
    fault.detail = f"triggers held just before: {held}"
    run.faults["triggerer"] = fault
    wait_until(
        "every trigger on the surviving triggerer",
        FAILOVER_TIMEOUT,
        lambda: (
            sample(deployment, run, "failing over") or set(deployment.triggers_by_triggerer()) == {survivor}
        ),
        deployment,
    )
    run.seconds["failover"] = (utc(time.time()) - fault.at).total_seconds()
    sample(deployment, run, "after the failover")
    deployment.start_triggerer()
    return survivor


def restart_gracefully(deployment: ProductionDeployment, run: ProductionRun, survivor: str) -> None:
    """Fault 3: stop the surviving original triggerer with SIGTERM, then start a new one."""
    fault = Fault(survivor, "SIGTERM", utc(time.time()), deployment.triggerer_job_ids[survivor])
    fault.detail = f"triggers held just before: {deployment.triggers_by_triggerer()}"
    run.faults["restart"] = fault
    deployment.stop_component(survivor)
    run.seconds["graceful stop"] = (utc(time.time()) - fault.at).total_seconds()
    deployment.start_triggerer()
    live = set(deployment.live_triggerers)
    wait_until(
        "every trigger on a live triggerer",
        FAILOVER_TIMEOUT,
        lambda: sample(deployment, run, "restarting") or set(deployment.triggers_by_triggerer()) <= live,
        deployment,
    )


def run_finished(deployment: ProductionDeployment, run_id: str) -> bool:
    return deployment.run_state(DAG_ID, run_id) in ("success", "failed")


def collect(deployment: ProductionDeployment, run: ProductionRun, run_id: str) -> None:
    """What the run left: states, every try's log lines, the scheduler's race lines, triggerer ids."""
    run.state = deployment.run_state(DAG_ID, run_id)
    for ti in deployment.task_instances(DAG_ID, run_id):
        run.tis[ti.map_index] = (ti.state, ti.try_number)
        run.lines[ti.map_index] = {
            n: merged_by_time(deployment.task_log_files(DAG_ID, run_id, ti, n))
            for n in range(1, ti.try_number + 1)
        }
    run.race_lines = deployment.state_mismatches()
    run.triggerers = {job_id: name for name, job_id in deployment.triggerer_job_ids.items()}


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def writer(line: TimedLine) -> int | None:
    """The triggerer job id that wrote a task-log line (None: the worker wrote it)."""
    match = TRIGGER_LOG_FILE.search(line.path.name)
    return int(match.group(1)) if match else None


def lines_logged(
    deployment: ProductionDeployment, run_id: str, ti: TaskInstance, since: datetime | None
) -> int:
    """How many output lines the task's current try has logged (after ``since``, if given)."""
    files = deployment.task_log_files(DAG_ID, run_id, ti, max(ti.try_number, 1))
    return sum(
        1
        for line in merged_by_time(files)
        if SHARD_LINE.match(line.event) and (since is None or line.timestamp > since)
    )


# ---------------------------------------------------------------------------- reading the logs


@dataclass(frozen=True)
class Stream:
    """A task's remote output as its log holds it: line numbers in order, and who wrote each."""

    try_number: int
    numbers: list[int]
    writers: list[int | None]
    lines: list[TimedLine]
    #: how many lines the job says it printed (its last line); None when that line is missing
    printed: int | None

    @property
    def lost(self) -> int:
        """Lines the job printed that the log lacks (all of them if it lacks the job's last line)."""
        if self.printed is None:
            return max(len(set(self.numbers)), 1)
        return len(set(range(1, self.printed + 1)) - set(self.numbers))

    @property
    def repeated(self) -> int:
        return len(self.numbers) - len(set(self.numbers))


def output_tries(run: ProductionRun, shard: int) -> list[Stream]:
    """The tries of a task whose log holds output lines (one, unless something ran twice)."""
    found = []
    for try_number, lines in sorted(run.lines[shard].items()):
        output = [line for line in lines if SHARD_LINE.match(line.event)]
        if output:
            numbers = [int(SHARD_LINE.match(line.event).group(2)) for line in output]  # type: ignore[union-attr]
            printed = [int(match.group(2)) for line in lines if (match := PRINTED_LINE.match(line.event))]
            found.append(
                Stream(
                    try_number, numbers, [writer(line) for line in output], output, max(printed, default=None)
                )
            )
    return found


def recent_lines(stream: Stream, job_id: int, seconds: float) -> int:
    """How many lines the triggerer ``job_id`` logged for this task in its last ``seconds`` on it."""
    mine = [line.timestamp for line in stream.lines if writer(line) == job_id]
    return sum((mine[-1] - stamp).total_seconds() <= seconds for stamp in mine) if mine else 0


def takeovers(run: ProductionRun, fault: Fault) -> list[float]:
    """For each task whose watch the fault moved: seconds from the fault to its next line, by another writer."""
    found = []
    for shard in run.lines:
        for stream in output_tries(run, shard):
            if fault.job_id not in stream.writers:
                continue
            after = [
                line for line in stream.lines if writer(line) != fault.job_id and line.timestamp > fault.at
            ]
            if after:
                found.append((after[0].timestamp - fault.at).total_seconds())
    return sorted(found)


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"median {statistics.median(values):.1f}s, max {values[-1]:.1f}s ({len(values)} tasks)"


def worker_kill_victims(run: ProductionRun) -> list[int]:
    """Tasks whose first try died with the Celery worker: it never deferred, and was retried."""
    return sorted(
        shard
        for shard, (_, tries) in run.tis.items()
        if tries >= 2
        and not any(writer(line) is not None for line in run.lines[shard][1])
        and not any("exited with code" in line.event for line in run.lines[shard][1])
    )
