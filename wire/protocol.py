"""The peer protocol as a pure state machine (no sockets, no clock, no randomness).

    proto = PeerProtocol(identity, token, role=Role.INITIATOR, peer_id=their_id,
                         nonce=os.urandom(32), ephemeral=os.urandom(32))

    initiator (connected)               responder (accepted)
    send(proto.hello())      Hello ->   next_event() -> Hello
    next_event() -> Hello    <- Hello   send(proto.hello())
    send(proto.proof())      Proof ->   next_event() -> Proof, verified: OPEN
    next_event() -> Proof,   <- Proof   send(proto.proof())
        verified: OPEN
    ... then Want / PieceMeta / Bitfield / Have / Request / Piece / ... both ways.

Handshake: a pre-shared-key handshake with ephemeral and identity Diffie-Hellman exchanges,
in the manner of Noise's KK pattern with a psk (and TLS 1.3's psk_dhe_ke mode). The transcript
is both Hellos in role order (node ids, nonces, ephemeral and identity X25519 keys, the node
the initiator asked for, the encryption setting). The secret is HKDF-Extract(salt=cluster
token, ee || es || se): ee the two ephemeral keys' shared secret, es the initiator's ephemeral
with the responder's identity, se the initiator's identity with the responder's ephemeral.
Each proof and each direction's key is HKDF-Expand of it with its own label and the
transcript's hash. A node id must be the hash of the identity key beside it
(`wire/identity.py`). So:

- an open link proves the peer holds the private key of the node id it named: a member with
  the token cannot link under another member's id (it would take the access grants, the Wants
  with clients' credentials and the bans meant for that member);
- the initiator's Hello names the address it dialled, and the responder refuses an address not
  its own: a member that has itself dialled in another's place (gossip is not signed) cannot
  pass the link on to that member and read or add frames in the middle (without encryption
  frames after the handshake carry no MAC);

- a proof is valid only for its role and this one transcript: it cannot be replayed on
  another connection, reflected back to its sender, or relayed to a node that did not
  answer this Hello with its own fresh nonce and key;
- the initiator proves first, and only to the node it named (`peer_id`); the responder
  verifies that proof before it sends its own, so a peer without the token never gets a
  proof out of a responder to carry elsewhere;
- the session keys need the ephemeral private keys too: recording a connection and learning
  the token later does not decrypt it (forward secrecy).

An open cluster (no token) uses an empty salt, so a node with a token and a node without one
refuse each other; its keys still stop passive listening, not an active man in the middle.
What no handshake stops: a relay on the path between an initiator and the node it meant to
reach may pass their bytes on unchanged. Without encryption it can then read and alter the
frames after the handshake; with it (`encrypt=True`, both sides), it can do neither.

Rules enforced here: message order during the handshake, frames of at most
HANDSHAKE_MAX_FRAME until the peer has proved the token (so nothing an unauthenticated peer
states makes us allocate), then the frame size limit, at most `max_requests` requests
outstanding in each direction, and no unrequested pieces (refused from the header, before the
payload's buffer exists). Every Request is answered by exactly one Piece or Reject, also after
a Cancel (which is a hint).

Pushes: an `Invite(digest, count)` lets the peer send us `count` more pieces of `digest`
unasked, each a Piece marked `pushed` (never the answer to a Request, never cancelled). Both
ends count the credit, the inviter when it sends the Invite and the pusher when it reads it, so
the pusher's count is never above the inviter's and a push in flight always finds room; one
beyond the credit is refused like an unrequested piece, from its header. What a member can
make us receive unasked is therefore what we invited: at most MAX_PIECES pieces per digest in
credit at once, for at most MAX_INVITED digests per link (beyond that the oldest credit is
forgotten: by the pusher, harmlessly; by the inviter, so that a push on so old an invitation
would be refused and close the link).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pieces.layout import MAX_PIECE_SIZE, MAX_PIECES
from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import (
    PROTOCOL_VERSION,
    Cancel,
    Error,
    Event,
    FileRange,
    Hello,
    Invite,
    Piece,
    Proof,
    Reject,
    Request,
)
from wire.frames import FrameDecoder, PayloadPool, encode
from wire.identity import NodeIdentity, node_id_of
from wire.seal import Opener, Sealer

DEFAULT_MAX_FRAME = MAX_PIECE_SIZE + 64 * 1024  # a whole piece and its header
DEFAULT_MAX_REQUESTS = 64
# Digests with push credit on one link, each way (see the module doc): a node fetches far fewer
# blobs at once from one owner.
MAX_INVITED = 1024
# Largest frame before the peer has proved the token: a Hello, a Proof, or an Error with its
# message (500 characters of up to 4 UTF-8 bytes) fit with room.
HANDSHAKE_MAX_FRAME = 4096
_TRANSCRIPT = b"pollen v2 handshake transcript"
_INITIATOR_PROOF = b"pollen v2 initiator proof"
_RESPONDER_PROOF = b"pollen v2 responder proof"
_INITIATOR_KEY = b"pollen v2 initiator key"
_RESPONDER_KEY = b"pollen v2 responder key"


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    CLOSED = "CLOSED"


NEED_DATA: Final = _Sentinel.NEED_DATA  # feed more bytes
CLOSED: Final = _Sentinel.CLOSED  # the peer closed the connection cleanly (between frames)


class Role(enum.Enum):
    INITIATOR = "initiator"  # this side connected to the peer
    RESPONDER = "responder"  # this side accepted the peer's connection


class State(enum.Enum):
    HELLO = "awaiting the peer's Hello"
    PROOF = "awaiting the peer's Proof"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class _Secrets:
    """What the handshake derives once both Hellos are known, from this side's view."""

    our_proof: bytes
    their_proof: bytes
    key_out: bytes
    key_in: bytes


