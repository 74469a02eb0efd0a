"""
Which test modules can depend on the Airflow release: those that import Airflow, directly or
through any module of this repository they import (at the top or inside a function).

``dev/run-tests.sh`` runs the whole suite once against the newest Airflow, then only these
modules against each older release (``SSH_JOBS_TESTS=airflow``, see ``tests/conftest.py``):
a module that never reaches Airflow (the remote protocol, the test servers) gives the same
result on every release. Found by reading the source, so nothing is to be kept up to date by
hand; ``tests/unit/test_airflow_reach.py`` checks the reading.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Where this repository's importable modules live (as ``pyproject.toml``/pytest sets the path).
SOURCE_ROOTS = (REPO / "provider", REPO / "tests", REPO / "dev", REPO / "tests" / "e2e")


def module_file(name: str) -> Path | None:
    """The file of this repository's module ``name``, or ``None`` (a library's, or the stdlib's)."""
    parts = name.split(".")
    for root in SOURCE_ROOTS:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, with the parent packages a dotted import loads too."""
    found: set[str] = set()
    package_parts = _package_of(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_parts[: len(package_parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import name` may import the submodule pkg.name.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return found


def _package_of(path: Path) -> list[str]:
    for root in SOURCE_ROOTS:
        if path.is_relative_to(root) and root != REPO / "tests" / "e2e":
            parts = list(path.relative_to(root).with_suffix("").parts)
            return parts if path.name == "__init__.py" else parts[:-1]
    return []


@functools.cache
def reaches_airflow(path: Path) -> bool:
    """Whether importing ``path`` can import Airflow (a breadth-first walk over this repository's modules)."""
    seen: set[Path] = {path}
    pending = [path]
    # Bounded by the repository's module count: each file is read once.
    while pending:
        current = pending.pop()
        for name in imported_names(current):
            if name == "airflow":
                return True
            found = module_file(name)
            if found is not None and found not in seen:
                seen.add(found)
                pending.append(found)
    return False
