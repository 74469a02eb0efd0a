"""The bounded tail of a job's output that ``return_last_lines`` returns."""

from __future__ import annotations

import pytest

from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.last_lines import (
    MAX_RETURN_BYTES,
    MAX_RETURN_LINES,
    TRUNCATED_MARK,
    LastLines,
    validate_line_count,
)


def test_keeps_the_newest_lines_in_order() -> None:
    kept = LastLines(3)
    kept.add(["a", "b"])
    kept.add(["c", "d", "e"])
    assert kept.lines == ["c", "d", "e"]


def test_zero_keeps_nothing() -> None:
    kept = LastLines(0)
    kept.add(["a"])
    assert kept.lines == []


def test_the_byte_cap_drops_the_oldest_lines_first() -> None:
    kept = LastLines(MAX_RETURN_LINES)
    line = "x" * 999  # 1000 bytes with its newline
    kept.add([line] * 100)
    assert len(kept.lines) == MAX_RETURN_BYTES // 1000
    assert len("\n".join(kept.lines).encode()) < MAX_RETURN_BYTES


def test_one_huge_line_is_cut_to_fit_and_marked() -> None:
    kept = LastLines(2)
    kept.add(["é" * MAX_RETURN_BYTES])
    (line,) = kept.lines
    assert line.endswith(TRUNCATED_MARK)
    assert len(line.encode()) + 1 <= MAX_RETURN_BYTES
    kept.add(["next"])
    # The cut line and a new one do not fit together: only the newest stays.
    assert kept.lines == ["next"]


@pytest.mark.parametrize("count", [-1, MAX_RETURN_LINES + 1, True, "3", 2.0, None])
def test_a_bad_count_is_refused_with_the_allowed_range(count: object) -> None:
    with pytest.raises(ValueError, match=f"from 0 .* to {MAX_RETURN_LINES}"):
        validate_line_count(count)


def test_the_operator_refuses_a_bad_count_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="return_last_lines"):
        SSHRemoteJobOperator(task_id="job", ssh_conn_id="ssh_default", command="true", return_last_lines=5000)
