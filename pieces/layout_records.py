"""The piece size each complete blob was cut to, kept beside it (`layouts/<hex>`).

A blob's pieces are cut by its swarm's owner (its PieceMeta), and the owner cuts by its own
settings (`--piece-size`, `--pieces-per-blob`) and the uplink its cluster declares
(pieces/layout.py), which another node, or the same one later, may see otherwise.
Every node that took the blob from that swarm holds it in the owner's layout, and must go on
serving it in that layout once it is complete: its Bitfields and the pieces it sends name
indices of that layout, and a node that fell back to its own rule there spoke of other pieces
than the swarm's (its Bitfield was refused for its length, and its pieces were no use). So the
layout a blob was completed in is recorded when it is committed, and read back at start-up.

A record is a hint about our own files, written by this process alone: a lost one (a crash
between the write and the rename, a disk that refused it) leaves the blob to the node's own
rule, as before records were kept; one that names no sane piece size, or a blob that is gone,
is dropped at start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pieces.digest import is_store_key
from pieces.layout import LEAST_PIECE_SIZE, MAX_PIECE_SIZE, MAX_PIECES, PieceLayout
from pieces.modes import fsync_dir, open_for_writing

log = logging.getLogger("pollen.store")

MAX_RECORD_BYTES = 16  # a piece size in decimal, and room for a newline


class LayoutRecords:
    """hex digest -> the piece size its complete blob was cut to; files under `directory`,
    a copy in memory (asked for every piece served to a peer, on the event loop). Commits
    record from worker threads: the lock guards the copy only, never a file (a create or a
    rename may wait on the disk's journal behind a blob's fsync, and the event loop must not
    wait with it). A digest is recorded only while its partial is open in this process and
    dropped only while none is, so a record and a drop of one digest never overlap."""

    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self._dir = directory
        self._tmp = tmp_dir
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}

    def load(self, stored_size: Callable[[str], int | None]) -> None:
        """Read the records on disk, keeping those of the blobs `stored_size` gives a size
        for (by hex digest) that the recorded pieces can cut."""
        sizes = {}
        for entry in os.scandir(self._dir):
            if not is_store_key(entry.name) or not entry.is_file(follow_symlinks=False):
                log.warning("ignoring %s: not a layout record", entry.path)
                continue
            piece_size = _read_record(Path(entry.path))
            size = stored_size(entry.name)
            if (
                piece_size is None
                or size is None
                or PieceLayout(size, piece_size).count > MAX_PIECES
            ):
                if piece_size is None or size is not None:
                    log.warning("dropping the layout record %s: not a piece size", entry.path)
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                continue
            sizes[entry.name] = piece_size
        with self._lock:
            self._sizes = sizes

    def piece_size(self, hex_: str) -> int | None:
        """The piece size recorded for `hex_`'s complete blob, or None."""
        with self._lock:
            return self._sizes.get(hex_)

    def record(self, hex_: str, piece_size: int) -> None:
        """`hex_`'s blob is about to be complete, cut to `piece_size`: written and synced
        before the blob's own rename (after a power loss the blob is never there with its
        record lost). Kept in memory even if the file cannot be written (it only matters
        again after a restart)."""
        with self._lock:
            self._sizes[hex_] = piece_size
        try:
            tmp = self._tmp / f"{hex_}.layout"
            with open_for_writing(tmp) as f:
                f.write(f"{piece_size}\n".encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._dir / hex_)
            fsync_dir(self._dir)
        except OSError as exc:
            log.warning("cannot record the layout of %s: %s", hex_, exc)

    def drop(self, hex_: str) -> None:
        """`hex_`'s blob is gone."""
        with self._lock:
            self._sizes.pop(hex_, None)
        (self._dir / hex_).unlink(missing_ok=True)


def _read_record(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_RECORD_BYTES + 1)
    except OSError:
        return None
    if len(text) > MAX_RECORD_BYTES or not text.strip().isdigit():
        return None
    piece_size = int(text)
    if not LEAST_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE:
        return None
    return piece_size
