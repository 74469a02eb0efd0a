"""The two hooks are twins: same methods for the same things; no logging change at import."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from ssh_jobs_provider.hooks.ssh import SSHHook, SSHHookAsync

SHARED = ("get_conn", "connect_with", "call_with_retries", "run_script")


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
