"""What a finished job leaves for downstream tasks: its exit code in XCom, and its last lines."""

from __future__ import annotations

import pytest

from ssh_jobs_provider.operators.ssh_remote_job import XCOM_KEY
from ssh_jobs_provider.protocol.last_lines import MAX_RETURN_BYTES
from support.jobs import make_operator
from support.runner import run_operator

pytestmark = pytest.mark.integration

FOUR_LINES = "echo 'line 1'\necho 'line 2'\necho 'line 3' >&2\necho 'line 4'\n"


@pytest.mark.parametrize("submit_from", ["worker", "triggerer"])
def test_exit_code_and_last_lines_reach_xcom_and_the_return_value(
    ssh_conn: str, remote_base_dir: str, submit_from: str
) -> None:
    op = make_operator(ssh_conn, remote_base_dir, FOUR_LINES, return_last_lines=2, submit_from=submit_from)
    result = run_operator(op)

    assert result.outcome == "success", result.error
    assert result.value == "line 3\nline 4"
    pushed = result.ti.xcom[XCOM_KEY]
    assert pushed["exit_code"] == 0
    # The pid known at the submit (in the worker, or in the trigger) stays in the final XCom.
    assert isinstance(pushed["pid"], int) and pushed["pid"] > 0
    assert pushed["job_dir"].startswith(remote_base_dir + "/")


def test_without_return_last_lines_the_task_returns_nothing(ssh_conn: str, remote_base_dir: str) -> None:
    result = run_operator(make_operator(ssh_conn, remote_base_dir, FOUR_LINES))

    assert result.outcome == "success", result.error
    assert result.value is None
    assert result.event is not None and result.event["last_lines"] is None
    assert result.ti.xcom[XCOM_KEY]["exit_code"] == 0


@pytest.mark.parametrize(
    ("command", "outcome", "code"), [("exit 3", "failed", 3), ("exit 99", "skipped", 99)]
)
def test_a_job_that_did_not_succeed_still_records_its_exit_code(
    ssh_conn: str, remote_base_dir: str, command: str, outcome: str, code: int
) -> None:
    op = make_operator(ssh_conn, remote_base_dir, command, skip_on_exit_code=99, return_last_lines=5)
    result = run_operator(op)

    assert result.outcome == outcome
    assert result.ti.xcom[XCOM_KEY]["exit_code"] == code
    assert result.value is None


def test_the_returned_lines_stay_within_the_byte_cap(ssh_conn: str, remote_base_dir: str) -> None:
    # 1000 lines of ~200 bytes: about 200 KiB asked for, at most 64 KiB returned, the newest kept.
    command = "i=1\nwhile [ $i -le 1000 ]; do printf 'row %04d %0190d\\n' $i 0; i=$((i+1)); done\n"
    op = make_operator(ssh_conn, remote_base_dir, command, return_last_lines=1000, log_chunk_size=65536)
    result = run_operator(op)

    assert result.outcome == "success", result.error
    lines = result.value.split("\n")
    assert len(result.value.encode()) + 1 <= MAX_RETURN_BYTES
    assert lines[-1].startswith("row 1000 ")
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 1001)), "the kept lines are the newest ones, in order"
    assert 250 < len(lines) < 400
