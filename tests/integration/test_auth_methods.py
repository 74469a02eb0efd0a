"""
Every way to log in, each against an sshd that allows ONLY that method, with both hooks.

Password and keyboard-interactive log in as a throwaway local user with a random password
(created and deleted by the test); keyboard-interactive goes through PAM, the only
keyboard-interactive device OpenSSH has on Linux. Nothing may ever prompt, and no secret may
appear in an error.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssh_jobs_provider.exceptions import SSHAuthenticationError
from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync
from support.sshd import auth_only, local_password_user, running_ssh_agent, use_connection

pytestmark = [pytest.mark.integration]

PASSPHRASE = "correct horse battery staple"


def _both_hooks_run(conn_id: str) -> tuple[str, str]:
    """``id -un`` through the paramiko hook, then the asyncssh hook."""
    hook = SSHHook(ssh_conn_id=conn_id, conn_retry_attempts=1)
    with hook.get_conn() as client:
        status, out, err = hook.exec_ssh_client_command(client, "id -un", timeout=10)
    assert status == 0, err
    async_status, async_out, async_err = asyncio.run(
        SSHHookAsync(ssh_conn_id=conn_id, conn_retry_attempts=1).run_command("id -un", 10)
    )
    assert async_status == 0, async_err
    return out.decode().strip(), async_out.strip()


def _both_hooks_refused(conn_id: str, secret: str) -> None:
    with pytest.raises(SSHAuthenticationError) as sync_error:
        SSHHook(ssh_conn_id=conn_id, conn_retry_attempts=1).get_conn().close()
    with pytest.raises(SSHAuthenticationError) as async_error:
        asyncio.run(SSHHookAsync(ssh_conn_id=conn_id, conn_retry_attempts=1).run_command("true", 10))
    for error in (sync_error.value, async_error.value):
        assert secret not in str(error) and secret not in repr(error.__cause__)


@pytest.fixture
def password_user() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd to create a local user with a password")
    with local_password_user() as user:
        yield user


@pytest.mark.parametrize(
    ("method", "pam"),
    [("password", False), pytest.param("keyboard-interactive", True, id="keyboard-interactive-pam")],
)
def test_password_and_keyboard_interactive(
    sshd_factory, monkeypatch, password_user: tuple[str, str], method: str, pam: bool
) -> None:
    if pam and not Path("/etc/pam.d/sshd").exists():
        pytest.skip("keyboard-interactive needs PAM, and this machine has no /etc/pam.d/sshd")
    name, password = password_user
    server = sshd_factory(extra_config=auth_only(method, pam=pam))
    base = server.airflow_connection("pw")
    extra = {"host_key": server.host_public_key, "look_for_keys": False}
    for conn_id, secret in (("pw", password), ("pw_wrong", password + "x")):
        monkeypatch.setenv(
            f"AIRFLOW_CONN_{conn_id.upper()}",
            json.dumps({**base, "login": name, "password": secret, "extra": extra}),
        )
    assert _both_hooks_run("pw") == (name, name)
    assert f"Accepted {method}" in server.log_text()
    _both_hooks_refused("pw_wrong", password)


@pytest.fixture
def publickey_only(sshd_factory):
    return sshd_factory(extra_config=auth_only("publickey"))


def test_passphrase_protected_key_file(publickey_only, monkeypatch) -> None:
    sshd = publickey_only
    key = sshd.base_dir / "client_encrypted"
    shutil.copy(sshd.client_key_path, key)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", PASSPHRASE, "-f", str(key)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    common = {"key_file": str(key), "look_for_keys": False}
    use_connection(monkeypatch, sshd, "enc", **common, private_key_passphrase=PASSPHRASE)
    assert _both_hooks_run("enc") == (sshd.user, sshd.user)
    use_connection(monkeypatch, sshd, "enc_wrong", **common, private_key_passphrase="not it")
    _both_hooks_refused("enc_wrong", PASSPHRASE)
    # Without a passphrase: an error naming the extra, never a prompt.
    use_connection(monkeypatch, sshd, "enc_none", **common)
    for attempt in (
        lambda: SSHHook(ssh_conn_id="enc_none", conn_retry_attempts=1).get_conn().close(),
        lambda: asyncio.run(
            SSHHookAsync(ssh_conn_id="enc_none", conn_retry_attempts=1).run_command("true", 10)
        ),
    ):
        with pytest.raises(Exception, match="private_key_passphrase"):
            attempt()


def test_ssh_agent(publickey_only, monkeypatch) -> None:
    sshd = publickey_only
    if shutil.which("ssh-agent") is None:
        pytest.skip("needs ssh-agent")
    # No key in the connection: only the agent (started here, killed by PID) holds it.
    use_connection(monkeypatch, sshd, "agent", key_file="")
    with running_ssh_agent(sshd.client_key_path) as agent_socket:
        monkeypatch.setenv("SSH_AUTH_SOCK", agent_socket)
        assert _both_hooks_run("agent") == (sshd.user, sshd.user)
    # The agent is gone: the same connection is refused.
    _both_hooks_refused("agent", "-----BEGIN")
