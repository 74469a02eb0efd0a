"""
Driver of ``submit_from="triggerer"``: the worker side and the triggerer side in one process.

Each of the N tasks runs ``operator.execute`` with ``submit_from="triggerer"`` (no network:
it must end in the deferral at once), one after the other as workers would start them; then
every trigger, rebuilt from its serialized form, runs in ONE asyncio loop as in the triggerer
(``triggerer.run_all``), submits its job over the shared connection and watches it to its
event. Prints one JSON document: the time of the first ``execute()``, how long the executes
took, per-task events, and the CPU seconds of this process (executes and triggers).

Usage: python tsubmit.py --impl ours --spec SPEC.json --out OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import triggerer


def defer_all(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run every task's ``execute()``: the deferred ones (with their trigger) and the failed ones."""
    cls = common.operator_class("ours")
    deferred, failed = [], []
    for index in range(int(spec["n"])):
        common.bind_task(index)
        op = cls(
            task_id=common.TASK_ID,
            ssh_conn_id=common.CONN_ID,
            command=common.launch_job_command(index, spec["launch_file"]),
            submit_from="triggerer",
            **spec["operator_kwargs"],
        )
        ti = common.StandInTaskInstance(run_id=spec["run_id"], map_index=index)
        try:
            op.execute(ti.context())
            failed.append({"index": index, "error": "execute() returned without deferring"})
        except BaseException as error:  # the deferral is an exception too (a BaseException)
            if isinstance(error, KeyboardInterrupt):
                raise
            if type(error).__name__ == "TaskDeferred":
                trigger = error.trigger  # type: ignore[attr-defined]
                deferred.append(
                    {
                        "index": index,
                        "trigger": list(trigger.serialize()),
                        "expected": common.expected_lines(index, 0),
                    }
                )
            else:
                failed.append({"index": index, "error": common.short_error(error)})
    return deferred, failed


def record_first_tick(ticks: list[float]) -> None:
    """Note the wall time of the host session's ticks (each one a batch: connect if need be,
    then ONE exec). The first is the moment the fan-out's submits are first due: the time to
    the last job's start is counted from it."""
    from ssh_jobs_provider.triggers.host_session import HostSession

    poll = HostSession._poll

    async def noted(self: HostSession, due: list[Any]) -> None:
        ticks.append(time.time())
        await poll(self, due)

    HostSession._poll = noted  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impl", required=True, choices=["ours"])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    common.operator_class("ours")
    import asyncssh  # noqa: F401  (loaded, as in a triggerer)

    common.configure_logging()
    ticks: list[float] = []
    record_first_tick(ticks)
    cpu0 = common.cpu_seconds()
    first_execute_wall, first_execute = time.time(), common.now()
    deferred, failed = defer_all(spec)
    executes_seconds = common.now() - first_execute
    cpu_executes = common.cpu_seconds() - cpu0
    summary = asyncio.run(triggerer.run_all({"tasks": deferred, "timeout": spec["timeout"]}))
    tasks = []
    for task in deferred:
        out = summary["outs"][task["index"]]
        out["index"] = task["index"]
        events = out.get("events", [])
        payload = events[0]["payload"] if events else {}
        # The job's own lines (the trigger also logs the submit: its pid, the job directory).
        lines = [line for line in triggerer.output_lines(out) if line.startswith(f"job {task['index']} ")]
        tasks.append(
            {
                "index": task["index"],
                "ok": len(events) == 1 and payload.get("status") == "success" and lines == task["expected"],
                "status": payload.get("status"),
                "message": str(payload.get("message", ""))[:300],
                "launched": payload.get("launched"),
                "warnings": len(common.WARNINGS.get(task["index"], [])),
                "first_warnings": common.WARNINGS.get(task["index"], [])[:2],
                "error": out.get("error"),
            }
        )
    result = {
        "impl": "ours-triggerer",
        "n": int(spec["n"]),
        "first_execute_wall": first_execute_wall,
        "executes_seconds": executes_seconds,
        "cpu_executes_seconds": cpu_executes,
        "client_cpu_seconds": common.cpu_seconds() - cpu0,
        "triggers_seconds": summary["wall_seconds"],
        "triggers_started_wall": summary["started_wall"],
        "first_tick_wall": ticks[0] if ticks else None,
        "timed_out": summary["timed_out"],
        "max_loop_lag_seconds": summary["max_loop_lag_seconds"],
        "ok": sum(t["ok"] for t in tasks),
        "failed": int(spec["n"]) - sum(t["ok"] for t in tasks),
        "execute_failures": failed[:5],
        "reconnect_warnings": sum(t["warnings"] for t in tasks),
        "versions": common.versions("ours"),
        "tasks": tasks,
    }
    common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}))


if __name__ == "__main__":
    main()
