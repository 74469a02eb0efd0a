"""
The main job, end to end: a fan-out of remote jobs through a real Airflow against a real sshd.

Starts OpenSSH's sshd on 127.0.0.1 as the remote host (``MaxStartups 10:30:100``, the
default that large fan-outs run into), a throwaway Airflow deployment (api-server,
scheduler, dag-processor, triggerer; on Airflow 2.11 webserver, scheduler, triggerer;
LocalExecutor on SQLite), runs the example fan-out DAG
with ``--tasks`` mapped tasks, and prints a summary. ``--production`` runs the same fan-out on
a production-shaped Airflow instead: PostgreSQL, Redis, CeleryExecutor with two Celery
workers and two triggerers (:mod:`harness.production`). With ``--scheduler slurm``
the jobs go through a real single-node Slurm cluster started for the demo (the sshd's sessions
are its login node) instead of running detached. Everything it started is stopped when
it ends, also on Ctrl-C. Run it through ``bash dev/demo.sh``, which sets up the machine first.

Exit status: 0 when every task succeeded with its remote output in its log and no job
directory was left behind; 1 otherwise; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TextIO

from harness.airflow_deploy import AirflowDeployment, RunProgress, TaskInstance
from harness.processes import interrupts_unwind
from harness.production import ConnectionSampler, ProductionDeployment, watchers
from harness.remote_jobs import job_dirs, kill_running_jobs
from harness.slurm import SlurmCallLog, SlurmCluster
from harness.sshd import SSHServer

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DAGS = REPO / "provider" / "ssh_jobs_provider" / "example_dags"
DAG_ID = "example_ssh_remote_job_fanout"
MAX_STARTUPS = "10:30:100"
SETUP_SECONDS_ENV = "SSH_JOBS_DEMO_SETUP_SECONDS"
#: The lines each shard of the example DAG prints: "shard <i> starting on <host>", "shard <i> done".
SHARD_LINE = re.compile(r"^shard (\d+) (starting on \S+|done)$")
LINES_PER_SHARD = 2
STATE_ORDER = ("success", "failed", "upstream_failed", "skipped", "up_for_retry", "deferred", "running")
WAITING_STATES = frozenset({"queued", "scheduled", "None", "up_for_reschedule", "restarting"})
NON_TTY_PRINT_INTERVAL = 5.0
MAX_PROBLEMS_SHOWN = 10


# ---------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50, help="mapped tasks in the fan-out (default 50)")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds the DAG run may take (default 900)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temp directory (logs, Airflow home) afterwards"
    )
    parser.add_argument(
        "--submit-from",
        choices=("worker", "triggerer"),
        default="worker",
        help="where the jobs are submitted: from each worker (default), or by the triggerer over its "
        "one shared connection (submit_from='triggerer')",
    )
    parser.add_argument(
        "--production",
        action="store_true",
        help="run on a production-shaped Airflow: PostgreSQL, Redis, CeleryExecutor with two Celery "
        "workers, two triggerers (default: LocalExecutor on SQLite, one triggerer)",
    )
    parser.add_argument(
        "--scheduler",
        choices=("none", "slurm"),
        default="none",
        help="how the jobs run: detached on the host (default), or through Slurm (scheduler='slurm', "
        "with a single-node Slurm cluster started by the demo: needs slurmctld, slurmd, munge)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.tasks <= 1000:
        parser.error("--tasks must be between 1 and 1000")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


# ---------------------------------------------------------------------------- progress


def say(text: str) -> None:
    print(text, flush=True)


def describe_states(progress: RunProgress) -> str:
    counts = progress.task_states
    parts = [f"{counts[state]} {state}" for state in STATE_ORDER if counts.get(state)]
    waiting = sum(count for state, count in counts.items() if state in WAITING_STATES)
    if waiting:
        parts.append(f"{waiting} waiting")
    return ", ".join(parts) or "no tasks yet"


class ProgressLine:
    """One line rewritten in place on a terminal; plain lines (on change, throttled) otherwise."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_state = ""
        self._last_print = -NON_TTY_PRINT_INTERVAL
        self._open_line = False

    def update(self, progress: RunProgress) -> None:
        state = f"run {progress.run_state}: {describe_states(progress)}"
        text = f"  [{progress.elapsed:4.0f}s] {state}"
        if self.tty:
            # A line wider than the terminal would wrap, and "\r" only returns to its last part.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + text[:width])
            self.stream.flush()
            self._open_line = True
            return
        # A log file gets a line per change, at most every few seconds, and always the last one.
        finished = progress.run_state in ("success", "failed")
        due = time.monotonic() - self._last_print >= NON_TTY_PRINT_INTERVAL
        if finished or (due and state != self._last_state):
            print(text, file=self.stream, flush=True)
            self._last_state, self._last_print = state, time.monotonic()

    def close(self) -> None:
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False


