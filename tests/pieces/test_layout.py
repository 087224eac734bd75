from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pieces.layout import (
    LEAST_PIECE_SIZE,
    MAX_PIECES,
    MIN_PIECE_SIZE,
    PIECE_HOP,
    PIECES_PER_BLOB,
    PieceLayout,
    piece_size_for,
)


@given(size=st.integers(0, 10**12), piece_size=st.integers(1, 2**26))
def test_pieces_tile_the_blob(size: int, piece_size: int) -> None:
    layout = PieceLayout(size, piece_size)
    if size == 0:
        assert layout.count == 0
        return
    assert layout.start(0) == 0
    assert layout.end(layout.count - 1) == size
    last = layout.count - 1
    assert 0 < layout.length(last) <= piece_size
    if last > 0:
        assert layout.length(last - 1) == piece_size
        assert layout.end(last - 1) == layout.start(last)


@given(size=st.integers(1, 10**9), piece_size=st.integers(1, 2**24), data=st.data())
def test_index_of_finds_the_piece_holding_the_offset(
    size: int, piece_size: int, data: st.DataObject
) -> None:
    layout = PieceLayout(size, piece_size)
    offset = data.draw(st.integers(0, size - 1))
    index = layout.index_of(offset)
    assert layout.start(index) <= offset < layout.end(index)


def test_out_of_range_is_an_error() -> None:
    layout = PieceLayout(10, 4)
    with pytest.raises(IndexError):
        layout.start(3)
    with pytest.raises(ValueError):
        layout.index_of(10)
    with pytest.raises(ValueError):
        PieceLayout(10, 0)


def test_pieces_are_sized_to_the_blob() -> None:
    mib = 1024 * 1024
    assert piece_size_for(2 * 1024 * mib) == 4 * mib  # large blobs: the largest
    assert piece_size_for(1024 * mib) == 4 * mib  # exactly 256 pieces
    assert piece_size_for(1023 * mib) == 2 * mib
    assert piece_size_for(128 * mib) == 512 * 1024  # 256 pieces
    assert piece_size_for(75 * mib) == 256 * 1024  # 300 pieces: the smallest piece
    assert piece_size_for(19 * mib) == 256 * 1024
    assert piece_size_for(1000) == 256 * 1024
    assert piece_size_for(0) == 256 * 1024
    assert piece_size_for(10 * mib, largest=128 * 1024) == 128 * 1024  # never above largest


def test_fewer_pieces_per_blob_give_larger_pieces() -> None:
    mib = 1024 * 1024
    assert piece_size_for(128 * mib, least_pieces=32) == 4 * mib  # 32 pieces
    assert piece_size_for(128 * mib, least_pieces=64) == 2 * mib
    assert piece_size_for(127 * mib, least_pieces=32) == 2 * mib  # 4 MiB would be 32 short
    assert piece_size_for(mib, least_pieces=1) == mib  # one piece, no larger than the blob
    assert piece_size_for(16 * mib, least_pieces=1) == 4 * mib  # never above the largest
    assert piece_size_for(128 * mib, least_pieces=65536) == 256 * 1024  # never under 256 KiB


@given(st.integers(0, 1 << 40), st.sampled_from([1 << k for k in range(12, 26)]))
def test_a_blob_has_at_least_256_pieces_unless_pieces_are_already_smallest(
    size: int, largest: int
) -> None:
    piece = piece_size_for(size, largest)
    assert piece <= largest and (piece >= MIN_PIECE_SIZE or piece == largest)
    if PieceLayout(size, piece).count < PIECES_PER_BLOB:
        assert piece // 2 < MIN_PIECE_SIZE


def test_a_slow_uplink_cuts_smaller_pieces() -> None:
    mib, mbit = 1024 * 1024, 1_000_000 // 8
    # 512 KiB by the count, 0.17 s at 25 Mbit/s: halved to 128 KiB (0.042 s).
    assert piece_size_for(128 * mib, uplink=25 * mbit) == 128 * 1024
    assert piece_size_for(56 * mib // 3, uplink=20 * mbit) == 64 * 1024  # 128 KiB: 0.052 s
    # At 100 Mbit/s 512 KiB (0.042 s) stays, a 256 MiB blob's 1 MiB (0.084 s) is halved.
    assert piece_size_for(128 * mib, uplink=100 * mbit) == 512 * 1024
    assert piece_size_for(256 * mib, uplink=100 * mbit) == 512 * 1024
    # Fast links keep the rule's pieces: 4 MiB is 0.034 s at 1 Gbit/s.
    assert piece_size_for(2048 * mib, uplink=1_000 * mbit) == 4 * mib
    assert piece_size_for(128 * mib, uplink=0) == 512 * 1024  # not declared: the rule
    # Never under LEAST_PIECE_SIZE, however slow; never over MAX_PIECES pieces.
    assert piece_size_for(128 * mib, uplink=1) == LEAST_PIECE_SIZE
    assert piece_size_for(1 << 40, uplink=1) == (1 << 40) // MAX_PIECES
    # A node set to pieces under the least keeps them (tests): the cap only halves.
    assert piece_size_for(mib, largest=16 * 1024, uplink=1) == 16 * 1024


@given(
    st.integers(0, 1 << 42),
    st.sampled_from([1 << k for k in range(16, 25)]),
    st.integers(0, 10**10),
)
def test_an_uplink_only_ever_halves_the_rules_piece_within_bounds(
    size: int, largest: int, uplink: int
) -> None:
    rule = piece_size_for(size, largest)
    piece = piece_size_for(size, largest, uplink=uplink)
    assert piece <= rule and rule % piece == 0
    assert piece >= min(LEAST_PIECE_SIZE, largest)
    if size > 0:
        assert PieceLayout(size, piece).count <= max(MAX_PIECES, PieceLayout(size, rule).count)
    if piece < rule:  # halved: the rule's piece was slower than PIECE_HOP at this uplink
        assert 2 * piece > uplink * PIECE_HOP
    if uplink > 0 and piece > uplink * PIECE_HOP:  # still slow: a bound stopped the halving
        assert piece // 2 < LEAST_PIECE_SIZE or size > MAX_PIECES * (piece // 2)
