"""
The last lines of a job's output, kept bounded while the log streams past (the operator's
``return_last_lines``). They travel in the trigger's event and end up in the task's XCom, both
stored in Airflow's metadata database: hence a cap on the count and on the bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

#: Most lines ``return_last_lines`` may ask for.
MAX_RETURN_LINES = 1000
#: Most UTF-8 bytes the kept lines may hold together; older lines are dropped first.
MAX_RETURN_BYTES = 64 * 1024
#: What replaces the end of a single line longer than :data:`MAX_RETURN_BYTES`.
TRUNCATED_MARK = " [truncated]"


def validate_line_count(count: object) -> int:
    """``count`` as the number of lines to return, or a ``ValueError`` that says what is allowed."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_RETURN_LINES:
        raise ValueError(
            f"return_last_lines must be a whole number from 0 (return nothing) to {MAX_RETURN_LINES}, got "
            f"{count!r}: the lines are stored in Airflow's metadata database as the task's return value."
        )
    return count


def _bounded_line(line: str) -> str:
    """``line``, cut so that it and its newline fit in :data:`MAX_RETURN_BYTES`."""
    encoded = line.encode("utf-8", errors="replace")
    if _size(line) <= MAX_RETURN_BYTES:
        return line
    room = MAX_RETURN_BYTES - 1 - len(TRUNCATED_MARK.encode())
    return encoded[:room].decode("utf-8", errors="ignore") + TRUNCATED_MARK


class LastLines:
    """
    The newest ``count`` lines added, together at most :data:`MAX_RETURN_BYTES` bytes.

    :param count: how many lines to keep (0: none)
    """

    def __init__(self, count: int) -> None:
        self.count = validate_line_count(count)
        self._lines: deque[str] = deque(maxlen=self.count or None)
        self._bytes = 0

    def add(self, lines: Iterable[str]) -> None:
        """Keep ``lines`` (newest last), dropping the oldest beyond the count or the byte cap."""
        if not self.count:
            return
        for line in lines:
            line = _bounded_line(line)
            if len(self._lines) == self.count:
                self._bytes -= _size(self._lines[0])  # the deque drops it on append
            self._lines.append(line)
            self._bytes += _size(line)
            while self._bytes > MAX_RETURN_BYTES:
                self._bytes -= _size(self._lines.popleft())

    @property
    def lines(self) -> list[str]:
        """The kept lines, oldest first."""
        return list(self._lines)


def split_newest(lines: list[str], max_bytes: int) -> tuple[list[str], list[str]]:
    """``lines`` as (the older ones, the newest that fit in ``max_bytes`` together), in order."""
    size, cut = 0, len(lines)
    while cut > 0 and size + _size(lines[cut - 1]) <= max_bytes:
        cut -= 1
        size += _size(lines[cut])
    return list(lines[:cut]), list(lines[cut:])


def _size(line: str) -> int:
    # The newline that joins it to the next line counts too.
    return len(line.encode("utf-8", errors="replace")) + 1
