"""
Who owns the ``ssh`` connection type: this package alone, or upstream's provider next to it.

Both installs are checked in a fresh interpreter (Airflow discovers providers once per
process). Upstream's provider goes into a throwaway ``--target`` directory put on
``PYTHONPATH``, so the project's virtualenv is left as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e]

UPSTREAM = "apache-airflow-providers-ssh"

PROBE = """
import json
from airflow.providers_manager import ProvidersManager
pm = ProvidersManager()
hook = pm.hooks["ssh"]
print("RESULT " + json.dumps({
    "hook": hook.hook_class_name if hook else None,
    "ui": pm.field_behaviours.get("ssh"),
    "providers": sorted(p for p in pm.providers if "ssh" in p),
}))
"""


def _probe(tmp_path: Path, pythonpath: str | None) -> tuple[dict, str]:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180, check=True
    )
    output = done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), output


@pytest.fixture(scope="module")
def upstream_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    target = tmp_path_factory.mktemp("upstream-ssh")
    # No dependencies: Airflow, paramiko and asyncssh come from the project's virtualenv;
    # sshtunnel is upstream's only other import.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            UPSTREAM,
            "sshtunnel",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return str(target)


def test_alone_this_package_registers_ssh_with_its_field_behaviour(tmp_path: Path) -> None:
    found, output = _probe(tmp_path, None)
    assert found["providers"] == ["airflow-provider-ssh-jobs"], "upstream is installed in this virtualenv"
    assert found["hook"] == "ssh_jobs_provider.hooks.ssh.SSHHook"
    assert found["ui"]["hidden_fields"] == ["schema"]
    assert "already registered" not in output


def test_next_to_upstream_the_ssh_type_stays_upstreams(tmp_path: Path, upstream_dir: str) -> None:
    found, output = _probe(tmp_path, upstream_dir)
    assert found["providers"] == ["airflow-provider-ssh-jobs", UPSTREAM]
    assert found["hook"] == "airflow.providers.ssh.hooks.ssh.SSHHook"
    assert "already registered" not in output
