"""A store writer run as its own process, so a test can SIGKILL it at random points.

Usage: python -m tests.pieces.crash_writer STORE_DIR SEED SIZE PIECE_SIZE
Writes the blob of SIZE seeded random bytes, resuming from whatever an earlier (killed) run left,
slowly enough that kills land in every phase (piece writes, meta replace, sha256, rename).
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

import trio

from pieces.store import Store

CHUNK = 32 * 1024


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def main(root: Path, seed: int, size: int, piece_size: int) -> None:
    data = blob(seed, size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store = Store(root, piece_size)
    if store.has_blob(digest):
        print("ready", flush=True)
        return
    print("ready", flush=True)  # start-up done: the test times its kill from here
    partial = await store.open_partial(digest, size, repository=None)
    offset = partial.first_missing_offset()
    while offset < size:
        partial.write_sync(offset, [data[offset : offset + CHUNK]])
        offset += CHUNK
        time.sleep(0.002)
    partial.finalize_sync()
    store.release_partial(partial)


if __name__ == "__main__":
    root, seed, size, piece_size = sys.argv[1:5]
    trio.run(main, Path(root), int(seed), int(size), int(piece_size))
