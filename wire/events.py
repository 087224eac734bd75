"""The messages of the peer protocol, as frozen events.

Every event has a message type (its `TYPE`) and fields that map one to one onto the msgpack
header of its frame. `Piece` alone carries a payload: raw bytes after the header, never packed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

# 2: a role-bound handshake (the initiator proves first, over both Hellos), an X25519
# exchange for session keys, and optional sealing of every frame after it.
# 3: the owner's PieceMeta gives hashes, its Have/Bitfield offers pieces; 4: Warm/Warmed
# (preheat), sha512 digests in every frame that names a blob, members' declared capacity.
# 5: Want's held_only; 6: proven node ids and the dialled address; 7: Inflow, which a version
# 6 node would close the link for; 8: Invite and pushed pieces (an owner sends its first copies
# unasked to a node that invited them); 9: gossip datagrams carry their sending time (older
# nodes drop them, and they drop the older nodes'), origins and Authorization checked.
PROTOCOL_VERSION = 9
# A Refused header: the answer to a held-only Want when the blob is neither held nor being
# fetched from the upstream by the node asked.
NOT_HELD_HEADER = "x-pollen-not-held"


@dataclass(frozen=True, slots=True)
class Hello:
    """Who the sender is, fresh randomness for this connection, and what both must agree on.

    The initiator (the side that connected) sends its Hello first and names the node it means
    to reach (`callee`); the responder answers with its own, `callee` None. The two Hellos,
    in that order, are the transcript the proofs and the session keys are bound to.
    """

    TYPE: ClassVar[int] = 1
    version: int
    node_id: bytes  # 16 bytes: the hash of `identity` (wire/identity.py)
    nonce: bytes  # 32 bytes, fresh per connection
    ephemeral: bytes  # 32 bytes: an X25519 public key, fresh per connection
    identity: bytes  # 32 bytes: the sender's X25519 identity public key, the same every link
    callee: bytes | None  # 16 bytes from the initiator; None from the responder
    encrypt: bool  # frames after the handshake are sealed (--peer-encryption)
    # The initiator's: the address it connected to (`address_text`), which the responder
    # must know as its own; None from the responder. A member that is dialled in another's
    # place cannot pass the link through to it: the Hello says whom the initiator dialled.
    dialed: str | None


@dataclass(frozen=True, slots=True)
class Proof:
    """The sender's proof that it knows the cluster token and holds its identity key: a MAC
    over the transcript (both Hellos) for the sender's role, keyed by the token and the X25519
    shared secrets (ephemeral with ephemeral, and each side's ephemeral with the other's
    identity)."""

    TYPE: ClassVar[int] = 2
    mac: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class Want:
    """Ask a blob's owner to start (or join) its upstream fetch and to answer with PieceMeta.

    `authorization` is the requesting client's header, passed for this fetch only: the owner
    never stores or logs it. `held_only`: answer only if the blob is held here or being
    fetched from the upstream here; otherwise say so (Refused with NOT_HELD_HEADER) and start
    nothing (a node that ranks first for a blob asks the next in rendezvous order this way).
    """

    TYPE: ClassVar[int] = 3
    digest: str
    namespace: str | None
    repository: str
    authorization: str | None
    held_only: bool = False


@dataclass(frozen=True, slots=True)
class PieceMeta:
    """Size, piece size and the xxh3-128 hashes of the pieces known so far.

    `origins` travels with the pieces: the registries (base URLs) the blob was fetched from
    with credentials, empty when it is public. A receiver records them before it serves a
    byte, so it asks the same registries before it hands the blob to anyone.

    `verified`: the sender holds the whole blob, its sha256 checked, so these hashes are of
    the blob's true bytes. An owner still downloading hashes what its registry sends, which
    a lying registry makes false; one that says `verified` and gives a hash the true piece
    fails has lied (peer/swarm/blame.py).
    """

    TYPE: ClassVar[int] = 4
    digest: str
    size: int
    piece_size: int
    hashes: dict[int, bytes] = field(default_factory=dict)
    origins: list[str] = field(default_factory=list)
    verified: bool = False


@dataclass(frozen=True, slots=True)
class Refused:
    """The owner's upstream refused the fetch (401, 404, ...), it says: the asker then asks its
    own upstream (an owner may lie). With the not-held header: the answer to a held-only Want."""

    TYPE: ClassVar[int] = 5
    digest: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Bitfield:
    """Which pieces of a blob the sender holds (bit i of byte i // 8, most significant first)."""

    TYPE: ClassVar[int] = 6
    digest: str
    bits: bytes


@dataclass(frozen=True, slots=True)
class Have:
    TYPE: ClassVar[int] = 7
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Request:
    TYPE: ClassVar[int] = 8
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class FileRange:
    """A piece payload the driver sends straight from a file (sendfile); only its length
    enters the frame. Received pieces always carry bytes."""

    fd: int
    offset: int
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True, slots=True)
class Piece:
    """One whole piece; `data` travels as the frame's raw payload. `pushed`: sent unasked,
    against the receiver's Invite (never the answer to a Request)."""

    TYPE: ClassVar[int] = 9
    digest: str
    index: int
    data: bytes | bytearray | memoryview | FileRange = b""
    pushed: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    TYPE: ClassVar[int] = 10
    digest: str
    index: int


