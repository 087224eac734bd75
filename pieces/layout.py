"""Piece math: how a blob of `size` bytes splits into fixed-size pieces."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PIECE_SIZE = 4 * 1024 * 1024
# The most pieces one blob may have: the swarm keeps per-piece state (availability, requests)
# and walks the piece list, so a peer's tiny piece size must not turn into millions of pieces.
# 2^20 pieces is 4 TiB at the default piece size.
MAX_PIECES = 1 << 20
# Pieces are sized to the blob: at least PIECES_PER_BLOB of them (a blob spreads only as fast
# as its pieces hop from node to node: a 56 MiB image in 4 MiB pieces is 14 pieces, and the
# swarm waits on whole-piece hops), never under MIN_PIECE_SIZE (each piece costs a message, a
# hash and a write). Chosen in the simulator (docs/issue10/HISTORY.md, "What each technique
# gained"): with slots per link, 224 MiB in 3 layers, 100 hosts 1.35-1.37 x T_min at 1 MiB
# pieces (64 per blob), 1.28-1.30 at 512 KiB, 1.24-1.26 at 256 KiB; 8 hosts 1.15-1.17 (128 per
# blob) and 1.10-1.16 (256).
PIECES_PER_BLOB = 256
# The most a setting may ask (`--pieces-per-blob`): every blob under 16 GiB is then cut into
# MIN_PIECE_SIZE pieces already.
MOST_PIECES_PER_BLOB = 65536
MIN_PIECE_SIZE = 256 * 1024
# The largest piece: a piece goes to a peer in one frame of the peer protocol (its largest
# frame is this and room for the header, wire/protocol.py). A larger one, from a setting, an
# owner's PieceMeta or a partial's record on disk, is refused: no peer could take its pieces.
MAX_PIECE_SIZE = 16 * 1024 * 1024
# The smallest piece size a node may be set to (`--piece-size`): at MAX_PIECES pieces a blob
# may then be 64 GiB; below it a large layer would need more pieces than a node keeps state for.
LEAST_PIECE_SIZE = 64 * 1024


def least_piece_size(largest: int) -> int:
    """The smallest piece a node whose pieces are at most `largest` (its `--piece-size`) can
    meet from an honest node: LEAST_PIECE_SIZE, the least a node may be set to (`largest`
    itself where it is smaller, as in tests). `piece_size_for` never cuts below it."""
    return min(LEAST_PIECE_SIZE, largest)


# On a slow uplink a piece is at most this many seconds of it (`piece_size_for`'s `uplink`): a blob
# spreads as fast as its pieces hop from node to node, and on links of tens of Mbit/s the rule's
# pieces hop slowly (512 KiB is 0.17 s at 25 Mbit/s). What smaller pieces cost is CPU per piece, and
# the hop bounds it per second rather than per byte: a node takes in and sends on 1 / PIECE_HOP to 2
# / PIECE_HOP pieces a second each way at its link's rate, on any link the cap cuts for (20-40; 24
# at 25 Mbit/s: on the 2-core testbed 8 nodes at 25 Mbit/s spent 37-43 s of CPU in 85-89 s, 5-6 % of
# a core each). Measured (docs/issue10/HISTORY.md, "Smaller pieces on slow links" and the
# fifty-second session), 0.05 s against 0.1 s, alternating on the testbed at 25 Mbit/s: one blob at
# a time 1.13, 1.13 x T_min against 1.15, 1.15; three at a time 1.14, 1.14 against 1.15, 1.16; 224
# MiB in 3 layers 1.18, 1.18 against 1.21, 1.19; a 56 MiB image at 20 Mbit/s 1.13, 1.14 against
# 1.16, 1.17; 16 hosts, 512 MiB 1.14, 1.15 against 1.14, 1.13 (16 nodes on two cores: the CPU takes
# the gain back there); the simulator 1.3-2.7 % sooner in every uniform scenario, 1.5 % later on
# uneven links (where the testbed needed slow hosts paced at 0.88: peer/swarm/pacing.py). At 100
# Mbit/s it caps pieces at 512 KiB (what the rule cuts a blob under 256 MiB into), whatever the
# settings ask; from 1 Gbit/s up it never binds on pieces up to 4 MiB (the default largest).
PIECE_HOP = 0.05


def piece_size_for(
    size: int,
    largest: int = DEFAULT_PIECE_SIZE,
    least_pieces: int = PIECES_PER_BLOB,
    uplink: int = 0,
) -> int:
    """The piece size for a blob of `size` bytes: `largest`, halved while the blob would have
    fewer than `least_pieces` pieces, down to MIN_PIECE_SIZE (or `largest`, if smaller); then,
    for an `uplink` of that many bytes/s (0: not known), halved while a piece takes longer than
    PIECE_HOP seconds of it, down to LEAST_PIECE_SIZE and never into more than MAX_PIECES
    pieces."""
    piece = largest
    while piece // 2 >= MIN_PIECE_SIZE and size < least_pieces * piece:
        piece //= 2
    if uplink > 0:
        while (
            piece > uplink * PIECE_HOP
            and piece // 2 >= LEAST_PIECE_SIZE
            and size <= MAX_PIECES * (piece // 2)
        ):
            piece //= 2
    return piece


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
