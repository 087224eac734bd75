"""Sealed frames (wire.seal) through the frame decoder, with no handshake around them."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire.strategies import events
from tests.wire.test_frames import decode_with_payload_buffers, normalized
from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import Event, FileRange, Have, Piece
from wire.frames import FrameDecoder, encode
from wire.seal import TAG, Opener, Sealer

MAX = 1 << 20
DIGEST = "sha256:" + "c" * 64


def sealed(sealer: Sealer, sent: list[Event]) -> bytes:
    return b"".join(b"".join(sealer.seal_frame(encode(e))) for e in sent)


@settings(max_examples=300)
@given(st.lists(events, max_size=8), st.data(), st.integers(1, 64))
def test_sealed_frames_round_trip_split_at_random_points(
    sent: list[Event], data: st.DataObject, direct_min: int
) -> None:
    key = os.urandom(32)
    stream = sealed(Sealer(key), sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoder = FrameDecoder(MAX, direct_min=direct_min)
    decoder.start_opening(Opener(key))
    assert decode_with_payload_buffers(stream, cuts, decoder) == [normalized(e) for e in sent]
    assert not decoder.has_partial_frame


@settings(max_examples=300)
@given(st.lists(events, min_size=1, max_size=4), st.data())
def test_a_changed_sealed_stream_yields_only_what_came_before_the_change(
    sent: list[Event], data: st.DataObject
) -> None:
    key = os.urandom(32)
    stream = bytearray(sealed(Sealer(key), sent))
    position = data.draw(st.integers(0, len(stream) - 1))
    stream[position] ^= data.draw(st.integers(1, 255))
    decoder = FrameDecoder(MAX, direct_min=data.draw(st.integers(1, 64)))
    decoder.start_opening(Opener(key))
    got: list[Event] = []
    try:
        got = decode_with_payload_buffers(bytes(stream), [], decoder)
    except RemoteProtocolError:
        pass
    else:  # a longer record length: still waiting for the rest
        assert decoder.has_partial_frame
    assert len(got) < len(sent)
    assert got == [normalized(e) for e in sent[: len(got)]]


def test_another_key_is_refused() -> None:
    decoder = FrameDecoder(MAX)
    decoder.start_opening(Opener(os.urandom(32)))
    decoder.feed(sealed(Sealer(os.urandom(32)), [Have(DIGEST, 1)]))
    with pytest.raises(RemoteProtocolError, match="authentication"):
        decoder.next_event()


NEVER = 1 << 62  # rekey_bytes for a side that does not update its key


def test_keys_are_updated_on_both_sides_at_the_same_record() -> None:
    key = os.urandom(32)
    sealer, opener = Sealer(key, rekey_bytes=1000), Opener(key, rekey_bytes=1000)
    plaintexts = [os.urandom(300) for _ in range(10)]  # updates after records 4 and 8
    records = [sealer.seal(data) for data in plaintexts]
    assert [opener.open(record) for record in records] == plaintexts
    # The sealer did update its key after record 4: an opener that keeps the first key opens
    # the records before, and not the first one after.
    stale_opener = Opener(key, rekey_bytes=NEVER)
    for record in records[:4]:
        stale_opener.open(record)
    with pytest.raises(RemoteProtocolError, match="authentication"):
        stale_opener.open(records[4])
    # The opener does update its key after record 4: the records of a sealer that keeps the
    # first key open before it, and not after.
    stale_sealer = Sealer(key, rekey_bytes=NEVER)
    stale_records = [stale_sealer.seal(data) for data in plaintexts]
    fresh_opener = Opener(key, rekey_bytes=1000)
    for record in stale_records[:4]:
        fresh_opener.open(record)
    with pytest.raises(RemoteProtocolError, match="authentication"):
        fresh_opener.open(stale_records[4])


def test_a_sealed_unrequested_piece_is_refused_from_its_header() -> None:
    key = os.urandom(32)
    refused: list[tuple[str, int, bool]] = []

    def admit(digest: str, index: int, pushed: bool, length: int) -> bool:
        refused.append((digest, index, pushed))
        raise RemoteProtocolError("unrequested")

    header_record, _ = Sealer(key).seal_frame(encode(Piece(DIGEST, 5, bytes(MAX - 1000))))
    decoder = FrameDecoder(MAX, admit_piece=admit)
    decoder.start_opening(Opener(key))
    decoder.feed(header_record)
    with pytest.raises(RemoteProtocolError, match="unrequested"):
        decoder.next_event()
    assert refused == [(DIGEST, 5, False)] and decoder.payload_buffer() is None


def test_sealing_needs_the_bytes_and_a_full_key() -> None:
    with pytest.raises(LocalProtocolError):
        Sealer(b"short")
    with pytest.raises(LocalProtocolError, match="FileRange"):
        Sealer(os.urandom(32)).seal_frame(encode(Piece(DIGEST, 0, FileRange(0, 0, 10))))
    assert len(Sealer(os.urandom(32)).seal(b"abc")) == 3 + TAG


def test_sealing_starts_between_frames_and_once() -> None:
    frame = b"".join(b for b in encode(Have(DIGEST, 1)) if isinstance(b, bytes))
    decoder = FrameDecoder(MAX)
    decoder.feed(frame[:-1])  # the prefix is read, the header is not whole
    assert decoder.next_event() is None
    with pytest.raises(LocalProtocolError):
        decoder.start_opening(Opener(os.urandom(32)))
    fresh = FrameDecoder(MAX)
    fresh.start_opening(Opener(os.urandom(32)))
    with pytest.raises(LocalProtocolError):
        fresh.start_opening(Opener(os.urandom(32)))
