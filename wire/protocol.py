"""The peer protocol as a pure state machine (no sockets, no clock, no randomness).

    proto = PeerProtocol(our_id, token, nonce=os.urandom(32))
    send(proto.initiate())                 # our Hello
    proto.receive_data(bytes_from_peer)
    event = proto.next_event()             # their Hello -> send(proto.send(proto.proof()))
                                           # their Proof -> verified; the connection is OPEN
    ... then Want / PieceMeta / Bitfield / Have / Request / Piece / ... both ways.

Handshake: each side proves it knows the cluster token with an HMAC over both nonces and its
own node id; the token itself never crosses the wire. An open cluster (no token) uses the empty
key, so a node with a token and a node without one refuse each other.

Rules enforced here: message order during the handshake, the frame size limit, at most
`max_requests` requests outstanding in each direction, and no unrequested pieces. Every
Request is answered by exactly one Piece or Reject, also after a Cancel (which is a hint).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from typing import Final

from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import (
    PROTOCOL_VERSION,
    Cancel,
    Error,
    Event,
    FileRange,
    Hello,
    Piece,
    Proof,
    Reject,
    Request,
)
from wire.frames import FrameDecoder, encode

DEFAULT_MAX_FRAME = 16 * 1024 * 1024 + 64 * 1024
DEFAULT_MAX_REQUESTS = 64
_PROOF_LABEL = b"pollen-proof-v1"


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA  # feed more bytes
CLOSED: Final = _Sentinel.CLOSED  # the peer closed the connection cleanly (between frames)


class State(enum.Enum):
    HELLO = "awaiting the peer's Hello"
    PROOF = "awaiting the peer's Proof"
    OPEN = "open"
    CLOSED = "closed"


def token_proof(token: bytes | None, their_nonce: bytes, our_nonce: bytes, our_id: bytes) -> bytes:
    """The MAC a node sends to prove the token; the order binds it to this connection."""
    return hmac.new(
        token or b"", _PROOF_LABEL + their_nonce + our_nonce + our_id, hashlib.sha256
    ).digest()


class PeerProtocol:
    def __init__(
        self,
        node_id: bytes,
        token: bytes | None,
        *,
        nonce: bytes,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_requests: int = DEFAULT_MAX_REQUESTS,
    ) -> None:
        if len(node_id) != 16 or len(nonce) != 32:
            raise LocalProtocolError("node id must be 16 bytes and nonce 32 bytes")
        self.node_id = node_id
        self._token = token
        self._nonce = nonce
        self.max_requests = max_requests
        self.state = State.HELLO
        self.peer_id: bytes | None = None
        self._peer_nonce: bytes | None = None
        self._decoder = FrameDecoder(max_frame)
        self._eof = False
        self._sent_hello = False
        self._sent_proof = False
        # (digest, index) we asked for / they asked us for, not yet answered or cancelled.
        self.our_requests: set[tuple[str, int]] = set()
        self.their_requests: set[tuple[str, int]] = set()

    # ---- sending ---------------------------------------------------------------------

    def initiate(self) -> bytes:
        """Our Hello; send it first, on both sides of a new connection."""
        if self._sent_hello:
            raise LocalProtocolError("Hello already sent")
        self._sent_hello = True
        return _join(encode(Hello(PROTOCOL_VERSION, self.node_id, self._nonce)))

    def proof(self) -> Proof:
        """Our Proof, once the peer's Hello (with its nonce) has been received."""
        if self._peer_nonce is None:
            raise LocalProtocolError("no Hello from the peer yet")
        return Proof(token_proof(self._token, self._peer_nonce, self._nonce, self.node_id))

    def send(self, event: Event) -> bytes:
        """Bytes for `event` (for Piece, use `send_buffers` to avoid copying the payload)."""
        return _join(self.send_buffers(event))

    def send_buffers(self, event: Event) -> list[bytes | memoryview | FileRange]:
        """Buffers to send in order for `event`.

        Raises:
            LocalProtocolError: the event is not allowed now (handshake order, request limit,
                answering a request the peer did not make).
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection closed")
        if isinstance(event, Hello):
            raise LocalProtocolError("use initiate() for Hello")
        if isinstance(event, Proof):
            if self._sent_proof or self._peer_nonce is None:
                raise LocalProtocolError("Proof out of order")
            self._sent_proof = True
        elif isinstance(event, Error):
            self.state = State.CLOSED
        elif self.state is not State.OPEN or not self._sent_proof:
            raise LocalProtocolError(f"cannot send {type(event).__name__} before the handshake")
        elif isinstance(event, Request):
            key = (event.digest, event.index)
            if key in self.our_requests:
                raise LocalProtocolError(f"piece {key} already requested")
            if len(self.our_requests) >= self.max_requests:
                raise LocalProtocolError(f"more than {self.max_requests} requests outstanding")
            self.our_requests.add(key)
        elif isinstance(event, Cancel):
            # A hint: the request stays outstanding until the peer answers it (with the piece,
            # or a Reject), so both sides always agree on what is in flight. Cancelling what
            # was answered meanwhile sends nothing.
            if (event.digest, event.index) not in self.our_requests:
                return []
        elif isinstance(event, Piece | Reject):
            key = (event.digest, event.index)
            if key not in self.their_requests:
                raise LocalProtocolError(f"answering piece {key} that was not requested")
            self.their_requests.discard(key)
        return encode(event)

    # ---- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; b"" means the peer closed its side."""
        if not data:
            self._eof = True
        else:
            self._decoder.feed(data)

    def payload_buffer(self) -> memoryview | None:
        """Where the rest of a large piece goes: read the socket straight into it, then call
        `payload_received`. None means: use `receive_data`."""
        return self._decoder.payload_buffer()

    def payload_received(self, count: int) -> None:
        """`count` bytes were written into the start of `payload_buffer()`."""
        self._decoder.payload_received(count)

    def recycle(self, payload: bytearray) -> None:
        """Give back a received Piece's bytearray once stored, so the next piece reuses it."""
        self._decoder.recycle(payload)

    def next_event(self) -> Event | _Sentinel:
        """The next event, NEED_DATA, or CLOSED.

        Raises:
            RemoteProtocolError: anything the peer sent against the rules; close the connection.
        """
        if self.state is State.CLOSED:
            return CLOSED
        event = self._decoder.next_event()
        if event is None:
            if self._eof:
                self.state = State.CLOSED
                if self._decoder.has_partial_frame:
                    raise RemoteProtocolError("connection closed in the middle of a frame")
                return CLOSED
            return NEED_DATA
        self._check(event)
        return event

    def _check(self, event: Event) -> None:
        if isinstance(event, Error):
            self.state = State.CLOSED
            return
        if self.state is State.HELLO:
            if not isinstance(event, Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(event).__name__}")
            if event.version != PROTOCOL_VERSION:
                raise RemoteProtocolError(f"protocol version {event.version} is not ours")
            if event.node_id == self.node_id:
                raise RemoteProtocolError("connected to ourselves")
            self.peer_id = event.node_id
            self._peer_nonce = event.nonce
            self.state = State.PROOF
        elif self.state is State.PROOF:
            if not isinstance(event, Proof):
                raise RemoteProtocolError(f"expected Proof, got {type(event).__name__}")
            assert self._peer_nonce is not None and self.peer_id is not None
            expected = token_proof(self._token, self._nonce, self._peer_nonce, self.peer_id)
            if not hmac.compare_digest(expected, event.mac):
                raise RemoteProtocolError("cluster token proof failed: refused")
            self.state = State.OPEN
        elif isinstance(event, Hello | Proof):
            raise RemoteProtocolError(f"{type(event).__name__} after the handshake")
        elif isinstance(event, Request):
            key = (event.digest, event.index)
            if key in self.their_requests:
                raise RemoteProtocolError(f"piece {key} requested twice")
            if len(self.their_requests) >= self.max_requests:
                raise RemoteProtocolError(f"more than {self.max_requests} requests outstanding")
            self.their_requests.add(key)
        elif isinstance(event, Piece | Reject):
            key = (event.digest, event.index)
            if key not in self.our_requests:
                raise RemoteProtocolError(f"unrequested piece {key}")
            self.our_requests.discard(key)
        # A Cancel for a request already answered is harmless: the caller answers a still
        # pending one with Reject("cancelled").


def _join(buffers: list[bytes | memoryview | FileRange]) -> bytes:
    if any(isinstance(b, FileRange) for b in buffers):
        raise LocalProtocolError("a FileRange payload must go through send_buffers")
    return b"".join(b for b in buffers if not isinstance(b, FileRange))
