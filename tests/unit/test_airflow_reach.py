"""The reading that picks the tests run again on each older Airflow release (tests/support/airflow_reach.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.airflow_reach import REPO, imported_names, reaches_airflow

TESTS = REPO / "tests"


def test_a_protocol_test_does_not_reach_airflow_and_an_operator_test_does() -> None:
    assert not reaches_airflow(TESTS / "unit" / "test_ops.py")
    assert reaches_airflow(TESTS / "integration" / "test_job_results.py")


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def later():\n    from airflow.sdk import BaseHook\n    return BaseHook\n")
    assert "airflow" in imported_names(module)
    assert reaches_airflow(module)


def test_what_is_read_as_independent_really_imports_no_airflow() -> None:
    """Import every test module read as independent in one fresh interpreter: no Airflow module loads."""
    independent = sorted(
        path for path in (TESTS / "unit").glob("test_*.py") if not reaches_airflow(path.resolve())
    )
    independent += sorted(
        path for path in (TESTS / "integration").glob("test_*.py") if not reaches_airflow(path.resolve())
    )
    assert len(independent) >= 10, independent
    names = [".".join(path.relative_to(TESTS).with_suffix("").parts) for path in independent]
    script = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(loaded[:5])\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    paths = [str(REPO / "provider"), str(TESTS), str(REPO / "dev")]
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}\n" + script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