# ---------------------------------------------------------------------------- results


@dataclass
class TaskReport:
    """What one mapped task did, as seen by Airflow and in its log."""

    map_index: int
    state: str | None
    try_number: int
    own_lines: list[str]
    foreign_lines: list[str]

    @property
    def output_complete(self) -> bool:
        """Its own two lines, in order, and nobody else's."""
        prefix = f"shard {self.map_index} "
        expected_order = [prefix + "starting on ", prefix + "done"]
        return (
            not self.foreign_lines
            and len(self.own_lines) == LINES_PER_SHARD
            and all(
                line.startswith(start) for line, start in zip(self.own_lines, expected_order, strict=True)
            )
        )


@dataclass
class DemoResult:
    tasks: int
    submit_from: str = "worker"
    scheduler: str = "none"
    #: Slurm's end state of each job (scheduler "slurm"), counted.
    slurm_states: dict[str, int] = field(default_factory=dict)
    #: How often the login node ran each Slurm command, and how many ids each squeue asked about.
    slurm_calls: dict[str, int] = field(default_factory=dict)
    squeue_ids: list[int] = field(default_factory=list)
    run_state: str = "not started"
    reports: list[TaskReport] = field(default_factory=list)
    sshd_counts: dict[str, int] = field(default_factory=dict)
    leftover_dirs: list[Path] = field(default_factory=list)
    #: Scheduler lines saying it failed a task itself, after its executor reported it finished.
    mismatch_lines: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    production: bool = False
    #: production shape: triggerer -> map indexes of the tasks it watched
    watched: dict[str, list[int]] = field(default_factory=dict)
    #: production shape: triggerer -> most connections it held to the host at once
    connections: dict[str, int] = field(default_factory=dict)

    @property
    def succeeded(self) -> int:
        return sum(report.state == "success" for report in self.reports)

    @property
    def ok(self) -> bool:
        return (
            self.run_state == "success"
            and len(self.reports) == self.tasks
            and all(report.state == "success" and report.output_complete for report in self.reports)
            and not self.leftover_dirs
            and (self.scheduler != "slurm" or self.slurm_states == {"COMPLETED": self.tasks})
        )


def shard_lines(events: list[str], map_index: int) -> tuple[list[str], list[str]]:
    """(this shard's lines, other shards' lines) among a task log's events, in log order."""
    own: list[str] = []
    foreign: list[str] = []
    for event in events:
        match = SHARD_LINE.match(event.strip())
        if match:
            (own if int(match.group(1)) == map_index else foreign).append(event.strip())
    return own, foreign


def task_report(deployment: AirflowDeployment, run_id: str, ti: TaskInstance) -> TaskReport:
    """
    What the task's log shows: its latest try's lines, or, for a retry that ended like an earlier
    try's job without running it again, the lines of the latest try that has any.
    """
    own: list[str] = []
    foreign: list[str] = []
    for try_number in range(max(ti.try_number, 1), 0, -1):
        own, foreign = shard_lines(deployment.task_log(DAG_ID, run_id, ti, try_number).events(), ti.map_index)
        if own or foreign:
            break
    return TaskReport(ti.map_index, ti.state, ti.try_number, own, foreign)


def map_indexes(lines: list[str]) -> list[int]:
    found = {int(match.group(1)) for line in lines if (match := re.search(r"map_index=(\d+)", line))}
    return sorted(found)


