from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pieces.layout import MAX_PIECE_SIZE, MAX_PIECES
from tests.wire.strategies import events
from wire.errors import RemoteProtocolError
from wire.events import (
    PROTOCOL_VERSION,
    Event,
    FileRange,
    Hello,
    Inflow,
    Invite,
    Piece,
    PieceMeta,
    Proof,
    Want,
)
from wire.frames import MAX_INFLOWS, PREFIX, FrameDecoder, PayloadPool, encode
from wire.names import MAX_AUTHORIZATION

MAX = 1 << 20


def frame(event: Event) -> bytes:
    return b"".join(b for b in encode(event) if not isinstance(b, FileRange))


def _raw_frame(header: list[object]) -> bytes:
    """A frame with any header at all: what a hostile peer can send."""
    packed: bytes = msgpack.packb(header)
    return PREFIX.pack(len(packed), len(packed)) + packed


def normalized(event: Event) -> Event:
    # A Piece payload comes back as bytes whatever buffer type it was sent from.
    if isinstance(event, Piece):
        assert not isinstance(event.data, FileRange)
        return Piece(event.digest, event.index, bytes(event.data), event.pushed)
    return event


@given(st.lists(events, max_size=8))
def test_round_trip_whole_and_byte_by_byte(sent: list[Event]) -> None:
    stream = b"".join(frame(e) for e in sent)
    whole = FrameDecoder(MAX)
    whole.feed(stream)
    got = []
    while (event := whole.next_event()) is not None:
        got.append(event)
    assert got == [normalized(e) for e in sent]

    split = FrameDecoder(MAX)
    got = []
    for i in range(len(stream)):
        split.feed(stream[i : i + 1])
        while (event := split.next_event()) is not None:
            got.append(event)
    assert got == [normalized(e) for e in sent]


@given(st.binary(max_size=400))
def test_random_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder(MAX)
    decoder.feed(data)
    try:
        while decoder.next_event() is not None:
            pass
    except RemoteProtocolError:
        pass


def mutated_frame(event: Event, data: st.DataObject) -> bytearray:
    """The frame of `event` with one to four bytes overwritten at random."""
    raw = bytearray(frame(event))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    return raw


@settings(max_examples=300)
@given(events, st.data())
def test_mutated_frames_parse_or_raise_remote_protocol_error(
    event: Event, data: st.DataObject
) -> None:
    raw = mutated_frame(event, data)
    for cut in (len(raw), data.draw(st.integers(0, len(raw)))):
        decoder = FrameDecoder(MAX)
        decoder.feed(bytes(raw[:cut]))
        try:
            while decoder.next_event() is not None:
                pass
        except RemoteProtocolError:
            pass


def test_oversized_frame_is_refused_before_it_is_buffered() -> None:
    decoder = FrameDecoder(1000)
    decoder.feed(PREFIX.pack(10_000_000, 10))
    with pytest.raises(RemoteProtocolError, match="over 1000"):
        decoder.next_event()


@pytest.mark.parametrize(
    "event",
    [
        Hello(PROTOCOL_VERSION, b"x" * 15, b"n" * 32, b"e" * 32, b"i" * 32, None, False, None),
        Hello(PROTOCOL_VERSION, b"x" * 16, b"n" * 32, b"e" * 31, b"i" * 32, None, False, None),
        Hello(PROTOCOL_VERSION, b"x" * 16, b"n" * 32, b"e" * 32, b"i" * 31, None, False, None),
        Hello(
            PROTOCOL_VERSION, b"x" * 16, b"n" * 32, b"e" * 32, b"i" * 32, b"c" * 15, False, "x:1"
        ),
        Proof(b"m" * 31),
    ],
)
def test_wrong_field_sizes_are_refused(event: Event) -> None:
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(event))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()


@pytest.mark.parametrize("inflows", [-1, MAX_INFLOWS + 1, 2**40, True, 1.0, "3", None])
def test_an_inflow_count_out_of_range_or_not_a_number_is_refused(inflows: object) -> None:
    # An uploader ranks waiting links by it and keeps it per peer: a number, and small.
    decoder = FrameDecoder(MAX)
    decoder.feed(_raw_frame([Inflow.TYPE, inflows]))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(Inflow(MAX_INFLOWS)))
    assert decoder.next_event() == Inflow(MAX_INFLOWS)


@pytest.mark.parametrize("count", [0, -1, MAX_PIECES + 1, True, 1.0, "3", None])
def test_an_invitation_for_no_piece_or_beyond_any_blob_is_refused(count: object) -> None:
    # The pusher keeps the credit: a whole number of pieces, at least one, no more than any
    # blob has.
    digest = "sha256:" + "a" * 64
    decoder = FrameDecoder(MAX)
    decoder.feed(_raw_frame([Invite.TYPE, digest, count]))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(Invite(digest, MAX_PIECES)))
    assert decoder.next_event() == Invite(digest, MAX_PIECES)


