"""
The remote-job protocol without SSH: its scripts run by a local ``/bin/sh -s``, its answers
built by hand.

The scripts are fed to the local shell on stdin exactly as the hooks feed them to the
remote one, so what is checked here is what a remote host runs. Hand-built answers have
the shape the batch script prints (see ``p`` and ``c`` in ``protocol/sh/lib.sh``): a header
``SSHJOBS1 <verb> key=K ... len=N``, then ``N`` raw bytes, and ``SSHJOBS1 end`` last.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ssh_jobs_provider.protocol.answers import JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import Entry, EntryResult, build_batch_script, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupResult
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG

SCRIPT_TIMEOUT = 30.0
#: The last line of every complete batch answer.
END = f"{PROTOCOL_TAG} end\n".encode()
#: Large enough for the whole log of any job these tests start.
WHOLE_LOG = 1 << 20
#: What runs the polls of :func:`run_batch` ("sh" or "perl"); the ``poll_interpreter``
#: fixture sets it per test.
POLL_INTERPRETER = "sh"


def run_sh(
    script: str, timeout: float = SCRIPT_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a protocol script the way the hooks do: ``/bin/sh -s`` with the script on stdin."""
    return subprocess.run(
        ["/bin/sh", "-s"],
        input=script.encode("utf-8"),
        capture_output=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def run_batch(entries: Sequence[Entry]) -> bytes:
    """The raw answer of the real batch script for ``entries``, run by the local shell."""
    result = run_sh(build_batch_script(entries, interpreter=POLL_INTERPRETER))
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_batch_parsed(entries: Sequence[Entry]) -> dict[int, EntryResult]:
    return parse_batch_output(run_batch(entries), entries)


def only_result(output: bytes, entry: Entry) -> JobStatus | CleanupResult:
    """The result of the single entry of a batch answer; its protocol error is raised."""
    result = parse_batch_output(output, [entry])[0]
    if isinstance(result, RemoteJobProtocolError):
        raise result
    return result


def poll_once(
    paths: RemoteJobPaths, offset: int = 0, max_bytes: int = WHOLE_LOG, token: str = ""
) -> JobStatus:
    """One job's state and log window ``[offset, offset + max_bytes)``, through a batch of one."""
    entry = PollEntry(paths, offset, max_bytes, token=token)
    status = only_result(run_batch([entry]), entry)
    assert isinstance(status, JobStatus)
    return status


# --------------------------------------------------------------------------- hand-built answers


def header(verb: str, **fields: object) -> bytes:
    """One header line: ``SSHJOBS1 <verb> k=v ...`` (fields in the order given)."""
    return (f"{PROTOCOL_TAG} {verb} " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n").encode()


def answer(verb: str = "poll", *, key: int = 0, data: bytes = b"", **fields: object) -> bytes:
    """One entry's answer as the batch script frames it: the header, ``len=`` last, then ``data``."""
    return header(verb, key=key, **fields, len=len(data)) + data


def batch(*answers: bytes, end: bool = True) -> bytes:
    """A batch answer of ``answers``, ended by ``SSHJOBS1 end`` unless ``end`` is false."""
    return b"".join(answers) + (END if end else b"")
