"""The messages of the peer protocol, as frozen events.

Every event has a message type (its `TYPE`) and fields that map one to one onto the msgpack
header of its frame. `Piece` alone carries a payload: raw bytes after the header, never packed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each side sends: who it is and a fresh nonce for the token proof."""

    TYPE: ClassVar[int] = 1
    version: int
    node_id: bytes  # 16 bytes
    nonce: bytes  # 32 bytes, fresh per connection


@dataclass(frozen=True, slots=True)
class Proof:
    """HMAC-SHA256 over both nonces and the sender's id, keyed by the cluster token."""

    TYPE: ClassVar[int] = 2
    mac: bytes  # 32 bytes


@dataclass(frozen=True, slots=True)
class Want:
    """Ask a blob's owner to start (or join) its upstream fetch and to answer with PieceMeta.

    `authorization` is the requesting client's header, passed for this fetch only: the owner
    never stores or logs it.
    """

    TYPE: ClassVar[int] = 3
    digest: str
    namespace: str | None
    repository: str
    authorization: str | None


@dataclass(frozen=True, slots=True)
class PieceMeta:
    """Size, piece size and the xxh3-128 hashes of the pieces known so far."""

    TYPE: ClassVar[int] = 4
    digest: str
    size: int
    piece_size: int
    hashes: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refused:
    """The owner's upstream refused the fetch (401, 404, ...): passed on to the client."""

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
    """One whole piece; `data` travels as the frame's raw payload."""

    TYPE: ClassVar[int] = 9
    digest: str
    index: int
    data: bytes | bytearray | memoryview | FileRange = b""


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
class Members:
    """Push-pull membership sync: everything the sender knows (node id, host, port,
    incarnation, status); the receiver merges it and answers with its own once."""

    TYPE: ClassVar[int] = 17
    members: list[tuple[bytes, str, int, int, int]]
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
    )
}

# Field names of each type, in order, as sent in the header (the payload of Piece excluded).
HEADER_FIELDS: dict[int, tuple[str, ...]] = {
    t: tuple(f.name for f in fields(cls) if not (cls is Piece and f.name == "data"))
    for t, cls in EVENT_TYPES.items()
}
