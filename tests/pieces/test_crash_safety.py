"""Kill a real writer process at random points; the store must stay consistent every time."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from pieces.layout import PieceLayout
from pieces.partial import load_meta, verified_pieces
from pieces.store import Store
from tests.pieces.crash_writer import blob

SEED = 7
SIZE = 12 * 1024 * 1024 + 12345
PIECE = 256 * 1024
KILLS = 30
REPO = Path(__file__).resolve().parents[2]


def check_consistent(root: Path, data: bytes, digest: str) -> int:
    """Assert the store's invariants; return how many pieces a resume would keep."""
    store = Store(root, PIECE)
    path = store.complete_path(digest)
    if path.exists():
        assert path.read_bytes() == data, "a complete blob is never half-written or wrong"
        return -1
    meta = load_meta(root / "partial" / f"{digest[7:]}.meta")
    if meta is None:
        return 0
    layout = PieceLayout(meta["size"], meta["piece_size"])
    good = verified_pieces(root / "partial" / f"{digest[7:]}.data", layout, meta["pieces"])
    # After a process kill (not a power cut) every recorded piece must still verify.
    assert good == meta["pieces"]
    for index in good:
        assert data[layout.start(index) : layout.end(index)] == _read(root, digest, layout, index)
    return len(good)


def _read(root: Path, digest: str, layout: PieceLayout, index: int) -> bytes:
    with open(root / "partial" / f"{digest[7:]}.data", "rb") as f:
        f.seek(layout.start(index))
        return f.read(layout.length(index))


def start_writer(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.pieces.crash_writer",
            str(root),
            str(SEED),
            str(SIZE),
            str(PIECE),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )


def test_killed_writer_leaves_a_consistent_store(tmp_path: Path) -> None:
    data = blob(SEED, SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    rng = random.Random(1)
    kept = []
    for _ in range(KILLS):
        proc = start_writer(tmp_path)
        assert proc.stdout is not None  # stdout=PIPE; checked here so `finally` knows it too
        try:
            assert proc.stdout.readline() == b"ready\n"
            # A whole write takes ~0.8 s; each run gets a few percent of it, so kills land in
            # every phase: resume verification, piece writes, meta replace, sha256, rename.
            time.sleep(rng.uniform(0.0, 0.06))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            proc.stdout.close()
        kept.append(check_consistent(tmp_path, data, digest))
        if kept[-1] == -1:
            break
    # Let it finish undisturbed: the result is the exact blob.
    proc = start_writer(tmp_path)
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None
    proc.stdout.close()
    assert check_consistent(tmp_path, data, digest) == -1
    assert not list((tmp_path / "partial").iterdir())
    # The kills landed at different points, including mid-way with pieces kept for the resume.
    print("pieces kept after each kill:", kept)
    assert any(k > 0 for k in kept), kept
    assert len(set(kept)) > 3, kept


def test_resume_after_kill_reads_the_same_bytes(tmp_path: Path) -> None:
    """A reader in a restarted process streams a blob that a killed process half wrote."""
    data = blob(SEED, SIZE)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    proc = start_writer(tmp_path)
    assert proc.stdout is not None
    proc.stdout.readline()
    time.sleep(0.25)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()

    async def resume() -> bytes:
        store = Store(tmp_path, PIECE)
        size = store.partial_size_on_disk(digest)
        if size is None:  # killed before the first piece was recorded
            size = SIZE
        partial = await store.open_partial(digest, size, repository=None)
        offset = partial.first_missing_offset()
        partial.write_sync(offset, [data[offset:]])
        partial.finalize_sync()
        store.release_partial(partial)
        return store.complete_path(digest).read_bytes()

    assert trio.run(resume) == data
    assert os.path.exists(tmp_path / "blobs" / "sha256" / digest[7:])
