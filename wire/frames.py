"""Frame codec: `>IH` prefix (bytes after the prefix, header length), msgpack header, payload.

The header is a msgpack array `[type, field, ...]` in the order of the event's fields. Only
`Piece` has a payload: its raw bytes follow the header, so bulk data is never msgpack-packed.
Decoding validates every field's type and size: whatever a peer sends either becomes a
well-formed event or raises RemoteProtocolError.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

import msgpack

from pieces.layout import MAX_PIECE_SIZE, MAX_PIECES
from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import (
    EVENT_TYPES,
    HEADER_FIELDS,
    PROTOCOL_VERSION,
    Event,
    FileRange,
    Hello,
    Members,
    Peers,
    Piece,
)
from wire.names import (
    is_authorization,
    is_registry_url,
    is_valid_host,
    is_valid_port,
    is_valid_registry,
    is_valid_repository,
)
from wire.seal import RECORD_LENGTH, TAG, Opener

PREFIX = struct.Struct(">IH")
MAX_HEADER = 60_000  # fits the u16 header length with room; a PieceMeta of 3,000 hashes
MAX_STRING = 4096
MAX_INT = 2**63 - 1
# A sealed header record holds a frame prefix and a header (wire.seal).
_MIN_HEADER_RECORD = PREFIX.size + 1 + TAG
_MAX_HEADER_RECORD = PREFIX.size + MAX_HEADER + TAG
MAX_ORIGINS = 8  # registries a private blob came from (PieceMeta.origins)
MAX_INFLOWS = 65_535  # Inflow.inflows: more transfers than a node has links and fetches

Check = Callable[[Any], bool]


def _int(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_INT


def _str(value: Any) -> bool:
    return type(value) is str and len(value) <= MAX_STRING


def _opt_str(value: Any) -> bool:
    return value is None or _str(value)


def _opt_authorization(value: Any) -> bool:
    return value is None or is_authorization(value)


def _bytes(length: int | None = None) -> Check:
    def check(value: Any) -> bool:
        if type(value) is not bytes:
            return False
        return len(value) == length if length is not None else len(value) <= MAX_HEADER

    return check


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def _digest(value: Any) -> bool:
    return _str(value) and _DIGEST.fullmatch(value) is not None


def _hashes(value: Any) -> bool:
    return type(value) is dict and all(
        _int(k) and type(v) is bytes and len(v) == 16 for k, v in value.items()
    )


def _headers(value: Any) -> bool:
    return type(value) is dict and all(_str(k) and _str(v) for k, v in value.items())


def _peers(value: Any) -> bool:
    return type(value) is list and all(
        type(p) is list
        and len(p) == 3
        and type(p[0]) is bytes
        and len(p[0]) == 16
        and is_valid_host(p[1])
        and is_valid_port(p[2])
        for p in value
    )


def _members(value: Any) -> bool:
    return type(value) is list and all(
        type(m) is list
        and len(m) == 6
        and type(m[0]) is bytes
        and len(m[0]) == 16
        and is_valid_host(m[1])
        and is_valid_port(m[2])
        and _int(m[3])
        and m[4] in (0, 1, 2)
        and type(m[5]) is int
        and 0 <= m[5] < 2**48
        for m in value
    )


_CHECKS: dict[str, Check] = {
    "version": _int,
    "node_id": _bytes(16),
    "nonce": _bytes(32),
    "ephemeral": _bytes(32),
    "identity": _bytes(32),
    "callee": lambda v: v is None or (type(v) is bytes and len(v) == 16),
    "encrypt": lambda v: type(v) is bool,
    "dialed": _opt_str,
    "mac": _bytes(32),
    "digest": _digest,
    "namespace": lambda v: v is None or is_valid_registry(v),
    "repository": is_valid_repository,
    "authorization": _opt_authorization,
    "size": _int,
    # Pieces over MAX_PIECE_SIZE (pieces/layout.py): no peer could send them, and the links
    # that tried would close one after the other.
    "piece_size": lambda v: _int(v) and 0 < v <= MAX_PIECE_SIZE,
    "hashes": _hashes,
    "status": lambda v: type(v) is int and 100 <= v <= 599,
    "headers": _headers,
    "body": _bytes(),
    "bits": _bytes(),
    "index": _int,
    "reason": _str,
    "peers": _peers,
    "code": _str,
    "message": _str,
    "members": _members,
    # Each becomes a private marker where the blob is stored: a registry's base URL only.
    "origins": lambda v: type(v) is list and len(v) <= MAX_ORIGINS and all(map(is_registry_url, v)),
    "reply": lambda v: type(v) is bool,
    "held_only": lambda v: type(v) is bool,
    "request": lambda v: type(v) is int and 0 <= v < 2**63,
    "inflows": lambda v: type(v) is int and 0 <= v <= MAX_INFLOWS,
    "pushed": lambda v: type(v) is bool,
    "verified": lambda v: type(v) is bool,
    "count": lambda v: type(v) is int and 0 < v <= MAX_PIECES,
}


def encode(event: Event) -> list[bytes | memoryview | FileRange]:
    """The frame for `event` as buffers to send in order (the payload is not copied).

    Raises:
        LocalProtocolError: the event does not fit in a frame.
    """
    names = HEADER_FIELDS[event.TYPE]
    header = msgpack.packb([event.TYPE, *(getattr(event, n) for n in names)], use_bin_type=True)
    if len(header) > MAX_HEADER:
        raise LocalProtocolError(f"{type(event).__name__} header of {len(header)} bytes")
    payload = event.data if isinstance(event, Piece) else b""
    return [PREFIX.pack(len(header) + len(payload), len(header)), header, payload]


class PayloadPool:
    """Payload buffers given back after use, for the next large piece to reuse.

    A new buffer for a 4 MiB piece costs more than its bytes: CPython zero-fills it, and the
    fresh pages it takes are faulted in one by one (on our VM, memory new to the process is
    slow to touch at all). Kept buffers are plain memory the next payload overwrites; no
    event is made from a buffer before it is filled, so nothing of an earlier piece is ever
    read out of one. Bounded: at most `buffers` buffers and `max_bytes` bytes are kept (in
    all, across the decoders that share the pool). Used from one thread.
    """

    def __init__(self, buffers: int = 2, max_bytes: int | None = None) -> None:
        self.buffers = buffers
        self.max_bytes = max_bytes
        self._idle: list[bytearray] = []

    @property
    def idle(self) -> int:
        """Buffers kept for reuse now."""
        return len(self._idle)

    def take(self, length: int) -> bytearray:
        """A buffer of exactly `length` bytes: a kept one (its old bytes still in it), or new."""
        for position, buffer in enumerate(self._idle):
            if len(buffer) == length:
                del self._idle[position]
                return buffer
        return bytearray(length)

    def give(self, buffer: bytes | bytearray | memoryview) -> None:
        """Keep `buffer` for reuse (only a bytearray can be; anything else is ignored). When
        the pool is full the oldest kept buffer goes, so the sizes in use now stay."""
        if not isinstance(buffer, bytearray) or self.buffers <= 0:
            return
        if self.max_bytes is not None and len(buffer) > self.max_bytes:
            return
        if any(kept is buffer for kept in self._idle):
            return  # given back twice: keeping it twice would hand it to two payloads
        self._idle.append(buffer)
        while len(self._idle) > self.buffers or (
            self.max_bytes is not None and sum(map(len, self._idle)) > self.max_bytes
        ):
            del self._idle[0]


class FrameDecoder:
    """Accumulates bytes and yields whole events; enforces the frame size limit.

    A large payload is not reassembled from small reads: once a Piece's header is in, the
    decoder allocates (or reuses) one buffer for its payload and `payload_buffer()` offers the
    unfilled part of it, so the caller can read from the socket straight into it
    (`recv_into`, then `payload_received(n)`). The finished Piece carries that buffer; give it
    back with `recycle()` once its bytes are stored, and the next piece reuses it.

    Nothing is allocated from a size the peer states before `admit_piece` has accepted the
    Piece's (digest, index, pushed) and its payload's length (it raises RemoteProtocolError
    for one that was neither requested nor invited; it returns False for one of another
    length than the piece has here, whose payload is then read past, not kept: the Piece
    comes with no data; a sealed one cannot be read past, and is refused),
    and `max_frame` bounds every frame; the protocol keeps it small until the peer has proved
    the cluster token.

    After `start_opening(opener)` the stream is sealed (see wire.seal): the header record is
    opened and checked first, then the payload record goes into its own buffer as above and
    is opened once whole; the Piece then carries the plaintext (a new `bytes`).
    """

    def __init__(
        self,
        max_frame: int,
        direct_min: int = 64 * 1024,
        admit_piece: Callable[[str, int, bool, int], bool] | None = None,
        pool: PayloadPool | None = None,
    ) -> None:
        """`pool`: where payload buffers are reused from (several decoders may share one: a
        node's links do); by default a pool of two of its own."""
        self.max_frame = max_frame
        self.direct_min = direct_min  # payloads at least this large get their own buffer
        self.admit_piece = admit_piece
        self._buffer = bytearray()
        self._need: tuple[int, int] | None = None  # (frame length, header length) once known
        # (digest, index, pushed) of the payload below
        self._piece: tuple[str, int, bool] | None = None
        self._payload: bytearray | None = None
        self._filled = 0
        self._pool = pool if pool is not None else PayloadPool()
        self._opener: Opener | None = None
        self._record = 0  # sealed: length of the payload record of `_piece`
        # A Piece whose payload is read past (`admit_piece` said no to its length), and how
        # many of its bytes are still to come.
        self._skipped: tuple[str, int, bool] | None = None
        self._skip = 0

    @property
    def has_partial_frame(self) -> bool:
        return (
            bool(self._buffer)
            or self._payload is not None
            or self._piece is not None
            or self._skipped is not None
        )

    def start_opening(self, opener: Opener) -> None:
        """From the next frame on, the peer's frames are sealed with `opener`'s key.

        Raises:
            LocalProtocolError: called in the middle of a frame.
        """
        if self._need is not None or self._piece is not None or self._opener is not None:
            raise LocalProtocolError("sealing starts between frames, once")
        self._opener = opener

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._skip:
            drop = min(len(data), self._skip)
            self._skip -= drop
            data = data[drop:]
        if self._payload is not None:
            take = min(len(data), len(self._payload) - self._filled)
            self._payload[self._filled : self._filled + take] = data[:take]
            self._filled += take
            data = data[take:]
        self._buffer += data

    def payload_buffer(self) -> memoryview | None:
        """The unfilled part of the payload being received, or None: then use `feed`."""
        if self._payload is None or self._filled == len(self._payload):
            return None
        return memoryview(self._payload)[self._filled :]

    def payload_received(self, count: int) -> None:
        """`count` bytes were written into the start of `payload_buffer()`."""
        assert self._payload is not None and 0 <= count <= len(self._payload) - self._filled
        self._filled += count

    def recycle(self, payload: bytes | bytearray | memoryview) -> None:
        """Give back a Piece payload this decoder produced, for the next piece to reuse
        (only a bytearray can be reused; anything else is ignored)."""
        self._pool.give(payload)

    def next_event(self) -> Event | None:
        """The next whole event, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: malformed, oversized or (sealed) unauthentic frame, unknown
                type, bad fields, or a Piece that `admit_piece` refused.
        """
        if self._payload is not None:
            if self._filled < len(self._payload):
                return None
            return self._finish_payload()
        if self._skipped is not None:
            if self._skip:
                return None
            (digest, index, pushed), self._skipped = self._skipped, None
            return Piece(digest, index, b"", pushed)
        if self._opener is not None:
            return self._next_sealed(self._opener)
        if self._need is None:
            if len(self._buffer) < PREFIX.size:
                return None
            frame_len, header_len = PREFIX.unpack_from(self._buffer)
            if frame_len > self.max_frame:
                raise RemoteProtocolError(f"frame of {frame_len} bytes over {self.max_frame}")
            if header_len == 0 or header_len > frame_len or header_len > MAX_HEADER:
                raise RemoteProtocolError(f"bad header length {header_len} in {frame_len}")
            self._need = (frame_len, header_len)
        frame_len, header_len = self._need
        end = PREFIX.size + frame_len
        payload_len = frame_len - header_len
        if len(self._buffer) < end and payload_len >= self.direct_min:
            if len(self._buffer) < PREFIX.size + header_len:
                return None
            header = bytes(self._buffer[PREFIX.size : PREFIX.size + header_len])
            piece, take = self._admit(header, payload_len)
            self._need = None
            if take:
                self._piece = piece
                self._start_payload(PREFIX.size + header_len, payload_len)
            else:  # read past it: what came of its payload goes, and the rest as it comes
                self._skipped = piece
                self._skip = payload_len - (len(self._buffer) - PREFIX.size - header_len)
                self._buffer.clear()
            return self.next_event()
        if len(self._buffer) < end:
            return None
        view = memoryview(self._buffer)
        header = bytes(view[PREFIX.size : PREFIX.size + header_len])
        payload = bytes(view[PREFIX.size + header_len : end])
        view.release()
        del self._buffer[:end]
        self._need = None
        return decode(header, payload)

    def _next_sealed(self, opener: Opener) -> Event | None:
        if self._piece is None:
            if len(self._buffer) < RECORD_LENGTH.size:
                return None
            (length,) = RECORD_LENGTH.unpack_from(self._buffer)
            if not _MIN_HEADER_RECORD <= length <= _MAX_HEADER_RECORD:
                raise RemoteProtocolError(f"sealed header record of {length} bytes")
            end = RECORD_LENGTH.size + length
            if len(self._buffer) < end:
                return None
            aad = bytes(self._buffer[: RECORD_LENGTH.size])
            inner = opener.open(bytes(self._buffer[RECORD_LENGTH.size : end]), aad)
            del self._buffer[:end]
            # Authentic, so from the peer as sealed; still checked like any frame.
            frame_len, header_len = PREFIX.unpack_from(inner)
            if header_len != len(inner) - PREFIX.size or frame_len < header_len:
                raise RemoteProtocolError(f"bad header length {header_len} in {frame_len}")
            if frame_len > self.max_frame:
                raise RemoteProtocolError(f"frame of {frame_len} bytes over {self.max_frame}")
            header = inner[PREFIX.size :]
            if frame_len == header_len:
                return decode(header, b"")
            piece, take = self._admit(header, frame_len - header_len)
            if not take:  # its record must be opened to open the next: nothing to read past
                raise RemoteProtocolError(f"sealed piece {piece[1]} of another length than asked")
            self._piece = piece
            self._record = frame_len - header_len + TAG
        if len(self._buffer) >= self._record:
            data = opener.open(bytes(self._buffer[: self._record]))
            del self._buffer[: self._record]
            digest, index, pushed = self._piece
            self._piece = None
            return Piece(digest, index, data, pushed)
        if self._record >= self.direct_min:
            self._start_payload(0, self._record)
        return None

    def _admit(self, header: bytes, length: int) -> tuple[tuple[str, int, bool], bool]:
        """(digest, index, pushed) of a Piece header with a payload of `length` bytes to come,
        once `admit_piece` accepts it (before any memory is set aside for the payload), and
        whether to take the payload (False: read past it)."""
        cls, values = decode_header(header)
        if cls is not Piece:
            raise RemoteProtocolError(f"{cls.__name__} with a payload")
        digest, index, pushed = values[0], values[1], values[2]
        take = self.admit_piece is None or self.admit_piece(digest, index, pushed, length)
        return (digest, index, pushed), take

    def _start_payload(self, start: int, length: int) -> None:
        """Switch to receiving an admitted payload (or sealed payload record) of `length`
        bytes into its own buffer; what is in the buffer from `start` on is its beginning."""
        payload = self._pool.take(length)
        self._payload = payload
        # What arrived after the header (less than the payload: the frame is not complete).
        already = memoryview(self._buffer)[start:]
        payload[: len(already)] = already
        self._filled = len(already)
        already.release()
        self._buffer.clear()

    def _finish_payload(self) -> Piece:
        assert self._piece is not None and self._payload is not None
        (digest, index, pushed), payload = self._piece, self._payload
        self._piece, self._payload, self._filled = None, None, 0
        if self._opener is None:
            return Piece(digest, index, payload, pushed)
        data = self._opener.open(payload)
        self.recycle(payload)  # the sealed record's buffer serves the next one
        return Piece(digest, index, data, pushed)


def decode_header(header: bytes) -> tuple[type[Event], list[Any]]:
    """The event type and its validated field values from a frame header.

    Raises:
        RemoteProtocolError: anything that is not exactly a valid header.
    """
    try:
        fields = msgpack.unpackb(header, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RemoteProtocolError(f"undecodable header: {type(exc).__name__}") from None
    if type(fields) is not list or not fields or type(fields[0]) is not int:
        raise RemoteProtocolError("header is not [type, fields...]")
    cls = EVENT_TYPES.get(fields[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {fields[0]}")
    names = HEADER_FIELDS[fields[0]]
    values = fields[1:]
    if cls is Hello and values and type(values[0]) is int and values[0] != PROTOCOL_VERSION:
        # Said before the field count, which changes between versions: the useful message.
        raise RemoteProtocolError(
            f"the peer speaks protocol version {values[0]}, this node {PROTOCOL_VERSION}"
        )
    if len(values) != len(names):
        raise RemoteProtocolError(f"{cls.__name__}: {len(values)} fields, expected {len(names)}")
    for name, value in zip(names, values, strict=True):
        if not _CHECKS[name](value):
            raise RemoteProtocolError(f"{cls.__name__}: bad field {name}")
    return cls, values


def decode(header: bytes, payload: bytes) -> Event:
    """One event from a header and its payload.

    Raises:
        RemoteProtocolError: anything that is not exactly a valid event.
    """
    cls, values = decode_header(header)
    if cls is Piece:
        return Piece(values[0], values[1], payload, values[2])
    if payload:
        raise RemoteProtocolError(f"{cls.__name__} with a payload")
    if cls is Peers:
        return Peers(values[0], [tuple(p) for p in values[1]])
    if cls is Members:
        return Members([tuple(m) for m in values[0]], values[1])
    return cls(*values)
