"""Numbers a test wants printed at the end of the run (handshakes, drops, ...)."""

from __future__ import annotations

LINES: list[str] = []


def report(line: str) -> None:
    """Queue ``line`` for the terminal summary (shown even when the test passes)."""
    LINES.append(line)