def airflow_side_rows(mismatch_lines: list[str]) -> list[tuple[str, str]]:
    """
    Rows for tasks Airflow failed by itself, not their jobs.

    "finished with state success" is the upstream race with resumed deferred tasks; any
    other reported state means the task's worker process itself failed (see the output of
    the scheduler, which runs the workers).
    """
    raced = [line for line in mismatch_lines if "finished with state success" in line]
    crashed = [line for line in mismatch_lines if line not in raced]
    rows = []
    if raced:
        rows.append(
            (
                "Scheduler race",
                f"Airflow's scheduler failed {len(map_indexes(raced))} resumed task(s) itself (map index "
                f"{', '.join(map(str, map_indexes(raced)))}): 'finished with state success, but the task "
                "instance's state attribute is queued/running', an upstream Airflow race, not the job",
            )
        )
    if crashed:
        rows.append(
            (
                "Worker failures",
                f"the task process of {len(map_indexes(crashed))} task(s) failed outside the operator "
                f"(map index {', '.join(map(str, map_indexes(crashed)))}); see process-output/scheduler.out",
            )
        )
    return rows


# ---------------------------------------------------------------------------- the run


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[name] = time.monotonic() - started


def run_fanout(args: argparse.Namespace, workdir: Path, result: DemoResult) -> None:
    """Start sshd and Airflow, run the DAG, collect what happened; stop everything."""
    remote_base_dir = workdir / "remote-jobs"
    slurm = SlurmCluster(workdir / "slurm") if args.scheduler == "slurm" else None
    # The login node runs the Slurm commands through wrappers that record each call.
    calls = SlurmCallLog(workdir / "slurm-calls") if slurm else None
    session_env = {**slurm.env, "PATH": calls.path} if slurm and calls else None
    sshd = SSHServer(workdir / "sshd", max_startups=MAX_STARTUPS, session_env=session_env)
    deployment: AirflowDeployment | None = None
    try:
        if slurm is not None:
            with timed(result.timings, "Slurm start"):
                slurm.start()
            say(
                f"- Slurm cluster (slurmctld, slurmd, munged) of one node up in {result.timings['Slurm start']:.1f}s"
            )
        with timed(result.timings, "sshd start"):
            sshd.start()
        say(f"- sshd (the remote host) listening on {sshd.host}:{sshd.port}, MaxStartups {MAX_STARTUPS}")
        shape = ProductionDeployment if args.production else AirflowDeployment
        deployment = shape(
            workdir / "airflow",
            # The fan-out alone: the sshd then counts its logins only (the reaper example, @daily,
            # would run once and log in too).
            dag_files=[EXAMPLE_DAGS / f"{DAG_ID}.py"],
            env={
                **sshd.airflow_env("ssh_default"),
                "SSH_JOBS_EXAMPLE_BASE_DIR": str(remote_base_dir),
                "SSH_JOBS_EXAMPLE_FAN_OUT": str(args.tasks),
                "SSH_JOBS_EXAMPLE_SUBMIT_FROM": args.submit_from,
                "SSH_JOBS_EXAMPLE_SCHEDULER": "" if args.scheduler == "none" else args.scheduler,
            },
        )
        start_airflow(deployment, result)
        sampler = (
            ConnectionSampler(deployment, sshd.port) if isinstance(deployment, ProductionDeployment) else None
        )
        run_id = trigger_and_wait(deployment, args, result, sampler)
        collect(deployment, sshd, run_id, remote_base_dir, result)
        if sampler is not None:
            result.watched = watchers(deployment, DAG_ID, run_id)
            result.connections = dict(sampler.peak)
        if slurm is not None and calls is not None:
            result.slurm_states = slurm_end_states(slurm)
            result.slurm_calls = {
                name: len(calls.calls(name)) for name in ("sbatch", "squeue", "sacct", "scancel")
            }
            result.squeue_ids = calls.ids_per_squeue()
    finally:
        with timed(result.timings, "stop"), interrupts_ignored():
            stop_everything(deployment, sshd, remote_base_dir, slurm)


def slurm_end_states(slurm: SlurmCluster) -> dict[str, int]:
    """How many of the cluster's jobs are in each state."""
    states = slurm.run(["squeue", "-h", "-t", "all", "-o", "%T"], check=False).split()
    return {state: states.count(state) for state in sorted(set(states))}


