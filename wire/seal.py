"""Sealing frames with AES-256-GCM once the handshake has given each direction its own key.

A sealed frame is one or two AEAD records:

    header record:   >H length n, then n bytes: seal(frame prefix + msgpack header, aad=length)
    payload record:  seal(payload), only for a Piece; its length (payload + TAG) is known from
                     the authenticated prefix inside the header record, so it has none of its own

Nonces are a record counter (never sent): each side counts the records it seals and opens,
so a replayed, reordered, dropped or injected record fails its tag, and so does a flipped
bit. Sealing the header apart from the payload lets the receiver check a Piece's header (was
it requested?) before it sets aside memory for the payload.

After REKEY_BYTES bytes under one key, both sides derive the next key from it (at the same
record: each counts the same bytes), far below AES-GCM's per-key data limits.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import FileRange

TAG = 16
KEY_SIZE = 32
RECORD_LENGTH = struct.Struct(">H")
REKEY_BYTES = 1 << 34  # 16 GiB per key
_KEY_UPDATE = b"pollen v2 key update"

Buffer = bytes | bytearray | memoryview


class _Direction:
    """One direction's key, record counter and bytes under the current key."""

    def __init__(self, key: bytes, rekey_bytes: int = REKEY_BYTES) -> None:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"a sealing key is {KEY_SIZE} bytes")
        self._key = key
        self._aead = AESGCM(key)
        self._counter = 0
        self._used = 0
        self._rekey_bytes = rekey_bytes

    def _next_nonce(self) -> bytes:
        nonce = bytes(4) + self._counter.to_bytes(8, "big")
        self._counter += 1
        return nonce

    def _account(self, length: int) -> None:
        self._used += length
        if self._used >= self._rekey_bytes:
            self._key = HKDFExpand(hashes.SHA256(), KEY_SIZE, _KEY_UPDATE).derive(self._key)
            self._aead = AESGCM(self._key)
            self._used = 0


class Sealer(_Direction):
    """Seals the records this side sends, in order."""

    def seal(self, data: Buffer, aad: bytes = b"") -> bytes:
        """`data` encrypted and authenticated as the next record (TAG bytes longer)."""
        record = self._aead.encrypt(self._next_nonce(), data, aad)
        self._account(len(data))
        return record

    def seal_frame(self, buffers: list[bytes | memoryview | FileRange]) -> list[bytes]:
        """The sealed records for a frame as `wire.frames.encode` makes it.

        Raises:
            LocalProtocolError: the payload is a FileRange (read it into memory first: a
                sealed payload cannot go out with sendfile).
        """
        prefix, header, payload = buffers
        if isinstance(payload, FileRange):
            raise LocalProtocolError("a FileRange cannot be sealed: read the piece first")
        assert not isinstance(prefix, FileRange) and not isinstance(header, FileRange)
        inner = bytes(prefix) + bytes(header)
        length = RECORD_LENGTH.pack(len(inner) + TAG)
        records = [length + self.seal(inner, length)]
        if len(payload):
            records.append(self.seal(payload))
        return records


class Opener(_Direction):
    """Opens the records the peer sent, in order."""

    def open(self, record: Buffer, aad: bytes = b"") -> bytes:
        """The plaintext of the next record.

        Raises:
            RemoteProtocolError: the record is not the next one the peer sealed (altered,
                replayed, reordered, injected, or sealed with another key).
        """
        if len(record) < TAG:
            raise RemoteProtocolError("sealed record shorter than its tag")
        try:
            data = self._aead.decrypt(self._next_nonce(), record, aad)
        except InvalidTag:
            raise RemoteProtocolError("sealed record failed authentication") from None
        self._account(len(data))
        return data
