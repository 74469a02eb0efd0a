"""
The scenario of ``test_production_shape.py``: its DAGs, the run with its faults, and readers of what
the run left (task logs, the host's launches file, connection samples).

Components killed mid-fan-out on a production-shaped Airflow 3: PostgreSQL, Redis, CeleryExecutor.

One deployment (:class:`harness.production.ProductionDeployment`: api-server, scheduler,
dag-processor, two Celery workers, two triggerers; Airflow's own recovery shortened to seconds,
see ``FAST_TASK_RECOVERY_ENV`` and ``HA_ENV``) runs two fan-outs of FAN_OUT mapped tasks against
one real sshd, one per submit mode. Every remote job appends a line to a ``launches`` file as
its first command (jobs are counted on the host, whatever the logs say), waits at a gate file,
prints LINES numbered lines, and exits with its shard's code: 0, or SKIP_CODE for every tenth
shard (the operator's ``skip_on_exit_code``, so the task must end ``skipped``).

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

CONN_ID = "ssh_production"
#: dag_id -> submit_from
FANOUTS = {"production_fanout_worker": "worker", "production_fanout_triggerer": "triggerer"}
WORKER_DAG = "production_fanout_worker"
FAN_OUT = 100
LINES = 60
LINE_SECONDS = 0.5
SKIP_CODE = 99
#: The jobs wait at most this long for the gate (polls of 0.2 s), so none is left waiting.
GATE_POLLS = 1500
#: The Celery worker is killed once this many of the worker-mode jobs were launched.
KILL_WORKER_AFTER = 30
LINES_BEFORE_KILL = 2
START_TIMEOUT = 240.0
RAMP_TIMEOUT = 300.0
FLOWING_TIMEOUT = 90.0
FAILOVER_TIMEOUT = 90.0
RUN_TIMEOUT = 420.0
#: Output of one batch poll reaches the task log within milliseconds; polls are >= 1 s apart.
SAME_POLL_SECONDS = 0.3
SHARD_LINE = re.compile(r"^shard (\d+) line (\d+)$")

DAG_TEXT = """\
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator

# Retries: a task whose Celery worker was killed is failed by Airflow and must come back; and
# Airflow's scheduler sometimes fails a resumed deferred task itself (a known race).
DEFAULTS = {{"retries": 3, "retry_delay": timedelta(seconds=1)}}
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
            skip_on_exit_code={skip_code},
            max_active_tis_per_dag={fan_out},
            submit_from=submit_from,
        ).expand(command=commands)
    globals()[dag_id] = dag
