"""Piece math: how a blob of `size` bytes splits into fixed-size pieces."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
# The most pieces one blob may have: the swarm keeps per-piece state (availability, requests)
# and walks the piece list, so a peer's tiny piece size must not turn into millions of pieces.
# 2^20 pieces is 4 TiB at the default piece size.
MAX_PIECES = 1 << 20


@dataclass(frozen=True, slots=True)
class PieceLayout:
    """The split of one blob into pieces; every piece but the last is `piece_size` long."""

    size: int
    piece_size: int = DEFAULT_PIECE_SIZE

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"blob size must be >= 0, got {self.size}")
        if self.piece_size <= 0:
            raise ValueError(f"piece size must be > 0, got {self.piece_size}")

    @property
    def count(self) -> int:
        """Number of pieces (0 for an empty blob)."""
        return -(-self.size // self.piece_size)

    def start(self, index: int) -> int:
        """Offset of the first byte of piece `index`."""
        self._check(index)
        return index * self.piece_size

    def length(self, index: int) -> int:
        """Length in bytes of piece `index` (the last one may be short)."""
        self._check(index)
        return min(self.piece_size, self.size - index * self.piece_size)

    def end(self, index: int) -> int:
        """Offset one past the last byte of piece `index`."""
        return self.start(index) + self.length(index)

    def index_of(self, offset: int) -> int:
        """The piece that holds byte `offset`."""
        if not 0 <= offset < self.size:
            raise ValueError(f"offset {offset} outside blob of {self.size} bytes")
        return offset // self.piece_size

    def _check(self, index: int) -> None:
        if not 0 <= index < self.count:
            raise IndexError(f"piece {index} outside 0..{self.count - 1}")
