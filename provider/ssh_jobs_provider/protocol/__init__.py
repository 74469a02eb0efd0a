"""
The remote-job protocol, as pure code: no sockets, no SSH, no Airflow.

Its layers, each a module (in the manner of a sans-I/O protocol library):

- values: :mod:`~ssh_jobs_provider.protocol.identity` (job ids, tokens and paths, validated),
  :mod:`~ssh_jobs_provider.protocol.environment` (the job's ``environment``, validated);
- the wire: :mod:`~ssh_jobs_provider.protocol.scripts` (the remote programs, ``sh/*.sh`` and
  ``perl/*.pl``, assembled with one call's arguments) and
  :mod:`~ssh_jobs_provider.protocol.answers` (the header lines every answer is made of, and a
  job's state as the submit and the poll answer it);
- the verbs, each with its entry, its builder and its answer's parser side by side:
  :mod:`~ssh_jobs_provider.protocol.submit` (in ONE ``perl`` process where the host has perl,
  else in POSIX ``sh``), :mod:`~ssh_jobs_provider.protocol.poll`,
  :mod:`~ssh_jobs_provider.protocol.cleanup`, :mod:`~ssh_jobs_provider.protocol.kill`,
  :mod:`~ssh_jobs_provider.protocol.reattach` (the records of earlier tries),
  :mod:`~ssh_jobs_provider.protocol.doctor` (the host's probe),
  :mod:`~ssh_jobs_provider.protocol.ops` (listing and reaping a base dir) and
  :mod:`~ssh_jobs_provider.protocol.slurm` (its submits, states and cancel through Slurm);
- :mod:`~ssh_jobs_provider.protocol.batch`: the verbs of one poll tick in ONE script, and its
  framed answer split into one result per entry;
- meaning: :mod:`~ssh_jobs_provider.protocol.log_stream` (log bytes to whole lines, exactly
  once) and :mod:`~ssh_jobs_provider.protocol.monitor` (what successive answers mean for one job).

The hooks only carry scripts and answers; the operator, the trigger and the host session
decide with these modules. Nothing here imports from outside this package.
"""

from __future__ import annotations

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError, parse_simple_state
from ssh_jobs_provider.protocol.batch import (
    Entry,
    EntryResult,
    build_batch_script,
    build_cleanup_script,
    build_probe_script,
    parse_batch_output,
)
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult, CleanupState
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
from ssh_jobs_provider.protocol.poll import POLL_INTERPRETERS, PollEntry
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, REMOTE_SHELL
from ssh_jobs_provider.protocol.submit import SubmitRefused, build_submit_script, parse_submit_output

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
