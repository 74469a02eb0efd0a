"""What every verb's answer is made of: headers found after noise, a job's state from its fields (no shell, no I/O)."""

from __future__ import annotations

import pytest

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError, parse_simple_state
from ssh_jobs_provider.protocol.batch import parse_batch_output
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.submit import parse_submit_output
from support.protocol import answer, batch, header, only_result

#: The batch entry the poll answers below are parsed for (window as asked, unless a test says).
ENTRY = PollEntry(RemoteJobPaths(job_id="j", base_dir="/srv/jobs"), offset=0, max_bytes=100)


def parse_poll(output: bytes, max_bytes: int = 100) -> JobStatus:
    """The one poll answer of a batch of one asking for ``max_bytes`` log bytes."""
    status = only_result(output, PollEntry(ENTRY.paths, 0, max_bytes))
    assert isinstance(status, JobStatus)
    return status


RUNNING = {"pid": 42, "alive": 1, "exit": "", "size": 10, "boot": "same", "claimed": 1}


def test_submit_header_is_found_after_login_shell_noise() -> None:
    noise = (
        b"Welcome to Ubuntu\n"
        b"Last login: yesterday\n"
        b"motd mentions SSHJOBS1 submit pid=1 exit=9 mid-line\n"
        b"\xff\xfe binary noise\n"
    )
    output = noise + header("submit", os="Linux", launched=1) + header("poll", key=0, **RUNNING, len=0)

    status = parse_submit_output(output)

    assert status == JobStatus(
        JobState.RUNNING, pid=42, exit_code=None, log_size=10, remote_os="Linux", launched=True
    )


def test_submit_launched_zero_means_reattached() -> None:
    status = parse_submit_output(header("submit", os="Darwin", launched=0) + header("poll", key=0, **RUNNING))
    assert status.launched is False
    assert status.remote_os == "Darwin"


def test_poll_returns_the_bytes_after_the_header_verbatim() -> None:
    log = b"line\n" + header("poll", key=0, pid=1, exit=0, len=0) + b"SSHJOBS1 end\n\xff\x00tail"
    output = b"noise\n" + batch(answer(**RUNNING, data=log))
    status = parse_poll(output, max_bytes=len(log))
    assert status.log_data == log
    assert status.state is JobState.RUNNING


def test_poll_with_more_bytes_than_asked_is_a_protocol_error() -> None:
    with pytest.raises(RemoteJobProtocolError, match="more than"):
        parse_poll(batch(answer(**RUNNING, data=b"12345")), max_bytes=4)


GARBAGE = [
    b"",
    b"bash: /bin/sh: No such file or directory\n",
    b"'/bin/sh' is not recognized as an internal or external command\r\n",
    b"xSSHJOBS1 poll key=0 pid=1 len=0\n",  # not at a line start
    b"SSHJOBS1 submit key=0 pid=1 len=0\n",  # another verb
    b"SSHJOBS1 submit pid=1\n",  # another verb, without a key
    b"SSHJOBS2 poll key=0 pid=1 len=0\n",
]
#: Answers cut short: nothing may follow them, not even the end line.
TRUNCATED = [
    b"SSHJOBS1 poll key=0 pid=1 alive=1",  # no end of line
    b"SSHJOBS1 poll key=0 pid=1 alive=1 len=0",  # no end of line, though every field is there
    b"SSHJOBS1 poll key=0 pid=1 len=9\nshort",  # fewer bytes than announced
]


@pytest.mark.parametrize(
    "output", [batch(g) for g in GARBAGE] + [batch(g, end=False) for g in GARBAGE + TRUNCATED]
)
def test_poll_garbage_raises_a_value_error_subclass(output: bytes) -> None:
    with pytest.raises(RemoteJobProtocolError):
        parse_poll(output, max_bytes=100)
    assert issubclass(RemoteJobProtocolError, ValueError)


