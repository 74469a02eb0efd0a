"""LogStream: byte chunks in, whole lines out, every byte exactly once, resumable at emitted_offset."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ssh_jobs_provider.protocol.log_stream import LogStream


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# Byte soups that stress line and UTF-8 boundaries.
pieces = st.one_of(
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\n\n",
            "\u00e9".encode(),
            "\u20ac".encode(),
            "\U0001f642".encode(),
            b"\xff",
            b"\x80",
            b"\xc3",  # lead byte without its continuation
            b"\xe2\x82",  # 2 of 3 bytes
            b"\xf0\x9f\x99",  # 3 of 4 bytes
            b"\xed\xa0\x80",  # encoded surrogate: invalid
            b"\xc0\xaf",  # overlong: invalid
        ]
    ),
    st.integers(0, 200).map(lambda n: b"x" * n),
)
log_bytes = st.lists(pieces, max_size=40).map(b"".join)


@st.composite
def chunked(draw: st.DrawFn, min_size: int = 0) -> tuple[bytes, list[bytes]]:
    """Some bytes and an arbitrary split of them into consecutive chunks."""
    data = draw(log_bytes.filter(lambda d: len(d) >= min_size))
    cuts = sorted(draw(st.sets(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


def rebuild(consumed: bytes, items: list[str]) -> str:
    """
    Text of one ``feed`` call, from what it emitted.

    A call first emits the newline-terminated lines of the bytes it consumed (one per
    ``\\n``), then, for an over-long partial line, pieces of it with no newline between.
    """
    k = consumed.count(b"\n")
    text = "\n".join(items[:k]) + ("\n" if k else "")
    return text + "".join(items[k:])


# --------------------------------------------------------------------------- properties


@settings(max_examples=300)
@given(case=chunked())
@example(case=(b"a\r\nb\xffc\n\xe2\x82", [b"a\r", b"\nb\xff", b"c\n\xe2", b"\x82"]))
@example(case=(b"", []))
@example(case=(b"\n", [b"\n"]))
def test_lines_joined_with_newlines_equal_the_decoded_whole(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    stream = LogStream(max_pending=len(data) + 4)  # never split a line here

    lines = [line for chunk in chunks for line in stream.feed(chunk)] + stream.flush()

    text = "\n".join(lines) + ("\n" if data.endswith(b"\n") else "")
    assert text == decode(data)
    assert stream.emitted_offset == len(data)


@settings(max_examples=300)
@given(case=chunked(), max_pending=st.integers(1, 24), start=st.integers(0, 10**9))
@example(case=(b"\xe2\x82\xac" * 5, [b"\xe2\x82\xac" * 5]), max_pending=4, start=0)
@example(case=(b"x" * 300 + b"\n", [b"x" * 300 + b"\n"]), max_pending=4, start=7)
def test_long_lines_come_out_in_pieces_that_rebuild_the_whole(
    case: tuple[bytes, list[bytes]], max_pending: int, start: int
) -> None:
    data, chunks = case
    stream = LogStream(offset=start, max_pending=max_pending)
    limit = max(4, max_pending)
    fed = 0
    texts: list[str] = []

    for chunk in chunks:
        before = stream.emitted_offset
        items = stream.feed(chunk)
        fed += len(chunk)
        assert stream.read_offset == start + fed
        assert before <= stream.emitted_offset <= stream.read_offset
        assert stream.read_offset - stream.emitted_offset < limit, "partial line kept back is bounded"
        texts.append(rebuild(data[before - start : stream.emitted_offset - start], items))
    texts.extend(stream.flush())

    assert "".join(texts) == decode(data)
    assert stream.emitted_offset == start + len(data)


@settings(max_examples=300)
@given(case=chunked(), max_pending=st.integers(4, 24) | st.just(1 << 20))
def test_emitted_offset_is_always_a_safe_resume_boundary(
    case: tuple[bytes, list[bytes]], max_pending: int
) -> None:
    data, chunks = case
    stream = LogStream(max_pending=max_pending)
    fed = 0
    for chunk in chunks:
        stream.feed(chunk)
        fed += len(chunk)
        cut = stream.emitted_offset
        # Bytes consumed so far, never more than were fed, and cutting there splits no character.
        assert cut <= fed
        assert decode(data[:cut]) + decode(data[cut:]) == decode(data)
        if max_pending > len(data) and cut:
            assert data[cut - 1 : cut] == b"\n", "without over-long lines, only whole lines are consumed"


@settings(max_examples=300)
@given(case=chunked(), split_at=st.integers(0, 100), rest_cut=st.integers(0, 1 << 16))
def test_resuming_at_emitted_offset_loses_and_duplicates_nothing(
    case: tuple[bytes, list[bytes]], split_at: int, rest_cut: int
) -> None:
    data, chunks = case
    reference = LogStream(max_pending=1 << 20)
    expected = reference.feed(data) + reference.flush()

    first = LogStream(max_pending=1 << 20)
    seen = [line for chunk in chunks[:split_at] for line in first.feed(chunk)]
    # The first watcher dies; what it held back is lost with it. A new one resumes.
    resume_at = first.emitted_offset
    second = LogStream(offset=resume_at, max_pending=1 << 20)
    rest = data[resume_at:]
    cut = rest_cut % (len(rest) + 1)
    seen += second.feed(rest[:cut])
    assert second.read_offset == resume_at + cut
    seen += second.feed(rest[cut:])
    seen += second.flush()

    assert seen == expected
    assert second.emitted_offset == len(data)


@settings(max_examples=200)
@given(case=chunked(), max_pending=st.integers(4, 16), split_at=st.integers(0, 100))
def test_resuming_with_long_lines_rebuilds_the_rest_exactly(
    case: tuple[bytes, list[bytes]], max_pending: int, split_at: int
) -> None:
    data, chunks = case
    texts: list[str] = []

    def feed(stream: LogStream, chunk: bytes) -> None:
        before = stream.emitted_offset
        items = stream.feed(chunk)
        texts.append(rebuild(data[before : stream.emitted_offset], items))

    first = LogStream(max_pending=max_pending)
    for chunk in chunks[:split_at]:
        feed(first, chunk)
    second = LogStream(offset=first.emitted_offset, max_pending=max_pending)
    feed(second, data[second.emitted_offset :])
    texts.extend(second.flush())

    assert "".join(texts) == decode(data)


# --------------------------------------------------------------------------- examples


@pytest.mark.parametrize("char", ["\u00e9", "\u20ac", "\U0001f642"])
def test_multibyte_character_split_across_chunks_comes_out_whole(char: str) -> None:
    encoded = char.encode()
    for cut in range(1, len(encoded)):
        stream = LogStream()
        assert stream.feed(b"a" + encoded[:cut]) == []
        assert stream.feed(encoded[cut:] + b"b\n") == [f"a{char}b"]


def test_multibyte_character_is_not_split_by_a_long_line_cut() -> None:
    stream = LogStream(max_pending=4)
    pieces = stream.feed(b"ab\xe2\x82\xac")  # "ab€": the cut at 4 bytes would land inside the euro sign
    assert pieces == ["ab"]
    assert stream.emitted_offset == 2
    assert stream.feed(b"\n") == ["\u20ac"]


def test_partial_line_is_held_until_its_newline_or_flush() -> None:
    stream = LogStream(offset=10)
    assert stream.feed(b"one\ntw") == ["one"]
    assert (stream.emitted_offset, stream.read_offset) == (14, 16)
    assert stream.feed(b"o") == []
    assert stream.flush() == ["two"]
    assert stream.emitted_offset == 17
    assert stream.flush() == []


def test_invalid_bytes_are_replaced_not_raised() -> None:
    assert LogStream().feed(b"ok \xff\xfe bad\n") == ["ok \ufffd\ufffd bad"]


def test_empty_lines_and_empty_feeds_are_kept_and_ignored() -> None:
    stream = LogStream()
    assert stream.feed(b"") == []
    assert stream.feed(b"\n\na\n") == ["", "", "a"]


def test_negative_offset_is_rejected() -> None:
    with pytest.raises(ValueError, match="offset"):
        LogStream(offset=-1)