"""


def exit_code(shard: int) -> int:
    return SKIP_CODE if shard % 10 == 9 else 0


def commands(dag_id: str, launches: Path, gate: Path) -> list[str]:
    return [
        f"echo '{dag_id} {shard}' >> {launches}\n"
        f"n=0\nwhile [ ! -e {gate} ] && [ $n -lt {GATE_POLLS} ]; do sleep 0.2; n=$((n+1)); done\n"
        f'for i in $(seq 1 {LINES}); do echo "shard {shard} line $i"; sleep {LINE_SECONDS}; done\n'
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


@dataclass
class ProductionRun:
    states: dict[str, str]
    #: dag_id -> map_index -> (final state, try number)
    tis: dict[str, dict[int, tuple[str | None, int]]]
    #: (dag_id, map_index) -> try -> that try's lines in the order written
    lines: dict[tuple[str, int], dict[int, list[TimedLine]]]
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
    remote_dir, launches, gate = base / "remote-jobs", base / "launches", base / "gate"
    sshd: SSHServer = start_sshd(base / "sshd", max_startups="100:30:200")
    deployment = ProductionDeployment(
        base / "airflow", env={**sshd.airflow_env(CONN_ID), **HA_ENV, **FAST_TASK_RECOVERY_ENV}
    )
    fanouts = {
        dag_id: (mode, str(remote_dir / dag_id), commands(dag_id, launches, gate))
        for dag_id, mode in FANOUTS.items()
    }
    deployment.add_dag_file(
        "production_fanouts.py",
        DAG_TEXT.format(fanouts=fanouts, fan_out=FAN_OUT, conn_id=CONN_ID, skip_code=SKIP_CODE),
    )
    run = ProductionRun({}, {}, {}, Counter(), remote_dir, {}, {}, ConnectionSampler(deployment, sshd.port))
    seconds = run.seconds
    try:
        started = time.monotonic()
        deployment.start(START_TIMEOUT)
        deployment.wait_for_dags(FANOUTS)
        seconds["start"] = time.monotonic() - started
        started = time.monotonic()
        run_ids = {dag_id: deployment.trigger(dag_id) for dag_id in FANOUTS}

        def launched(dag_id: str) -> int:
            return sum(n for tag, n in launch_counts(launches).items() if tag.split()[0] == dag_id)

        # 1. A Celery worker dies while the workers submit.
        wait_until(
            f"{KILL_WORKER_AFTER} worker-mode jobs launched",
            RAMP_TIMEOUT,
            lambda: launched(WORKER_DAG) >= KILL_WORKER_AFTER,
            deployment,
        )
        victim = max(deployment.celery_workers, key=lambda name: len(deployment.task_processes(name)))
        run.faults["worker"] = Fault(victim, "SIGKILL", utc(deployment.kill_component(victim)))
        run.faults["worker"].job_id = launched(WORKER_DAG)  # jobs launched at the kill, for the report
        deployment.restart_worker(victim)
        seconds["worker back"] = (utc(time.time()) - run.faults["worker"].at).total_seconds()

        def all_deferred() -> bool:
            sample(deployment, run, "ramp")
            tis = [ti for dag_id in FANOUTS for ti in deployment.task_instances(dag_id, run_ids[dag_id])]
            return (
                len(tis) == len(FANOUTS) * FAN_OUT
                and all(ti.state == "deferred" for ti in tis)
                and sum(launched(dag_id) for dag_id in FANOUTS) >= len(tis)
            )

        wait_until("every task deferred with its job launched", RAMP_TIMEOUT, all_deferred, deployment)
        seconds["ramp"] = time.monotonic() - started
        gate.touch()

        def flowing() -> bool:
            sample(deployment, run, "two triggerers")
            return all(
                latest_line(deployment, dag_id, run_ids[dag_id], ti) >= LINES_BEFORE_KILL
                for dag_id in FANOUTS
                for ti in deployment.task_instances(dag_id, run_ids[dag_id])
            )

        wait_until("output of every task in its log", FLOWING_TIMEOUT, flowing, deployment)

        # 2. A triggerer dies while it watches; the other takes over, a replacement starts.
        held = deployment.triggers_by_triggerer()
        dead = max(deployment.live_triggerers, key=lambda name: held.get(name, 0))
        survivor = next(name for name in deployment.live_triggerers if name != dead)
        run.faults["triggerer"] = Fault(
            dead, "SIGKILL", utc(deployment.kill_component(dead)), deployment.triggerer_job_ids[dead]
        )
        wait_until(
            "every trigger on the surviving triggerer",
            FAILOVER_TIMEOUT,
            lambda: (
                sample(deployment, run, "failing over")
                or set(deployment.triggers_by_triggerer()) == {survivor}
            ),
            deployment,
        )
        sample(deployment, run, "after the failover")
        replacement = deployment.start_triggerer()
        seconds["failover"] = (utc(time.time()) - run.faults["triggerer"].at).total_seconds()

        # 3. The surviving original triggerer is restarted gracefully.
        stopped_at = utc(time.time())
        deployment.stop_component(survivor)
        run.faults["restart"] = Fault(survivor, "SIGTERM", stopped_at, deployment.triggerer_job_ids[survivor])
        deployment.start_triggerer()
        wait_until(
            "every trigger on a live triggerer",
            FAILOVER_TIMEOUT,
            lambda: (
                sample(deployment, run, "restarting")
                or set(deployment.triggers_by_triggerer()) <= {replacement}
            ),
            deployment,
        )

        def finished() -> bool:
            sample(deployment, run, "after the restart")
            return all(
                deployment.run_state(dag_id, run_ids[dag_id]) in ("success", "failed") for dag_id in FANOUTS
            )

        wait_until("both runs finished", RUN_TIMEOUT, finished, deployment)
        seconds["runs"] = time.monotonic() - started
        for dag_id in FANOUTS:
            run.states[dag_id] = deployment.run_state(dag_id, run_ids[dag_id])
            run.tis[dag_id] = {}
            for ti in deployment.task_instances(dag_id, run_ids[dag_id]):
                run.tis[dag_id][ti.map_index] = (ti.state, ti.try_number)
                run.lines[(dag_id, ti.map_index)] = {
                    n: merged_by_time(deployment.task_log_files(dag_id, run_ids[dag_id], ti, n))
                    for n in range(1, ti.try_number + 1)
                }
        run.race_lines = deployment.state_mismatches()
        run.triggerers = {job_id: name for name, job_id in deployment.triggerer_job_ids.items()}
    finally:
        try:
            deployment.stop()
        finally:
            for dag_id in FANOUTS:
                kill_running_jobs(remote_dir / dag_id)
            sshd.stop()
    run.launches = launch_counts(launches)
    return run


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def writer(line: TimedLine) -> int | None:
    """The triggerer job id that wrote a task-log line (None: the worker wrote it)."""
    match = TRIGGER_LOG_FILE.search(line.path.name)
    return int(match.group(1)) if match else None


def latest_line(deployment: ProductionDeployment, dag_id: str, run_id: str, ti: TaskInstance) -> int:
    """The highest output line number the task's current try has logged so far."""
    files = deployment.task_log_files(dag_id, run_id, ti, max(ti.try_number, 1))
    numbers = [
        int(match.group(2)) for line in merged_by_time(files) if (match := SHARD_LINE.match(line.event))
    ]
    return max(numbers, default=0)


