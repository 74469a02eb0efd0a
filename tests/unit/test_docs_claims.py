"""What the docs say about versions agrees with the package and with the releases it names."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def lowest_airflow_required() -> str:
    """The ``X.Y`` of ``apache-airflow>=X.Y`` in pyproject's dependencies."""
    (lowest,) = re.findall(
        r'^\s*"apache-airflow\s*>=\s*([0-9.]+)"', (ROOT / "pyproject.toml").read_text(), re.M
    )
    return str(lowest)


def test_the_lowest_supported_airflow_is_the_same_in_the_package_readme_and_docs() -> None:
    lowest = lowest_airflow_required()
    readme = (ROOT / "README.md").read_text()
    quickstart = (ROOT / "docs" / "quickstart.rst").read_text()
    assert f"Apache Airflow >= {lowest}" in readme
    assert f"Apache Airflow {lowest} or later" in quickstart
    # The versions table starts at that release.
    table = quickstart.split(".. _airflow-versions:")[1]
    header = re.search(r"\* -\s*\n\s*- (\S+)", table)
    assert header is not None and header.group(1) == lowest


def test_the_migration_page_says_upstream_verifies_host_keys_since_7_0_0() -> None:
    """Upstream's hooks verify unknown host keys from 7.0.0 on (they accepted them before)."""
    page = " ".join((ROOT / "docs" / "migrating.rst").read_text().split())
    bullet = page.split("**Host keys are verified by default.**")[1].split("* **")[0]
    assert "since its 7.0.0" in bullet
    assert "Upstream's hook accepts unknown host keys" not in page


def test_every_module_the_code_path_names_exists_and_every_module_is_on_it() -> None:
    """The "How it works" walk names real files, and misses no module of the job's path."""
    page = (ROOT / "docs" / "how-it-works.rst").read_text()
    walk = (
        page.split("The same path through the code")[1].split("How the watch decides")[0].replace("\\n", " ")
    )
    package = ROOT / "provider" / "ssh_jobs_provider"
    named = set(re.findall(r"\b((?:[a-z_]+/)*[a-z_]+\.py)\b", walk))
    for name in named:
        found = list(package.glob(name)) + list(package.glob(f"*/{name}"))
        assert found, f"{name} is named in the walk but is not in the package"
    on_the_path = {
        "operators/ssh_remote_job.py", "job_spec.py", "operators/durable.py", "protocol/reattach.py",
        "protocol/identity.py", "protocol/scripts.py", "operators/remote_steps.py", "hooks/ssh.py",
        "protocol/answers.py", "triggers/ssh_remote_job.py", "triggers/host_session.py",
        "triggers/poll_scheduler.py", "triggers/watch.py", "protocol/batch.py", "protocol/monitor.py",
        "protocol/kill.py",
    }  # fmt: skip
    assert on_the_path <= named, on_the_path - named
