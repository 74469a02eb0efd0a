"""
The submit verb, in its two forms: POSIX ``sh`` (``sh/submit.sh``) and ONE ``perl`` process
(``perl/submit.pl``, followed by ``perl/poll.pl``). Pure code.

Both take the same steps in the same order and answer byte for byte alike (one conformance
suite feeds both the same fixtures): check the path to the base dir the way sshd's
``StrictModes`` checks a home directory, create what is missing, create (or verify) the job
directory and its token, write the job's files, and launch the wrapper detached. The sh form
starts a tool for most steps (``ls`` per path component, ``mkdir``, ``mv`` per file, ...); the
perl form starts nothing but the wrapper, which is what a submit costs the host at the least;
the process it forks for the wrapper stays the wrapper (``perl/wrapper.pl``, the twin of
``sh/wrapper.sh``) instead of starting ``/bin/sh`` for ``run.sh``.

- The worker's submit (:func:`build_submit_script`) runs the perl form where the host has a
  perl that runs it, and the sh form otherwise (``interpreter="auto"``), in one exec. A perl
  that cannot run the program answers nothing and leaves the job to the sh form, which
  re-attaches to whatever the perl form got to launch (the submit is idempotent).
- The triggerer's batches (:func:`submit_calls`) run the form its host session probed once.

Launching the wrapper is one step of its own in each form (``launch`` in ``sh/submit.sh``,
``launch_wrapper`` in ``perl/submit.pl``): the one that starts the job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ssh_jobs_provider.protocol.answers import (
    JobStatus,
    RemoteJobProtocolError,
    find_header,
    header_fields,
    int_or_none,
    status_from_fields,
)
from ssh_jobs_provider.protocol.identity import RemoteJobPaths, validate_token
from ssh_jobs_provider.protocol.poll import PollEntry, poll_program
from ssh_jobs_provider.protocol.scripts import (
    PROTOCOL_TAG,
    as_whole,
    job_files,
    perl_source,
    quote,
    script_prelude,
    shell_source,
    wrapper_source,
)

#: What runs a worker's submit: ``"auto"`` (perl where it runs, else sh), ``"perl"`` or ``"sh"``.
SUBMIT_INTERPRETERS = ("auto", "perl", "sh")


@dataclass(frozen=True)
class SubmitCall:
    """
    One submit, as either form receives it.

    :param key: the batch key it answers with (``None``: the worker's single submit)
    :param paths: the job's paths
    :param token: the submit's token
    :param files: the job's files besides ``run.sh`` (:func:`~ssh_jobs_provider.protocol.scripts.job_files`)
    :param wait: wait (bounded, ~5 s) for the wrapper's pid before answering
    """

    key: int | None
    paths: RemoteJobPaths
    token: str
    files: tuple[tuple[str, str], ...]
    wait: bool = False


@dataclass(frozen=True)
class SubmitEntry(PollEntry):
    """
    A batch's submit of one job, then its poll like a :class:`~ssh_jobs_provider.protocol.poll.PollEntry`
    (its log from ``offset``): how the triggerer starts jobs over its one connection.

    Sent again until answered: a submit that finds the job directory claimed by a wrapper
    carrying ``token`` re-attaches (``launched=0``) instead of launching a second job.

    :param files: the job's files besides ``run.sh``
        (:func:`~ssh_jobs_provider.protocol.scripts.job_files`)
    """

    files: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        validate_token(self.token)
        if not self.files:
            raise ValueError(f"A submit of {self.paths.job_id} needs the job's files.")


def perl_call(arguments: str, records: str, program: str) -> str:
    """
    ``program`` run by ONE ``perl``, its ``records`` after ``__END__`` (read from its DATA handle).

    The program and its records come through a pipe from the shell's own printf, not a
    here-document: bash writes those to a temporary file, and a full /tmp would then stop
    every submit and poll of the host.
    """
    return f"printf '%s' {quote(program + '__END__' + chr(10) + records)} | perl - {arguments}\n"


def perl_records(calls: Sequence[SubmitCall]) -> str:
    """The records of ``perl/submit.pl`` for ``calls`` (their end included)."""
    wrapper = wrapper_source()
    out = [f"wrapper {len(wrapper.encode())}\n{wrapper}"]
    for call in calls:
        key = "-" if call.key is None else str(call.key)
        # Tab-separated, the base dir last: it may hold blanks, never a newline.
        out.append(
            f"submit\t{key}\t{int(call.wait)}\t{call.token}\t{call.paths.job_id}\t{call.paths.base_dir}\n"
        )
        out.extend(f"file {name} {len(content.encode())}\n{content}" for name, content in call.files)
    out.append("polls\n")
    return "".join(out)


def perl_program() -> str:
    """The submits' program: ``perl/wrapper.pl`` and ``perl/submit.pl``, then ``perl/poll.pl`` for the polls after them."""
    return perl_source("wrapper.pl") + perl_source("submit.pl") + poll_program()


def perl_submits(calls: Sequence[SubmitCall], polls: str) -> str:
    """The shell line that runs ``calls`` and then the poll lines ``polls`` in ONE perl process."""
    return perl_call('"$answer_tag" "$boot_now"', perl_records(calls) + polls, perl_program())


def sh_submit_steps(
    paths: RemoteJobPaths, token: str, files: Sequence[tuple[str, str]], launch: str, last: str
) -> str:
    """
    One submit's steps in sh, the same for every submit that sh makes (the worker's, each of a
    batch's, detached or through Slurm; the functions of ``sh/submit.sh`` precede them):
    ``begin``; unless a submit claimed the job already, write its ``files``, then ``launch`` (the
    lines that start it, indented: :func:`detached_launch`, or Slurm's ``slurm_launch``); then
    ``last``, the step that ends it.
    """
    writes = "".join(f"  put {name} {quote(content)}\n" for name, content in files)
    return (
        f"begin {quote(paths.base_dir)} {quote(paths.job_id)} {quote(token)}\n"
        'if [ "$claimed" = 0 ]; then\n'
        f"{writes}{launch}fi\n{last}\n"
    )


def detached_launch(wrapper: str) -> str:
    """The launch of a detached job: write ``run.sh`` (``wrapper``: a word that the shell expands to the wrapper's text), start it."""
    return f"  put run.sh {wrapper}\n  launch\n"


def sh_submit(call: SubmitCall) -> str:
    """The sh form of the worker's single submit: its steps, then ``finish`` (waits for the pid, answers)."""
    return sh_submit_steps(
        call.paths, call.token, call.files, detached_launch(quote(wrapper_source())), "finish"
    )


def sh_batch_submits(calls: Sequence[SubmitCall]) -> str:
    """
    The sh form of a batch's submits: the steps of :func:`sh_submit_steps` for each, in a
    subshell of its own (a refusal ends only that one), ended by ``submitted``; the wrapper's
    text is sent once, in ``RUN_SH``.
    """
    if not calls:
        return ""
    head = shell_source("submit.sh") + f"RUN_SH={quote(wrapper_source())}\nwhoami_uid\n"
    bases = "".join(f"check_base_once {quote(base)}\n" for base in sorted({c.paths.base_dir for c in calls}))
    parts = [
        f"(\numask 077\nbatch_key={call.key}\n"
        + sh_submit_steps(call.paths, call.token, call.files, detached_launch('"$RUN_SH"'), "submitted")
        + f")\nsubmit_ended $? {call.key} {quote(call.paths.job_dir)}\n"
        for call in calls
    ]
    # The answers come without waiting for the wrappers' pids: the batch's own polls (and the
    # next tick's) see them, and the next batch is not held back.
    return head + bases + "".join(parts) + "answer_submits\n"


def build_submit_script(
    paths: RemoteJobPaths,
    command: str,
    environment: Mapping[str, str],
    token: str,
    working_dir: str | None = None,
    interpreter: str = "auto",
) -> str:
    """
    Script that creates the job directory and launches the job detached, idempotently.

    Before anything is written, every directory on the way to the base dir is checked the
    way sshd's ``StrictModes`` checks a home directory, and a job directory that exists
    already is only re-used when it is the SSH user's, private, and carries ``token`` (this
    submit's own, from a try whose reply was lost). Anything else is refused with a reason.
    Running it twice for the same job never starts two jobs: the wrapper claims the job with
    an atomic ``mkdir``, and files are only written while no wrapper has claimed it. Space
    for the exit record is reserved here; if the disk is full, what this submit created is
    removed again. (The triggerer sends the same steps in its batches: see :func:`submit_calls`.)

    :param paths: the job's paths
    :param command: the shell text to run
    :param environment: validated by :func:`normalise_environment`
    :param token: this submit's :func:`new_job_token`
    :param working_dir: where the command runs (see :func:`validate_working_dir`)
    :param interpreter: ``"auto"`` (perl where it runs, else sh), ``"perl"`` or ``"sh"`` only
    """
    if interpreter not in SUBMIT_INTERPRETERS:
        raise ValueError(f"A submit runs in one of {SUBMIT_INTERPRETERS}, not {interpreter!r}.")
    validate_token(token)
    call = SubmitCall(None, paths, token, job_files(command, environment, working_dir, token), wait=True)
    # The submit's poll of its job, answered after the submit header (key 0). The perl form
    # reads the boot id itself: it needs none of the sh functions.
    poll = f"0\t0\t0\t0\t{token}\t{paths.job_dir}\n"
    perl = perl_call('"$answer_tag"', perl_records([call]) + poll, perl_program())
    sh = script_prelude(PROTOCOL_TAG) + shell_source("submit.sh") + sh_submit(call)
    if interpreter == "perl":
        body = f"answer_tag={PROTOCOL_TAG}\n" + perl
    elif interpreter == "sh":
        body = sh
    else:
        # `command -v` is a builtin: a host without perl pays nothing for trying. The sh form
        # is one quoted word until it is needed: a host with perl does not even parse it.
        body = (
            f"answer_tag={PROTOCOL_TAG}\n"
            f"if command -v perl >/dev/null 2>&1 && {perl.rstrip()}; then exit 0; fi\n"
            f"eval {quote(sh)}\n"
        )
    return as_whole("umask 077\n" + body)


def submit_calls(submits: Sequence[SubmitCall], interpreter: str, polls: str) -> str:
    """
    A batch's submits and then its polls: ``polls`` is the perl poll lines (``interpreter="perl"``,
    one perl process for both) or the sh poll calls.
    """
    if interpreter == "perl":
        return (
            perl_submits(submits, polls)
            if submits
            else perl_call('"$answer_tag" "$boot_now"', polls, poll_program())
            if polls
            else ""
        )
    return sh_batch_submits(submits) + polls


# --------------------------------------------------------------------------- answers


class SubmitRefused(RemoteJobProtocolError):
    """
    The submit script refused or failed before launching anything, and removed what it created.

    :param code: ``unsafe`` (an untrusted directory on the way to the base dir), ``foreign``
        (the job directory is not this submit's), ``nospace`` (the file system is full) or
        ``io`` (another write failure)
    :param detail: the script's one-line reason, naming the path
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def submit_refusal(fields: dict[str, str], reason: bytes) -> SubmitRefused | None:
    """The refusal a ``submit`` answer's ``fields`` state, its first line of ``reason`` naming why; else ``None``."""
    if not fields.get("error"):
        return None
    detail = reason.decode("utf-8", errors="replace").strip().splitlines()
    return SubmitRefused(fields["error"], detail[0] if detail else "no reason given")


def submitted_status(status: JobStatus, submitted: dict[str, str]) -> JobStatus:
    """The poll answer ``status`` that follows a submit, completed by the ``submitted`` header's fields."""
    return replace(status, remote_os=submitted.get("os") or None, launched=submitted.get("launched") == "1")


def ended_status(fields: dict[str, str]) -> JobStatus:
    """
    A re-sent batch submit found its job ended and its directory removed (``ended=CODE``):
    the exit code it recorded, never a second run.
    """
    return status_from_fields({"state": "ended", "exit": fields.get("ended", "")})


def parse_submit_output(output: bytes) -> JobStatus:
    """
    Parse the worker's submit answer: its ``submit`` header, then its job's state as a poll
    answer (``key=0``, no log bytes), and nothing after it.

    :raises SubmitRefused: the submit refused, or failed before launching anything
    :raises RemoteJobProtocolError: the answer is not the protocol's, or not all of it came
    """
    fields, rest = find_header(output, "submit")
    refusal = submit_refusal(fields, rest)
    if refusal is not None:
        raise refusal
    # The script writes its poll record right after its header: anything else between them, or
    # after the record, means the answer is not what this submit wrote.
    poll_tag = f"{PROTOCOL_TAG} poll ".encode()
    line_end = rest.find(b"\n")
    if not rest.startswith(poll_tag) or line_end < 0 or rest[line_end + 1 :].strip():
        preview = rest[:200].decode("utf-8", errors="replace")
        raise RemoteJobProtocolError(f"The submit's answer does not end with its job's state: {preview!r}")
    poll = header_fields(rest[len(poll_tag) : line_end].decode("utf-8", errors="replace"))
    if poll.get("key") != "0" or int_or_none(poll.get("len")):
        raise RemoteJobProtocolError(f"The submit's poll record is not its own: {poll}")
    return submitted_status(status_from_fields(poll), fields)
