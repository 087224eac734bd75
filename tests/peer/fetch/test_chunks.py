"""How a large blob fetched whole is cut into Range requests (peer/fetch/chunks.py)."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from peer.fetch.chunks import (
    CHUNK_SECONDS,
    CHUNK_SHARE,
    CHUNK_WINDOW,
    CHUNKED_MIN_PIECES,
    FINALS_MARGIN,
    FLOW_BYTES,
    MAX_TOKEN_CHARS,
    MOST_WHOLE_FLOWS,
    RAMP_PIECES,
    TOKEN_MARGIN,
    UNREAD_SHARE,
    WHOLE_FLOWS,
    Chunks,
    chunk_window,
    first_chunk,
    least_pieces,
    may_expire,
    next_chunk,
    whole_chunks,
    whole_flows,
)
from tests.peer.fake_registry import jwt


@given(st.integers(1, MOST_WHOLE_FLOWS), st.integers(0, 1000))
def test_the_flows_open_one_at_a_time_as_the_pieces_come(flows: int, arrived: int) -> None:
    # All at once, 8 flows shared the owner's part of the registry's uplink and none brought
    # a piece for seconds (no host had a piece to trade). One flow first, then one more for
    # every RAMP_PIECES pieces in, never more than the blob's flows.
    chunks = Chunks(300, 30, 16, 0.0, window=None, flows=flows)
    assert chunks.flows_open(0) == 1
    assert chunks.flows_open(arrived) == min(flows, 1 + arrived // RAMP_PIECES)
    for flow in range(flows):
        opens = chunks.opens_after(flow)
        assert chunks.flows_open(opens) >= flow + 1
        assert opens == 0 or chunks.flows_open(opens - 1) == flow
    assert chunks.flows_open(flows * RAMP_PIECES) == flows
    # With a window (credentials that may expire) every flow from the start: each must take
    # its last chunk before the window ends.
    windowed = Chunks(300, 30, 16, 0.0, window=CHUNK_WINDOW, flows=flows)
    assert windowed.flows_open(0) == flows
    assert all(windowed.opens_after(flow) == 0 for flow in range(flows))


@given(st.integers(1, MOST_WHOLE_FLOWS), st.integers(0, 1000))
def test_a_blob_fetched_ahead_of_its_client_opens_part_of_its_flows(
    flows: int, arrived: int
) -> None:
    # With every blob on all its flows, the largest (read first) ended last and a client
    # reading one blob at a time read all the others after it. Prefetched ahead of its
    # client, a blob keeps to 1 / UNREAD_SHARE of its flows (at least one), ramping as before.
    chunks = Chunks(300, 30, 16, 0.0, window=None, flows=flows)
    unread = chunks.unread_flows
    assert unread == max(1, flows // UNREAD_SHARE)
    assert flows == 1 or unread < flows
    assert chunks.flows_open(arrived, read=False) == min(unread, chunks.flows_open(arrived))
    assert chunks.flows_open(flows * RAMP_PIECES, read=False) == unread
    assert not chunks.may_open(unread, flows * RAMP_PIECES, read=False)
    assert chunks.may_open(unread - 1, flows * RAMP_PIECES, read=False)
    # With a window every flow opens, read or not: each must take its last chunk in time.
    windowed = Chunks(300, 30, 16, 0.0, window=CHUNK_WINDOW, flows=flows)
    assert windowed.flows_open(0, read=False) == flows


def test_a_small_blob_comes_in_one_request() -> None:
    assert whole_chunks(CHUNKED_MIN_PIECES - 1, 4) == [(0, CHUNKED_MIN_PIECES - 1)]
    assert whole_chunks(0, 4) == []


def test_a_larger_blob_comes_on_more_flows_up_to_a_bound() -> None:
    # The registry's uplink gives every flow a like share: a blob's flows in proportion to
    # its size keep the largest blob from coming last and alone.
    assert whole_flows(0) == whole_flows(WHOLE_FLOWS * FLOW_BYTES) == WHOLE_FLOWS
    assert whole_flows(WHOLE_FLOWS * FLOW_BYTES + 1) == WHOLE_FLOWS + 1
    assert whole_flows(112 * 1024 * 1024) == 7
    assert whole_flows(2**40) == MOST_WHOLE_FLOWS


def test_more_flows_take_smaller_chunks_so_as_much_of_the_blob_is_under_way() -> None:
    # The clients read in order: eighths on 8 flows had two thirds of a blob coming at once
    # and its first chunk last among them (testbed, 16 hosts: every client read the rest of
    # its blobs at the end). The chunks under way cover about what 3 flows' do.
    count, least = 4096, 1

    def under_way(flows: int) -> int:
        chunks = whole_chunks(count, least, flows)[:flows]
        return chunks[-1][1]

    assert whole_chunks(count, least, 8)[0] == (0, count // (CHUNK_SHARE * 8 // WHOLE_FLOWS))
    assert abs(under_way(8) - under_way(WHOLE_FLOWS)) <= count // 20
    assert first_chunk(count, least, False, 8) == whole_chunks(count, least, 8)[0]


@given(st.integers(0, 2**40), st.integers(0, 2**40))
def test_whole_flows_never_fall_as_a_blob_grows(a: int, b: int) -> None:
    small, large = sorted((a, b))
    assert WHOLE_FLOWS <= whole_flows(small) <= whole_flows(large) <= MOST_WHOLE_FLOWS


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
    rest = Chunks(count, first_end, least, started=100.0, window=None)
    taken = list(iter(lambda: rest.take(now=100.0 + 10 * CHUNK_WINDOW, arrived=0), None))
    assert taken == cut[1:]
    assert next_chunk(count, 0, least) == cut[0]
    closed = Chunks(count, first_end, least, started=100.0, window=None)
    closed.close()
    assert closed.take(now=100.0, arrived=0) is None


def test_credentials_that_may_expire_set_a_window_and_others_none() -> None:
    # The upstream checks a bearer token on every request, and a token may last a minute;
    # no credentials, or Basic ones, do not expire.
    assert chunk_window("Bearer abc.def", 1000.0, 5.0) == CHUNK_WINDOW
    assert chunk_window("bearer abc", 1000.0, 5.0) == CHUNK_WINDOW
    assert chunk_window("Custom xyz", 1000.0, 5.0) == CHUNK_WINDOW  # unknown: may expire
    assert chunk_window("Basic dXNlcjpwdw==", 1000.0, 5.0) is None
    assert chunk_window(None, 1000.0, 5.0) is None
    assert chunk_window("", 1000.0, 5.0) is None
    # Such a fetch's first chunk is the least: asked before any rate is known.
    assert may_expire("Bearer abc") and may_expire("Custom xyz")
    assert not may_expire("Basic dXNlcjpwdw==") and not may_expire(None)
    assert first_chunk(300, 4, expiring=True) == (0, 4)
    assert first_chunk(300, 4, expiring=False) == next_chunk(300, 0, 4) == (0, 37)


def test_a_jwt_sets_the_window_by_the_expiry_it_names() -> None:
    # Docker Hub's tokens last 300 s: the window ends TOKEN_MARGIN before the expiry,
    # counted from the download's start (`elapsed` ago).
    now = 1_700_000_000.0
    hub = jwt({"iat": now - 10, "exp": now + 290, "access": []})
    assert chunk_window(f"Bearer {hub}", now, 7.0) == 7.0 + 290 - TOKEN_MARGIN
    # A clock behind the token server's: no more than the token's lifetime from its issue.
    assert chunk_window(f"Bearer {hub}", now - 600, 0.0) == 300 - TOKEN_MARGIN
    # Expiring before the margin: no chunk after the first (a window of what has passed).
    soon = jwt({"exp": now + 10})
    assert chunk_window(f"Bearer {soon}", now, 3.0) == 3.0
    # An issue time that cannot be read caps nothing.
    odd = jwt({"exp": now + 290, "iat": 10**400})
    assert chunk_window(f"Bearer {odd}", now, 0.0) == 290 - TOKEN_MARGIN


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",  # not base64 JSON
        jwt(["exp", 5]),  # claims not an object
        jwt({"iat": 5}),  # no expiry
        jwt({"exp": True}),
        jwt({"exp": "1700000300"}),
        jwt({"exp": float("inf")}),
        jwt({"exp": 10**400}),  # no float holds it
        jwt({"exp": -5}),
        "x." + base64.urlsafe_b64encode(b"[" * 12_000).decode() + ".y",  # nesting to the limit
        "x." + base64.urlsafe_b64encode(b'{"exp": 1' + b"0" * 5000 + b"}").decode() + ".y",
        "x." + "A" * (MAX_TOKEN_CHARS + 1) + ".y",
    ],
)
def test_a_token_whose_expiry_cannot_be_read_gets_the_minute_rule(token: str) -> None:
    # Whatever a client puts in its header: read within bounds, never an exception.
    assert chunk_window(f"Bearer {token}", 1_700_000_000.0, 2.0) == CHUNK_WINDOW


def test_without_a_window_chunks_go_on_to_the_end_however_long_the_fetch() -> None:
    late = Chunks(300, 37, 4, started=0.0, window=None)
    assert late.take(now=10_000.0, arrived=37) == next_chunk(300, 37, 4)


def test_with_a_window_a_chunk_lasts_a_share_of_the_time_left_at_the_rate_so_far() -> None:
    # No byte in yet: the least, which gives a measure by its end.
    chunks = Chunks(30_000, 0, 4, started=0.0, window=CHUNK_WINDOW)
    assert chunks.take(now=0.0, arrived=0) == (0, 4)
    # 3 flows, 30 pieces in 1 s: 10 pieces/s each; a quarter of the time left before the
    # last chunks.
    size = int(10 * (CHUNK_WINDOW - FINALS_MARGIN - 1.0) / 4)
    assert chunks.take(now=1.0, arrived=30) == (4, 4 + size)
    # Near the window, CHUNK_SECONDS of it.
    at = CHUNK_WINDOW - FINALS_MARGIN - 2 * CHUNK_SECONDS
    cursor = chunks.cursor
    assert chunks.take(now=at, arrived=int(30 * at)) == (cursor, cursor + int(10 * CHUNK_SECONDS))
    # Never more than the usual eighth of what is left.
    fast = Chunks(300, 0, 4, started=0.0, window=CHUNK_WINDOW)
    assert fast.take(now=1.0, arrived=300) == next_chunk(300, 0, 4)


def test_near_the_window_each_flow_takes_an_equal_share_of_the_rest() -> None:
    # A flow that would come back within FINALS_MARGIN of the window takes its last chunk:
    # an equal share of what is left among the flows that have not taken theirs.
    chunks = Chunks(300, 69, 4, started=0.0, window=CHUNK_WINDOW)
    late = CHUNK_WINDOW - FINALS_MARGIN - 1
    rate_arrived = int(late * WHOLE_FLOWS * 2)  # 2 pieces/s per flow: back in 5 s, too late
    assert WHOLE_FLOWS == 3
    assert chunks.take(now=late, arrived=rate_arrived) == (69, 146)  # a third of 231
    assert chunks.take(now=late + 1, arrived=rate_arrived) == (146, 223)  # a half of 154
    assert chunks.take(now=late + 2, arrived=rate_arrived) == (223, 300)  # the rest
    assert chunks.take(now=late + 3, arrived=rate_arrived) is None


def test_after_the_window_one_request_takes_the_whole_rest() -> None:
    # No request later than CHUNK_WINDOW after the download began, whoever comes back.
    chunks = Chunks(300, 37, 4, started=10.0, window=CHUNK_WINDOW)
    assert chunks.take(now=10.0 + CHUNK_WINDOW, arrived=37) == (37, 300)
    assert chunks.take(now=10.0 + CHUNK_WINDOW + 1, arrived=300) is None


@given(
    st.integers(CHUNKED_MIN_PIECES, 20_000),
    st.integers(1, 64),
    st.floats(0.05, 500.0),
    st.floats(0.0, 3.0),
)
def test_with_a_steady_rate_every_flow_makes_its_last_request_before_the_window(
    count: int, least: int, rate: float, first_wait: float
) -> None:
    # WHOLE_FLOWS flows, each bringing `rate` pieces a second, take chunks as they come back
    # (the first after `first_wait`, as the first chunk is asked alone). The chunks cover
    # the blob once, in order; none is asked past the window but at most one that takes
    # all the rest; and when the blob outlasts the window, every flow made its last request
    # before it, so all of them carry the blob to its end (given that the least chunk, the
    # first each flow takes, is in before the window: 1 MiB at 25 KB/s).
    assume(first_wait + least / rate < CHUNK_WINDOW - FINALS_MARGIN)
    chunks = Chunks(count, 0, least, started=0.0, window=CHUNK_WINDOW)
    free_at = [0.0] + [first_wait] * (WHOLE_FLOWS - 1)  # when each flow comes back
    done: list[tuple[float, int]] = []  # (when a chunk's last piece is in, its size)
    taken: list[tuple[float, tuple[int, int]]] = []
    for _ in range(10_000):
        flow = min(range(WHOLE_FLOWS), key=lambda f: free_at[f])
        now = free_at[flow]
        arrived = sum(min(size, int(max(0.0, now - start) * rate)) for start, size in done)
        chunk = chunks.take(now, arrived)
        if chunk is None:
            break
        taken.append((now, chunk))
        done.append((now, chunk[1] - chunk[0]))
        free_at[flow] = now + (chunk[1] - chunk[0]) / rate
    ranges = [chunk for _, chunk in taken]
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert all(end - start >= min(least, count) for start, end in ranges)
    late = [chunk for at, chunk in taken if at >= CHUNK_WINDOW]
    assert late in ([], [ranges[-1]])
    if max(free_at) > CHUNK_WINDOW + CHUNK_SECONDS:  # the blob outlasts the window
        assert late == []  # ... and no flow was left to take the whole rest


def test_a_chunk_is_at_least_a_piece() -> None:
    with pytest.raises(ValueError, match="at least one piece"):
        Chunks(300, 0, 0, started=0.0, window=None)