def _derive(token: bytes | None, shared: bytes, label: bytes, transcript: bytes) -> bytes:
    hkdf = HKDF(hashes.SHA256(), 32, salt=token or None, info=label + transcript)
    return hkdf.derive(shared)


def _handshake_secrets(
    role: Role, token: bytes | None, shared: bytes, initiator: Hello, responder: Hello
) -> _Secrets:
    """Proofs and keys for `role`, bound to the token, the X25519 shared secrets (ee, es, se)
    and the transcript (both Hellos, the initiator's first)."""
    transcript = hashlib.sha256(
        b"".join([_TRANSCRIPT, _frame(initiator), _frame(responder)])
    ).digest()
    derived = {
        label: _derive(token, shared, label, transcript)
        for label in (_INITIATOR_PROOF, _RESPONDER_PROOF, _INITIATOR_KEY, _RESPONDER_KEY)
    }
    if role is Role.INITIATOR:
        return _Secrets(
            derived[_INITIATOR_PROOF],
            derived[_RESPONDER_PROOF],
            derived[_INITIATOR_KEY],
            derived[_RESPONDER_KEY],
        )
    return _Secrets(
        derived[_RESPONDER_PROOF],
        derived[_INITIATOR_PROOF],
        derived[_RESPONDER_KEY],
        derived[_INITIATOR_KEY],
    )


