"""
The remote-job protocol, as pure code: no sockets, no SSH, no Airflow.

Its layers, each a module (in the manner of a sans-I/O protocol library):

- :mod:`~ssh_jobs_provider.protocol.identity`: job ids, tokens and paths, validated;
- :mod:`~ssh_jobs_provider.protocol.environment`: the job's ``environment``, validated;
- :mod:`~ssh_jobs_provider.protocol.scripts`: the remote ``sh`` programs (``sh/*.sh``,
  checked by ShellCheck) assembled with one call's arguments;
- :mod:`~ssh_jobs_provider.protocol.submit`: the submit, in ONE ``perl`` process
  (``perl/submit.pl``) where the host has perl, else in POSIX ``sh``;
- :mod:`~ssh_jobs_provider.protocol.batch`: the batch of one poll tick, its polls run by one
  ``perl`` process (``perl/poll.pl``) or by POSIX ``sh`` alone;
- :mod:`~ssh_jobs_provider.protocol.answers`: what the scripts answer, parsed;
- :mod:`~ssh_jobs_provider.protocol.kill`: the kill verb, its script and its answer side by side;
- :mod:`~ssh_jobs_provider.protocol.log_stream`: log bytes to whole lines, exactly once;
- :mod:`~ssh_jobs_provider.protocol.monitor`: what successive answers mean for one job.

The hooks only carry scripts and answers; the operator, the trigger and the host session
decide with these modules. Nothing here imports from outside this package.
"""

from __future__ import annotations

from ssh_jobs_provider.protocol.answers import (
    CleanupResult,
    EntryResult,
    JobState,
    JobStatus,
    RemoteJobProtocolError,
    SubmitRefused,
    parse_batch_output,
    parse_simple_state,
    parse_submit_output,
)
from ssh_jobs_provider.protocol.batch import (
    POLL_INTERPRETERS,
    CleanupEntry,
    CleanupState,
    Entry,
    PollEntry,
    build_batch_script,
    build_cleanup_script,
    build_probe_script,
)
from ssh_jobs_provider.protocol.environment import normalise_environment
from ssh_jobs_provider.protocol.identity import (
    DEFAULT_BASE_DIR,
    RemoteJobPaths,
    make_job_id,
    new_job_token,
    validate_base_dir,
    validate_working_dir,
)
from ssh_jobs_provider.protocol.kill import (
    KillAnswer,
    build_kill_script,
    parse_kill_answer,
    parse_kill_output,
)
from ssh_jobs_provider.protocol.monitor import JobMonitor, Outcome
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, REMOTE_SHELL
from ssh_jobs_provider.protocol.submit import build_submit_script

__all__ = [
    "DEFAULT_BASE_DIR",
    "POLL_INTERPRETERS",
    "PROTOCOL_TAG",
    "REMOTE_SHELL",
    "CleanupEntry",
    "CleanupResult",
    "CleanupState",
    "Entry",
    "EntryResult",
    "JobMonitor",
    "JobState",
    "JobStatus",
    "KillAnswer",
    "Outcome",
    "PollEntry",
    "RemoteJobPaths",
    "RemoteJobProtocolError",
    "SubmitRefused",
    "build_batch_script",
    "build_cleanup_script",
    "build_kill_script",
    "build_probe_script",
    "build_submit_script",
    "make_job_id",
    "new_job_token",
    "normalise_environment",
    "parse_batch_output",
    "parse_kill_answer",
    "parse_kill_output",
    "parse_simple_state",
    "parse_submit_output",
    "validate_base_dir",
    "validate_working_dir",
]