@pytest.mark.parametrize("pushed", [1, 0, None, "yes"])
def test_a_piece_pushed_flag_that_is_not_a_bool_is_refused(pushed: object) -> None:
    decoder = FrameDecoder(MAX)
    decoder.feed(_raw_frame([Piece.TYPE, "sha256:" + "a" * 64, 0, pushed]))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()


def test_a_piece_size_no_frame_can_carry_is_refused() -> None:
    # An owner that cut a blob into pieces over the largest frame would have every peer try
    # to send pieces that every receiver refuses, closing link after link.
    digest = "sha256:" + "a" * 64
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(PieceMeta(digest, 1 << 30, MAX_PIECE_SIZE, {}, [])))
    assert isinstance(decoder.next_event(), PieceMeta)
    decoder.feed(frame(PieceMeta(digest, 1 << 30, MAX_PIECE_SIZE + 1, {}, [])))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()


@pytest.mark.parametrize(
    "origin",
    ["", "evil\norigin", "ftp://r.example", "https://", "https://r.example/a b", "r.example"],
)
def test_an_origin_that_is_no_registry_url_is_refused(origin: str) -> None:
    # A blob's origins become its private markers when it is stored: one the store cannot
    # keep (a newline, an empty one) failed the blob's commit after every byte verified, and
    # every later pull of it the same way.
    digest = "sha256:" + "a" * 64
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(PieceMeta(digest, 100, 64 * 1024, {}, ["https://r.example", origin])))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()


def test_registry_urls_as_nodes_name_them_are_origins() -> None:
    digest = "sha256:" + "a" * 64
    origins = ["https://ghcr.io", "http://10.0.0.1:5000", "https://[::1]:5000/mirror"]
    origins.append("http://my_registry:5000")  # a Compose service, as --upstream may name it
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(PieceMeta(digest, 100, 64 * 1024, {}, origins)))
    event = decoder.next_event()
    assert isinstance(event, PieceMeta) and list(event.origins) == origins


@pytest.mark.parametrize(
    "authorization",
    ["Bearer \u0100", "Bearer x\r\nHost: evil", "a\x00b", "B" * (MAX_AUTHORIZATION + 1)],
)
def test_an_authorization_no_http_header_could_carry_is_refused(authorization: str) -> None:
    # It goes into a request to a registry as the header of that name, and into a hash
    # (latin-1, as HTTP's bytes): a character past U+00FF raised there, a line break would
    # have been a header of the member's choosing.
    digest = "sha256:" + "a" * 64
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(Want(digest, None, "org/app", authorization, False)))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(Want(digest, None, "org/app", "Basic \u00e9t\u00e9\tx", False)))
    assert isinstance(decoder.next_event(), Want)
    decoder.feed(frame(Want(digest, None, "org/app", "B" * MAX_AUTHORIZATION, False)))
    assert isinstance(decoder.next_event(), Want)


def test_payload_only_on_pieces() -> None:
    raw = bytearray(frame(Proof(b"m" * 32)))
    header_len = PREFIX.unpack_from(raw)[1]
    raw[: PREFIX.size] = PREFIX.pack(header_len + 3, header_len)
    decoder = FrameDecoder(MAX)
    decoder.feed(bytes(raw) + b"abc")
    with pytest.raises(RemoteProtocolError, match="payload"):
        decoder.next_event()


def decode_with_payload_buffers(
    stream: bytes, cuts: list[int], decoder: FrameDecoder
) -> list[Event]:
    """Decode `stream` the way a link does: large payloads read straight into the decoder's
    buffer (`payload_buffer`), everything else fed; reads end at the given cut points."""
    got: list[Event] = []
    position = 0
    for cut in [*sorted(cuts), len(stream)]:
        while position < cut:
            target = decoder.payload_buffer()
            if target is None:
                decoder.feed(stream[position:cut])
                position = cut
            else:
                count = min(len(target), cut - position)
                target[:count] = stream[position : position + count]
                target.release()
                decoder.payload_received(count)
                position += count
            while (event := decoder.next_event()) is not None:
                got.append(normalized(event))
                if isinstance(event, Piece) and isinstance(event.data, bytearray):
                    decoder.recycle(event.data)  # the next piece may reuse it
    return got


