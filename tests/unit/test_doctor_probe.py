"""The doctor's probe of a host, run by a local /bin/sh as the remote: its answer, parsed."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from ssh_jobs_provider.protocol.doctor import CLOCK_SCRIPT, build_host_probe, parse_clock, parse_host_probe


def run_sh(script: str) -> bytes:
    return subprocess.run(["/bin/sh", "-s"], input=script.encode(), capture_output=True, check=True).stdout


def test_the_probe_names_the_tools_the_base_dir_and_the_poll_interpreter(tmp_path: Path) -> None:
    base = tmp_path / "jobs"
    base.mkdir(mode=0o700)
    probe = parse_host_probe(run_sh(build_host_probe(str(base / "not-yet"), ["ls", "no-such-tool-here"])))
    assert probe["tools"] == {"ls": True, "no-such-tool-here": False}
    # The deepest existing directory is examined; the missing one would be created by a submit.
    assert probe["base"]["dir"] == str(base)
    assert (probe["base"]["exists"], probe["base"]["trusted"], probe["base"]["writable"]) == ("0", "1", "1")
    assert probe["base"]["why"] == ""
    assert int(probe["facts"]["cpus"]) >= 1
    assert probe["poll"] == ("perl" if shutil.which("perl") else "sh")
    assert list(base.iterdir()) == []  # the probe leaves nothing behind


def test_a_base_dir_others_can_write_is_named_with_the_reason(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    probe = parse_host_probe(run_sh(build_host_probe(str(shared), [])))
    assert probe["base"]["trusted"] == "0"
    assert "writable by group or others" in probe["base"]["why"]


def test_the_clock_reads_as_seconds_since_the_epoch() -> None:
    before = time.time()
    remote, resolution = parse_clock(run_sh(CLOCK_SCRIPT))
    assert before - 1 - resolution <= remote <= time.time() + 1 + resolution
    assert parse_clock(b"1700000000\n") == (1700000000.0, 0.5)
