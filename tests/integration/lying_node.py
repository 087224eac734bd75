"""A pollen node that lies to its peers: every piece it uploads is zeros.

Run as `python -m tests.integration.lying_node run ...` (the options of `pollen run`). It is
the real node with one change, made here and not in the node (production code carries no
test hooks): the store hands the uploader a file of zeros instead of the piece.
"""

from __future__ import annotations

import os
import tempfile

from peer import cli
from pieces.store import Store

_ZEROS = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
_ZEROS.truncate(64 * 1024 * 1024)  # sparse: longer than any piece
_honest_open_piece = Store.open_piece_sync


def _open_zeros_instead(
    self: Store, digest: str, index: int, piece_size: int
) -> tuple[int, int, int] | None:
    source = _honest_open_piece(self, digest, index, piece_size)
    if source is None:
        return None
    fd, _offset, length = source
    os.close(fd)
    return os.dup(_ZEROS.fileno()), 0, length


Store.open_piece_sync = _open_zeros_instead  # type: ignore[method-assign]

if __name__ == "__main__":
    cli.main()
