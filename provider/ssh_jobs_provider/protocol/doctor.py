"""
The doctor's verbs, as pure code: the one look at a host (its tools, whether the base dir
passes the submit's checks and is writable and executable, its free space and processors, the
poll interpreter it runs), and the clock reading. Each verb's script (``sh/doctor.sh``), its
builder and its answer's parser sit here side by side; ``cli/doctor.py`` only sends them and
judges the answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ssh_jobs_provider.protocol.answers import header_fields
from ssh_jobs_provider.protocol.batch import build_probe_script
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, as_whole, quote, script_prelude, shell_source

#: Prints the host's clock in seconds since the epoch, with nanoseconds where ``date`` has them.
CLOCK_SCRIPT = "{\nd=$(date +%s.%N 2>/dev/null); case $d in *N*|'') d=$(date +%s) ;; esac; echo \"$d\"\n}\n"


def build_host_probe(base_dir: str, tools: Iterable[str]) -> str:
    """
    The one look at the host: which of ``tools`` it has, what ``base_dir`` is like (the
    submit's own checks, ``check_chain``), its processors; then the poll interpreter probe.
    """
    body = (
        script_prelude()
        + shell_source("submit.sh")
        + shell_source("doctor.sh")
        + f"tools {' '.join(sorted(set(tools)))}\nbase {quote(base_dir)}\nfacts\n"
    )
    return as_whole(body) + build_probe_script()


def parse_host_probe(output: bytes) -> dict[str, Any]:
    """
    The answer of :func:`build_host_probe`: ``tools`` (name -> found), ``base`` (its fields,
    with ``dir`` and ``why``), ``facts`` and ``poll`` (``"perl"`` or ``"sh"``).
    """
    found: dict[str, bool] = {}
    result: dict[str, Any] = {"tools": found, "base": {}, "facts": {}, "poll": "sh"}
    marker = f"{PROTOCOL_TAG} "
    current: dict[str, str] | None = None
    for line in output.decode("utf-8", errors="replace").splitlines():
        if line.startswith(marker):
            verb, _, rest = line[len(marker) :].partition(" ")
            fields = header_fields(rest)
            current = None
            if verb == "tool":
                found[fields.get("name", "")] = fields.get("found") == "1"
            elif verb == "base":
                current = result["base"] = fields
            elif verb == "facts":
                result["facts"] = fields
            elif verb == "probe":
                result["poll"] = fields.get("state", "sh")
        elif current is not None and line[:4] in ("dir ", "why "):
            current[line[:3]] = line[4:]
    return result


def parse_clock(output: bytes) -> tuple[float, float]:
    """The host's clock from :data:`CLOCK_SCRIPT`'s answer, and its resolution (0 or 0.5 s)."""
    text = output.decode(errors="replace")
    return float(text.strip().splitlines()[-1]), 0.0 if "." in text else 0.5
