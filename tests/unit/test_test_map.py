"""tests/README.md names the tests of every module of the package, and only files that exist."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PACKAGE = TESTS.parent / "provider" / "ssh_jobs_provider"


def rows() -> list[tuple[list[str], list[str]]]:
    """Each table row: the modules (or globs) it names, and the test files."""
    found = []
    for line in (TESTS / "README.md").read_text().splitlines():
        cells = line.split("|")
        if len(cells) == 4 and cells[1].strip().startswith("`"):
            modules = re.findall(r"`([^`]+)`", cells[1])
            tests = [name for name in re.findall(r"`([^`]+)`", cells[2]) if name.endswith(".py")]
            found.append((modules, tests))
    return found


def test_every_module_of_the_package_has_its_tests_named() -> None:
    listed = {path for modules, _ in rows() for name in modules for path in PACKAGE.glob(name)}
    shipped = {
        path
        for pattern in ("**/*.py", "protocol/sh/*.sh", "protocol/perl/*.pl")
        for path in PACKAGE.glob(pattern)
        if path.name != "__init__.py" and "example_dags" not in path.parts
    }
    assert not shipped - listed, sorted(str(p.relative_to(PACKAGE)) for p in shipped - listed)


def test_every_test_file_named_exists() -> None:
    named = {test for _, tests in rows() for test in tests}
    assert named, "no table found"
    assert not {test for test in named if not (TESTS / test).is_file()}


def test_no_two_test_modules_share_a_name() -> None:
    # The test directories are not packages: pytest imports each module by its file name, and a
    # second module of the same name stops the whole run at collection.
    names: dict[str, list[str]] = {}
    for path in TESTS.rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(TESTS)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}