def start_airflow(deployment: AirflowDeployment, result: DemoResult) -> None:
    if isinstance(deployment, ProductionDeployment):
        say(
            f"- Airflow {version('apache-airflow')}, production shape: PostgreSQL, Redis, db migrate, then "
            f"api-server, scheduler, dag-processor, {len(deployment.triggerer_components)} triggerers, "
            f"{len(deployment.celery_workers)} Celery workers ({deployment.concurrency} slots each)"
        )
    else:
        say(f"- Airflow {version('apache-airflow')}: db migrate, then {', '.join(deployment.components)}")
    with timed(result.timings, "Airflow start"):
        deployment.start()
        deployment.wait_for_dags([DAG_ID])
    say(
        f"  healthy after {result.timings['Airflow start']:.0f}s; API on {deployment.api_url}, "
        f"AIRFLOW_HOME {deployment.home}"
    )


def trigger_and_wait(
    deployment: AirflowDeployment,
    args: argparse.Namespace,
    result: DemoResult,
    sampler: ConnectionSampler | None = None,
) -> str:
    run_id = deployment.trigger(DAG_ID)
    say(f"- triggered {DAG_ID} ({args.tasks} mapped tasks), run {run_id}")
    progress = ProgressLine()

    def on_progress(state: RunProgress) -> None:
        if sampler is not None:
            sampler.sample()
        progress.update(state)

    try:
        with timed(result.timings, "DAG run"):
            result.run_state = deployment.wait_for_run(DAG_ID, run_id, args.timeout, on_progress)
    finally:
        progress.close()
    return run_id


def collect(
    deployment: AirflowDeployment, sshd: SSHServer, run_id: str, remote_base_dir: Path, result: DemoResult
) -> None:
    result.reports = [task_report(deployment, run_id, ti) for ti in deployment.task_instances(DAG_ID, run_id)]
    result.sshd_counts = sshd.counts()
    result.leftover_dirs = job_dirs(remote_base_dir)
    result.mismatch_lines = deployment.state_mismatches()


def stop_everything(
    deployment: AirflowDeployment | None, sshd: SSHServer, remote_base_dir: Path, slurm: SlurmCluster | None
) -> None:
    say("- stopping Airflow, remote jobs, sshd" + (" and Slurm" if slurm else ""))
    try:
        if deployment is not None:
            deployment.stop()
    finally:
        try:
            killed = kill_running_jobs(remote_base_dir)
            if killed:
                say(f"  stopped {killed} remote job(s) still running")
        finally:
            try:
                sshd.stop()
            finally:
                if slurm is not None:
                    # Its jobs are cancelled first: slurmd leaves running jobs behind when it exits.
                    slurm.stop()


@contextmanager
def interrupts_ignored() -> Iterator[None]:
    """Let the clean-up finish (it is bounded) even if Ctrl-C is pressed again."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------- summary


def format_wall_time(result: DemoResult, total: float) -> str:
    phases = []
    setup = os.environ.get(SETUP_SECONDS_ENV, "")
    if setup.isdigit():
        phases.append(f"setup {int(setup)}s")
        total += int(setup)
    for name in ("Airflow start", "DAG run", "stop"):
        if name in result.timings:
            phases.append(f"{name} {result.timings[name]:.0f}s")
    return f"{total:.0f}s ({', '.join(phases)})"


def summary_rows(result: DemoResult, total: float, workdir: Path) -> list[tuple[str, str]]:
    failed = sum(report.state == "failed" for report in result.reports)
    other = len(result.reports) - result.succeeded - failed
    tasks = f"{result.succeeded} of {result.tasks} succeeded, {failed} failed" + (
        f", {other} in other states" if other else ""
    )
    complete = sum(report.output_complete for report in result.reports)
    seen = sum(len(report.own_lines) for report in result.reports)
    counts = result.sshd_counts
    accepted = counts.get("accepted", 0)
    per_task = accepted / result.tasks if result.tasks else 0.0
    rows = [
        (
            "Tasks",
            f"{tasks}   (DAG run: {result.run_state}; submitted from the {result.submit_from}"
            + ("; through Slurm)" if result.scheduler == "slurm" else ")"),
        ),
        (
            "Remote output",
            f"{seen} of {result.tasks * LINES_PER_SHARD} lines in the task logs; "
            f"{complete} of {result.tasks} tasks show exactly their own lines, in order",
        ),
        (
            "sshd",
            f"{accepted} handshake{'' if accepted == 1 else 's'} accepted ({per_task:.2f} per task), "
            f"{counts.get('drops', 0)} dropped past MaxStartups {MAX_STARTUPS}, "
            f"{counts.get('session_refusals', 0)} MaxSessions refusals",
        ),
        *(slurm_rows(result, counts.get("sessions", 0)) if result.scheduler == "slurm" else []),
        ("Job directories", f"{len(result.leftover_dirs)} left behind"),
        *production_rows(result),
        ("Wall time", format_wall_time(result, total)),
    ]
    rows += airflow_side_rows(result.mismatch_lines)
    if not result.ok:
        rows.append(("Logs kept in", str(workdir)))
    return rows


def index_ranges(indexes: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8": which tasks, compactly."""
    parts: list[str] = []
    for index in indexes:
        if parts and int(parts[-1].rpartition("-")[2]) == index - 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{index}"
        else:
            parts.append(str(index))
    return ", ".join(parts)


