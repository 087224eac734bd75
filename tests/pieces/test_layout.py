from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pieces.layout import MIN_PIECE_SIZE, PIECES_PER_BLOB, PieceLayout, piece_size_for


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
