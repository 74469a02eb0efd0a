"""Submit -> trigger -> completion against a real sshd, through the operator's real code paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ssh_jobs_provider.operators.ssh_remote_job import XCOM_KEY
from support.jobs import make_operator
from support.runner import StandInTaskInstance, run_operator, submit
from support.sshd import use_connection

pytestmark = pytest.mark.integration


def test_success_streams_output_and_pushes_identity(ssh_conn: str, remote_base_dir: str) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "echo first\necho second >&2\necho third\n")
    result = run_operator(op)

    assert result.outcome == "success", result.error
    assert result.trigger_lines == ["first", "second", "third"]
    pushed = result.ti.xcom[XCOM_KEY]
    assert pushed["job_dir"].startswith(remote_base_dir + "/")
    assert pushed["log_file"] == pushed["job_dir"] + "/stdout.log"
    assert Path(pushed["exit_code_file"]).read_text().split()[0] == "0"
    assert result.event is not None and result.event["exit_code"] == 0


@pytest.mark.parametrize(
    ("command", "code", "lines"),
    [
        pytest.param("echo about to fail\nexit 3\n", 3, ["about to fail"], id="nonzero-exit"),
        pytest.param("set -e\necho before\nfalse\necho after\n", 1, ["before"], id="set-e-stops-early"),
    ],
)
def test_a_failing_command_fails_with_the_code_in_the_message(
    ssh_conn: str, remote_base_dir: str, command: str, code: int, lines: list[str]
) -> None:
    result = run_operator(make_operator(ssh_conn, remote_base_dir, command))

    assert result.outcome == "failed"
    assert f"exit code {code}" in str(result.error)
    assert result.trigger_lines == lines


@pytest.mark.parametrize("skip_codes", [99, [98, 99], {99}])
def test_skip_exit_code_skips(ssh_conn: str, remote_base_dir: str, skip_codes: object) -> None:
    op = make_operator(ssh_conn, remote_base_dir, "exit 99", skip_on_exit_code=skip_codes)
    result = run_operator(op)

    assert result.outcome == "skipped", result.error
    assert "99" in str(result.error)


def test_shell_features_and_environment_reach_the_command(ssh_conn: str, remote_base_dir: str) -> None:
    command = """set -e
greet() { printf 'hello %s\\n' "$1"; }
greet "$WHO"
cat <<'EOF' | tr a-z A-Z
piped heredoc
EOF
printf '[%s]\\n' "$TRICKY"
"""
    tricky = "spaces  'single' \"double\" $HOME `tick` \\back\\ é ü 中"
    op = make_operator(ssh_conn, remote_base_dir, command, environment={"WHO": "world", "TRICKY": tricky})
    result = run_operator(op)

    assert result.outcome == "success", result.error
    assert result.trigger_lines == ["hello world", "PIPED HEREDOC", f"[{tricky}]"]


@pytest.mark.parametrize(
    ("cleanup", "command", "removed"),
    [
        ("always", "exit 0", True),
        ("always", "exit 4", True),
        ("on_success", "exit 0", True),
        ("on_success", "exit 4", False),
        ("never", "exit 0", False),
    ],
)
def test_cleanup_policy(
    ssh_conn: str, remote_base_dir: str, cleanup: str, command: str, removed: bool
) -> None:
    op = make_operator(ssh_conn, remote_base_dir, command, cleanup=cleanup)
    result = run_operator(op)

    job_dir = Path(result.ti.xcom[XCOM_KEY]["job_dir"])
    assert job_dir.exists() is not removed
    assert Path(remote_base_dir).is_dir(), "the base directory itself is never removed"


def test_invalid_environment_name_fails_before_anything_runs_remotely(
    sshd, ssh_conn: str, remote_base_dir: str
) -> None:
    before = sshd.counts()["connections"]
    op = make_operator(ssh_conn, remote_base_dir, "echo hi", environment={"BAD-NAME": "x"})
    with pytest.raises(ValueError, match="BAD-NAME"):
        submit(op, StandInTaskInstance())
    assert sshd.counts()["connections"] == before
    assert not os.path.exists(remote_base_dir)


def test_one_connection_serves_os_detection_and_submit(sshd, ssh_conn: str, remote_base_dir: str) -> None:
    before = sshd.counts()
    op = make_operator(ssh_conn, remote_base_dir, "echo hi")
    submit(op, StandInTaskInstance())
    after = sshd.wait_for_counts(accepted=before["accepted"] + 1)

    assert after["accepted"] - before["accepted"] == 1
    assert after["sessions"] - before["sessions"] == 1


def test_whole_run_with_cleanup_uses_two_handshakes(sshd, ssh_conn: str, remote_base_dir: str) -> None:
    """One for the submit, one for the trigger, which also cleans up over its connection."""
    before = sshd.counts()
    op = make_operator(
        ssh_conn, remote_base_dir, "for i in 1 2 3; do echo $i; sleep 0.3; done", cleanup="always"
    )
    result = run_operator(op)
    assert result.outcome == "success", result.error
    time.sleep(0.2)
    assert sshd.counts()["accepted"] - before["accepted"] == 2
    assert result.event is not None and result.event["cleaned_up"] is True
    assert not Path(result.ti.xcom[XCOM_KEY]["job_dir"]).exists()


def test_a_host_without_a_posix_shell_gets_a_clear_error(
    sshd_factory, monkeypatch, remote_base_dir: str
) -> None:
    # Every command on this server answers like a Windows cmd.exe would.
    server = sshd_factory(
        extra_config=[
            "ForceCommand echo \"'/bin/sh' is not recognized as an internal or external command\" >&2; exit 1"
        ]
    )
    use_connection(monkeypatch, server, "ssh_notposix")
    op = make_operator("ssh_notposix", remote_base_dir, "echo hi")
    with pytest.raises(Exception, match="POSIX host with /bin/sh") as info:
        submit(op, StandInTaskInstance())
    assert "is not recognized" in str(info.value)
