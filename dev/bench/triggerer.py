"""
Triggerer-side driver: every trigger of a fan-out in ONE asyncio event loop, as in the triggerer.

Each trigger is rebuilt from its serialized form (``classpath(**kwargs)``, exactly what the
triggerer does), runs in its own asyncio task with its task identity bound to the log context
(the triggerer binds the trigger id the same way, which is how a trigger's log lines reach its
task's log), and is consumed until its ``run()`` ends. Triggers that declare a shared stream
(Airflow's ``BaseEventTrigger.shared_stream_key``) are driven through Airflow's own
``SharedStreamManager``, as the triggerer would.

Prints one JSON document: per-task events and log lines, CPU seconds and RSS of this process.
A task's lines are compared with its spec's ``expected`` list, or, with ``"check": "sequence"``,
checked as the numbered lines of ``common.line_job_command`` (their count depends on when the
job started). Event times are given on CLOCK_MONOTONIC (``event_at``) and as epoch seconds
(``event_wall_at``), the clock of the jobs' deadline.

Usage: python triggerer.py --impl ours|upstream --spec SPEC.json --out OUT.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

LAG_PROBE_INTERVAL = 0.1


def trigger_class(classpath: str) -> type:
    module_name, _, class_name = classpath.rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)


class Runner:
    def __init__(self) -> None:
        self.shared_manager: Any = None
        self.shared_used = 0

    def event_stream(self, trigger: Any, index: int) -> Any:
        try:
            from airflow.triggers.base import BaseEventTrigger
        except ImportError:
            return trigger.run()
        if isinstance(trigger, BaseEventTrigger):
            key = trigger.shared_stream_key()
            if key is not None:
                from airflow.triggers.shared_stream import SharedStreamManager

                if self.shared_manager is None:
                    self.shared_manager = SharedStreamManager()
                self.shared_used += 1
                raw = self.shared_manager.subscribe(trigger_id=index, trigger=trigger, key=key)
                return trigger.filter_shared_stream(raw)
        return trigger.run()

    async def watch(self, index: int, classpath: str, kwargs: dict[str, Any], out: dict[str, Any]) -> None:
        common.bind_task(index)
        trigger = trigger_class(classpath)(**kwargs)
        events: list[dict[str, Any]] = out.setdefault("events", [])
        try:
            async for event in self.event_stream(trigger, index):
                events.append({"payload": event.payload, "at": common.now(), "wall": time.time()})
        except asyncio.CancelledError:
            out["cancelled"] = True
            raise
        except Exception as error:
            out["error"] = common.short_error(error)
        finally:
            out["ended"] = common.now()


async def lag_probe(stats: dict[str, float]) -> None:
    """Largest delay of a 0.1 s sleep: how long the event loop was blocked at worst."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(LAG_PROBE_INTERVAL)
        stats["max_lag"] = max(stats["max_lag"], loop.time() - start - LAG_PROBE_INTERVAL)


async def run_all(spec: dict[str, Any]) -> dict[str, Any]:
    runner = Runner()
    outs: dict[int, dict[str, Any]] = {int(t["index"]): {} for t in spec["tasks"]}
    lag = {"max_lag": 0.0}
    probe = asyncio.create_task(lag_probe(lag))
    cpu0, wall0, started, started_wall = common.cpu_seconds(), time.monotonic(), common.now(), time.time()
    tasks = [
        asyncio.create_task(
            runner.watch(int(t["index"]), t["trigger"][0], t["trigger"][1], outs[int(t["index"])])
        )
        for t in spec["tasks"]
    ]
    _done, pending = await asyncio.wait(tasks, timeout=float(spec["timeout"]))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=30)
    cpu1, wall1 = common.cpu_seconds(), time.monotonic()
    probe.cancel()
    return {
        "outs": outs,
        "timed_out": len(pending),
        "started": started,
        "started_wall": started_wall,
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": wall1 - wall0,
        "max_loop_lag_seconds": lag["max_lag"],
        "shared_stream_triggers": runner.shared_used,
    }


def output_lines(out: dict[str, Any]) -> list[str]:
    """What reached the task log: the trigger's INFO lines, then the event's log chunk."""
    text = "\n".join(common.TRIGGER_LINES.get(out["index"], []))
    for event in out.get("events", []):
        chunk = event["payload"].get("log_chunk") or ""
        if chunk:
            text += "\n" + chunk
    return [line.strip() for line in text.splitlines() if line.strip()]


def lines_ok(task: dict[str, Any], lines: list[str]) -> bool:
    if task.get("check") == "sequence":
        return common.line_sequence_ok(int(task["index"]), lines)
    return lines == task["expected"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impl", required=True, choices=sorted(common.IMPLEMENTATIONS))
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())

    common.operator_class(args.impl)  # import the provider as the triggerer has it loaded
    import asyncssh  # noqa: F401

    for task in spec["tasks"]:
        trigger_class(task["trigger"][0])
    common.configure_logging()
    rss_baseline = common.proc_status_kib("VmRSS")
    hwm_baseline = common.proc_status_kib("VmHWM")

    summary = asyncio.run(run_all(spec))

    tasks = []
    correct = 0
    for task in spec["tasks"]:
        index = int(task["index"])
        out = summary["outs"][index]
        out["index"] = index
        lines = output_lines(out)
        events = out.get("events", [])
        payload = events[0]["payload"] if events else {}
        good_lines = lines_ok(task, lines)
        ok = (
            len(events) == 1
            and payload.get("status") == "success"
            and payload.get("exit_code") == 0
            and good_lines
        )
        correct += ok
        tasks.append(
            {
                "index": index,
                "correct": ok,
                "events": len(events),
                "status": payload.get("status"),
                "exit_code": payload.get("exit_code"),
                "message": str(payload.get("message", ""))[:300],
                "lines_ok": good_lines,
                "line_count": len(lines),
                "lines": lines[:10],
                "warnings": len(common.WARNINGS.get(index, [])),
                "first_warnings": common.WARNINGS.get(index, [])[:2],
                "event_at": events[0]["at"] if events else None,
                "event_wall_at": events[0]["wall"] if events else None,
                "method_name": task.get("method_name"),
                "kwargs": task.get("kwargs", {}),
                "event": payload,
                "error": out.get("error"),
                "cancelled": out.get("cancelled", False),
            }
        )
    result = {
        "impl": args.impl,
        "n": len(tasks),
        "correct": correct,
        "timed_out": summary["timed_out"],
        "started": summary["started"],
        "started_wall": summary["started_wall"],
        "cpu_seconds": summary["cpu_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "max_loop_lag_seconds": summary["max_loop_lag_seconds"],
        "rss_baseline_kib": rss_baseline,
        "rss_peak_kib": max(common.proc_status_kib("VmHWM"), hwm_baseline),
        "shared_stream_triggers": summary["shared_stream_triggers"],
        "reconnect_warnings": sum(t["warnings"] for t in tasks),
        "versions": common.versions(args.impl),
        "tasks": tasks,
    }
    common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}))


if __name__ == "__main__":
    main()
