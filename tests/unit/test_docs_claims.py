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
