"""
The submit-modes scenario: N mapped tasks submitted four ways against one fresh sshd per N.

- ``upstream``: apache-airflow-providers-ssh, each task's ``execute`` in a worker process of
  its own (at most ``--submit-modes-workers`` processes; more tasks take turns);
- ``ours``: this provider with ``submit_from="worker"`` (the default) and its default
  ``share_login`` ``"auto"``, the same way: a worker process that meets another one's handshake
  starts a login broker, over whose one login the rest submit (idle 2 s after the last one);
- ``ours-alone``: the same with ``share_login`` false: every task logs in by itself (the
  default before ``"auto"``);
- ``ours-shared``: the same with ``share_login`` true: the first task starts the broker;
- ``ours-triggerer``: this provider with ``submit_from="triggerer"``: every ``execute`` (no
  network), then every trigger in ONE asyncio process, which submits and watches.

Every job records its start in a file on the host (``common.launch_job_command``), so how
often each job ran, and when the last one started, come from the host itself. The sshd log
gives handshakes, ``MaxStartups`` drops and channel opens; the listener's child CPU time the
server's cost; the drivers their own CPU time (the workers' summed).
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The ways of submitting, in the order of the first N (later N rotate it).
MODES = ("upstream", "ours", "ours-alone", "ours-shared", "ours-triggerer")
#: The connection extra ``share_login`` of each worker mode of ours.
SHARE_LOGIN = {"ours": "auto", "ours-alone": False, "ours-shared": True}


def launches(path: Path) -> tuple[Counter[int], float | None, float | None]:
    """How often each job started, and the epoch seconds of the first and the last start."""
    counts: Counter[int] = Counter()
    starts = []
    if path.exists():
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit():
                counts[int(fields[0])] += 1
                starts.append(float(fields[1]))
    return counts, min(starts, default=None), max(starts, default=None)


def spec_for(bench: Any, mode: str, n: int, base: Path, launch_file: Path) -> tuple[str, str, dict[str, Any]]:
    """(implementation, driver, spec) of one mode."""
    args = bench.args
    run_id = f"submit_modes_{n}_{mode.replace('-', '_')}"
    if mode == "ours-triggerer":
        spec = {
            "n": n,
            "run_id": run_id,
            "launch_file": str(launch_file),
            "operator_kwargs": {"remote_base_dir": str(base), "poll_interval": 5, "cleanup": "never"},
            "timeout": args.burst_timeout,
        }
        return "ours", "tsubmit.py", spec
    spec = {
        "phase": "submit",
        "n": n,
        "workers": min(n, args.submit_modes_workers),
        "run_id": run_id,
        "operator_kwargs": {"remote_base_dir": str(base)},
        "job": "launch",
        "launch_file": str(launch_file),
        "job_seconds": 0,
        "hard_timeout": args.burst_timeout,
    }
    if mode in SHARE_LOGIN:
        # Its broker ends 2 s after the last submit (workers.py sets that for every run of ours).
        spec.update(connection_extra={"share_login": SHARE_LOGIN[mode]})
        return "ours", "workers.py", spec
    return mode, "workers.py", spec


def one_mode(bench: Any, server: Any, mode: str, n: int, kill: Callable[[str], int]) -> dict[str, Any]:
    jobs = server.base_dir / "jobs"
    base, launch_file = jobs / f"sm{n}-{mode}", jobs / f"sm{n}-{mode}.launches"
    jobs.mkdir(parents=True, exist_ok=True)
    impl, driver, spec = spec_for(bench, mode, n, base, launch_file)
    result = bench.run_driver(impl, driver, spec, bench.args.burst_timeout + 120, server)
    # The last jobs may still be starting when a worker-mode driver ends (its execute returns
    # once the pid is recorded, which is after the job's own first line).
    counts, first_start, last_start = launches(launch_file)
    first = result.get("released_wall") or result.get("first_execute_wall")
    sshd = result["sshd"]
    row = {
        "n": n,
        "impl": mode,
        "failures": result.get("failed", n),
        "handshakes": sshd["accepted"],
        "drops": sshd["drops"] + sshd.get("penalty_drops", 0),
        "channel_opens": sshd["sessions"],
        "server_cpu_seconds": round(result["server_cpu_seconds"], 2),
        "client_cpu_seconds": round(result.get("client_cpu_seconds", 0.0), 2),
        "first_execute_to_last_start_seconds": round(last_start - first, 2) if first and last_start else None,
        "jobs_started_once": sum(1 for i in range(n) if counts[i] == 1),
        "jobs_started_twice_or_more": sum(1 for i in range(n) if counts[i] > 1),
        "jobs_never_started": sum(1 for i in range(n) if counts[i] == 0),
        "workers": spec.get("workers"),
        "driver_seconds": round(result["driver_seconds"], 1),
        "driver_exit": result["driver_exit"],
    }
    if mode == "ours-triggerer":
        # The ticks the triggers ran for: submits go out on a 1 s grid.
        row["ticks"] = math.ceil(result.get("triggers_seconds", 0.0))
        row["executes_seconds"] = round(result.get("executes_seconds", 0.0), 3)
        # From the moment the triggers run (the first tick is within SUBMIT_TICK of it).
        triggers = result.get("triggers_started_wall")
        row["triggers_to_last_start_seconds"] = (
            round(last_start - triggers, 2) if triggers and last_start else None
        )
        # From the host session's first tick (its first batch: the connect, then the exec).
        tick = result.get("first_tick_wall")
        row["first_tick_to_last_start_seconds"] = round(last_start - tick, 2) if tick and last_start else None
        # From the first job's start, which follows the first tick's exec by one wrapper's start.
        row["first_to_last_start_seconds"] = (
            round(last_start - first_start, 2) if first_start and last_start else None
        )
    errors = [t.get("error") or t.get("message") for t in result.get("tasks", []) if not t.get("ok")]
    row["errors"] = dict(Counter(str(e)[:120] for e in errors).most_common(5))
    kill(str(base))
    shutil.rmtree(base, ignore_errors=True)
    launch_file.unlink(missing_ok=True)
    return row


def run(bench: Any, log: Callable[[str], None], kill: Callable[[str], int]) -> list[dict[str, Any]]:
    """Every N, every mode; ``kill`` stops the jobs left under a directory, ``log`` reports progress."""
    rows = []
    for turn, n in enumerate(bench.args.submit_modes_n):
        server = bench.new_server(f"submit-modes-n{n}")
        order = MODES[turn % len(MODES) :] + MODES[: turn % len(MODES)]
        for mode in order:
            if mode.split("-")[0] not in bench.args.impls:
                continue
            if bench.args.submit_modes and mode not in bench.args.submit_modes.split(","):
                continue
            log(f"submit modes N={n}: {mode}")
            row = one_mode(bench, server, mode, n, kill)
            log(
                f"   failures {row['failures']}, handshakes {row['handshakes']}, drops {row['drops']}, "
                f"channel opens {row['channel_opens']}, started once {row['jobs_started_once']}/{n}, "
                f"first execute -> last start {row['first_execute_to_last_start_seconds']}s"
                + (
                    f", triggers started -> last start {row['triggers_to_last_start_seconds']}s"
                    f", first tick -> last start {row['first_tick_to_last_start_seconds']}s"
                    f", first start -> last start {row['first_to_last_start_seconds']}s"
                    if row.get("triggers_to_last_start_seconds") is not None
                    else ""
                )
            )
            rows.append(row)
        bench.stop_server()
    return rows
