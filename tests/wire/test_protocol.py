from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import Cancel, Event, Have, Hello, Piece, Proof, Reject, Request, Want
from wire.frames import encode
from wire.protocol import CLOSED, NEED_DATA, PeerProtocol, State

DIGEST = "sha256:" + "ab" * 32


class Pair:
    """Two endpoints wired to each other with no network (h11's ConnectionPair)."""

    def __init__(self, token_a: bytes | None = b"t", token_b: bytes | None = b"t") -> None:
        self.a = PeerProtocol(os.urandom(16), token_a, nonce=os.urandom(32), max_requests=4)
        self.b = PeerProtocol(os.urandom(16), token_b, nonce=os.urandom(32), max_requests=4)

    def events(self, receiver: PeerProtocol) -> list[Event]:
        out = []
        while True:
            event = receiver.next_event()
            if event is NEED_DATA or event is CLOSED:
                return out
            out.append(event)  # type: ignore[arg-type]

    def handshake(self) -> None:
        self.b.receive_data(self.a.initiate())
        self.a.receive_data(self.b.initiate())
        assert [type(e) for e in self.events(self.a)] == [Hello]
        assert [type(e) for e in self.events(self.b)] == [Hello]
        self.b.receive_data(self.a.send(self.a.proof()))
        self.a.receive_data(self.b.send(self.b.proof()))
        assert [type(e) for e in self.events(self.a)] == [Proof]
        assert [type(e) for e in self.events(self.b)] == [Proof]

    def deliver(self, sender: PeerProtocol, receiver: PeerProtocol, event: Event) -> list[Event]:
        receiver.receive_data(sender.send(event))
        return self.events(receiver)


def test_handshake_with_the_same_token_opens_both_sides() -> None:
    pair = Pair()
    pair.handshake()
    assert pair.a.state is State.OPEN and pair.b.state is State.OPEN
    assert pair.a.peer_id == pair.b.node_id


@pytest.mark.parametrize(("a", "b"), [(b"t", b"other"), (b"t", None), (None, b"t")])
def test_a_different_token_is_refused(a: bytes | None, b: bytes | None) -> None:
    pair = Pair(a, b)
    pair.b.receive_data(pair.a.initiate())
    pair.a.receive_data(pair.b.initiate())
    pair.events(pair.a)
    pair.events(pair.b)
    pair.b.receive_data(pair.a.send(pair.a.proof()))
    with pytest.raises(RemoteProtocolError, match="token proof failed"):
        pair.events(pair.b)


def test_open_cluster_without_tokens() -> None:
    Pair(None, None).handshake()


def test_nothing_but_the_handshake_before_it_completes() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.a.send(Have(DIGEST, 1))
    # A peer that skips its proof and asks for content is cut off.
    pair.b.receive_data(pair.a.initiate())
    pair.events(pair.b)
    pair.b.receive_data(b"".join(encode(Want(DIGEST, None, "repo", None))))
    with pytest.raises(RemoteProtocolError, match="expected Proof"):
        pair.events(pair.b)


def test_requests_are_answered_once_and_bounded() -> None:
    pair = Pair()
    pair.handshake()
    for i in range(4):
        assert pair.deliver(pair.a, pair.b, Request(DIGEST, i)) == [Request(DIGEST, i)]
    with pytest.raises(LocalProtocolError, match="outstanding"):
        pair.a.send(Request(DIGEST, 99))
    # Pieces and rejects settle requests; a cancel does not until it is answered.
    assert pair.deliver(pair.b, pair.a, Piece(DIGEST, 0, b"data")) == [Piece(DIGEST, 0, b"data")]
    pair.deliver(pair.a, pair.b, Cancel(DIGEST, 1))
    assert len(pair.a.our_requests) == 3
    pair.deliver(pair.b, pair.a, Reject(DIGEST, 1, "cancelled"))
    assert pair.a.our_requests == {(DIGEST, 2), (DIGEST, 3)}
    with pytest.raises(LocalProtocolError, match="not requested"):
        pair.b.send(Piece(DIGEST, 0, b"again"))
    assert pair.a.send(Cancel(DIGEST, 0)) == b""  # already answered: nothing to send


def test_unrequested_piece_and_request_flood_are_remote_errors() -> None:
    pair = Pair()
    pair.handshake()
    pair.a.receive_data(b"".join(encode(Piece(DIGEST, 7, b"spam"))))
    with pytest.raises(RemoteProtocolError, match="unrequested"):
        pair.events(pair.a)
    flood = Pair()
    flood.handshake()
    flood.b.receive_data(b"".join(b"".join(encode(Request(DIGEST, i))) for i in range(5)))
    with pytest.raises(RemoteProtocolError, match="outstanding"):
        flood.events(flood.b)


def test_eof_mid_frame_is_an_error_and_between_frames_is_closed() -> None:
    pair = Pair()
    hello = pair.a.initiate()
    pair.b.receive_data(hello[:-1])
    pair.b.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        pair.b.next_event()
    clean = Pair()
    clean.b.receive_data(clean.a.initiate())
    clean.b.receive_data(b"")
    assert isinstance(clean.b.next_event(), Hello)
    assert clean.b.next_event() is CLOSED


@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_after_hello_parse_or_raise_remote_protocol_error(data: bytes, eof: bool) -> None:
    pair = Pair()
    pair.b.receive_data(pair.a.initiate())
    pair.b.receive_data(data)
    if eof:
        pair.b.receive_data(b"")
    try:
        for _ in range(100):
            if pair.b.next_event() in (NEED_DATA, CLOSED):
                break
    except RemoteProtocolError:
        pass
