"""A lost submit reply and the refusals after it share ONE budget, against a real sshd."""

from __future__ import annotations

import pytest

from ssh_jobs_provider.exceptions import SSHConnectError
from ssh_jobs_provider.hooks.ssh import SSHHook
from ssh_jobs_provider.operators.remote_steps import submit_job
from ssh_jobs_provider.operators.ssh_remote_job import SSHRemoteJobOperator
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.submit import build_submit_script
from ssh_jobs_provider.retry import BackoffPolicy
from support.faultproxy import FaultProxy

pytestmark = pytest.mark.integration

FAST = BackoffPolicy(initial=0.001, maximum=0.002)


def test_lost_reply_then_refusals_make_at_most_conn_retry_attempts_connections(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch, remote_base_dir: str
) -> None:
    run_script = SSHHook.run_script

    def reply_lost_then_server_refuses(self: SSHHook, client, script: str, timeout: float):
        # From here on nothing comes back on this connection (the reply is lost, the
        # attempt times out), and the server drops every new connection before its banner.
        proxy.blackhole(True)
        proxy.refuse_all(True)
        return run_script(self, client, script, timeout)

    monkeypatch.setattr(SSHHook, "run_script", reply_lost_then_server_refuses)
    op = SSHRemoteJobOperator(
        task_id="job",
        ssh_conn_id="ssh_proxy",
        command="true",
        remote_base_dir=remote_base_dir,
        command_timeout=0.5,
        conn_retry_attempts=3,
    )
    op.ssh_hook.backoff = FAST
    paths = RemoteJobPaths(job_id="af_budget_mixed", base_dir=remote_base_dir)

    with pytest.raises(SSHConnectError, match=r"after 3 attempt\(s\)"):
        submit_job(
            op.ssh_hook,
            paths,
            build_submit_script(paths, "true", {}, new_job_token()),
            command_timeout=op.command_timeout,
            max_timeout=600,
            log=op.log,
        )
    # One connection that submitted, two refused: not 1 + 3 from a connect loop nested
    # inside the submit loop.
    assert proxy.accepted_total == 3
    assert proxy.refused_total == 2