# ---------------------------------------------------------------------------- reading the logs


@dataclass(frozen=True)
class Stream:
    """A task's remote output as its log holds it: line numbers in order, and who wrote each."""

    try_number: int
    numbers: list[int]
    writers: list[int | None]
    lines: list[TimedLine]

    @property
    def lost(self) -> int:
        return len(set(range(1, LINES + 1)) - set(self.numbers))

    @property
    def repeated(self) -> int:
        return len(self.numbers) - len(set(self.numbers))


def output_tries(run: ProductionRun, dag_id: str, shard: int) -> list[Stream]:
    """The tries of a task whose log holds output lines (one, unless something ran twice)."""
    found = []
    for try_number, lines in sorted(run.lines[(dag_id, shard)].items()):
        output = [line for line in lines if SHARD_LINE.match(line.event)]
        if output:
            numbers = [int(SHARD_LINE.match(line.event).group(2)) for line in output]  # type: ignore[union-attr]
            found.append(Stream(try_number, numbers, [writer(line) for line in output], output))
    return found


def last_tick(stream: Stream, job_id: int) -> int:
    """How many lines the triggerer ``job_id`` wrote in its last poll of this task (one burst)."""
    mine = [line.timestamp for line in stream.lines if writer(line) == job_id]
    return sum((mine[-1] - stamp).total_seconds() <= SAME_POLL_SECONDS for stamp in mine) if mine else 0


def takeovers(run: ProductionRun, fault: Fault) -> list[float]:
    """For each task whose watch the fault moved: seconds from the fault to its next line, by another writer."""
    found = []
    for dag_id, shard in run.lines:
        for stream in output_tries(run, dag_id, shard):
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


def worker_kill_victims(run: ProductionRun) -> list[tuple[str, int]]:
    """Tasks whose first try died with the Celery worker: never deferred, retried."""
    return sorted(
        (dag_id, shard)
        for dag_id, tis in run.tis.items()
        for shard, (_, tries) in tis.items()
        if tries >= 2
        and not any(writer(line) is not None for line in run.lines[(dag_id, shard)][1])
        and not any("exited with code" in line.event for line in run.lines[(dag_id, shard)][1])
    )
