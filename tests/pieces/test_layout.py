from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pieces.layout import PieceLayout


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
