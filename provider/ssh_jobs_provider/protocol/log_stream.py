"""
Turn chunks of a remote log file into whole lines of text, exactly once.

Pure code: the trigger feeds it the bytes each poll returned and logs what comes out.

- Lines are cut at ``\\n`` *bytes*. A newline byte never occurs inside a multi-byte UTF-8
  sequence, so a character split across two chunks is always decoded whole.
- Invalid bytes become U+FFFD replacement characters; decoding never raises.
- :attr:`LogStream.emitted_offset` is the file offset of the first byte not yet handed
  out, always on a line (or, for over-long lines, a UTF-8 character) boundary, so a
  stream can be resumed from it without duplicating or skipping output.
"""

from __future__ import annotations

DEFAULT_MAX_PENDING = 64 * 1024


def _utf8_safe_cut(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that does not end inside a UTF-8 sequence."""
    cut = len(data)
    # Step back over at most 3 continuation bytes (10xxxxxx) to the lead byte.
    back = 0
    while back < 3 and cut - back - 1 >= 0 and (data[cut - back - 1] & 0xC0) == 0x80:
        back += 1
    lead_index = cut - back - 1
    if lead_index < 0:
        return cut
    lead = data[lead_index]
    if lead >= 0xF0:
        needed = 4
    elif lead >= 0xE0:
        needed = 3
    elif lead >= 0xC0:
        needed = 2
    else:
        return cut  # ASCII or stray continuation bytes: nothing to hold back
    if back + 1 < needed:
        return lead_index  # incomplete sequence at the end: hold it back
    return cut


class LogStream:
    """
    Incremental line assembler for a byte stream read at increasing offsets.

    :param offset: file offset the stream starts at
    :param max_pending: longest partial line kept back; longer ones are handed out in pieces
    """

    def __init__(self, offset: int = 0, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        self.emitted_offset = offset
        self._pending = b""
        self.max_pending = max(4, max_pending)

    @property
    def read_offset(self) -> int:
        """Offset of the next byte to fetch from the remote file."""
        return self.emitted_offset + len(self._pending)

    def feed(self, data: bytes) -> list[str]:
        """Add the bytes read at :attr:`read_offset`; return the complete lines, without newlines."""
        if not data:
            return []
        buffer = self._pending + data
        last_newline = buffer.rfind(b"\n")
        lines: list[str] = []
        if last_newline >= 0:
            complete, buffer = buffer[: last_newline + 1], buffer[last_newline + 1 :]
            lines = complete[:-1].decode("utf-8", errors="replace").split("\n")
            self.emitted_offset += len(complete)
        while len(buffer) >= self.max_pending:
            cut = _utf8_safe_cut(buffer[: self.max_pending]) or self.max_pending
            lines.append(buffer[:cut].decode("utf-8", errors="replace"))
            self.emitted_offset += cut
            buffer = buffer[cut:]
        self._pending = buffer
        return lines

    def flush(self) -> list[str]:
        """The log is complete: hand out the trailing partial line, if any."""
        if not self._pending:
            return []
        line = self._pending.decode("utf-8", errors="replace")
        self.emitted_offset += len(self._pending)
        self._pending = b""
        return [line]
