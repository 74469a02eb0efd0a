"""
Worker-side driver: what Airflow workers do, as forked OS processes.

``--phase submit``: each task runs ``operator.execute`` (connect, OS detection, submit) and
must end in the operator's deferral; the serialized trigger is kept for the triggerer driver.
``--phase complete``: each task runs the operator's completion method with the trigger's
event (cleanup of the remote job directory).

All imports happen first, then ``--workers`` processes are forked; they wait on a gate and
are released at the same instant (closing the gate pipe wakes them all). With
``workers == n`` every task has its own process: the submit burst. Prints one JSON document.

Usage: python workers.py --impl ours|upstream --spec SPEC.json --out OUT.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def load_spec(path: str) -> dict[str, Any]:
    spec = json.loads(Path(path).read_text())
    for key in ("phase", "n", "workers", "run_id", "operator_kwargs", "job_seconds", "hard_timeout"):
        if key not in spec:
            raise SystemExit(f"spec is missing {key!r}")
    return spec


def job_command(spec: dict[str, Any], index: int) -> str:
    """The spec's job: ``"job": "lines"`` is the scaling scenario's line-a-second job."""
    if spec.get("job") == "lines":
        return common.line_job_command(index, int(spec["job_deadline"]))
    if spec.get("job") == "launch":
        return common.launch_job_command(index, spec["launch_file"])
    return common.job_command(index, spec["job_seconds"], spec.get("job_deadline"))


def make_operator(cls: type, spec: dict[str, Any], index: int) -> Any:
    return cls(
        task_id=common.TASK_ID,
        ssh_conn_id=common.CONN_ID,
        command=job_command(spec, index),
        **spec["operator_kwargs"],
    )


def submit_one(cls: type, spec: dict[str, Any], index: int) -> dict[str, Any]:
    common.bind_task(index)
    op = make_operator(cls, spec, index)
    ti = common.StandInTaskInstance(run_id=spec["run_id"], map_index=index)
    record: dict[str, Any] = {"index": index, "ok": False}
    started = common.now()
    try:
        op.execute(ti.context())
        record["error"] = "execute() returned without deferring"
    except BaseException as error:  # the deferral is an exception too
        if type(error).__name__ == "TaskDeferred" and hasattr(error, "trigger"):
            record["ok"] = True
            record["trigger"] = list(error.trigger.serialize())
            record["method_name"] = error.method_name
            record["kwargs"] = getattr(error, "kwargs", None) or {}
        else:
            record["error"] = common.short_error(error)
            if isinstance(error, KeyboardInterrupt):
                raise
    record["started"] = started
    record["ended"] = common.now()
    record["warnings"] = len(common.WARNINGS.get(index, []))
    return record


def complete_one(cls: type, spec: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    index = int(task["index"])
    common.bind_task(index)
    op = make_operator(cls, spec, index)
    ti = common.StandInTaskInstance(run_id=spec["run_id"], map_index=index)
    record: dict[str, Any] = {"index": index, "ok": False}
    started = common.now()
    try:
        getattr(op, task["method_name"])(ti.context(), **task.get("kwargs", {}), event=task["event"])
        record["ok"] = True
        record["outcome"] = "success"
    except BaseException as error:
        record["outcome"] = type(error).__name__
        record["error"] = common.short_error(error)
        if isinstance(error, KeyboardInterrupt):
            raise
    record["started"] = started
    record["ended"] = common.now()
    warnings = common.WARNINGS.get(index, [])
    record["warnings"] = len(warnings)
    # Both operators say so loudly when a cleanup attempt failed.
    record["cleanup_trouble"] = [w for w in warnings if "clean" in w.lower()][:3]
    return record


def child_main(
    cls: type, spec: dict[str, Any], slot: int, gate_r: int, ready_w: int, result_dir: Path
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A child can never outlive its budget, whatever the network does.
    signal.alarm(int(spec["hard_timeout"]) + 5)
    n, workers = spec["n"], spec["workers"]
    indices = list(range(slot, n, workers))
    tasks = {int(t["index"]): t for t in spec.get("tasks", [])}
    os.write(ready_w, b"r")
    os.close(ready_w)
    os.read(gate_r, 1)  # returns b"" when the parent closes the gate: everyone starts now
    records = []
    for index in indices:
        if spec["phase"] == "submit":
            records.append(submit_one(cls, spec, index))
        elif index in tasks:
            records.append(complete_one(cls, spec, tasks[index]))
    common.write_json(result_dir / f"{slot}.json", records)


def use_connection_extra(impl: str, spec: dict[str, Any]) -> None:
    """
    The spec's extras (e.g. ``share_login``) added to the connection, before anything reads it.
    Ours: a login broker ends 2 s after its last script (unless the spec says otherwise), so
    that its login's sshd process has ended, and its CPU is counted, when the server is quiet.
    """
    extra, name = spec.get("connection_extra"), f"AIRFLOW_CONN_{common.CONN_ID.upper()}"
    if extra:
        connection = json.loads(os.environ[name])
        connection["extra"] = {**connection.get("extra", {}), **extra}
        os.environ[name] = json.dumps(connection)
    if impl == "ours":
        from ssh_jobs_provider.hooks import shared_login

        shared_login.BROKER_IDLE_SECONDS = float(spec.get("broker_idle_seconds") or 2.0)


def run(impl: str, spec: dict[str, Any]) -> dict[str, Any]:
    use_connection_extra(impl, spec)
    cls = common.operator_class(impl)
    common.configure_logging()
    # Warm up everything a task touches before forking, as a worker has by the time it runs.
    import asyncssh  # noqa: F401
    import paramiko  # noqa: F401

    n, workers = int(spec["n"]), max(1, min(int(spec["workers"]), int(spec["n"])))
    spec["workers"] = workers
    hard_timeout = float(spec["hard_timeout"])
    result_dir = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    gate_r, gate_w = os.pipe()
    ready_r, ready_w = os.pipe()
    children: dict[int, int] = {}
    statuses: dict[int, int] = {}
    ready = 0
    load_at_release = os.getloadavg()
    released = finished = common.now()
    released_wall = time.time()
    gc.collect()
    gc.freeze()  # keeps copy-on-write pages shared across hundreds of children
    try:
        for slot in range(workers):
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    os.close(gate_w)
                    os.close(ready_r)
                    child_main(cls, spec, slot, gate_r, ready_w, result_dir)
                except BaseException as error:
                    sys.stderr.write(f"worker {slot}: {common.short_error(error)}\n")
                    code = 1
                finally:
                    os._exit(code)
            children[pid] = slot
        os.close(ready_w)
        deadline = time.monotonic() + 120
        while ready < workers and time.monotonic() < deadline:
            readable, _, _ = select.select([ready_r], [], [], 1.0)
            if readable:
                chunk = os.read(ready_r, 4096)
                if not chunk:
                    break
                ready += len(chunk)
        load_at_release = os.getloadavg()
        released, released_wall = common.now(), time.time()
        os.close(gate_w)  # the barrier: every child's read() returns now
        gate_w = -1
        deadline = time.monotonic() + hard_timeout + 15
        while len(statuses) < len(children) and time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                time.sleep(0.02)
                continue
            statuses[pid] = status
        finished = common.now()
    finally:
        killed = [pid for pid in children if pid not in statuses]
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in killed:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if gate_w != -1:
            os.close(gate_w)

    records: list[dict[str, Any]] = []
    for slot in range(workers):
        path = result_dir / f"{slot}.json"
        if path.exists():
            records.extend(json.loads(path.read_text()))
            path.unlink()
    result_dir.rmdir()
    seen = {r["index"] for r in records}
    expected = range(n) if spec["phase"] == "submit" else [int(t["index"]) for t in spec.get("tasks", [])]
    for index in expected:
        if index not in seen:
            records.append({"index": index, "ok": False, "error": "worker process died or timed out"})
    records.sort(key=lambda r: r["index"])
    last_end = max((r.get("ended", finished) for r in records), default=finished)
    return {
        "impl": impl,
        "phase": spec["phase"],
        "n": n,
        "workers": workers,
        "ready_before_release": ready,
        "load_at_release": load_at_release,
        "wall_seconds": last_end - released,
        "released": released,
        "released_wall": released_wall,
        # Every worker's CPU time (they are all reaped by now) and this process's own.
        "client_cpu_seconds": common.children_cpu_seconds() + common.cpu_seconds(),
        "killed_workers": len(killed),
        "ok": sum(1 for r in records if r.get("ok")),
        "failed": sum(1 for r in records if not r.get("ok")),
        "versions": common.versions(impl),
        "tasks": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--impl", required=True, choices=sorted(common.IMPLEMENTATIONS))
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = run(args.impl, load_spec(args.spec))
    common.write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "tasks"}))


if __name__ == "__main__":
    main()
