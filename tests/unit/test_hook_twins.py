"""The two hooks are twins: same methods for the same things; no logging change at import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync

SHARED = ("get_settings", "get_conn", "connect_with", "call_with_retries", "run_script")


@pytest.mark.parametrize("name", SHARED)
def test_both_hooks_have_the_method_with_the_same_parameters(name: str) -> None:
    sync, async_ = getattr(SSHHook, name), getattr(SSHHookAsync, name)
    assert not inspect.iscoroutinefunction(sync)
    assert inspect.iscoroutinefunction(async_)
    sync_params, async_params = inspect.signature(sync).parameters, inspect.signature(async_).parameters
    assert list(sync_params) == list(async_params)
    if name != "call_with_retries":  # its attempt is a coroutine function on the async twin
        assert [p.annotation for p in sync_params.values() if p.name != "conn"] == [
            p.annotation for p in async_params.values() if p.name != "conn"
        ]


#: Constructor parameters named as upstream's hooks name them, kept for a migration that only
#: changes the import: upstream's async hook takes ``host`` and reads ``ssh_default`` by default.
UPSTREAM_ONLY = {"host"}
UPSTREAM_DEFAULTS = {"ssh_conn_id"}


def test_both_hooks_take_the_same_settings_by_the_same_names_and_defaults() -> None:
    sync = inspect.signature(SSHHook.__init__).parameters
    async_ = inspect.signature(SSHHookAsync.__init__).parameters
    common = set(sync) & set(async_)
    # What one twin takes and the other cannot (paramiko- or asyncssh-only options) is listed here.
    assert set(sync) - common == {"cmd_timeout", "disabled_algorithms", "ciphers", "auth_timeout"}
    assert set(async_) - common - UPSTREAM_ONLY == {
        "known_hosts", "passphrase", "private_key", "keepalive_count_max",
    }  # fmt: skip
    assert {"remote_host", "conn_retry_attempts", "backoff", "conn_timeout", "banner_timeout"} <= common
    for name in common - {"self"} - UPSTREAM_DEFAULTS:
        assert sync[name].default == async_[name].default, name


def test_both_hooks_aim_at_remote_host() -> None:
    assert SSHHookAsync(ssh_conn_id="x", remote_host="h").remote_host == "h"
    assert SSHHookAsync(ssh_conn_id="x", host="h").remote_host == "h"  # upstream's name


def test_run_script_returns_the_same_type_on_both() -> None:
    assert inspect.signature(SSHHook.run_script).return_annotation == "CommandResult"
    assert inspect.signature(SSHHookAsync.run_script).return_annotation == "CommandResult"


def test_the_sync_hook_keeps_no_client_it_never_reads() -> None:
    assert not hasattr(SSHHook(remote_host="h"), "client")


def test_importing_the_hooks_leaves_logging_alone_and_the_first_async_hook_quiets_asyncssh() -> None:
    code = (
        "import logging\n"
        "import ssh_jobs_provider.hooks.ssh as hooks\n"
        "print(logging.getLogger('asyncssh').level)\n"
        "hooks.SSHHookAsync(ssh_conn_id='x')\n"
        "print(logging.getLogger('asyncssh').level)\n"
        "logging.getLogger('asyncssh').setLevel(logging.DEBUG)\n"
        "hooks.SSHHookAsync(ssh_conn_id='y')\n"
        "print(logging.getLogger('asyncssh').level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "30", "10"], "quieted once, and a level set by the deployment is kept"