@pytest.mark.parametrize("field", ["pid", "exit", "size", "delivered"])
def test_non_integer_field_is_a_protocol_error(field: str) -> None:
    # alive=0: while the wrapper lives, an exit record is not read at all (see below).
    with pytest.raises(RemoteJobProtocolError, match="integer"):
        parse_poll(batch(answer(**{**RUNNING, "alive": 0, field: "12x"})), max_bytes=10)


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"pid": 42, "alive": 1, "exit": "", "boot": "same"}, JobState.RUNNING),
        ({"pid": 42, "alive": 1, "exit": "", "boot": "unknown"}, JobState.RUNNING),
        # An exit record next to a live wrapper was not written by the wrapper (which writes it
        # as it ends): the job wrote it, or the wrapper is about to exit. Not final yet.
        ({"pid": 42, "alive": 1, "exit": 0, "boot": "same"}, JobState.RUNNING),
        ({"pid": 42, "alive": 0, "exit": 137, "boot": "changed"}, JobState.EXITED),
        ({"pid": "", "alive": 0, "exit": 3, "boot": "unknown"}, JobState.EXITED),
        ({"pid": "", "alive": 0, "exit": "", "boot": "unknown"}, JobState.PENDING),
        ({"pid": 42, "alive": 0, "exit": "", "boot": "same"}, JobState.VANISHED),
        ({"pid": 42, "alive": 1, "exit": "", "boot": "changed"}, JobState.VANISHED),
        ({"state": "missing"}, JobState.MISSING),
        ({"state": "foreign"}, JobState.FOREIGN),
    ],
)
def test_job_state_derivation(fields: dict[str, object], state: JobState) -> None:
    status = parse_poll(batch(answer(**fields)), max_bytes=1)
    assert status.state is state
    done = (JobState.EXITED, JobState.VANISHED, JobState.MISSING, JobState.FOREIGN)
    assert status.done is (state in done)


def test_exit_code_and_size_are_parsed() -> None:
    status = parse_poll(batch(answer(pid=7, alive=0, exit=143, size=999, boot="same")), max_bytes=1)
    assert (status.pid, status.exit_code, status.log_size, status.launched) == (7, 143, 999, None)


@pytest.mark.parametrize(
    ("fields", "disk_full"),
    [({"full": 1}, True), ({"note": "nospace"}, True), ({"full": 0, "note": ""}, False), ({}, False)],
)
def test_full_disk_is_read_from_either_field(fields: dict[str, object], disk_full: bool) -> None:
    status = parse_poll(batch(answer(pid=7, alive=0, exit=0, **fields)))
    assert status.disk_full is disk_full


def test_delivered_offset_is_parsed() -> None:
    assert parse_poll(batch(answer(**RUNNING, delivered=1234))).delivered == 1234


@pytest.mark.parametrize("verb", ["kill", "cleanup"])
@pytest.mark.parametrize("state", ["killed", "survived", "not-running", "missing", "removed", "absent"])
def test_simple_state_is_parsed_after_noise(verb: str, state: str) -> None:
    assert parse_simple_state(b"noise\n" + header(verb, state=state), verb) == state


def test_simple_state_of_the_wrong_verb_is_a_protocol_error() -> None:
    with pytest.raises(RemoteJobProtocolError, match="cleanup"):
        parse_simple_state(header("kill", state="killed"), "cleanup")


def test_an_answer_glued_to_a_banner_without_a_final_newline_is_found() -> None:
    # A login shell's banner may end without a newline: the first header then starts mid-line.
    glued = b"Welcome to the cluster" + header("submit", os="Linux", launched=1)
    status = parse_submit_output(glued + header("poll", key=0, **RUNNING, len=0))
    assert (status.state, status.launched) == (JobState.RUNNING, True)
    tag = "SSHJOBS1.0123456789abcdef"
    batch_answer = f"Welcome{tag} poll key=0 pid=1 alive=1 exit= size=0 len=0\n{tag} end\n".encode()
    entry = PollEntry(RemoteJobPaths("job", "/tmp/jobs"), 0, 10)
    assert parse_batch_output(batch_answer, [entry], tag)[0] == JobStatus(JobState.RUNNING, pid=1)
