"""
A base dir on a file system mounted ``noexec`` (often ``/tmp``), against a real sshd.

Nothing of the job directory is executed any more, a ``#!`` command's included: the wrapper
starts its interpreter itself. The doctor tells such a base dir from an ordinary one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssh_jobs_provider.cli.main import main
from support.jobs import make_operator
from support.runner import run_operator

pytestmark = pytest.mark.integration


@pytest.fixture
def noexec_dir(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs mounted ``noexec``, unmounted at teardown (after the jobs on it have ended)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "noexec-fs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "noexec,size=4m,mode=700", "tmpfs", str(mount)], check=True, timeout=30
    )
    try:
        # The premise: nothing on it can be executed, not even a script a shell would run.
        probe = mount / "probe"
        probe.write_text("#!/bin/sh\nexit 0\n")
        probe.chmod(0o700)
        with pytest.raises(PermissionError):
            subprocess.run([str(probe)], check=False, timeout=30)
        probe.unlink()
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


@pytest.mark.parametrize(
    ("command", "outcome", "lines"),
    [
        pytest.param(
            '#!/bin/sh\necho "sh runs $0"\n', "success", ["sh runs {job_dir}/command.sh"], id="bin-sh"
        ),
        pytest.param(
            "#!/usr/bin/env python3\nimport sys\nprint('python runs', sys.argv[0])\nsys.exit(3)\n",
            "failed",
            ["python runs {job_dir}/command.sh"],
            id="env-python3",
        ),
    ],
)
def test_a_shebang_command_runs_on_a_noexec_base_dir_with_its_own_exit_code(
    noexec_dir: Path, ssh_conn: str, command: str, outcome: str, lines: list[str]
) -> None:
    result = run_operator(make_operator(ssh_conn, str(noexec_dir / "jobs"), command, cleanup="never"))

    assert result.event is not None, result.error
    job_dir = result.event["job_dir"]
    assert result.outcome == outcome, (result.error, result.trigger_lines)
    assert result.event["exit_code"] == (0 if outcome == "success" else 3)
    assert result.trigger_lines == [line.format(job_dir=job_dir) for line in lines]


def test_doctor_warns_of_a_noexec_base_dir_and_passes(
    noexec_dir: Path, ssh_conn: str, remote_base_dir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["doctor", "--conn-id", ssh_conn, "--base-dir", str(noexec_dir / "jobs")])
    out = capsys.readouterr().out

    assert status == 0, out
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if "base dir exec" in line)
    assert lines[row].split()[0] == "warn", out
    assert f"files in {noexec_dir} cannot be executed (mounted noexec?): jobs run all the same" in lines[row]
    assert "-> only a command that executes files it puts in its job directory" in lines[row + 1]
    assert list(noexec_dir.iterdir()) == [], "the doctor leaves nothing behind"

    # An ordinary base dir on this machine: the same check passes.
    assert main(["doctor", "--conn-id", ssh_conn, "--base-dir", remote_base_dir]) == 0
    ordinary = next(line for line in capsys.readouterr().out.splitlines() if "base dir exec" in line)
    assert ordinary.split()[0] == "ok" and "can be executed" in ordinary
