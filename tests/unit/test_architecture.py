"""The layout keeps its promises: no import cycle, small modules, a protocol core without I/O."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "ssh_jobs_provider"
ROOT = Path(__file__).resolve().parents[2] / "provider" / PACKAGE
#: Modules of the sans-I/O core may import the standard library and each other, nothing else.
PROTOCOL_ALLOWED = set(sys.stdlib_module_names)
#: Module size limits: a module per idea, none large.
MAX_MODULE_LINES = 400
#: The two twin hooks share a module on purpose (one read of both); with their upstream-compatible
#: parameters documented, they stay under this.
MAX_LINES = {"hooks/ssh.py": 320}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (lazy imports count too)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from pkg import submodule` imports the submodule as well.
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
            if base.startswith("airflow."):
                # What is taken from Airflow, by name: some names moved between releases.
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    return {
        name: {dep for dep in imports_of(path) if dep in MODULES and dep != name}
        for name, path in MODULES.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports as a list of modules, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in graph:
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            following = next(stack[-1], None)
            if following is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(following) == 1:
                return [*path[path.index(following) :], following]
            elif not state.get(following):
                state[following] = 1
                path.append(following)
                stack.append(iter(sorted(graph[following])))
    return None


def test_there_is_no_import_cycle_in_the_provider() -> None:
    assert find_cycle(internal_graph()) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_large(name: str) -> None:
    relative = MODULES[name].relative_to(ROOT).as_posix()
    limit = MAX_LINES.get(relative, MAX_MODULE_LINES)
    assert len(MODULES[name].read_text().splitlines()) <= limit, f"{relative}: split it (limit {limit} lines)"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith(f"{PACKAGE}.protocol")))
def test_the_protocol_core_imports_nothing_but_itself_and_the_standard_library(name: str) -> None:
    outside = {
        dep
        for dep in imports_of(MODULES[name])
        if not dep.startswith(f"{PACKAGE}.protocol") and dep.split(".")[0] not in PROTOCOL_ALLOWED
    }
    assert outside == set(), f"{name} imports {sorted(outside)}: the protocol core must stay free of I/O"


#: Airflow modules that differ between the supported releases (what they hold moved or changed
#: shape): only ``_compat`` imports them, so that one module answers for every release.
AIRFLOW_MODULES_THAT_DIFFER = (
    "airflow.exceptions",
    "airflow.sdk.exceptions",
    "airflow.stats",
    "airflow.sdk.observability",
    "airflow.sdk.configuration",
    "airflow.sdk._shared",
    "airflow._shared",
    # The bases of operators and hooks: the task SDK's from 3.0 / 3.1 on, airflow's own before.
    "airflow.sdk.BaseOperator",
    "airflow.sdk.BaseHook",
    "airflow.models",
    "airflow.hooks",
)


def test_only_the_compat_module_imports_what_differs_between_airflow_releases() -> None:
    found = {
        name: sorted(dep for dep in imports_of(path) if dep.startswith(AIRFLOW_MODULES_THAT_DIFFER))
        for name, path in MODULES.items()
        if name != f"{PACKAGE}._compat"
    }
    assert {name: deps for name, deps in found.items() if deps} == {}
