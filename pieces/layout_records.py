"""The piece size each complete blob was cut to, kept beside it (`layouts/<hex>`).

A blob's pieces are cut by its swarm's owner (its PieceMeta), and the owner cuts by its own
settings (`--piece-size`, `--pieces-per-blob`, and its declared uplink: pieces/layout.py).
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

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pieces.layout import LEAST_PIECE_SIZE, MAX_PIECE_SIZE
from pieces.modes import write_file

log = logging.getLogger("pollen.store")

MAX_RECORD_BYTES = 16  # a piece size in decimal, and room for a newline


class LayoutRecords:
    """hex digest -> the piece size its complete blob was cut to; files under `directory`,
    a copy in memory (asked for every piece served to a peer). Methods may run in worker
    threads (commits do)."""

    def __init__(self, directory: Path, tmp_dir: Path) -> None:
        self._dir = directory
        self._tmp = tmp_dir
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}

    def load(self, is_stored: Callable[[str], bool]) -> None:
        """Read the records on disk, keeping those of blobs `is_stored` (by hex digest)."""
        sizes = {}
        for entry in os.scandir(self._dir):
            piece_size = _read_record(Path(entry.path))
            if piece_size is None or not is_stored(entry.name):
                if piece_size is None:
                    log.warning("dropping the layout record %s: not a piece size", entry.path)
                Path(entry.path).unlink(missing_ok=True)
                continue
            sizes[entry.name] = piece_size
        with self._lock:
            self._sizes = sizes

    def piece_size(self, hex_: str) -> int | None:
        """The piece size recorded for `hex_`'s complete blob, or None."""
        with self._lock:
            return self._sizes.get(hex_)

    def record(self, hex_: str, piece_size: int) -> None:
        """`hex_`'s blob is (about to be) complete, cut to `piece_size`. Kept in memory even
        if the file cannot be written (it only matters again after a restart)."""
        with self._lock:
            self._sizes[hex_] = piece_size
            try:
                tmp = self._tmp / f"{hex_}.layout"
                write_file(tmp, f"{piece_size}\n".encode())
                os.replace(tmp, self._dir / hex_)
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