@dataclass(frozen=True, slots=True)
class Reject:
    """A request that will not be served (choked, piece missing); the requester asks elsewhere."""

    TYPE: ClassVar[int] = 11
    digest: str
    index: int
    reason: str


@dataclass(frozen=True, slots=True)
class Choke:
    TYPE: ClassVar[int] = 12


@dataclass(frozen=True, slots=True)
class Unchoke:
    TYPE: ClassVar[int] = 13


@dataclass(frozen=True, slots=True)
class PeersRequest:
    """Ask a blob's tracker (its owner) which peers hold pieces of it."""

    TYPE: ClassVar[int] = 14
    digest: str


@dataclass(frozen=True, slots=True)
class Peers:
    TYPE: ClassVar[int] = 15
    digest: str
    peers: list[tuple[bytes, str, int]]  # (node id, host, port)


@dataclass(frozen=True, slots=True)
class Error:
    """The sender is closing the connection, and why."""

    TYPE: ClassVar[int] = 16
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Access:
    """Credentials for a private blob's pieces, sent to a peer before the first Request for
    them: the peer asks a registry the blob came from whether they are good (as for a Want,
    `authorization` is used for that check only, never stored or logged)."""

    TYPE: ClassVar[int] = 18
    digest: str
    namespace: str | None
    repository: str
    authorization: str | None


@dataclass(frozen=True, slots=True)
class Warm:
    """A preheat job asks a member to fetch a blob and keep it (`pollen preheat --scope
    all`): the member fetches it as a client with `authorization` would (its owner, the
    swarm, the access rules), never storing or logging the header, and answers Warmed."""

    TYPE: ClassVar[int] = 19
    request: int  # the asker's number for this Warm: its Warmed carries it back
    digest: str
    namespace: str | None
    repository: str
    authorization: str | None


@dataclass(frozen=True, slots=True)
class Warmed:
    """The answer to a Warm: 200 stored; otherwise the registry's refusal status or an error
    status (502 the fetch failed, 503 too many Warm requests queued or blobs held for members'
    jobs), with a message (a 200's: why the blob is stored but not held, if it is not)."""

    TYPE: ClassVar[int] = 20
    request: int
    digest: str
    status: int
    message: str


@dataclass(frozen=True, slots=True)
class Inflow:
    """How many transfers come into the sender's downlink now: pieces arriving from peers,
    and answers arriving from the upstream. Sent to the peers that hold its Requests while they
    send it nothing, when the number changes (peer/swarm/inflow.py); an uploader gives a free
    slot to the waiting link whose receiver has the fewest (peer/swarm/upload_lanes.py)."""

    TYPE: ClassVar[int] = 21
    inflows: int


@dataclass(frozen=True, slots=True)
class Invite:
    """The sender will take `count` more pieces of `digest` from the receiver unasked (pushed
    Pieces): a fetching node invites the blob's owner, whose first copies then need no Request
    to come in through the owner's downlink (which the registry's flows fill)."""

    TYPE: ClassVar[int] = 22
    digest: str
    count: int


@dataclass(frozen=True, slots=True)
class Members:
    """Push-pull membership sync: everything the sender knows (node id, host, port,
    incarnation, status); the receiver merges it and answers with its own once."""

    TYPE: ClassVar[int] = 17
    members: list[tuple[bytes, str, int, int, int, int]]  # ... status, declared capacity
    reply: bool


Event = (
    Hello
    | Proof
    | Want
    | PieceMeta
    | Refused
    | Bitfield
    | Have
    | Request
    | Piece
    | Cancel
    | Reject
    | Choke
    | Unchoke
    | PeersRequest
    | Peers
    | Error
    | Members
    | Access
    | Warm
    | Warmed
    | Inflow
    | Invite
)

EVENT_TYPES: dict[int, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Proof,
        Want,
        PieceMeta,
        Refused,
        Bitfield,
        Have,
        Request,
        Piece,
        Cancel,
        Reject,
        Choke,
        Unchoke,
        PeersRequest,
        Peers,
        Error,
        Members,
        Access,
        Warm,
        Warmed,
        Inflow,
        Invite,
    )
}

# Field names of each type, in order, as sent in the header (the payload of Piece excluded).
HEADER_FIELDS: dict[int, tuple[str, ...]] = {
    t: tuple(f.name for f in fields(cls) if not (cls is Piece and f.name == "data"))
    for t, cls in EVENT_TYPES.items()
}
