"""How a large blob fetched whole is cut into Range requests (peer/fetch/chunks.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from peer.fetch.chunks import (
    CHUNK_SHARE,
    CHUNK_WINDOW,
    CHUNKED_MIN_PIECES,
    Chunks,
    least_pieces,
    next_chunk,
    whole_chunks,
)


def test_a_small_blob_comes_in_one_request() -> None:
    assert whole_chunks(CHUNKED_MIN_PIECES - 1, 4) == [(0, CHUNKED_MIN_PIECES - 1)]
    assert whole_chunks(0, 4) == []


def test_chunks_shrink_towards_the_end_and_the_first_is_an_eighth() -> None:
    chunks = whole_chunks(300, 4)
    assert chunks[0] == (0, 300 // CHUNK_SHARE)
    sizes = [end - start for start, end in chunks]
    assert sizes[:3] == [37, 32, 28]
    assert all(a >= b for a, b in itertools.pairwise(sizes[:-1]))
    assert sizes[-1] >= 4  # no remnant smaller than the least chunk


def test_the_least_chunk_is_a_mebibyte_in_pieces() -> None:
    assert least_pieces(64 * 1024) == 16
    assert least_pieces(256 * 1024) == 4
    assert least_pieces(4 * 1024 * 1024) == 1


@given(st.integers(CHUNKED_MIN_PIECES, 20_000), st.integers(1, 64))
def test_the_chunks_cover_the_blob_in_order_and_a_slow_flow_holds_back_little(
    count: int, least: int
) -> None:
    chunks = whole_chunks(count, least)
    assert chunks[0][0] == 0 and chunks[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))  # no gap, no overlap
    assert all(end - start >= min(least, count) for start, end in chunks)
    # Three equal parts let the slowest flow hold back a third of the blob (every client
    # reads in order); a chunk is an eighth of what is left when it is taken, at most.
    for start, end in chunks:
        assert end - start <= max((count - start) // CHUNK_SHARE, least) + least
    # A new request costs a connection: the count grows with the log of the blob's size.
    assert len(chunks) <= 2 * CHUNK_SHARE * (count.bit_length() + 1)


@given(st.integers(CHUNKED_MIN_PIECES, 5_000), st.integers(1, 32))
def test_chunks_from_a_cursor_are_the_rest_of_the_same_cut(count: int, least: int) -> None:
    # The first chunk is asked alone; the flows then take the rest from where it ended.
    cut = whole_chunks(count, least)
    first_end = cut[0][1]
    rest = Chunks(count, first_end, least, started=100.0)
    taken = list(iter(lambda: rest.take(now=100.0 + CHUNK_WINDOW / 2), None))
    assert taken == cut[1:]
    assert next_chunk(count, 0, least) == cut[0]
    closed = Chunks(count, first_end, least, started=100.0)
    closed.close()
    assert closed.take(now=100.0) is None


def test_after_the_window_one_request_takes_the_whole_rest() -> None:
    # The upstream checks the client's token on every request, and a token may last a
    # minute: no chunk is asked for later than CHUNK_WINDOW after the download began.
    chunks = Chunks(300, 37, 4, started=10.0)
    assert chunks.take(now=10.0 + CHUNK_WINDOW - 1) == (37, 69)
    assert chunks.take(now=10.0 + CHUNK_WINDOW) == (69, 300)
    assert chunks.take(now=10.0 + CHUNK_WINDOW + 1) is None
