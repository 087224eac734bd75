from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire.strategies import events
from wire.errors import RemoteProtocolError
from wire.events import Event, Hello, Piece, Proof
from wire.frames import PREFIX, FrameDecoder, encode

MAX = 1 << 20


def frame(event: Event) -> bytes:
    return b"".join(encode(event))


def normalized(event: Event) -> Event:
    # A Piece payload comes back as bytes whatever buffer type it was sent from.
    if isinstance(event, Piece):
        return Piece(event.digest, event.index, bytes(event.data))
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


@settings(max_examples=300)
@given(events, st.data())
def test_mutated_frames_parse_or_raise_remote_protocol_error(
    event: Event, data: st.DataObject
) -> None:
    raw = bytearray(frame(event))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
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
        Hello(1, b"x" * 15, b"n" * 32),  # short node id
        Proof(b"m" * 31),
    ],
)
def test_wrong_field_sizes_are_refused(event: Event) -> None:
    decoder = FrameDecoder(MAX)
    decoder.feed(frame(event))
    with pytest.raises(RemoteProtocolError, match="bad field"):
        decoder.next_event()


def test_payload_only_on_pieces() -> None:
    raw = bytearray(frame(Proof(b"m" * 32)))
    header_len = PREFIX.unpack_from(raw)[1]
    raw[: PREFIX.size] = PREFIX.pack(header_len + 3, header_len)
    decoder = FrameDecoder(MAX)
    decoder.feed(bytes(raw) + b"abc")
    with pytest.raises(RemoteProtocolError, match="payload"):
        decoder.next_event()
