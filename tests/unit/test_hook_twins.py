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


#: Defaults that differ, as upstream's do, for a migration that only changes the import:
#: upstream's async hook reads ``ssh_default`` by default.
UPSTREAM_DEFAULTS = {"ssh_conn_id"}


def test_both_hooks_take_the_same_parameters_by_the_same_names_and_defaults() -> None:
    sync = inspect.signature(SSHHook.__init__).parameters
    async_ = inspect.signature(SSHHookAsync.__init__).parameters
    assert set(sync) == set(async_)
    assert {"remote_host", "host", "conn_retry_attempts", "backoff", "conn_timeout", "cmd_timeout"} <= set(
        sync
    )
    for name in set(sync) - {"self"} - UPSTREAM_DEFAULTS:
        assert sync[name].default == async_[name].default, name


def test_the_twin_hooks_take_the_same_parameters_and_read_them_alike() -> None:
    explicit = {
        "ssh_conn_id": None,
        "host": "h.example",
        "port": 2222,
        "username": "u",
        "password": "p",
        "known_hosts": "/k",
        "key_file": "/id",
        "passphrase": "pp",
        "private_key": None,
        "keepalive_interval": 7,
        "keepalive_count_max": 2,
        "conn_timeout": 3,
        "banner_timeout": 4,
        "auth_timeout": 5,
        "ciphers": ["aes128-ctr"],
        "disabled_algorithms": {"kex": ["diffie-hellman-group1-sha1"]},
        "no_host_key_check": True,
        "host_proxy_cmd": "nc %h %p",
        "cmd_timeout": 9,
    }
    sync_hook, async_hook = SSHHook(**explicit), SSHHookAsync(**explicit)
    assert sync_hook._overrides == async_hook._overrides
    assert sync_hook.remote_host == async_hook.remote_host == "h.example"
    assert sync_hook.cmd_timeout == async_hook.cmd_timeout == 9
    assert sync_hook._overrides["private_key_passphrase"] == "pp"


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
