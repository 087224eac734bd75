"""Bitfields on the wire: piece i is bit 7 - i % 8 of byte i // 8 (BitTorrent's order)."""

from __future__ import annotations

from collections.abc import Iterable


def bits_of(indices: Iterable[int], count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in indices:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def indices_of(bits: bytes) -> set[int]:
    return {i * 8 + j for i, byte in enumerate(bits) for j in range(8) if byte & (0x80 >> j)}
