"""
What a job costs its host in all, wrapper included: N submits in one batch, as the triggerer
sends them, run by the local ``/bin/sh`` (no SSH: the cost of a login is the other scenarios'
business) in a directory on tmpfs (``/dev/shm``: a disk's inode allocator would add its own
noise).

The submit-modes scenario counts what sshd reaps: the sessions, the submit, the polls. A job's
detached wrapper is not sshd's child, so it is not counted there; here this process adopts
every orphan (``PR_SET_CHILD_SUBREAPER``) and reaps it, so the CPU of the batch, of every
wrapper and of every job is counted. The job is the submit-modes scenario's (it records its
start, then writes two lines); what it costs alone, started by nothing but a ``bash`` as the
wrapper would, is measured too and subtracted, which leaves what the provider costs per job.

Usage: python dev/bench/job_cost.py [--n 1000] [--repeats 3] [--interpreter perl|sh]
       [--ours-src DIR]   (measure the provider package found in DIR/provider instead)
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: prctl(2)'s PR_SET_CHILD_SUBREAPER: orphans of this process's descendants become its children.
PR_SET_CHILD_SUBREAPER = 36
#: How long the jobs are given to start and end, in seconds.
JOBS_TIMEOUT = 120.0


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reap_all(deadline: float) -> int:
    """Wait for every child (the adopted wrappers included) until none is left, or ``deadline``."""
    reaped = 0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            time.sleep(0.05)
        else:
            reaped += 1
    raise SystemExit(f"jobs still running after {JOBS_TIMEOUT} s")


def job_command(index: int, launch_file: Path) -> str:
    return (
        f'sh -c \'echo "{index} $(date +%s.%N)" >> {launch_file}; echo "job {index} start"; '
        f'echo "job {index} end"\''
    )


def job_alone_cpu(root: Path, count: int) -> float:
    """CPU seconds per job of the job's command alone, run by bash as the wrapper runs it."""
    launch_file = root / "alone"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    before = children_cpu()
    for index in range(count):
        subprocess.run(["bash", "-c", job_command(index, launch_file)], stdout=subprocess.DEVNULL, check=True)
    return (children_cpu() - before) / count


def one_batch(root: Path, n: int, interpreter: str) -> dict[str, float]:
    from ssh_jobs_provider.protocol.batch import build_batch_script, parse_batch_output
    from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
    from ssh_jobs_provider.protocol.scripts import batch_tag, job_files
    from ssh_jobs_provider.protocol.submit import SubmitEntry

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o700, parents=True)
    launch_file = root / "launches"
    entries = []
    for index in range(n):
        token = new_job_token()
        files = job_files(job_command(index, launch_file), {}, None, token)
        entries.append(
            SubmitEntry(RemoteJobPaths(f"job{index}", str(root / "jobs")), 0, 4096, token=token, files=files)
        )
    tag = batch_tag()
    script = build_batch_script(entries, tag, interpreter).encode()
    cpu_before, started = children_cpu(), time.time()
    answer = subprocess.run(["/bin/sh", "-s"], input=script, capture_output=True, check=True)
    batch_seconds, batch_cpu = time.time() - started, children_cpu() - cpu_before
    launched = sum(
        1
        for result in parse_batch_output(answer.stdout, entries, tag).values()
        if getattr(result, "launched", False)
    )
    reap_all(time.monotonic() + JOBS_TIMEOUT)
    starts = sorted(float(line.split()[1]) for line in launch_file.read_text().splitlines())
    if launched != n or len(starts) != n:
        raise SystemExit(f"{launched} of {n} launched, {len(starts)} started")
    return {
        "total_cpu_ms_per_job": (children_cpu() - cpu_before) / n * 1000,
        "batch_cpu_ms_per_job": batch_cpu / n * 1000,
        "batch_seconds": batch_seconds,
        "to_last_start_seconds": starts[-1] - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interpreter", choices=["perl", "sh"], default="perl")
    parser.add_argument("--ours-src", help="a checkout whose provider/ package is measured instead")
    parser.add_argument("--root", default="/dev/shm/ssh-jobs-job-cost")
    args = parser.parse_args()
    if args.ours_src:
        sys.path.insert(0, str(Path(args.ours_src, "provider")))
    import ssh_jobs_provider

    ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    root = Path(args.root)
    try:
        alone = job_alone_cpu(root.with_name(root.name + "-alone"), 100) * 1000
        runs = [one_batch(root, args.n, args.interpreter) for _ in range(args.repeats)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.with_name(root.name + "-alone"), ignore_errors=True)
    print(
        f"provider: {Path(ssh_jobs_provider.__file__).parent}; N={args.n}, {args.interpreter}, {args.repeats} runs (median)"
    )
    for name in ("total_cpu_ms_per_job", "batch_cpu_ms_per_job", "batch_seconds", "to_last_start_seconds"):
        print(f"  {name}: {statistics.median(run[name] for run in runs):.2f}")
    total = statistics.median(run["total_cpu_ms_per_job"] for run in runs)
    print(f"  the job's command alone: {alone:.2f} ms; the provider per job: {total - alone:.2f} ms")


if __name__ == "__main__":
    main()
