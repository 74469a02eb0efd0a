"""
The batch of one poll tick: the cleanups, submits and polls of many jobs in ONE remote
script, and its answer split into one result per entry. Pure code.

Each verb brings its entry, its calls and its answer's parser
(:mod:`~ssh_jobs_provider.protocol.cleanup`, :mod:`~ssh_jobs_provider.protocol.submit`,
:mod:`~ssh_jobs_provider.protocol.slurm`, :mod:`~ssh_jobs_provider.protocol.poll`); this module
puts them in order behind the shared prelude (``sh/process.sh``, ``sh/lib.sh``), ends the script
with an ``end`` line, and frames the answer: entry ``i`` answers with ``key=i``.

- a :class:`~ssh_jobs_provider.protocol.poll.PollEntry` reports one job's state and up to
  ``max_bytes`` log bytes from ``offset``;
- a :class:`~ssh_jobs_provider.protocol.submit.SubmitEntry` first submits its job
  (idempotently, as the worker's submit does), then polls it: a ``submit`` header, then its
  poll. A perl batch runs its submits and its polls in the same one perl process;
- a :class:`~ssh_jobs_provider.protocol.cleanup.CleanupEntry` removes one finished job's
  directory.

The answer is a sequence of headers ``TAG verb key=K ... len=N``, each followed by exactly ``N``
raw bytes, ended by ``TAG end``: length framing keeps arbitrary log bytes from confusing the
parser, and a missing ``end`` reveals a truncated answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from ssh_jobs_provider.protocol.answers import (
    JobStatus,
    RemoteJobProtocolError,
    first_header,
    header_fields,
    int_or_none,
)
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult, cleanup_calls, cleanup_result
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.poll import PollEntry, perl_poll_lines, poll_result, sh_poll_calls
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG, as_whole, script_prelude
from ssh_jobs_provider.protocol.slurm import SlurmSubmitCall, SlurmSubmitEntry, slurm_batch_submits
from ssh_jobs_provider.protocol.submit import (
    SubmitCall,
    SubmitEntry,
    ended_status,
    perl_call,
    perl_program,
    submit_calls,
    submit_refusal,
    submitted_status,
)

Entry = PollEntry | CleanupEntry
EntryResult = JobStatus | CleanupResult | RemoteJobProtocolError


class EntryNotAnswered(RemoteJobProtocolError):
    """A batch answer holds nothing for this entry (the answer ended before it, or lacks it)."""


class BatchNotAnswered(RemoteJobProtocolError):
    """
    The host ran a batch but answered none of its entries (see :func:`batch_not_answered`).

    :param entries: how many entries the batch had
    :param stderr: what the host's shell wrote to standard error, whose first line usually
        says why (a full file system, a missing tool)
    """

    def __init__(self, entries: int, stderr: bytes | str = b"") -> None:
        text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
        reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
        super().__init__(
            f"The host answered none of the {entries} entries of a batch"
            + (f": {reason[:300]}" if reason else " (nothing on standard error)")
        )
        self.reason = reason


# --------------------------------------------------------------------------- the script


def build_batch_script(entries: Sequence[Entry], tag: str = PROTOCOL_TAG, interpreter: str = "sh") -> str:
    """
    One script for all ``entries``; entry ``i`` answers with ``key=i``.

    :param tag: the tag its answers start with; a batch that carries log bytes should use a
        fresh :func:`~ssh_jobs_provider.protocol.scripts.batch_tag`, and parse the answer with
        the same one
    :param interpreter: ``"perl"`` or ``"sh"``: what runs the polls (see
        :mod:`~ssh_jobs_provider.protocol.poll`); resolve ``"auto"`` first, with
        :func:`build_probe_script`
    """
    if interpreter not in ("perl", "sh"):
        raise ValueError(f"A batch runs its polls in 'perl' or 'sh', not {interpreter!r}.")
    polls = [(key, e) for key, e in enumerate(entries) if isinstance(e, PollEntry)]
    cleanups = [(key, e) for key, e in enumerate(entries) if isinstance(e, CleanupEntry)]
    submits = [
        SubmitCall(key, e.paths, e.token, e.files)
        for key, e in polls
        if isinstance(e, SubmitEntry) and not isinstance(e, SlurmSubmitEntry)
    ]
    queued = [
        SlurmSubmitCall(key, e.paths, e.token, e.files, e.arguments)
        for key, e in polls
        if isinstance(e, SlurmSubmitEntry)
    ]
    # Cleanups first (they free space), then the submits, then the polls of every job, the
    # new ones included: their first log bytes come in the same answer.
    # The Slurm submits are sh whatever runs the polls: each is an sbatch process anyway.
    poll_calls = perl_poll_lines(polls) if interpreter == "perl" else sh_poll_calls(polls)
    calls = (
        cleanup_calls(cleanups) + slurm_batch_submits(queued) + submit_calls(submits, interpreter, poll_calls)
    )
    # dd re-blocks the many small writes of the calls into 64 KiB writes: the answer then
    # travels in a few large SSH packets instead of hundreds of tiny ones, which is what
    # the triggerer (and sshd) would otherwise spend most of their CPU on.
    return as_whole(
        script_prelude(tag) + "{\n" + calls + 'echo "$answer_tag end"\n' + "} | dd obs=65536 2>/dev/null\n"
    )


def build_cleanup_script(paths: RemoteJobPaths, token: str = "") -> str:
    """
    Script that removes the job directory and nothing else: a batch of one cleanup.

    ``paths`` is validated on construction (job id is one plain path component, base dir
    absolute and normalised), so the directory removed is always a direct child of the
    base directory; it is only removed when it is the SSH user's and, with ``token``, carries it.
    """
    return build_batch_script([CleanupEntry(paths, token=token)])


def build_probe_script() -> str:
    """
    Script that tells whether the host runs the perl polls: answers ``probe state=perl`` or
    ``state=sh`` (parse with :func:`~ssh_jobs_provider.protocol.answers.parse_simple_state`).

    It runs the real programs (the submits' and the polls') on no entries, so a perl too old or
    too broken to compile them counts as no perl at all.
    """
    return as_whole(
        f"answer_tag={PROTOCOL_TAG}\n"
        "if command -v perl >/dev/null 2>&1 && "
        + perl_call('"$answer_tag" "" >/dev/null 2>&1', "polls\n", perl_program())
        + 'then echo "$answer_tag probe state=perl"; else echo "$answer_tag probe state=sh"; fi\n'
    )


# --------------------------------------------------------------------------- the answer


def parse_batch_output(
    output: bytes, entries: Sequence[Entry], tag: str = PROTOCOL_TAG
) -> dict[int, EntryResult]:
    """
    Split a batch answer into one result per entry.

    Only what comes before the first header is skipped as noise (a chatty login shell). From
    there on the answer must be framed exactly: once a header cannot be read or a length does
    not match what follows, nothing after it is trusted, because log bytes are never searched
    for headers (a log may hold any text). Every entry without a trusted answer gets a
    :class:`RemoteJobProtocolError` of its own, and is simply asked again in the next batch.

    :param tag: the tag the batch was built with (see :func:`~ssh_jobs_provider.protocol.scripts.batch_tag`)
    """
    results: dict[int, EntryResult] = {}
    #: The submit headers of the batch's submits, each to be joined with the poll that follows.
    submits: dict[int, dict[str, str]] = {}
    marker = tag.encode() + b" "
    if tag != PROTOCOL_TAG:
        # A batch's random tag cannot be in a banner: its first occurrence is the first header,
        # even one glued to a banner without a final newline.
        found = output.find(marker)
        position: int | None = found if found >= 0 else None
    else:
        position = first_header(output, marker)
    complete = False
    last_window: int | None = None
    while position is not None and position < len(output):
        line_end = output.find(b"\n", position)
        if line_end < 0:
            break
        verb, _, rest = (
            output[position + len(marker) : line_end].decode("utf-8", errors="replace").partition(" ")
        )
        if verb == "end":
            complete = True
            break
        if verb == "short":
            # The window before it held fewer real bytes than announced (see log_window in
            # sh/lib.sh): keep those. It frames nothing (len=0), so the framing holds.
            position = line_end + 1
            _cut_window(results, entries, header_fields(rest))
            continue
        fields = header_fields(rest)
        data_start = line_end + 1
        try:
            key = int(fields.get("key", ""))
            length = int_or_none(fields.get("len")) or 0
        except (ValueError, RemoteJobProtocolError):
            break  # an unreadable header: the framing is lost
        data = output[data_start : data_start + length]
        position = data_start + length
        known = key in range(len(entries))
        if len(data) != length:
            break  # cut short
        if position < len(output) and not output.startswith(marker, position):
            # The announced length did not match what followed: the framing is lost.
            if known:
                results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} is misframed")
            break
        if known and isinstance(entries[key], SubmitEntry):
            if key in results and verb == "poll" and key not in submits:
                continue  # the poll after a refusal, or after "ended": the submit's answer is final
            if verb == "submit" and "ended" in fields and key not in results:
                results[key] = _answered(ended_status, fields)
                continue
            if verb == "submit" and not fields.get("error") and key not in submits and key not in results:
                submits[key] = fields  # completed by the poll that follows
                continue
        if known and key in results:
            results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} came twice")
        elif known:
            results[key] = _entry_result(verb, fields, data, entries[key], submits.get(key))
            # Whether its window is whole is told by what follows it (a "short" line, or not).
            last_window = key if length else None
    if not complete and last_window is not None and position is not None and position >= len(output):
        # The answer stops right after this window: the line that would have said part of it
        # was padding may be what was lost. Asked again rather than believed.
        results.pop(last_window, None)
    for key, entry in enumerate(entries):
        if key not in results:
            why = "missing from the batch answer" if not complete else "not answered"
            results[key] = EntryNotAnswered(f"Answer for {entry.paths.job_id} is {why}")
    return results


def batch_not_answered(results: dict[int, EntryResult]) -> bool:
    """
    No entry of the batch got an answer: the batch failed as a whole (the host could not run
    it, or its answer was lost), which says nothing about any one job. It is retried as a
    batch, like a lost connection, and never turned into verdicts on the jobs in it.
    """
    return bool(results) and all(isinstance(r, EntryNotAnswered) for r in results.values())


def _cut_window(results: dict[int, EntryResult], entries: Sequence[Entry], fields: dict[str, str]) -> None:
    """Keep the first ``got`` bytes of the window of entry ``key``: the rest was padding."""
    try:
        key, got = int(fields.get("key", "")), int(fields.get("got", ""))
    except ValueError:
        return
    status = results.get(key)
    if isinstance(status, JobStatus) and 0 <= got <= len(status.log_data):
        results[key] = replace(status, log_data=status.log_data[:got], log_short=True)
    elif key in range(len(entries)):
        results[key] = RemoteJobProtocolError(f"Answer for {entries[key].paths.job_id} is misframed")


def _entry_result(
    verb: str, fields: dict[str, str], data: bytes, entry: Entry, submitted: dict[str, str] | None = None
) -> EntryResult:
    """What one framed answer says for ``entry``: each verb's own parser reads it."""
    if verb == "poll" and isinstance(entry, SubmitEntry):
        if submitted is None:
            return RemoteJobProtocolError(f"The submit of {entry.paths.job_id} was not answered")
        status = _answered(poll_result, fields, data, entry)
        return submitted_status(status, submitted) if isinstance(status, JobStatus) else status
    if verb == "poll" and isinstance(entry, PollEntry):
        return _answered(poll_result, fields, data, entry)
    refusal = submit_refusal(fields, data) if verb == "submit" and isinstance(entry, SubmitEntry) else None
    if refusal is not None:
        return refusal
    if verb == "cleanup" and isinstance(entry, CleanupEntry):
        return cleanup_result(fields)
    return RemoteJobProtocolError(f"Unexpected '{verb}' answer for {entry.paths.job_id}")


def _answered(parse: Callable[..., JobStatus], *arguments: object) -> EntryResult:
    """What ``parse(*arguments)`` returns; the protocol error it raises, as the entry's result."""
    try:
        return parse(*arguments)
    except RemoteJobProtocolError as error:
        return error
