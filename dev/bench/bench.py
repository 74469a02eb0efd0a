"""
Fan-out benchmark: this provider against ``apache-airflow-providers-ssh``, side by side.

Runs under the project's virtualenv; ``dev/bench/run.sh`` prepares both environments and
calls it. For each scenario a throwaway OpenSSH ``sshd`` is started on 127.0.0.1 and both
implementations are measured against it, interleaved (A B, then B A, ...), each in its own
Python process (``workers.py`` for what workers do, ``triggerer.py`` for the triggerer).
This process counts what the server saw: its log (``LogLevel VERBOSE``) for handshakes,
channel opens and ``MaxStartups`` drops, the socket table for concurrent connections, and
the listener's accumulated child CPU time for the server-side cost.

Scenarios:

- burst: N worker processes released at once, each running ``operator.execute``
  (connect, OS detection, submit) until it defers; median of the repeats.
- monitor: N jobs submitted by a small pool of workers, then watched by N triggers in ONE
  asyncio process (poll interval 5 s and 1 s), then completed (``execute_complete`` with
  ``cleanup="always"``) by the pool; every phase counted separately, so the sum is the end-
  to-end cost per task.
- submit-modes: N = 120, 500, 1000 tasks submitted by upstream and by this provider from
  workers, and by this provider from the triggerer (``submit_from="triggerer"``), each job
  counted on the host (see ``submit_modes.py``).
- scaling: the monitoring run for N = 100, 500, 1000, 2000 (upstream up to 500), poll 5 s,
  a fresh sshd per N, with jobs that write a line a second and all end at one instant: cost
  per job and poll on the server and in the triggerer, and the delay from job end to event.

Results go to dev/out/bench/<timestamp>/ (raw JSON, Markdown table, plots) and the table
and plots are copied to docs/_static/bench/ for the Performance page.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DEV = BENCH.parent
REPO = DEV.parent
sys.path.insert(0, str(DEV))
sys.path.insert(0, str(BENCH))

try:  # the harness moved from tests/support to dev/harness; take whichever this checkout has
    from harness.sshd import SSHServer, count_log_events
except ImportError:  # pragma: no cover - older checkouts
    sys.path.insert(0, str(REPO))
    from tests.support.sshd import SSHServer, count_log_events  # type: ignore[no-redef]

import common  # noqa: E402
import report  # noqa: E402
import submit_modes  # noqa: E402

from harness.processes import descendants, interrupts_unwind, spawn_in_new_session, terminate_tree  # noqa: E402

SAMPLE_INTERVAL = 0.5
QUIET_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------ server side


def established_connections(port: int) -> int:
    """Server-side ESTABLISHED TCP sockets on 127.0.0.1:port, from /proc/net/tcp."""
    local = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        next(table, None)
        for line in table:
            fields = line.split()
            if len(fields) > 3 and fields[1] == local and fields[3] == "01":
                count += 1
    return count


def process_cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``: the listener plus every child it reaped."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return sum(int(value) for value in fields[11:15]) / CLK_TCK


class ConnectionSampler:
    """Counts established connections to the server every SAMPLE_INTERVAL seconds, bounded."""

    def __init__(self, port: int, limit_seconds: float) -> None:
        self.port = port
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._limit = limit_seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        for _ in range(int(self._limit / SAMPLE_INTERVAL) + 1):
            self.samples.append((round(time.monotonic() - start, 2), established_connections(self.port)))
            if self._stop.wait(SAMPLE_INTERVAL):
                break

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max((count for _, count in self.samples), default=0)


def wait_quiet(server: SSHServer) -> bool:
    """Wait (bounded) until no client is connected and sshd has no per-connection process left."""
    deadline = time.monotonic() + QUIET_TIMEOUT
    for _ in range(int(QUIET_TIMEOUT / 0.1) + 1):
        if established_connections(server.port) == 0 and (server.pid is None or not descendants(server.pid)):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return False


def sshd_banner(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        return conn.recv(256).decode(errors="replace").strip()


def kill_remote_jobs(marker: str) -> int:
    """
    SIGKILL the detached jobs whose command line names ``marker`` (a job directory tree of
    this run). Jobs leave the sshd process tree (``setsid``), so they are found in /proc;
    both implementations put the job directory on the job leader's command line.
    """
    killed = 0
    needle = marker.encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            pid = int(entry.name)
            if pid <= 1:
                continue
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed += 1
        except (OSError, ProcessLookupError):
            continue
    return killed


def watch_problems(tasks: list[dict[str, Any]], limit: int = 8) -> dict[str, int]:
    """How many watched tasks were not correct, by what went wrong (first 120 characters)."""
    kinds: dict[str, int] = {}
    for task in tasks:
        if task.get("correct"):
            continue
        if task.get("error"):
            kind = str(task["error"])
        elif not task.get("events"):
            kind = "no event" + (" (cancelled at the timeout)" if task.get("cancelled") else "")
        elif task["events"] > 1:
            kind = f"{task['events']} events"
        elif task.get("status") != "success" or task.get("exit_code") != 0:
            kind = f"status {task.get('status')}, exit {task.get('exit_code')}: {task.get('message', '')}"
        else:
            kind = "log lines wrong"
        kinds[kind[:120]] = kinds.get(kind[:120], 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1])[:limit])


def error_kinds(tasks: list[dict[str, Any]], limit: int = 8) -> dict[str, int]:
    """How many tasks failed with each kind of error (its first 120 characters)."""
    kinds: dict[str, int] = {}
    for task in tasks:
        if not task.get("ok") and task.get("error"):
            kind = str(task["error"])[:120]
            kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items(), key=lambda item: -item[1])[:limit])


# ------------------------------------------------------------------------------ the run


class Bench:
    def __init__(self, args: argparse.Namespace, out_dir: Path, work_dir: Path) -> None:
        self.args = args
        self.out_dir = out_dir
        self.work_dir = work_dir
        self.pythons = {"ours": args.ours_python, "upstream": args.upstream_python}
        self.active: subprocess.Popen[bytes] | None = None
        self.server: SSHServer | None = None
        self.results: dict[str, Any] = {"bursts": [], "monitor": [], "scaling": [], "submit_modes": []}
        self.versions: dict[str, Any] = {}
        self.seq = 0

    # -- processes ------------------------------------------------------------

    def new_server(self, name: str) -> SSHServer:
        self.stop_server()
        server = SSHServer(
            self.work_dir / name,
            max_startups=self.args.max_startups,
            max_sessions=self.args.max_sessions,
            log_level="VERBOSE",
            login_grace_time=self.args.login_grace_time,
        )
        server.start()
        self.server = server
        if "sshd_banner" not in self.results:
            self.results["sshd_banner"] = sshd_banner(server.port)
            self.results["sshd_config"] = server.config_path.read_text()
        wait_quiet(server)
        return server

    def stop_server(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                kill_remote_jobs(str(self.server.base_dir / "jobs"))
            self.server.stop()
            if not self.args.keep_logs:
                shutil.rmtree(self.server.base_dir, ignore_errors=True)
            self.server = None

    def driver_env(self, impl: str, server: SSHServer) -> dict[str, str]:
        home = self.work_dir / f"home-{impl}"
        airflow_home = self.work_dir / f"airflow-{impl}"
        home.mkdir(exist_ok=True)
        airflow_home.mkdir(exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # A clean HOME: no ~/.ssh/config, keys or known_hosts of this machine's user.
            "HOME": str(home),
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            f"AIRFLOW_CONN_{common.CONN_ID.upper()}": json.dumps(server.airflow_connection(common.CONN_ID)),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        if impl == "ours" and self.args.ours_src:
            env["PYTHONPATH"] = str(Path(self.args.ours_src).resolve())
        return env

    def run_driver(
        self, impl: str, script: str, spec: dict[str, Any], timeout: float, server: SSHServer
    ) -> dict[str, Any]:
        """Run one driver against ``server``; return its JSON plus what the server saw meanwhile."""
        self.seq += 1
        stem = self.work_dir / f"{self.seq:03d}-{impl}-{Path(script).stem}"
        spec_path, out_path, log_path = (stem.with_suffix(s) for s in (".spec.json", ".out.json", ".log"))
        spec_path.write_text(json.dumps(spec))
        quiet_before = wait_quiet(server)
        offset = server.log_path.stat().st_size
        cpu_before = process_cpu_seconds(server.pid or 0)
        load_before = os.getloadavg()
        command = [
            self.pythons[impl],
            str(BENCH / script),
            "--impl",
            impl,
            "--spec",
            str(spec_path),
            "--out",
            str(out_path),
        ]
        started = time.monotonic()
        timed_out = False
        with ConnectionSampler(server.port, timeout + 60) as sampler:
            self.active = spawn_in_new_session(command, output=log_path, env=self.driver_env(impl, server))
            try:
                self.active.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                terminate_tree(self.active)
                returncode = self.active.returncode
                self.active = None
        elapsed = time.monotonic() - started
        quiet_after = wait_quiet(server)
        time.sleep(0.5)  # per-connection sshd processes write their last log lines as they exit
        with server.log_path.open("rb") as sshd_log:
            sshd_log.seek(offset)
            counts = count_log_events(sshd_log.read().decode(errors="replace"))
        result: dict[str, Any] = {}
        if out_path.exists():
            result = json.loads(out_path.read_text())
        else:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
            log(f"   driver {script} ({impl}) produced no result (exit {returncode}); output tail:\n{tail}")
        if "versions" in result:
            self.versions.setdefault(impl, result["versions"])
        result.update(
            {
                "driver_exit": returncode,
                "driver_timed_out": timed_out,
                "driver_seconds": elapsed,
                "sshd": counts,
                "server_cpu_seconds": process_cpu_seconds(server.pid or 0) - cpu_before,
                "peak_connections": sampler.peak,
                "connection_samples": sampler.samples,
                "quiet_before": quiet_before,
                "quiet_after": quiet_after,
                "load_before": load_before,
                "load_after": os.getloadavg(),
            }
        )
        if not self.args.keep_logs:
            for path in (spec_path, out_path):
                path.unlink(missing_ok=True)
        return result

    # -- scenarios --------------------------------------------------------------

    def order(self, turn: int) -> list[str]:
        impls = list(self.args.impls)
        return impls if turn % 2 == 0 else impls[::-1]

    def burst(self) -> None:
        turn = 0
        for n in self.args.bursts:
            server = self.new_server(f"burst-{n}")
            for rep in range(self.args.repeats):
                for impl in self.order(turn):
                    base = server.base_dir / "jobs" / f"burst{n}-r{rep}-{impl}"
                    spec = {
                        "phase": "submit",
                        "n": n,
                        "workers": n,
                        "run_id": f"burst_{n}_{rep}",
                        "operator_kwargs": {"remote_base_dir": str(base)},
                        "job_seconds": 0,
                        "hard_timeout": self.args.burst_timeout,
                    }
                    log(f"burst N={n} repeat {rep + 1}/{self.args.repeats}: {impl}")
                    result = self.run_driver(impl, "workers.py", spec, self.args.burst_timeout + 60, server)
                    result["errors"] = error_kinds(result.get("tasks", []))
                    if not self.args.keep_tasks:
                        result.pop("tasks", None)
                    row = {"n": n, "repeat": rep, "impl": impl, **result}
                    self.results["bursts"].append(row)
                    log(
                        f"   failed {row.get('failed')}/{n}, handshakes {row['sshd']['accepted']}, "
                        f"drops {row['sshd']['drops']}, {row.get('wall_seconds', 0):.1f}s"
                    )
                    kill_remote_jobs(str(base))
                    shutil.rmtree(base, ignore_errors=True)
                turn += 1
            self.stop_server()

    def watched_jobs(
        self,
        server: SSHServer,
        impl: str,
        name: str,
        n: int,
        poll: float,
        job_seconds: float,
        submit_budget: float,
        job: str = "",
    ) -> dict[str, Any]:
        """
        N jobs submitted by the worker pool, watched by N triggers in ONE triggerer process,
        then completed (``cleanup="always"``) by the pool: every phase measured separately.
        ``job="lines"`` runs ``common.line_job_command`` (checked as a numbered sequence)
        instead of ``common.job_command``.
        """
        workers = self.args.submit_workers
        base = server.base_dir / "jobs" / f"{name}-{impl}"
        run_id = name.replace("-", "_")
        op_kwargs = {"remote_base_dir": str(base), "poll_interval": poll, "cleanup": "always"}
        # Every job ends at the same instant, `job_seconds` after the triggers start,
        # however long the submits took: both implementations watch for equally long.
        deadline = int(time.time() + submit_budget + job_seconds) + 1
        common_spec = {
            "n": n,
            "workers": workers,
            "run_id": run_id,
            "operator_kwargs": op_kwargs,
            "job_seconds": job_seconds,
            "job_deadline": deadline,
            "job": job,
        }
        spec = {**common_spec, "phase": "submit", "hard_timeout": submit_budget + 120}
        log(f"{name}: {impl}: submitting {n} jobs with {workers} workers")
        submit = self.run_driver(impl, "workers.py", spec, submit_budget + 180, server)
        tasks = [t for t in submit.get("tasks", []) if t.get("ok")]
        wait = deadline - job_seconds - time.time()
        if wait > 0:
            time.sleep(wait)
        else:
            log(f"   submits overran their budget of {submit_budget:.0f}s by {-wait:.0f}s: shorter watch")
        window = deadline - time.time()
        log(
            f"   submitted {len(tasks)}/{n} in {submit.get('wall_seconds', 0):.1f}s; "
            f"watching, jobs end in {window:.0f}s"
        )
        mspec = {
            "tasks": [
                {
                    "index": t["index"],
                    "trigger": t["trigger"],
                    "method_name": t["method_name"],
                    "kwargs": t.get("kwargs", {}),
                    **(
                        {"check": "sequence"}
                        if job == "lines"
                        else {"expected": common.expected_lines(t["index"], job_seconds)}
                    ),
                }
                for t in tasks
            ],
            "timeout": max(window, 0) + self.args.monitor_grace,
        }
        watch = self.run_driver(
            impl, "triggerer.py", mspec, max(window, 0) + self.args.monitor_grace + 60, server
        )
        finished = [t for t in watch.get("tasks", []) if t.get("events")]
        # Cleanup of N jobs by the pool: a second per round of submits, at least 300 s.
        complete_budget = max(300.0, 60 + math.ceil(n / workers))
        cspec = {
            **common_spec,
            "phase": "complete",
            "hard_timeout": complete_budget,
            "tasks": [
                {
                    "index": t["index"],
                    "method_name": t["method_name"],
                    "kwargs": t.get("kwargs", {}),
                    "event": t["event"],
                }
                for t in finished
            ],
        }
        log(f"   {watch.get('correct', 0)}/{n} events correct; completing {len(finished)} tasks (cleanup)")
        complete = self.run_driver(impl, "workers.py", cspec, complete_budget + 60, server)
        # Job directories only: `.ssh-jobs-ended/` holds the records cleanups leave on purpose.
        leftover = (
            len([p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")])
            if base.is_dir()
            else 0
        )
        succeeded = (
            {t["index"] for t in submit.get("tasks", []) if t.get("ok")}
            & {t["index"] for t in watch.get("tasks", []) if t.get("correct")}
            & {t["index"] for t in complete.get("tasks", []) if t.get("ok")}
        )
        # Job end -> event: the event's wall-clock time minus the common deadline.
        latencies = sorted(
            round(t["event_wall_at"] - deadline, 3)
            for t in watch.get("tasks", [])
            if t.get("event_wall_at") is not None
        )
        submit["errors"] = error_kinds(submit.get("tasks", []))
        watch["errors"] = watch_problems(watch.get("tasks", []))
        complete["errors"] = error_kinds(complete.get("tasks", []))
        for phase in (submit, watch, complete):
            if not self.args.keep_tasks:
                phase.pop("tasks", None)
        log(
            f"   peak connections {watch['peak_connections']}, handshakes {watch['sshd']['accepted']}, "
            f"channel opens {watch['sshd']['sessions']}, triggerer CPU {watch.get('cpu_seconds', 0):.1f}s, "
            f"job dirs left {leftover}"
        )
        kill_remote_jobs(str(base))
        shutil.rmtree(base, ignore_errors=True)
        return {
            "n": n,
            "poll": poll,
            "impl": impl,
            "job_seconds": job_seconds,
            "window_seconds": window,
            # From the moment the triggers started (the driver's own clock) to the deadline.
            "watched_seconds": deadline - watch.get("started_wall", deadline - window),
            "submit_budget_seconds": submit_budget,
            "submit_overran": wait <= 0,
            "job_dirs_left": leftover,
            "tasks_succeeded": len(succeeded),
            "event_latencies": latencies,
            "submit": submit,
            "watch": watch,
            "complete": complete,
        }

    def monitor(self) -> None:
        n, workers = self.args.monitor_n, self.args.submit_workers
        for turn, poll in enumerate(self.args.polls):
            name = f"monitor-p{poll:g}"
            server = self.new_server(name)
            submit_budget = self.args.submit_budget or (8 + 0.4 * math.ceil(n / workers))
            for impl in self.order(turn):
                self.results["monitor"].append(
                    self.watched_jobs(server, impl, name, n, poll, self.args.job_seconds, submit_budget)
                )
            self.stop_server()

    def scaling(self) -> None:
        """
        The monitoring run at growing N, one fresh sshd per N, with the line-a-second job;
        upstream only up to --scaling-upstream-max.
        """
        args = self.args
        poll, job_seconds = args.scaling_poll, args.scaling_job_seconds
        per_round: dict[str, float] = {}  # the slowest round of submits (one per worker) so far
        for turn, n in enumerate(args.scaling_n):
            impls = [i for i in self.order(turn) if i != "upstream" or n <= args.scaling_upstream_max]
            if not impls:
                continue
            name = f"scaling-n{n}"
            server = self.new_server(name)
            rounds = math.ceil(n / args.submit_workers)
            # The fixed allowance of `monitor`, or half as much again as the slowest submits so
            # far took per round: the submits of a large N must not eat into its watch window.
            # Both implementations of one N get the same budget.
            slowest = max((per_round.get(impl, 0.0) for impl in impls), default=0.0)
            submit_budget = args.submit_budget or max(8 + 0.4 * rounds, 8 + 1.5 * slowest * rounds)
            for impl in impls:
                row = self.watched_jobs(server, impl, name, n, poll, job_seconds, submit_budget, job="lines")
                self.results["scaling"].append(row)
                per_round[impl] = max(
                    per_round.get(impl, 0.0), row["submit"].get("wall_seconds", 0.0) / rounds
                )
                lat = row["event_latencies"]
                if lat:
                    log(f"   job end -> event: p50 {lat[len(lat) // 2]:.2f}s, max {lat[-1]:.2f}s")
            self.stop_server()

    def submit_modes(self) -> None:
        """N tasks submitted from workers (upstream, ours) and from the triggerer (ours)."""
        self.results["submit_modes"].extend(submit_modes.run(self, log, kill_remote_jobs))

    def close(self) -> None:
        if self.active is not None:
            terminate_tree(self.active)
            self.active = None
        self.stop_server()


# ------------------------------------------------------------------------------ provenance


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def extract_provider(ref: str, work_dir: Path) -> Path:
    """The ``provider/`` tree as committed at ``ref``, unpacked under ``work_dir``."""
    target = work_dir / "ours-src"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", ref, "provider"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, timeout=60, check=True)
    return target / "provider"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small and short: N=20,50 (bursts and scaling), one repeat, 10 s monitor jobs",
    )
    parser.add_argument("--bursts", help="comma-separated burst sizes (default 120,200,500)")
    parser.add_argument("--repeats", type=int, help="repeats per burst size (default 3)")
    parser.add_argument("--monitor-n", type=int, help="jobs watched at once (default 200)")
    parser.add_argument("--job-seconds", type=float, help="how long the watched jobs run (default 30)")
    parser.add_argument("--polls", help="comma-separated poll intervals in seconds (default 5,1)")
    parser.add_argument("--scaling-n", help="comma-separated job counts to watch (default 100,500,1000,2000)")
    parser.add_argument(
        "--scaling-upstream-max",
        type=int,
        default=500,
        help="measure upstream only up to this N (default 500; beyond it it no longer runs usefully)",
    )
    parser.add_argument(
        "--scaling-job-seconds",
        type=float,
        default=20,
        help="the scaling jobs end this long after their triggerer process is started (default 20)",
    )
    parser.add_argument(
        "--scaling-poll", type=float, default=5, help="poll interval of the scaling run, s (default 5)"
    )
    parser.add_argument(
        "--submit-workers",
        type=int,
        default=8,
        help="worker processes for submit/cleanup of the watched jobs",
    )
    parser.add_argument(
        "--submit-budget", type=float, default=0, help="seconds reserved for submitting the watched jobs"
    )
    parser.add_argument("--monitor-grace", type=float, default=150, help="seconds allowed after the jobs end")
    parser.add_argument("--burst-timeout", type=float, default=180, help="hard limit per burst worker")
    parser.add_argument("--max-startups", default="10:30:100")
    parser.add_argument("--max-sessions", type=int, default=10)
    parser.add_argument(
        "--login-grace-time", type=int, default=120, help="sshd LoginGraceTime (OpenSSH's default: 120)"
    )
    parser.add_argument("--impls", default="ours,upstream")
    parser.add_argument(
        "--only", choices=["burst", "monitor", "submit-modes", "scaling"], help="run one scenario only"
    )
    parser.add_argument(
        "--submit-modes-n", help="comma-separated N of the submit-modes scenario (default 120,500,1000)"
    )
    parser.add_argument(
        "--submit-modes",
        help="comma-separated ways of submitting to measure there (default: all of "
        + ", ".join(submit_modes.MODES)
        + ")",
    )
    parser.add_argument(
        "--submit-modes-workers",
        type=int,
        default=500,
        help="most worker processes of the worker-mode submits there (default 500; more tasks take turns)",
    )
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument("--ours-src", help="measure the provider package found in this directory instead")
    parser.add_argument("--ours-ref", help="measure the provider as committed at this git ref (e.g. HEAD)")
    parser.add_argument("--upstream-python", required=True)
    parser.add_argument("--out-root", default=str(DEV / "out" / "bench"))
    parser.add_argument("--docs-dir", default=str(REPO / "docs" / "_static" / "bench"))
    parser.add_argument("--no-docs", action="store_true", help="do not copy the table and plots into docs/")
    parser.add_argument("--keep-logs", action="store_true", help="keep sshd logs and driver files")
    parser.add_argument("--keep-tasks", action="store_true", help="keep per-task records in the raw JSON")
    parser.add_argument("--command", default="bash dev/bench/run.sh", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.bursts = [int(x) for x in (args.bursts or ("20,50" if quick else "120,200,500")).split(",")]
    args.repeats = args.repeats or (1 if quick else 3)
    args.monitor_n = args.monitor_n or (50 if quick else 200)
    args.job_seconds = args.job_seconds or (10.0 if quick else 30.0)
    args.polls = [float(x) for x in (args.polls or "5,1").split(",")]
    args.submit_modes_n = [
        int(x) for x in (args.submit_modes_n or ("20,50" if quick else "120,500,1000")).split(",")
    ]
    unknown = set((args.submit_modes or "").split(",")) - set(submit_modes.MODES) - {""}
    if unknown:
        parser.error(
            f"--submit-modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(submit_modes.MODES)}"
        )
    args.scaling_n = [
        int(x) for x in (args.scaling_n or ("20,50" if quick else "100,500,1000,2000")).split(",")
    ]
    args.impls = [x.strip() for x in args.impls.split(",") if x.strip()]
    if args.quick and args.monitor_grace == 150:
        args.monitor_grace = 90
    for impl in args.impls:
        if impl not in common.IMPLEMENTATIONS:
            parser.error(f"unknown implementation {impl!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must unwind even when a shell started us with SIGINT ignored (in the background).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out_root) / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="ssh-jobs-bench-"))
    bench = Bench(args, out_dir, work_dir)
    started = time.time()
    meta: dict[str, Any] = {
        "command": args.command,
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "load_start": os.getloadavg(),
        "settings": {
            "max_startups": args.max_startups,
            "max_sessions": args.max_sessions,
            "login_grace_time": args.login_grace_time,
            "log_level": "VERBOSE",
            "bursts": args.bursts,
            "repeats": args.repeats,
            "monitor_n": args.monitor_n,
            "job_seconds": args.job_seconds,
            "polls": args.polls,
            "submit_workers": args.submit_workers,
            "submit_modes_n": args.submit_modes_n,
            "submit_modes_workers": args.submit_modes_workers,
            "scaling_n": args.scaling_n,
            "scaling_upstream_max": args.scaling_upstream_max,
            "scaling_job_seconds": args.scaling_job_seconds,
            "scaling_poll": args.scaling_poll,
        },
        "git": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "provider_changes": git("status", "--porcelain", "--", "provider"),
            "ours_src": args.ours_src or "",
        },
    }
    if args.ours_ref:
        meta["git"]["ours_ref"] = args.ours_ref
        meta["git"]["ours_ref_commit"] = git("rev-parse", "--short", args.ours_ref)
        args.ours_src = str(extract_provider(args.ours_ref, work_dir))
        meta["git"]["ours_src"] = f"git ref {args.ours_ref} ({meta['git']['ours_ref_commit']})"
    log(f"results: {out_dir}; scratch: {work_dir}")
    status = 0
    try:
        with interrupts_unwind():
            if args.only in (None, "burst"):
                bench.burst()
            if args.only in (None, "monitor"):
                bench.monitor()
            if args.only in (None, "submit-modes"):
                bench.submit_modes()
            if args.only in (None, "scaling"):
                bench.scaling()
    except KeyboardInterrupt as error:
        log(f"interrupted ({str(error) or 'Ctrl-C'}): stopping everything this run started")
        status = 130
    finally:
        bench.close()
        if not args.keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
    meta.update(
        {
            "finished": dt.datetime.now().isoformat(timespec="seconds"),
            "duration_seconds": round(time.time() - started, 1),
            "load_end": os.getloadavg(),
            "versions": bench.versions,
            "sshd_banner": bench.results.pop("sshd_banner", ""),
            "sshd_config": bench.results.pop("sshd_config", ""),
            "complete": status == 0,
        }
    )
    raw = {"meta": meta, **bench.results}
    (out_dir / "raw.json").write_text(json.dumps(raw, indent=1, default=str))
    summary = report.write_report(raw, out_dir)
    log(f"wrote {out_dir}/raw.json, results.md, plots")
    if status == 0 and not args.no_docs:
        report.publish(out_dir, Path(args.docs_dir))
        log(f"copied the table and plots to {args.docs_dir}")
    print()
    print(summary)
    return status


if __name__ == "__main__":
    sys.exit(main())
