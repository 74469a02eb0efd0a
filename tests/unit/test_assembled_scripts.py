"""
Every remote verb's script, as its builder assembles it (prelude, the shared functions, the
verb's own part and its calls), passes ShellCheck as one POSIX sh program: what crosses the
files of ``protocol/sh/`` is checked where it meets, not waved through file by file.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import pytest

from ssh_jobs_provider.protocol.batch import build_batch_script, build_cleanup_script
from ssh_jobs_provider.protocol.cleanup import CleanupEntry
from ssh_jobs_provider.protocol.doctor import build_host_probe
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, new_job_token
from ssh_jobs_provider.protocol.kill import build_kill_script
from ssh_jobs_provider.protocol.ops import build_listing_script, build_reap_script
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.reattach import JobRecord, build_lookup_script
from ssh_jobs_provider.protocol.scripts import job_files, wrapper_source
from ssh_jobs_provider.protocol.slurm import (
    SlurmSubmitEntry,
    build_slurm_cancel_script,
    build_slurm_submit_script,
)
from ssh_jobs_provider.protocol.slurm_state import slurm_section
from ssh_jobs_provider.protocol.submit import SubmitEntry, build_submit_script

pytestmark = pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="needs shellcheck (dev/setup-env.sh)"
)

TOKEN = new_job_token()
PATHS = RemoteJobPaths(job_id="af_dag_task_run_1", base_dir="/srv/jobs")
OTHER = RemoteJobPaths(job_id="af_dag_task_run_2", base_dir="/srv/jobs")

VERBS: dict[str, Callable[[], str]] = {
    "submit": lambda: build_submit_script(PATHS, "echo hi", {"NAME": "value"}, TOKEN, "~/work"),
    # The sh form as it runs where there is no perl (in "auto" it is one quoted word for eval).
    "submit (sh)": lambda: build_submit_script(PATHS, "echo hi", {"NAME": "value"}, TOKEN, "~/work", "sh"),
    "submit (perl)": lambda: build_submit_script(PATHS, "echo hi", {}, TOKEN, "~/work", "perl"),
    "poll (sh)": lambda: build_batch_script(
        [PollEntry(PATHS, 0, 4096, token=TOKEN), PollEntry(OTHER, 7, 4096)]
    ),
    "poll (perl)": lambda: build_batch_script([PollEntry(PATHS, 0, 4096, token=TOKEN)], interpreter="perl"),
    "triggerer submit and cleanup": lambda: build_batch_script(
        [
            SubmitEntry(PATHS, 0, 4096, token=TOKEN, files=job_files("echo hi", {}, "~/work", TOKEN)),
            CleanupEntry(OTHER, TOKEN),
        ]
    ),
    "triggerer submit (perl)": lambda: build_batch_script(
        [SubmitEntry(PATHS, 0, 4096, token=TOKEN, files=job_files("echo hi", {}, "~/work", TOKEN))],
        interpreter="perl",
    ),
    "cleanup": lambda: build_cleanup_script(PATHS, TOKEN),
    "kill": lambda: build_kill_script(PATHS, TOKEN),
    "lookup": lambda: build_lookup_script([JobRecord(PATHS.job_id, PATHS.base_dir, TOKEN, 1)]),
    "list": lambda: build_listing_script("/srv/jobs"),
    "reap": lambda: build_reap_script([CleanupEntry(PATHS, TOKEN)]),
    "wrapper (run.sh)": wrapper_source,
    "doctor probe": lambda: build_host_probe("/srv/jobs", ["sh", "ls", "perl"]),
    "slurm submit": lambda: build_slurm_submit_script(
        PATHS, "echo hi", {"NAME": "value"}, TOKEN, "~/work", ("--partition=gpu", "--exclusive")
    ),
    "slurm tick (triggerer submits, polls, one squeue)": lambda: (
        build_batch_script(
            [
                SlurmSubmitEntry(
                    PATHS,
                    0,
                    4096,
                    token=TOKEN,
                    files=job_files("echo hi", {}, None, TOKEN),
                    arguments=("--time=5",),
                ),
                PollEntry(OTHER, 0, 4096, token=TOKEN),
            ]
        )
        + slurm_section([(0, PATHS), (1, OTHER)])
    ),
    "slurm cancel": lambda: build_slurm_cancel_script(PATHS, TOKEN),
    "slurm lookup": lambda: (
        build_lookup_script([JobRecord(PATHS.job_id, PATHS.base_dir, TOKEN, 1)]) + slurm_section([(0, PATHS)])
    ),
}


@pytest.mark.parametrize("verb", VERBS)
def test_the_assembled_script_passes_shellcheck(verb: str) -> None:
    script = VERBS[verb]()
    # Warnings and errors fail; notes (e.g. a perl program in single quotes) do not. SC2088
    # ("tilde in quotes") is about data: a working dir such as '~/work' is written to a file
    # as given, and expanded by the wrapper on purpose.
    checked = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=warning", "--exclude=SC2088", "--format=gcc", "-"],
        input=script.encode(),
        capture_output=True,
        check=False,
    )
    findings = checked.stdout.decode()
    lines = script.splitlines()
    shown = [
        f"{finding}\n    {lines[int(finding.split(':')[1]) - 1].strip()}" for finding in findings.splitlines()
    ]
    assert checked.returncode == 0 and not findings, "\n".join(shown)