def production_rows(result: DemoResult) -> list[tuple[str, str]]:
    """Which triggerer watched which tasks, and the most connections each held to the host at once."""
    if not result.production:
        return []
    rows = [("Deployment", "PostgreSQL, Redis, CeleryExecutor (2 Celery workers), 2 triggerers")]
    for name in sorted(set(result.watched) | set(result.connections)):
        tasks = result.watched.get(name, [])
        rows.append(
            (
                f"  {name}",
                f"watched {len(tasks)} task(s) (map index {index_ranges(tasks) or '-'}); "
                f"at most {result.connections.get(name, 0)} connection(s) to the host at once",
            )
        )
    return rows


def slurm_rows(result: DemoResult, execs: int) -> list[tuple[str, str]]:
    """What Slurm recorded, and what the login node ran for it (one squeue per tick at most)."""
    calls = result.slurm_calls
    widest = max(result.squeue_ids, default=0)
    return [
        (
            "Slurm jobs",
            ", ".join(f"{count} {state}" for state, count in result.slurm_states.items()) or "none",
        ),
        (
            "Login node",
            f"{calls.get('sbatch', 0)} sbatch, {calls.get('squeue', 0)} squeue (up to {widest} jobs each), "
            f"{calls.get('sacct', 0)} sacct, {calls.get('scancel', 0)} scancel over {execs} SSH execs",
        ),
    ]


def problem_lines(result: DemoResult) -> list[str]:
    problems = [
        f"  shard {report.map_index}: state {report.state}, try {report.try_number}, "
        f"own lines {report.own_lines}, other shards' lines {len(report.foreign_lines)}"
        for report in result.reports
        if report.state != "success" or not report.output_complete
    ]
    problems += [f"  left behind: {path}" for path in result.leftover_dirs]
    if len(problems) > MAX_PROBLEMS_SHOWN:
        problems = [*problems[:MAX_PROBLEMS_SHOWN], f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more"]
    return problems


def render_summary(result: DemoResult, total: float, workdir: Path) -> str:
    verdict = "OK" if result.ok else "PROBLEMS"
    title = f"== {verdict}: {DAG_ID}, {result.tasks} mapped tasks, Airflow {version('apache-airflow')}"
    rows = summary_rows(result, total, workdir)
    width = max(len(name) for name, _ in rows)
    body = [f"  {name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(["", title, *body, *problem_lines(result)])


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="ssh-jobs-demo-")).resolve()
    result = DemoResult(
        tasks=args.tasks, submit_from=args.submit_from, production=args.production, scheduler=args.scheduler
    )
    shape = "a production-shaped Airflow" if args.production else "LocalExecutor on SQLite"
    through = " through Slurm" if args.scheduler == "slurm" else ""
    say(
        f"SSH remote jobs demo: {args.tasks}-way fan-out{through} submitted from the {args.submit_from} on {shape}, "
        f"working in {workdir}"
    )
    try:
        with interrupts_unwind():
            run_fanout(args, workdir, result)
    except KeyboardInterrupt:
        say(f"\nInterrupted; everything this demo started has been stopped. Files kept in {workdir}")
        return 130
    except Exception as error:
        say(f"\nThe demo could not finish: {type(error).__name__}: {error}\nFiles kept in {workdir}")
        return 1
    print(render_summary(result, time.monotonic() - started, workdir), flush=True)
    if result.ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
