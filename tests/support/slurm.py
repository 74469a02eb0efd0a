"""A real Slurm cluster for the tests; it lives in ``dev/harness`` so the demo can use it too.

One cluster serves the whole test run (it starts in about a second, and every test's jobs
are its own by id); it is stopped, after its jobs are cancelled, when the run ends.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.slurm import PACKAGES, SlurmCallLog, SlurmCluster, SlurmError, missing_programs
from support.protocol import SCRIPT_TIMEOUT

__all__ = [
    "SlurmCallLog",
    "SlurmCluster",
    "SlurmError",
    "require_slurm",
    "run_sh_slurm",
    "slurm_cluster_fixture",
    "wait_for",
]


def require_slurm() -> None:
    """Fail (not skip: a silently skipped suite looks green) when Slurm is not installed."""
    missing = missing_programs()
    if missing:
        pytest.fail(
            f"Slurm is not installed (missing {', '.join(missing)}); install it with: "
            f"apt-get install -y --no-install-recommends {' '.join(PACKAGES)} (dev/setup-env.sh does)",
            pytrace=False,
        )


def slurm_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The body of the session fixture ``slurm_cluster`` (tests/conftest.py)."""
    require_slurm()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def run_sh_slurm(cluster: SlurmCluster, script: str, timeout: float = SCRIPT_TIMEOUT) -> bytes:
    """Run a protocol script as the hooks do (``/bin/sh -s``, on stdin) where Slurm's clients work."""
    done = subprocess.run(
        ["/bin/sh", "-s"],
        input=script.encode(),
        capture_output=True,
        timeout=timeout,
        env=cluster.client_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def job_dir_files(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir()) if path.exists() else []
