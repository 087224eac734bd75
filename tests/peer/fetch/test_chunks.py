"""How a large blob fetched whole is cut into Range requests (peer/fetch/chunks.py)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from peer.fetch.chunks import (
    CHUNK_SHARE,
    CHUNK_WINDOW,
    CHUNKED_MIN_PIECES,
    FINALS_LEAD,
    WHOLE_FLOWS,
    Chunks,
    chunk_window,
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
    rest = Chunks(count, first_end, least, started=100.0, window=CHUNK_WINDOW)
    taken = list(iter(lambda: rest.take(now=100.0 + CHUNK_WINDOW - FINALS_LEAD - 1), None))
    assert taken == cut[1:]
    assert next_chunk(count, 0, least) == cut[0]
    closed = Chunks(count, first_end, least, started=100.0, window=None)
    closed.close()
    assert closed.take(now=100.0) is None


def test_credentials_that_may_expire_set_a_window_and_others_none() -> None:
    # The upstream checks a bearer token on every request, and a token may last a minute;
    # no credentials, or Basic ones, do not expire.
    assert chunk_window("Bearer abc.def") == CHUNK_WINDOW
    assert chunk_window("bearer abc") == CHUNK_WINDOW
    assert chunk_window("Custom xyz") == CHUNK_WINDOW  # unknown: may expire
    assert chunk_window("Basic dXNlcjpwdw==") is None
    assert chunk_window(None) is None
    assert chunk_window("") is None


def test_without_a_window_chunks_go_on_to_the_end_however_long_the_fetch() -> None:
    late = Chunks(300, 37, 4, started=0.0, window=None)
    assert late.take(now=10_000.0) == next_chunk(300, 37, 4)


def test_near_the_window_each_flow_takes_an_equal_share_of_the_rest() -> None:
    # The whole rest in one request left one flow per blob for the last ~40 % of a long
    # fetch: the registry's uplink went part idle and the owners' flows ended apart. From
    # FINALS_LEAD before the window, each of the flows takes its last chunk, a share of
    # what is left; after the window the next takes all the rest.
    chunks = Chunks(300, 37, 4, started=10.0, window=CHUNK_WINDOW)
    finals = 10.0 + CHUNK_WINDOW - FINALS_LEAD
    assert chunks.take(now=finals - 1) == (37, 69)  # an eighth of what is left
    assert WHOLE_FLOWS == 3
    assert chunks.take(now=finals) == (69, 146)  # a third of 231
    assert chunks.take(now=finals + 1) == (146, 223)  # a half of 154
    assert chunks.take(now=finals + 2) == (223, 300)  # the rest
    assert chunks.take(now=finals + 3) is None


def test_after_the_window_one_request_takes_the_whole_rest() -> None:
    # No request later than CHUNK_WINDOW after the download began, whoever comes back.
    chunks = Chunks(300, 37, 4, started=10.0, window=CHUNK_WINDOW)
    assert chunks.take(now=10.0 + CHUNK_WINDOW - FINALS_LEAD - 1) == (37, 69)
    assert chunks.take(now=10.0 + CHUNK_WINDOW - FINALS_LEAD) == (69, 146)
    assert chunks.take(now=10.0 + CHUNK_WINDOW) == (146, 300)
    assert chunks.take(now=10.0 + CHUNK_WINDOW + 1) is None


@given(
    st.integers(CHUNKED_MIN_PIECES, 20_000),
    st.integers(1, 64),
    st.lists(st.floats(0.0, 30.0), min_size=1, max_size=200),
)
def test_with_a_window_the_chunks_cover_the_blob_once_and_none_is_asked_late(
    count: int, least: int, gaps: list[float]
) -> None:
    # Flows come back for chunks at any moments: the blob is covered once, in order; from
    # FINALS_LEAD before the window at most one chunk per flow is asked, and past the window
    # only one request, the last.
    chunks = Chunks(count, 0, least, started=0.0, window=CHUNK_WINDOW)
    now, taken = 0.0, []
    for gap in itertools.chain(gaps, itertools.repeat(1.0)):
        now += gap
        chunk = chunks.take(now)
        if chunk is None:
            break
        taken.append((now, chunk))
    ranges = [chunk for _, chunk in taken]
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(end - start >= min(least, count) for start, end in ranges)
    late = [chunk for at, chunk in taken if at >= CHUNK_WINDOW]
    assert late in ([], [ranges[-1]])
    finals = [chunk for at, chunk in taken if at >= CHUNK_WINDOW - FINALS_LEAD]
    assert len(finals) <= WHOLE_FLOWS
