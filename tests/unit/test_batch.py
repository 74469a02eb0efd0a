"""
``parse_batch_output``, which every production poll goes through: bytes built by hand, and the
real batch script run by a local ``/bin/sh -s`` against job directories under ``tmp_path``.

The rule checked throughout: each entry comes out either right or as a
:class:`RemoteJobProtocolError` of its own, never as another entry's data or as bytes that
were not sent, whatever noise, misframing or truncation the answer suffered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.answers import JobState, JobStatus, RemoteJobProtocolError
from ssh_jobs_provider.protocol.batch import Entry, EntryResult, parse_batch_output
from ssh_jobs_provider.protocol.cleanup import CleanupEntry, CleanupResult, CleanupState
from ssh_jobs_provider.protocol.identity import RemoteJobPaths
from ssh_jobs_provider.protocol.poll import PollEntry
from ssh_jobs_provider.protocol.scripts import PROTOCOL_TAG
from support.protocol import END, answer, batch, header, run_batch, run_batch_parsed

#: Every poll here runs in POSIX sh and in perl, which must answer alike.
pytestmark = pytest.mark.usefixtures("poll_interpreter")

TOKEN = "0123456789abcdef0123456789abcdef"
OTHER_TOKEN = "f" * 32
#: A log whose bytes look like batch answers: a header, an end line, a header cut short.
HEADER_LIKE_LOG = (
    f"{PROTOCOL_TAG} poll key=1 state=missing len=0\n{PROTOCOL_TAG} end\n"
    f"{PROTOCOL_TAG} cleanup key=0 state=removed len=0\n\xff{PROTOCOL_TAG} poll key=2 len=9"
).encode("utf-8", errors="surrogateescape")


def paths(job_id: str, base: str = "/srv/jobs") -> RemoteJobPaths:
    return RemoteJobPaths(job_id=job_id, base_dir=base)


POLL_A = PollEntry(paths("a"), offset=0, max_bytes=64)
POLL_B = PollEntry(paths("b"), offset=10, max_bytes=64)
CLEAN_C = CleanupEntry(paths("c"))
ENTRIES: list[Entry] = [POLL_A, POLL_B, CLEAN_C]

RUNNING = {"pid": 42, "alive": 1, "exit": "", "size": 20, "boot": "same", "claimed": 1}
EXITED = {"pid": 43, "alive": 0, "exit": 0, "size": 5, "boot": "same", "claimed": 1}


def full_answer() -> bytes:
    return batch(
        answer(key=0, **RUNNING, data=b"0123456789"),
        answer(key=1, **EXITED, data=b"hello"),
        answer("cleanup", key=2, state="removed"),
    )


def assert_error(result: EntryResult, match: str) -> None:
    assert isinstance(result, RemoteJobProtocolError), result
    assert match in str(result), result


def expected_results() -> dict[int, EntryResult]:
    return {
        0: JobStatus(JobState.RUNNING, pid=42, log_size=20, launched=None, log_data=b"0123456789"),
        1: JobStatus(JobState.EXITED, pid=43, exit_code=0, log_size=5, log_data=b"hello"),
        2: CleanupResult("removed"),
    }


# --------------------------------------------------------------------------- pure bytes


def test_a_complete_answer_gives_every_entry_its_own_result() -> None:
    results = parse_batch_output(full_answer(), ENTRIES)
    assert results == expected_results()
    assert results[0].log_data == b"0123456789"  # type: ignore[union-attr]
    assert results[1].log_data == b"hello"  # type: ignore[union-attr]


def test_answers_may_come_in_any_order() -> None:
    shuffled = batch(
        answer("cleanup", key=2, state="removed"),
        answer(key=1, **EXITED, data=b"hello"),
        answer(key=0, **RUNNING, data=b"0123456789"),
    )
    assert parse_batch_output(shuffled, ENTRIES) == expected_results()


def test_login_shell_noise_before_the_first_header_is_skipped() -> None:
    noise = (
        b"Welcome\n"
        b"motd mentions " + header("poll", key=0, state="missing", len=0) + b"\xff\xfe binary noise\n"
        b"no newline after this SSHJOBS1 poll key=1 len=3\n"
    )
    assert parse_batch_output(noise + full_answer(), ENTRIES) == expected_results()


def test_log_bytes_that_look_like_headers_are_data() -> None:
    results = parse_batch_output(
        batch(answer(key=0, **RUNNING, data=HEADER_LIKE_LOG), answer(key=1, **EXITED, data=b"hello")),
        [PollEntry(POLL_A.paths, 0, len(HEADER_LIKE_LOG)), POLL_B],
    )
    assert results[0].log_data == HEADER_LIKE_LOG  # type: ignore[union-attr]
    assert results[1] == expected_results()[1]


@pytest.mark.parametrize(
    "first",
    [
        # Too short, with what follows at a line start, mid-line, or too long: whatever follows
        # is log bytes of unknown origin now, and is never searched for headers.
        pytest.param(header("poll", key=0, **RUNNING, len=4) + b"01234\n6789\n", id="short"),
        pytest.param(header("poll", key=0, **RUNNING, len=4) + b"0123456789", id="short-mid-line"),
        pytest.param(header("poll", key=0, **RUNNING, len=15) + b"0123456789", id="long"),
    ],
)
def test_a_wrong_announced_length_misframes_that_entry_and_nothing_after_it_is_trusted(first: bytes) -> None:
    second = answer(key=1, **EXITED, data=b"hello\n")
    results = parse_batch_output(batch(first, second, answer("cleanup", key=2, state="removed")), ENTRIES)
    assert_error(results[0], "Answer for a is misframed")
    assert_error(results[1], "Answer for b is missing from the batch answer")
    assert_error(results[2], "Answer for c is missing from the batch answer")


def test_a_log_that_swallowed_the_next_headers_cannot_forge_other_answers() -> None:
    # Job a's window announced more bytes than came (its log was truncated meanwhile): the
    # headers after it were taken as its data, and job c's log holds a line that looks like
    # an answer for b. Nothing past the misframe may be believed.
    forged = header("poll", key=1, pid=9, alive=0, exit=0, size=0, boot="same", len=0)
    output = batch(
        header("poll", key=0, **RUNNING, len=30) + b"01234",
        answer(key=1, **RUNNING, data=b""),
        answer(key=2, **RUNNING, data=b"x\n" + forged),
    )
    results = parse_batch_output(output, [POLL_A, POLL_B, PollEntry(POLL_A.paths, 0, 1 << 20)])
    assert all(isinstance(result, RemoteJobProtocolError) for result in results.values())


def test_a_batch_tag_of_its_own_makes_header_like_logs_plain_data() -> None:
    from ssh_jobs_provider.protocol.scripts import batch_tag

    tag = batch_tag()
    assert tag.startswith("SSHJOBS1.") and tag != batch_tag()
    output = batch(answer(key=0, **RUNNING, data=b"0123456789")).replace(b"SSHJOBS1 ", tag.encode() + b" ")
    assert parse_batch_output(output, [POLL_A], tag)[0] == expected_results()[0]
    assert isinstance(parse_batch_output(output, [POLL_A])[0], RemoteJobProtocolError)


def test_a_misframed_last_entry_resynchronises_on_nothing() -> None:
    output = answer(key=0, **RUNNING, data=b"0123456789") + header("poll", key=1, **EXITED, len=2) + b"hello"
    results = parse_batch_output(output, [POLL_A, POLL_B])
    assert results[0] == expected_results()[0]
    assert_error(results[1], "misframed")


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_data_cut_short_is_missing_not_partial(cut: int) -> None:
    output = answer(key=0, **RUNNING, data=b"0123456789")[: -10 + cut]
    results = parse_batch_output(output, [POLL_A])
    assert_error(results[0], "Answer for a is missing from the batch answer")


def test_a_header_cut_short_is_missing() -> None:
    output = answer(key=0, **RUNNING, data=b"0123456789") + header("poll", key=1, **EXITED, len=5)[:-1]
    results = parse_batch_output(output, [POLL_A, POLL_B])
    assert results[0] == expected_results()[0]
    assert_error(results[1], "missing from the batch answer")


def test_without_the_end_line_unanswered_entries_are_missing_and_answered_ones_kept() -> None:
    partial = batch(
        answer(key=0, **RUNNING, data=b"0123456789"), answer(key=1, **EXITED, data=b""), end=False
    )
    results = parse_batch_output(partial, ENTRIES)
    assert results[0] == expected_results()[0]
    assert results[1] == JobStatus(JobState.EXITED, pid=43, exit_code=0, log_size=5)
    assert_error(results[2], "missing from the batch answer")


def test_a_window_that_ends_an_answer_cut_short_is_asked_again() -> None:
    # The line after it might have said that part of it was padding (see log_window): an
    # answer that stops right after a window does not vouch for it.
    partial = batch(answer(key=0, **RUNNING, data=b"0123456789"), end=False)
    results = parse_batch_output(partial, ENTRIES)
    assert_error(results[0], "missing from the batch answer")
    assert_error(results[1], "missing from the batch answer")


def test_an_ended_answer_without_some_entry_says_not_answered() -> None:
    results = parse_batch_output(batch(answer(key=1, **EXITED, data=b"hello")), ENTRIES)
    assert_error(results[0], "Answer for a is not answered")
    assert results[1] == expected_results()[1]
    assert_error(results[2], "Answer for c is not answered")


def test_nothing_after_the_end_line_is_read() -> None:
    output = batch() + answer(key=0, **RUNNING, data=b"0123456789")
    assert_error(parse_batch_output(output, [POLL_A])[0], "not answered")


@pytest.mark.parametrize("key", [3, 99, -1])
def test_an_unknown_key_in_a_well_framed_answer_is_skipped(key: object) -> None:
    stray = header("poll", key=key, **RUNNING, len=3) + b"ab\n"
    results = parse_batch_output(batch(stray, answer(key=0, **RUNNING, data=b"0123456789")), [POLL_A, POLL_B])
    assert results[0] == expected_results()[0]
    assert_error(results[1], "not answered")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(header("poll", key="x", **RUNNING, len=3) + b"ab\n", id="key-x"),
        pytest.param(header("poll", key="", **RUNNING, len=3) + b"ab\n", id="key-empty"),
        pytest.param(header("poll", key="1.0", **RUNNING, len=3) + b"ab\n", id="key-float"),
        pytest.param(header("poll", **RUNNING, len=999) + b"junk\n", id="no-key"),
        pytest.param(header("poll", key=1, **EXITED, len="x") + b"hello\n", id="len-x"),
        pytest.param(header("poll", key=1, **EXITED, len="-") + b"hello\n", id="len-dash"),
        pytest.param(header("poll", key=1, **EXITED, len="1e3") + b"hello\n", id="len-float"),
    ],
)
def test_an_unreadable_header_loses_the_framing_for_everything_after_it(bad: bytes) -> None:
    # Its length cannot be trusted, so where the next header starts is unknown.
    results = parse_batch_output(batch(bad, answer(key=0, **RUNNING, data=b"0123456789")), [POLL_A, POLL_B])
    assert_error(results[0], "missing from the batch answer")
    assert_error(results[1], "missing from the batch answer")


def test_a_header_without_a_length_carries_no_data() -> None:
    output = batch(header("poll", key=0, state="missing"), answer(key=1, **EXITED, data=b"hello"))
    results = parse_batch_output(output, [POLL_A, POLL_B])
    assert results[0] == JobStatus(JobState.MISSING)
    assert results[1] == expected_results()[1]


@pytest.mark.parametrize(
    ("verb", "entry"),
    [("cleanup", POLL_A), ("poll", CLEAN_C), ("kill", POLL_A), ("submit", CLEAN_C), ("frobnicate", POLL_A)],
)
def test_the_wrong_verb_for_an_entry_is_its_error(verb: str, entry: Entry) -> None:
    results = parse_batch_output(batch(answer(verb, key=0, state="removed")), [entry])
    assert_error(results[0], f"Unexpected '{verb}' answer for {entry.paths.job_id}")


def test_a_cleanup_answer_without_a_state_counts_as_failed() -> None:
    assert parse_batch_output(batch(answer("cleanup", key=0)), [CLEAN_C])[0] == CleanupResult("failed")


@pytest.mark.parametrize("said", ["removed", "absent", "failed", "foreign", "running", "exploded", ""])
def test_a_cleanup_state_is_an_enum_that_reads_as_the_text_the_host_sent(said: str) -> None:
    (result,) = parse_batch_output(batch(answer("cleanup", key=0, state=said)), [CLEAN_C]).values()
    assert isinstance(result, CleanupResult) and type(result.state) is CleanupState
    text = said if said in {state.value for state in CleanupState} else "failed"
    assert result.state is CleanupState(text) and result == CleanupResult(text)
    # The same text in logs and f-strings, and when serialised.
    assert (str(result.state), f"{result.state}", json.dumps(result.state)) == (text, text, f'"{text}"')


def test_a_bad_integer_in_one_entry_spares_the_others() -> None:
    results = parse_batch_output(
        batch(answer(key=0, **{**RUNNING, "pid": "4x2"}), answer(key=1, **EXITED, data=b"hello")),
        [POLL_A, POLL_B],
    )
    assert_error(results[0], "Expected an integer, got '4x2'")
    assert results[1] == expected_results()[1]


def test_an_entry_answered_twice_is_an_error() -> None:
    output = batch(answer(key=0, state="missing"), answer(key=0, **RUNNING, data=b"0123456789"))
    assert_error(parse_batch_output(output, [POLL_A])[0], "Answer for a came twice")


def test_no_entries_and_an_empty_answer() -> None:
    assert parse_batch_output(batch(), []) == {}
    assert parse_batch_output(b"", []) == {}
    for output in (b"", b"\n\n", b"SSHJOBS1", b"SSHJOBS1 ", END[:-1]):
        assert_error(parse_batch_output(output, [POLL_A])[0], "missing from the batch answer")


# --------------------------------------------------------------------------- properties


def outside_headers(output: bytes) -> list[int]:
    """Every offset of ``output`` that is not strictly inside a header line."""
    inside: set[int] = set()
    tag = PROTOCOL_TAG.encode()
    start = output.find(tag)
    while start >= 0:
        end = output.index(b"\n", start)
        inside.update(range(start + 1, end + 1))
        start = output.find(tag, end)
    return [offset for offset in range(len(output) + 1) if offset not in inside]


def check_never_wrong(results: dict[int, EntryResult], expected: dict[int, EntryResult]) -> None:
    assert set(results) == set(expected)
    for key, result in results.items():
        assert result == expected[key] or isinstance(result, RemoteJobProtocolError), (key, result)


@settings(max_examples=300)
@given(logs=st.lists(st.binary(max_size=40) | st.sampled_from([HEADER_LIKE_LOG, END, b"\n"]), max_size=4))
@example(logs=[HEADER_LIKE_LOG, END, b""])
def test_any_logs_come_back_exactly_and_any_cut_never_gives_wrong_data(logs: list[bytes]) -> None:
    entries = [PollEntry(paths(f"j{i}"), 0, len(log)) for i, log in enumerate(logs)]
    output = batch(*(answer(key=i, **RUNNING, data=log) for i, log in enumerate(logs)))
    expected = parse_batch_output(output, entries)
    assert [expected[i].log_data for i in range(len(logs))] == logs  # type: ignore[union-attr]
    for cut in range(len(output)):
        check_never_wrong(parse_batch_output(output[:cut], entries), expected)


@settings(max_examples=300)
@given(
    noise=st.binary(max_size=60).filter(lambda b: PROTOCOL_TAG.encode() not in b),
    junk=st.binary(min_size=1, max_size=60).filter(lambda b: PROTOCOL_TAG.encode() not in b),
    position=st.sampled_from(outside_headers(full_answer())),
)
def test_noise_before_and_junk_between_headers_never_give_wrong_data(
    noise: bytes, junk: bytes, position: int
) -> None:
    output = full_answer()
    # Noise before the first header (a login banner without a newline at its end included).
    assert parse_batch_output(noise + b"\n" + output, ENTRIES) == expected_results()
    # Junk spliced into the log bytes or between answers (a corrupted stream): the lengths no
    # longer match, so each entry is still right or an error. (Junk inside a header line changes
    # what the header says: no framing can tell, so the property does not cover it.)
    spliced = output[:position] + junk + output[position:]
    check_never_wrong(parse_batch_output(spliced, ENTRIES), expected_results())


# --------------------------------------------------------------------------- the real batch script


def make_job(
    base: Path, job_id: str, log: bytes = b"", exit_code: str | None = None, **files: str
) -> RemoteJobPaths:
    """A job directory as the wrapper leaves it; ``files`` are written as given (``pid``, ``token``...)."""
    job = RemoteJobPaths(job_id=job_id, base_dir=str(base))
    job_dir = Path(job.job_dir)
    job_dir.mkdir(parents=True)
    Path(job.log_file).write_bytes(log)
    if exit_code is not None:
        Path(job.exit_code_file).write_text(f"{exit_code}\n")
    for name, content in files.items():
        (job_dir / name).write_text(content)
    return job


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


def test_a_mixed_batch_through_the_real_script(base: Path) -> None:
    # A "running" job is this test's own process: alive, and the poll never signals anything.
    running = make_job(base, "running", b"line 1\nline 2\n", pid=f"{os.getpid()}\n", token=TOKEN)
    exited = make_job(base, "exited", HEADER_LIKE_LOG, exit_code="7", pid="2147483646\n")
    pending = make_job(base, "pending")
    foreign = make_job(base, "foreign", b"not ours", pid="2147483646\n", token=OTHER_TOKEN)
    finished = make_job(base, "finished", b"done\n", exit_code="0", token=TOKEN)
    squatted = make_job(base, "squatted", token=OTHER_TOKEN)
    entries: list[Entry] = [
        PollEntry(running, 7, 100, token=TOKEN),
        PollEntry(exited, 0, len(HEADER_LIKE_LOG)),
        PollEntry(pending, 0, 10),
        PollEntry(foreign, 0, 10, token=TOKEN),
        PollEntry(paths("absent", str(base)), 0, 10),
        CleanupEntry(finished, token=TOKEN),
        CleanupEntry(paths("gone", str(base))),
        CleanupEntry(squatted, token=TOKEN),
    ]

    results = run_batch_parsed(entries)

    assert results[0] == JobStatus(JobState.RUNNING, pid=os.getpid(), log_size=14, log_data=b"line 2\n")
    assert results[1] == JobStatus(
        JobState.EXITED, pid=2147483646, exit_code=7, log_size=len(HEADER_LIKE_LOG), log_data=HEADER_LIKE_LOG
    )
    assert results[2] == JobStatus(JobState.PENDING)
    assert results[3] == JobStatus(JobState.FOREIGN)
    assert results[4] == JobStatus(JobState.MISSING)
    assert [results[i] for i in (5, 6, 7)] == [CleanupResult(s) for s in ("removed", "absent", "foreign")]
    assert not Path(finished.job_dir).exists()
    assert Path(squatted.job_dir).is_dir()


def test_the_delivered_offset_is_recorded_and_only_grows(base: Path) -> None:
    job = make_job(base, "resumed", b"0123456789", exit_code="0")
    results = run_batch_parsed([PollEntry(job, 0, 4, delivered=6)])
    assert results[0].delivered == 0  # type: ignore[union-attr]
    assert Path(job.job_dir, "delivered").read_text() == "6\n"
    results = run_batch_parsed([PollEntry(job, 6, 4, delivered=2)])
    assert results[0].delivered == 6  # type: ignore[union-attr]
    assert results[0].log_data == b"6789"  # type: ignore[union-attr]
    assert Path(job.job_dir, "delivered").read_text() == "6\n"


def test_every_cut_of_a_real_answer_gives_each_entry_right_or_an_error(base: Path) -> None:
    exited = make_job(base, "exited", HEADER_LIKE_LOG, exit_code="3", pid="2147483646\n")
    partial = make_job(base, "partial", b"\xff\x00a\nb", pid="2147483646\n")
    finished = make_job(base, "finished", exit_code="0")
    entries: list[Entry] = [
        PollEntry(exited, 0, len(HEADER_LIKE_LOG)),
        PollEntry(partial, 1, 3),
        PollEntry(paths("absent", str(base)), 0, 10),
        CleanupEntry(finished),
    ]
    output = run_batch(entries)
    expected = parse_batch_output(output, entries)
    assert expected[0].log_data == HEADER_LIKE_LOG  # type: ignore[union-attr]
    assert expected[1] == JobStatus(JobState.VANISHED, pid=2147483646, log_size=5, log_data=b"\x00a\n")
    assert expected[2] == JobStatus(JobState.MISSING)
    assert expected[3] == CleanupResult("removed")

    last = 2  # the cleanups are answered first, then the polls in their order
    for cut in range(len(output)):
        results = parse_batch_output(output[:cut], entries)
        check_never_wrong(results, expected)
        if cut < len(output) - len(END):
            assert isinstance(results[last], RemoteJobProtocolError), cut
    # The answer of the last entry ends just before the end line: only then is it whole.
    assert parse_batch_output(output[: -len(END)], entries) == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    logs=st.lists(st.binary(max_size=80) | st.just(HEADER_LIKE_LOG), min_size=1, max_size=3),
    offset=st.integers(0, 100),
    max_bytes=st.integers(0, 100),
)
def test_real_answers_give_exact_windows_and_survive_noise(
    tmp_path_factory: pytest.TempPathFactory, logs: list[bytes], offset: int, max_bytes: int
) -> None:
    base = tmp_path_factory.mktemp("jobs")
    jobs = [make_job(base, f"j{i}", log, exit_code="0", pid="2147483646\n") for i, log in enumerate(logs)]
    entries = [PollEntry(job, offset, max_bytes) for job in jobs]

    output = run_batch(entries)
    results = parse_batch_output(b"login banner\n" + output, entries)

    for i, log in enumerate(logs):
        assert results[i] == JobStatus(
            JobState.EXITED,
            pid=2147483646,
            exit_code=0,
            log_size=len(log),
            log_data=log[offset : offset + max_bytes],
        )