class PeerProtocol:
    def __init__(
        self,
        identity: NodeIdentity,
        token: bytes | None,
        *,
        role: Role,
        address: str,
        nonce: bytes,
        ephemeral: bytes,
        peer_id: bytes | None = None,
        encrypt: bool = False,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        pool: PayloadPool | None = None,
    ) -> None:
        """One end of a connection.

        Args:
            identity: this node's identity key pair (its node id is the key's).
            role: INITIATOR on the side that connected, RESPONDER on the side that accepted.
            address: the initiator's: the address it connected to (`wire.names.address_text`),
                named in its Hello; the responder's: its own address, as the cluster knows it
                (a Hello that names another is refused: it was dialled at a member that passes
                the link through, in this node's place).
            nonce, ephemeral: 32 fresh random bytes each, per connection (the X25519 private
                key is made from `ephemeral`).
            peer_id: the node the initiator means to reach (required for it, and only for it):
                it is named in our Hello and any other answering node is refused.
            encrypt: seal every frame after the handshake; the peer must do the same.
            pool: where received piece payloads are reused from (a node's links share one;
                by default the connection keeps its own, of two buffers).

        Raises:
            LocalProtocolError: wrong sizes, or `peer_id` given to the wrong role.
        """
        if len(nonce) != 32 or len(ephemeral) != 32:
            raise LocalProtocolError("nonce and ephemeral must be 32 bytes")
        if (role is Role.INITIATOR) != (peer_id is not None) or (
            peer_id is not None and len(peer_id) != 16
        ):
            raise LocalProtocolError("the initiator, and only it, names the 16-byte peer id")
        self.node_id = identity.node_id
        self._identity = identity
        self.role = role
        self.encrypt = encrypt
        self.max_frame = max_frame
        self.max_requests = max_requests
        self.state = State.HELLO
        self.peer_id: bytes | None = None  # set from the peer's Hello; trusted once OPEN
        self._token = token
        self._expected_peer = peer_id
        self._address = address
        self._private = X25519PrivateKey.from_private_bytes(ephemeral)
        self._hello = Hello(
            PROTOCOL_VERSION,
            identity.node_id,
            nonce,
            self._private.public_key().public_bytes_raw(),
            identity.public,
            peer_id,
            encrypt,
            address if role is Role.INITIATOR else None,
        )
        self._secrets: _Secrets | None = None
        self._sealer: Sealer | None = None
        # Before the peer has proved the token, only handshake-sized frames: a stranger's
        # stated sizes never reach an allocation.
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME, admit_piece=self._admit_piece, pool=pool)
        # The length a piece must have, where its blob's layout is known here (None: not
        # known, and only `max_frame` bounds it); set by the swarm that owns the link.
        self.piece_length: Callable[[str, int], int | None] | None = None
        self._eof = False
        self._sent_hello = False
        self._sent_proof = False
        # (digest, index) we asked for / they asked us for, not yet answered or cancelled.
        self.our_requests: set[tuple[str, int]] = set()
        self.their_requests: set[tuple[str, int]] = set()
        # Push credit, per digest: pieces we invited the peer to push to us, not yet come;
        # pieces the peer invited us to push, not yet sent.
        self.invited: dict[str, int] = {}
        self.may_push: dict[str, int] = {}

    # ---- the handshake -------------------------------------------------------------------

    def hello(self) -> bytes:
        """Our Hello: the initiator sends it first, the responder once the initiator's is in.

        Raises:
            LocalProtocolError: out of order, or sent twice.
        """
        if self._sent_hello or self.state is State.CLOSED:
            raise LocalProtocolError("Hello already sent, or the connection is closed")
        if self.role is Role.RESPONDER and self._secrets is None:
            raise LocalProtocolError("the responder answers the initiator's Hello")
        self._sent_hello = True
        return _frame(self._hello)

    def proof(self) -> bytes:
        """Our Proof. The initiator sends it once the responder's Hello is in; the responder
        only after the initiator's Proof was verified (the connection is then OPEN). With
        encryption, every frame we send after this one is sealed.

        Raises:
            LocalProtocolError: out of order, or sent twice.
        """
        if self._sent_proof or self.state is State.CLOSED:
            raise LocalProtocolError("Proof already sent, or the connection is closed")
        if self._secrets is None or not self._sent_hello:
            raise LocalProtocolError("Proof before both Hellos")
        if self.role is Role.RESPONDER and self.state is not State.OPEN:
            # The rule that keeps a responder from being an oracle for strangers.
            raise LocalProtocolError("the responder proves only after the initiator has")
        self._sent_proof = True
        frame = _frame(Proof(self._secrets.our_proof))
        if self.encrypt:
            self._sealer = Sealer(self._secrets.key_out)
        return frame

    # ---- sending ---------------------------------------------------------------------

    def send(self, event: Event) -> bytes:
        """Bytes for `event` (for Piece, use `send_buffers` to avoid copying the payload)."""
        return _join(self.send_buffers(event))

    def send_buffers(self, event: Event) -> list[bytes | memoryview | FileRange]:
        """Buffers to send in order for `event`; send every one of them, in order (sealed
        frames are numbered).

        Raises:
            LocalProtocolError: the event is not allowed now (handshake order, request limit,
                answering a request the peer did not make, a FileRange to seal).
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection closed")
        if isinstance(event, Hello | Proof):
            raise LocalProtocolError("use hello() and proof() for the handshake")
        if isinstance(event, Error):
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
        elif isinstance(event, Invite):
            total = self.invited.get(event.digest, 0) + event.count
            if event.count < 1 or total > MAX_PIECES:
                raise LocalProtocolError(f"push credit of {total} pieces over {MAX_PIECES}")
            _credit(self.invited, event.digest, total)
        elif isinstance(event, Piece | Reject):
            key = (event.digest, event.index)
            sealed_file = isinstance(event, Piece) and isinstance(event.data, FileRange)
            if sealed_file and self._sealer is not None:
                raise LocalProtocolError("a FileRange cannot be sealed: read the piece first")
            if isinstance(event, Piece) and event.pushed:
                if not _spend(self.may_push, event.digest):
                    raise LocalProtocolError(f"pushing piece {key} uninvited")
            elif key not in self.their_requests:
                raise LocalProtocolError(f"answering piece {key} that was not requested")
            else:
                self.their_requests.discard(key)
        buffers = encode(event)
        if self._sealer is not None:
            return list(self._sealer.seal_frame(buffers))
        return buffers

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

    def recycle(self, payload: bytes | bytearray | memoryview) -> None:
        """Give back a received Piece's data once stored, so the next piece reuses it."""
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
        elif self.state is State.HELLO:
            if not isinstance(event, Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(event).__name__}")
            self._on_hello(event)
        elif self.state is State.PROOF:
            if not isinstance(event, Proof):
                raise RemoteProtocolError(f"expected Proof, got {type(event).__name__}")
            self._on_proof(event)
        elif isinstance(event, Hello | Proof):
            raise RemoteProtocolError(f"{type(event).__name__} after the handshake")
        elif isinstance(event, Request):
            key = (event.digest, event.index)
            if key in self.their_requests:
                raise RemoteProtocolError(f"piece {key} requested twice")
            if len(self.their_requests) >= self.max_requests:
                raise RemoteProtocolError(f"more than {self.max_requests} requests outstanding")
            self.their_requests.add(key)
        elif isinstance(event, Invite):
            total = self.may_push.get(event.digest, 0) + event.count
            if total > MAX_PIECES:
                raise RemoteProtocolError(f"push credit of {total} pieces over {MAX_PIECES}")
            _credit(self.may_push, event.digest, total)
        elif isinstance(event, Piece) and event.pushed:
            if not _spend(self.invited, event.digest):
                raise RemoteProtocolError(f"unrequested piece {(event.digest, event.index)}")
        elif isinstance(event, Piece | Reject):
            key = (event.digest, event.index)
            if key not in self.our_requests:
                raise RemoteProtocolError(f"unrequested piece {key}")
            self.our_requests.discard(key)
        # A Cancel for a request already answered is harmless: the caller answers a still
        # pending one with Reject("cancelled").

    def _on_hello(self, hello: Hello) -> None:
        if hello.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"protocol version {hello.version} is not ours")
        if hello.node_id == self.node_id:
            raise RemoteProtocolError("connected to ourselves")
        if self.role is Role.INITIATOR:
            if hello.node_id != self._expected_peer:
                assert self._expected_peer is not None
                raise RemoteProtocolError(
                    f"node {hello.node_id.hex()[:12]} answered, "
                    f"not {self._expected_peer.hex()[:12]}"
                )
            if hello.callee is not None or hello.dialed is not None:
                raise RemoteProtocolError("the responder's Hello names a callee or an address")
        elif hello.callee != self.node_id:
            raise RemoteProtocolError(
                "the peer is looking for another node"
                if hello.callee is not None
                else "the initiator's Hello names no callee"
            )
        elif hello.dialed != self._address:
            raise RemoteProtocolError(
                f"the initiator dialled {hello.dialed}, not this node's address {self._address}"
                ": another host passes its link on"
            )
        if hello.encrypt != self.encrypt:
            raise RemoteProtocolError(
                "peer encryption mismatch: this node has --peer-encryption "
                f"{'on' if self.encrypt else 'off'}, the peer has it "
                f"{'on' if hello.encrypt else 'off'}; every node must use the same setting"
            )
        if node_id_of(hello.identity) != hello.node_id:
            raise RemoteProtocolError("the peer's node id is not its identity key's")
        their_ephemeral = X25519PublicKey.from_public_bytes(hello.ephemeral)
        their_identity = X25519PublicKey.from_public_bytes(hello.identity)
        ours = self._identity.private
        try:
            ee = self._private.exchange(their_ephemeral)
            if self.role is Role.INITIATOR:
                es, se = self._private.exchange(their_identity), ours.exchange(their_ephemeral)
            else:
                es, se = ours.exchange(their_ephemeral), self._private.exchange(their_identity)
        except ValueError:  # a low-order point: the shared secret would be all zeros
            raise RemoteProtocolError("unusable ephemeral or identity key in Hello") from None
        shared = ee + es + se
        if self.role is Role.INITIATOR:
            self._secrets = _handshake_secrets(self.role, self._token, shared, self._hello, hello)
        else:
            self._secrets = _handshake_secrets(self.role, self._token, shared, hello, self._hello)
        self.peer_id = hello.node_id
        self.state = State.PROOF

    def _on_proof(self, proof: Proof) -> None:
        # Each side's proof follows the other's Hello; the initiator's comes first.
        if self.role is Role.INITIATOR and not self._sent_proof:
            raise RemoteProtocolError("the responder sent its Proof before ours")
        if self.role is Role.RESPONDER and not self._sent_hello:
            raise RemoteProtocolError("Proof before our Hello")
        assert self._secrets is not None
        if not hmac.compare_digest(self._secrets.their_proof, proof.mac):
            raise RemoteProtocolError("cluster token proof failed: refused")
        self.state = State.OPEN
        self._decoder.max_frame = self.max_frame
        if self.encrypt:
            self._decoder.start_opening(Opener(self._secrets.key_in))

    def _admit_piece(self, digest: str, index: int, pushed: bool, length: int) -> bool:
        """Called by the decoder with a Piece's header and its payload's length, before it
        allocates the payload (the credit a push takes is spent when the whole Piece is
        checked, in `_check`): False for a length other than the piece has here, whose
        payload is then read past, not kept (a node that cuts the blob otherwise sends such
        pieces honestly; the Piece comes with no data, and the fetch asks elsewhere)."""
        if self.state is not State.OPEN:
            raise RemoteProtocolError("Piece before the handshake")
        invited = pushed and self.invited.get(digest, 0) > 0
        requested = not pushed and (digest, index) in self.our_requests
        if not (invited or requested):
            raise RemoteProtocolError(f"unrequested piece {(digest, index)}")
        # A member asked for a 64 KiB piece stated 16 MiB and sent 10 bytes: the buffer was
        # set aside for as long as the link lived, one per link (a helper's probe, 2026-12-07).
        expected = None if self.piece_length is None else self.piece_length(digest, index)
        return expected is None or length == expected


def _credit(credits: dict[str, int], digest: str, total: int) -> None:
    """Set `digest`'s push credit to `total`, as its newest; past MAX_INVITED digests the
    oldest credit is forgotten."""
    credits.pop(digest, None)
    credits[digest] = total
    while len(credits) > MAX_INVITED:
        del credits[next(iter(credits))]


def _spend(credits: dict[str, int], digest: str) -> bool:
    """Take one piece of `digest`'s push credit; False: there is none."""
    left = credits.get(digest, 0)
    if left <= 0:
        return False
    if left == 1:
        del credits[digest]
    else:
        credits[digest] = left - 1
    return True


def _frame(event: Hello | Proof) -> bytes:
    return b"".join(b for b in encode(event) if not isinstance(b, FileRange))


def _join(buffers: list[bytes | memoryview | FileRange]) -> bytes:
    if any(isinstance(b, FileRange) for b in buffers):
        raise LocalProtocolError("a FileRange payload must go through send_buffers")
    return b"".join(b for b in buffers if not isinstance(b, FileRange))