@settings(max_examples=300)
@given(st.lists(events, max_size=8), st.data(), st.integers(1, 64))
def test_round_trip_reading_payloads_into_their_own_buffers(
    sent: list[Event], data: st.DataObject, direct_min: int
) -> None:
    stream = b"".join(frame(e) for e in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    got = decode_with_payload_buffers(stream, cuts, FrameDecoder(MAX, direct_min=direct_min))
    assert got == [normalized(e) for e in sent]


def test_a_recycled_payload_buffer_is_reused_for_the_next_piece() -> None:
    digest = "sha256:" + "a" * 64
    decoder = FrameDecoder(MAX, direct_min=16)
    first_frame = frame(Piece(digest, 0, b"x" * 100))
    decoder.feed(first_frame[:-50])
    assert decoder.next_event() is None
    target = decoder.payload_buffer()
    assert target is not None and len(target) == 50
    target[:] = b"x" * 50
    target.release()
    decoder.payload_received(50)
    first = decoder.next_event()
    assert isinstance(first, Piece) and first.data == b"x" * 100
    assert isinstance(first.data, bytearray)
    decoder.recycle(first.data)
    decoder.feed(frame(Piece(digest, 1, b"y" * 100))[:-1])
    assert decoder.next_event() is None
    decoder.feed(b"y")
    second = decoder.next_event()
    assert isinstance(second, Piece) and second.data is first.data and second.data == b"y" * 100


def test_decoders_sharing_a_pool_reuse_each_others_payload_buffers() -> None:
    digest = "sha256:" + "a" * 64
    pool = PayloadPool(buffers=4)
    one = FrameDecoder(MAX, direct_min=16, pool=pool)
    other = FrameDecoder(MAX, direct_min=16, pool=pool)
    one.feed(frame(Piece(digest, 0, b"x" * 100))[:-1])
    assert one.next_event() is None
    one.feed(b"x")
    first = one.next_event()
    assert isinstance(first, Piece) and isinstance(first.data, bytearray)
    one.recycle(first.data)
    assert pool.idle == 1
    other.feed(frame(Piece(digest, 1, b"y" * 100))[:-1])
    assert other.next_event() is None
    other.feed(b"y")
    second = other.next_event()
    # The other decoder's piece came in the first one's buffer, wholly overwritten.
    assert isinstance(second, Piece) and second.data is first.data and second.data == b"y" * 100
    assert pool.idle == 0


def test_a_payload_pool_is_bounded_and_keeps_a_buffer_once() -> None:
    pool = PayloadPool(buffers=2, max_bytes=250)
    a, b, c = bytearray(100), bytearray(100), bytearray(100)
    pool.give(a)
    pool.give(a)  # given back twice: kept once, or two payloads would share it
    assert pool.idle == 1
    pool.give(b)
    pool.give(c)  # over two buffers: the oldest goes
    assert pool.idle == 2
    assert pool.take(100) is b and pool.take(100) is c
    fresh = pool.take(100)
    assert fresh is not a and fresh == bytearray(100)
    pool.give(bytearray(300))  # larger than the byte bound: not kept
    pool.give(b"immutable")  # only a bytearray can be reused
    assert pool.idle == 0
    pool.give(a)
    pool.give(bytearray(200))  # 300 bytes kept would pass the bound: the oldest goes
    assert pool.idle == 1 and pool.take(100) is not a


@settings(max_examples=300)
@given(events, st.data())
def test_mutated_frames_with_payload_buffers_parse_or_raise_remote_protocol_error(
    event: Event, data: st.DataObject
) -> None:
    raw = mutated_frame(event, data)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    with contextlib.suppress(RemoteProtocolError):
        decode_with_payload_buffers(bytes(raw), cuts, FrameDecoder(MAX, direct_min=1))


@pytest.mark.parametrize("callee", [None, b"c" * 16])
@pytest.mark.parametrize("encrypt", [False, True])
def test_hello_round_trips(callee: bytes | None, encrypt: bool) -> None:
    dialed = "node.test:65002" if callee is not None else None
    hello = Hello(
        PROTOCOL_VERSION, b"i" * 16, b"n" * 32, b"e" * 32, b"k" * 32, callee, encrypt, dialed
    )
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(hello))
    assert decoder.next_event() == hello


def test_a_large_piece_is_admitted_before_its_buffer_is_allocated() -> None:
    asked: list[tuple[str, int, bool, int]] = []

    def admit(digest: str, index: int, pushed: bool, length: int) -> bool:
        asked.append((digest, index, pushed, length))
        raise RemoteProtocolError("unrequested")

    digest = "sha256:" + "d" * 64
    decoder = FrameDecoder(MAX, direct_min=16, admit_piece=admit)
    decoder.feed(frame(Piece(digest, 3, b"z" * 1000))[:-900])
    with pytest.raises(RemoteProtocolError, match="unrequested"):
        decoder.next_event()
    assert asked == [(digest, 3, False, 1000)] and decoder.payload_buffer() is None
