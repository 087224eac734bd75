from __future__ import annotations

import hashlib
import mmap
import os
import random
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pieces.partial as partial_module
from pieces.descriptors import Repository
from pieces.layout import MAX_PIECE_SIZE
from pieces.partial import (
    BlobFailed,
    DigestMismatch,
    DiskFull,
    PartialBlob,
    SizeRefused,
    StoreError,
    piece_hash,
)
from pieces.store import Store
from tests.tmpfs import mounted_tmpfs


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 5000),
    piece_size=st.integers(1, 700),
    chunk_sizes=st.lists(st.integers(1, 900), max_size=30),
    seed=st.integers(0, 2**32),
)
def test_any_chunking_stores_the_exact_bytes(
    tmp_path: Path, size: int, piece_size: int, chunk_sizes: list[int], seed: int
) -> None:
    data = random.Random(seed).randbytes(size)
    root = tmp_path / f"s{seed}-{size}-{piece_size}"

    async def main() -> None:
        store = Store(root, piece_size)
        digest = digest_of(data)
        partial = await store.open_partial(digest, size, repository=None)
        offset = 0
        for chunk in chunked(data, chunk_sizes):
            partial.write_sync(offset, [chunk])
            offset += len(chunk)
            # Everything written is readable, except that the last byte waits for the sha256.
            assert partial.readable_end(0) == min(offset, max(size - 1, 0))
        partial.finalize_sync()
        store.release_partial(partial)
        assert store.has_blob(digest)
        assert store.complete_path(digest).read_bytes() == data
        assert set(partial.piece_hashes) == set(range(partial.layout.count))
        for index, expected in partial.piece_hashes.items():
            layout = partial.layout
            assert piece_hash(data[layout.start(index) : layout.end(index)]) == expected

    trio.run(main)


async def test_wrong_content_is_discarded_and_readers_are_told(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024)
    data = os.urandom(5000)
    claimed = digest_of(b"something else")
    partial = await store.open_partial(claimed, len(data), repository=None)
    partial.write_sync(0, [data])
    with pytest.raises(DigestMismatch):
        partial.finalize_sync()
    assert not store.has_blob(claimed)
    assert not partial.data_path.exists() and not partial.meta_path.exists()
    partial.fail(DigestMismatch("bad"))
    with pytest.raises(BlobFailed):
        await partial.wait_readable(0)


async def test_readers_wake_as_bytes_arrive(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    data = os.urandom(3500)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    seen: list[int] = []

    async def reader() -> None:
        position = 0
        while position < len(data):
            end = await partial.wait_readable(position)
            seen.append(end)
            position = end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for start in range(0, 3500, 300):  # finer than a piece: readers see sub-piece progress
            await trio.testing.wait_all_tasks_blocked()
            partial.write_sync(start, [data[start : start + 300]])
            partial.notify()
        await trio.testing.wait_all_tasks_blocked()
        assert seen[-1] == len(data) - 1  # held back until verified
        partial.finalize_sync()
        partial.notify()
    assert seen[0] == 300
    assert seen[-1] == len(data)


async def test_resume_keeps_verified_pieces_and_drops_corrupt_ones(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    digest = digest_of(data)
    store = Store(tmp_path, 1000)
    partial = await store.open_partial(digest, len(data), repository=None)
    partial.write_sync(0, [data[:4500]])  # pieces 0-3 complete, piece 4 half written
    store.release_partial(partial)
    # Corrupt piece 2 on disk, as a torn write before a crash would.
    with open(partial.data_path, "r+b") as f:
        f.seek(2100)
        f.write(b"\x00" * 10)

    store2 = Store(tmp_path, 4096)  # a different --piece-size does not break the resume
    assert store2.partial_size_on_disk(digest) == len(data)
    resumed = await store2.open_partial(digest, len(data), repository=None)
    assert resumed.layout.piece_size == 1000
    assert sorted(resumed.piece_hashes) == [0, 1, 3]
    assert resumed.first_missing_offset() == 2000
    # The writer refills from the first missing byte; recorded pieces are skipped, not rewritten.
    resumed.write_sync(2000, [data[2000:]])
    resumed.finalize_sync()
    assert store2.complete_path(digest).read_bytes() == data


async def partial_left_on_disk(tmp_path: Path) -> tuple[bytes, str, PartialBlob]:
    """A blob of 3000 bytes in pieces of 1000, its first 2000 stored, left as a crash would."""
    data = os.urandom(3000)
    digest = digest_of(data)
    store = Store(tmp_path, 1000)
    partial = await store.open_partial(digest, len(data), repository=None)
    partial.write_sync(0, [data[:2000]])
    store.release_partial(partial)
    return data, digest, partial


async def test_a_partial_is_resumed_only_for_the_registry_its_bytes_came_from(
    tmp_path: Path,
) -> None:
    """A registry a client names sent the right size and wrong bytes, and hung up short: its
    partial (public: no origins) was resumed for a download from the real registry, which was
    asked only for the rest, and the client got the planted bytes and a failed pull (a
    helper's probe, 2026-12-04)."""
    data = os.urandom(3000)
    digest = digest_of(data)
    evil = Repository("http://evil.test", "x/y")
    store = Store(tmp_path, 1000)
    partial = await store.open_partial(digest, len(data), repository=evil)
    partial.write_sync(0, [bytes(2000)])
    store.release_partial(partial)
    real = Repository("http://registry.test", "org/app")
    store = Store(tmp_path, 1000)
    fresh = await store.open_partial(digest, len(data), repository=real)
    assert fresh.piece_hashes == {}
    fresh.write_sync(0, [data[:2000]])
    store.release_partial(fresh)
    # The same registry resumes what it sent, whichever of its repositories asks.
    same = Repository("http://registry.test", "other/name")
    resumed = await Store(tmp_path, 1000).open_partial(digest, len(data), repository=same)
    assert sorted(resumed.piece_hashes) == [0, 1]


async def test_a_partial_in_pieces_no_peer_can_take_is_not_resumed(tmp_path: Path) -> None:
    # An older node could cut a blob into pieces over a frame (--piece-size 32MiB): resumed,
    # its owner would send a PieceMeta every peer refuses, closing link after link.
    data, digest, partial = await partial_left_on_disk(tmp_path)
    meta = msgpack.unpackb(partial.meta_path.read_bytes(), strict_map_key=False)
    meta["piece_size"] = MAX_PIECE_SIZE * 2
    partial.meta_path.write_bytes(msgpack.packb(meta))
    assert partial_module.load_meta(partial.meta_path) is None
    fresh = await Store(tmp_path, 1000).open_partial(digest, len(data), repository=None)
    assert fresh.layout.piece_size == 1000 and fresh.piece_hashes == {}
    with pytest.raises(SizeRefused):
        await Store(tmp_path / "other", 1000).open_partial(
            digest, len(data), piece_size=MAX_PIECE_SIZE + 1, repository=None
        )


async def test_a_store_cuts_blobs_into_its_least_pieces_per_blob(tmp_path: Path) -> None:
    """`--pieces-per-blob`: the store's rule is what the node's downloads and its owner's
    PieceMeta use (the swarm and the upstream fetcher ask the store)."""
    mib = 1024 * 1024
    digest = "sha256:" + "ab" * 32
    few = Store(tmp_path / "few", 4 * mib, pieces_per_blob=32)
    many = Store(tmp_path / "many", 4 * mib)
    assert few.piece_size_for(128 * mib) == 4 * mib
    assert many.piece_size_for(128 * mib) == 512 * 1024
    partial = await few.open_partial(digest, 128 * mib, repository=None)
    assert partial.layout.piece_size == 4 * mib and partial.layout.count == 32
    few.release_partial(partial)


async def test_unreadable_meta_means_start_over(tmp_path: Path) -> None:
    data, digest, partial = await partial_left_on_disk(tmp_path)
    partial.meta_path.write_bytes(b"\x93garbage")
    store2 = Store(tmp_path, 1000)
    assert store2.partial_size_on_disk(digest) is None
    fresh = await store2.open_partial(digest, len(data), repository=None)
    assert fresh.piece_hashes == {}


async def test_out_of_order_write_within_a_piece_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    data = os.urandom(3000)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    with pytest.raises(Exception, match="out of order"):
        partial.write_sync(500, [data[500:600]])


async def test_pieces_may_arrive_out_of_order(tmp_path: Path) -> None:
    # Peers deliver whole pieces in any order; the sha256 is then computed from disk.
    store = Store(tmp_path, 1000)
    data = os.urandom(4200)
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), repository=None)
    for index in (3, 0, 4, 2, 1):
        start = index * 1000
        assert partial.write_sync(start, [data[start : start + 1000]]) == [index]
    partial.finalize_sync()
    assert store.complete_path(digest).read_bytes() == data


async def test_piece_hashes_of_a_committed_blob_are_kept_not_reread(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    data = os.urandom(4200)
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), repository=None)
    partial.write_sync(0, [data])
    partial.finalize_sync()
    store.release_partial(partial)
    expected = {i: piece_hash(data[i * 1000 : (i + 1) * 1000]) for i in range(5)}
    # Overwrite the stored bytes behind the store's back: the hashes still come from the
    # commit, so they were not read again from disk.
    store.complete_path(digest).write_bytes(bytes(len(data)))
    assert store.complete_piece_hashes_sync(digest, 1000) == expected
    # Another piece size is computed from disk (and then kept).
    zeros = bytes(2100)
    assert store.complete_piece_hashes_sync(digest, 2100) == {
        0: piece_hash(zeros),
        1: piece_hash(zeros),
    }


async def test_eviction_is_lru_and_spares_blobs_in_use(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    blobs = [os.urandom(1000) for _ in range(3)]
    digests = []
    for i, data in enumerate(blobs):
        digest = digest_of(data)
        digests.append(digest)
        partial = await store.open_partial(digest, len(data), repository=None)
        partial.write_sync(0, [data])
        partial.finalize_sync()
        store.release_partial(partial)
        os.utime(store.complete_path(digest), (1000 + i, 1000 + i))
    store.quota = 3500
    with store.reading(digests[0]):  # the oldest, but in use
        store.make_room(1000)
    assert store.has_blob(digests[0])
    assert not store.has_blob(digests[1])
    assert store.has_blob(digests[2])


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real ENOSPC, not a simulated one."""
    with mounted_tmpfs(tmp_path / "tiny", "2m") as mount:
        yield mount


async def test_full_disk_fails_cleanly_and_keeps_the_store_consistent(tiny_disk: Path) -> None:
    store = Store(tiny_disk, 256 * 1024)
    data = os.urandom(1536 * 1024)
    digest = digest_of(data)
    partial = await store.open_partial(
        digest, len(data), repository=None
    )  # it fits: 2 MiB are free
    # Then someone else takes 1 MiB of the disk: the writes run into a real ENOSPC.
    filler = tiny_disk / "filler"
    filler.write_bytes(bytes(1024 * 1024))
    written = 0
    with pytest.raises(DiskFull, match="no space left"):
        for start in range(0, len(data), 64 * 1024):
            partial.write_sync(start, [data[start : start + 64 * 1024]])
            written = start + 64 * 1024
    store.release_partial(partial)
    assert written > 0
    assert not store.has_blob(digest)
    # Whatever was recorded verifies; once there is room again, a resume starts from there.
    filler.unlink()
    store2 = Store(tiny_disk, 256 * 1024)
    resumed = await store2.open_partial(digest, len(data), repository=None)
    for index in resumed.piece_hashes:
        layout = resumed.layout
        assert (
            piece_hash(data[layout.start(index) : layout.end(index)]) == resumed.piece_hashes[index]
        )
    assert 0 < len(resumed.piece_hashes) < resumed.layout.count
    store2.release_partial(resumed)


async def test_the_sha256_of_pieces_out_of_order_is_read_through_several_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bytes not hashed in stream order are read back through mappings of the data file,
    # a window at a time, from an offset that is not on a mapping boundary.
    monkeypatch.setattr(partial_module, "_HASH_WINDOW", mmap.ALLOCATIONGRANULARITY)
    piece = 1000
    data = os.urandom(6 * mmap.ALLOCATIONGRANULARITY + 123)
    digest = digest_of(data)
    store = Store(tmp_path, piece)
    partial = await store.open_partial(digest, len(data), repository=None)
    count = partial.layout.count
    order = [0, *random.Random(3).sample(range(1, count), count - 1)]  # piece 0 in order
    for index in order:
        start = index * piece
        partial.write_sync(start, [data[start : start + piece]])
    partial.finalize_sync()
    assert store.complete_path(digest).read_bytes() == data


async def _written_out_of_order(tmp_path: Path, data: bytes) -> PartialBlob:
    """A partial of `data` in pieces of 1000, written last piece first: its sha256 is taken
    from the disk at the end."""
    partial = await Store(tmp_path, 1000).open_partial(digest_of(data), len(data), repository=None)
    for index in reversed(range(partial.layout.count)):
        start = index * 1000
        partial.write_sync(start, [data[start : start + 1000]])
    return partial


async def test_a_byte_left_for_the_check_and_changed_on_disk_fails_the_blob(tmp_path: Path) -> None:
    data = os.urandom(4200)
    partial = await _written_out_of_order(tmp_path, data)
    # Piece 0, written last, hashed itself and HASH_AHEAD times its bytes after it; the
    # last piece is read back by the check.
    assert partial.hashed == 1000 + partial_module.HASH_AHEAD * 1000 < 4100
    with open(partial.data_path, "r+b") as f:
        f.seek(4100)
        f.write(bytes([data[4100] ^ 1]))
    with pytest.raises(DigestMismatch):
        partial.verify_sync()
    assert not partial.data_path.exists()


async def test_a_write_that_fills_a_gap_hashes_the_pieces_stored_after_it(
    tmp_path: Path,
) -> None:
    # Left for the check, a swarm's blob (pieces in any order) was hashed whole at its end:
    # every write now takes in, from the page cache, up to HASH_AHEAD times its own bytes of
    # what is stored after the sha256's position.
    data = os.urandom(8000)
    store = Store(tmp_path, 1000)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    piece = {i: data[i * 1000 : (i + 1) * 1000] for i in range(8)}
    for index in (1, 2, 3, 5, 6, 7):
        assert partial.write_piece_sync(index, piece[index], piece_hash(piece[index]))
    assert partial.hashed == 0  # piece 0 is missing: nothing after it can be taken in
    assert partial.write_piece_sync(0, piece[0], piece_hash(piece[0])) == [0]
    assert partial.hashed == 1000 + partial_module.HASH_AHEAD * 1000
    assert partial.write_piece_sync(4, piece[4], piece_hash(piece[4])) == [4]
    assert partial.hashed == min(8000, 3000 + partial_module.HASH_AHEAD * 1000)
    partial.finalize_sync()
    assert store.complete_path(digest_of(data)).read_bytes() == data


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    streamed=st.lists(st.booleans(), min_size=9, max_size=9),
    shuffle=st.randoms(use_true_random=False),
    flipped=st.none() | st.integers(0, 8 * 700 + 299),
)
async def test_pieces_in_any_order_give_the_blob_or_fail_its_check(
    tmp_path_factory: pytest.TempPathFactory,
    streamed: list[bool],
    shuffle: random.Random,
    flipped: int | None,
) -> None:
    # However the writes and the hashing ahead interleave, the sha256 covers each stored byte
    # once: the right bytes make the blob, one wrong byte written fails the check. A streamed
    # piece comes in two writes with others between them (the hashing ahead may reach into
    # its written head); a checked piece comes whole, as from a peer.
    data = os.urandom(8 * 700 + 300)
    stored = bytearray(data)
    if flipped is not None:
        stored[flipped] ^= 1
    store = Store(tmp_path_factory.mktemp("any-order"), 700)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    writes = [i for i in range(9) for _ in range(2 if streamed[i] else 1)]
    shuffle.shuffle(writes)
    written: dict[int, int] = {}  # piece -> bytes of it written so far
    for index in writes:
        start, end = partial.layout.start(index), partial.layout.end(index)
        if streamed[index]:  # unchecked, as a (resumed) stream writes: half, then the rest
            at = start + written.get(index, 0)
            stop = end if index in written else start + (end - start) // 2
            partial.write_sync(at, [bytes(stored[at:stop])])
            written[index] = stop - start
        else:  # checked against its xxh3 (the piece's own bytes, wrong or not)
            chunk = bytes(stored[start:end])
            assert partial.write_piece_sync(index, chunk, piece_hash(chunk)) == [index]
    if flipped is None:
        partial.finalize_sync()
        assert store.complete_path(digest_of(data)).read_bytes() == data
    else:
        with pytest.raises(DigestMismatch):
            partial.verify_sync()


async def test_a_read_back_that_fails_is_left_to_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The piece was written and recorded: the write succeeds, and the bytes it could not
    # read back are hashed by the check (here, once the fault is gone), not by every write.
    data = os.urandom(5000)
    store = Store(tmp_path, 1000)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    piece = {i: data[i * 1000 : (i + 1) * 1000] for i in range(5)}
    for index in (1, 2):
        assert partial.write_piece_sync(index, piece[index], piece_hash(piece[index]))
    mapped = mmap.mmap
    failures = 0

    def broken(*args: object, **kwargs: object) -> mmap.mmap:
        nonlocal failures
        failures += 1
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(mmap, "mmap", broken)
    assert partial.write_piece_sync(0, piece[0], piece_hash(piece[0])) == [0]
    assert partial.write_piece_sync(3, piece[3], piece_hash(piece[3])) == [3]
    assert failures == 1 and partial.hashed == 1000
    monkeypatch.setattr(mmap, "mmap", mapped)
    assert partial.write_piece_sync(4, piece[4], piece_hash(piece[4])) == [4]
    partial.finalize_sync()
    assert store.complete_path(digest_of(data)).read_bytes() == data


async def test_a_data_file_cut_short_fails_the_check_without_a_fault(tmp_path: Path) -> None:
    # Read through a mapping, a file shorter than the blob would fault (SIGBUS): refused first.
    data = os.urandom(4200)
    partial = await _written_out_of_order(tmp_path, data)
    os.truncate(partial.data_path, 3000)
    with pytest.raises(StoreError, match="shorter"):
        partial.verify_sync()


async def test_a_whole_piece_is_checked_and_written_with_one_hash(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    data = os.urandom(4200)
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), repository=None)
    pieces = {i: data[i * 1000 : (i + 1) * 1000] for i in range(5)}
    wrong = bytes([pieces[2][0] ^ 1]) + pieces[2][1:]
    assert partial.write_piece_sync(2, wrong, piece_hash(pieces[2])) is None
    assert 2 not in partial.piece_hashes and partial.bytes_present == 0
    with pytest.raises(StoreError, match="not piece"):
        partial.write_piece_sync(4, pieces[3], piece_hash(pieces[3]))  # 1000 bytes, not 200
    for index in (3, 0, 4, 2, 1):
        piece = bytearray(pieces[index])
        assert partial.write_piece_sync(index, piece, piece_hash(piece)) == [index]
    assert partial.write_piece_sync(1, pieces[1], piece_hash(pieces[1])) == []  # recorded
    assert partial.piece_hashes == {i: piece_hash(p) for i, p in pieces.items()}
    partial.finalize_sync()
    assert store.complete_path(digest).read_bytes() == data


async def test_a_whole_piece_cannot_finish_a_piece_a_stream_began(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    data = os.urandom(3000)
    partial = await store.open_partial(digest_of(data), len(data), repository=None)
    partial.write_sync(1000, [data[1000:1500]])
    with pytest.raises(StoreError, match="out of order"):
        partial.write_piece_sync(1, data[1000:2000], piece_hash(data[1000:2000]))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_the_piece_record_is_saved_per_4_mib_or_second_of_pieces_and_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rewriting the whole record per piece cost the swarm's nodes CPU: it is saved for the
    first piece, then once 4 MiB of pieces are unsaved or a second has passed, and on close
    (a crash in between forgets at most that much; it is fetched again)."""
    mib = 1024 * 1024
    clock = _Clock()
    monkeypatch.setattr(partial_module, "time", clock)
    data = os.urandom(8 * mib)
    digest = digest_of(data)
    store = Store(tmp_path, mib)
    partial = await store.open_partial(digest, len(data), piece_size=mib, repository=None)

    def on_disk() -> list[int]:
        meta = partial_module.load_meta(partial.meta_path)
        return sorted(meta["pieces"]) if meta is not None else []

    def write(index: int) -> None:
        piece = data[index * mib : (index + 1) * mib]
        assert partial.write_piece_sync(index, piece, piece_hash(piece)) == [index]

    write(0)
    assert on_disk() == [0]  # the first piece
    for index in (1, 2, 3):
        write(index)
    assert on_disk() == [0]  # 3 MiB unsaved, no time passed
    write(4)
    assert on_disk() == [0, 1, 2, 3, 4]  # 4 MiB
    write(5)
    clock.now += 1.5
    write(6)
    assert on_disk() == [0, 1, 2, 3, 4, 5, 6]  # a second after the last save
    write(7)
    assert on_disk() == [0, 1, 2, 3, 4, 5, 6]
    store.release_partial(partial)  # closed: the rest is saved
    assert on_disk() == list(range(8))
    resumed = await Store(tmp_path, mib).open_partial(
        digest, len(data), piece_size=mib, repository=None
    )
    assert sorted(resumed.piece_hashes) == list(range(8))


async def test_later_saves_append_to_the_record_and_a_torn_append_loses_only_itself(
    tmp_path: Path,
) -> None:
    """After its first save a partial appends records (no rename per save); a crash that
    tears the last record costs those pieces only; a version-2 record (one map) still loads."""
    mib = 1024 * 1024
    data = os.urandom(12 * mib)
    digest = digest_of(data)
    store = Store(tmp_path, mib)
    partial = await store.open_partial(digest, len(data), piece_size=mib, repository=None)
    for index in range(12):
        piece = data[index * mib : (index + 1) * mib]
        assert partial.write_piece_sync(index, piece, piece_hash(piece)) == [index]
        if index == 0:
            inode = os.stat(partial.meta_path).st_ino
    partial.add_origins(["registry.example"])
    store.release_partial(partial)
    assert os.stat(partial.meta_path).st_ino == inode  # appended to, never replaced
    meta = partial_module.load_meta(partial.meta_path)
    assert meta is not None and sorted(meta["pieces"]) == list(range(12))
    assert meta["origins"] == ["registry.example"]

    whole = partial.meta_path.read_bytes()
    partial.meta_path.write_bytes(whole[:-5])  # the last record torn
    meta = partial_module.load_meta(partial.meta_path)
    assert meta is not None and meta["origins"] == []  # the torn record held the origins
    kept = sorted(meta["pieces"])
    assert kept and kept == list(range(len(kept))) and len(kept) < 12
    assert all(meta["pieces"][i] == piece_hash(data[i * mib : (i + 1) * mib]) for i in kept)

    # A version-2 file: the whole record alone.
    version_2 = {"v": 2, "digest": digest, "size": len(data), "piece_size": mib}
    version_2 |= {"pieces": {0: piece_hash(data[:mib])}, "origins": []}
    partial.meta_path.write_bytes(msgpack.packb(version_2))
    resumed = await Store(tmp_path, mib).open_partial(
        digest, len(data), piece_size=mib, repository=None
    )
    assert sorted(resumed.piece_hashes) == [0]


async def test_a_damaged_record_is_read_up_to_the_damage_never_raised(tmp_path: Path) -> None:
    """A record whose map key is a list (unhashable) raised TypeError out of load_meta: the
    blob could never be fetched on that node again. Now the damage ends the reading (an
    appended record) or the record is refused (the first one): start over."""
    mib = 1024 * 1024
    data = os.urandom(2 * mib)
    digest = digest_of(data)
    store = Store(tmp_path, mib)
    partial = await store.open_partial(digest, len(data), piece_size=mib, repository=None)
    piece = data[:mib]
    assert partial.write_piece_sync(0, piece, piece_hash(piece)) == [0]
    store.release_partial(partial)
    with open(partial.meta_path, "ab") as f:
        f.write(b"\x81\xa6pieces\x81\x91\x01\xa1a")  # {"pieces": {[1]: "a"}}
    meta = partial_module.load_meta(partial.meta_path)
    assert meta is not None and sorted(meta["pieces"]) == [0]
    resumed = await Store(tmp_path, mib).open_partial(
        digest, len(data), piece_size=mib, repository=None
    )
    assert sorted(resumed.piece_hashes) == [0]
    resumed.close()
    partial.meta_path.write_bytes(b"\x81\x91\x01\xa1a")  # the first record damaged
    assert partial_module.load_meta(partial.meta_path) is None


async def test_a_failed_append_is_followed_by_a_whole_record_and_never_fails_a_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append that fails (ENOSPC) may leave part of a record: the next save must not
    append after it (those records would be lost or misread), and the commit of a verified
    blob must not fail for a record it deletes anyway."""
    mib = 1024 * 1024
    data = os.urandom(12 * mib)
    digest = digest_of(data)
    store = Store(tmp_path, mib)
    partial = await store.open_partial(digest, len(data), piece_size=mib, repository=None)

    def write(index: int) -> None:
        piece = data[index * mib : (index + 1) * mib]
        partial.write_piece_sync(index, piece, piece_hash(piece))

    write(0)  # the whole record
    real_open = open

    def torn_append(path: Path, mode: str = "r", *args: object) -> object:
        if mode == "ab":
            with real_open(path, "ab") as f:
                f.write(b"\x81\xa6pie")  # part of a record, then the disk is full
            raise OSError(28, "No space left on device")
        return real_open(path, mode, *args)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", torn_append)
    with pytest.raises(DiskFull):
        for index in range(1, 5):
            write(index)
    monkeypatch.undo()
    write(5)  # the next save: the whole record again, not an append after the torn bytes
    meta = partial_module.load_meta(partial.meta_path)
    assert meta is not None and sorted(meta["pieces"]) == list(range(6))
    for index in range(6, 9):
        write(index)
    partial.flush_meta_sync()  # and appends follow it again
    meta = partial_module.load_meta(partial.meta_path)
    assert meta is not None and sorted(meta["pieces"]) == list(range(9))
    for index in range(9, 12):
        write(index)
    monkeypatch.setattr("builtins.open", torn_append)
    partial.finalize_sync()  # the flush before the commit fails: the commit does not
    monkeypatch.undo()
    assert store.complete_path(digest).read_bytes() == data


def test_private_markers_read_from_memory_agree_with_the_disk_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    """The access check reads the markers from memory: every change goes to the file and to
    memory together, and a restart reads the files back (never a stale 'public')."""
    digest = "sha256:" + "cd" * 32
    marker = tmp_path / "private" / ("cd" * 32)
    store = Store(tmp_path)
    store.mark_private(digest, "https://a.example")
    store.mark_private(digest, "https://b.example")
    store.mark_private(digest, "https://a.example")  # known: not added twice
    assert store.private_origins(digest) == ["https://a.example", "https://b.example"]
    assert marker.read_text().splitlines() == ["https://a.example", "https://b.example"]
    assert Store(tmp_path).private_origins(digest) == ["https://a.example", "https://b.example"]
    store.mark_public(digest)
    assert not marker.exists()
    assert not store.private_origins(digest)
    assert not Store(tmp_path).private_origins(digest)


async def _committed_in(store: Store, data: bytes, piece_size: int | None) -> str:
    """`data` stored as a download does: opened (in `piece_size`, a swarm owner's, or the
    store's rule), written, verified, committed by the store, released."""
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), piece_size, repository=None)
    partial.write_sync(0, [data])
    partial.verify_sync()
    store.commit_sync(partial)
    store.release_partial(partial)
    return digest


async def test_a_complete_blob_is_served_in_the_layout_it_was_completed_in(
    tmp_path: Path,
) -> None:
    """A blob taken from a swarm is cut to the swarm owner's pieces, which need not be this
    node's rule (another --piece-size, --pieces-per-blob or uplink): once complete it must
    still be served in them, after a restart too, or its Bitfields name other pieces than the
    swarm's. A blob this node cut itself is served by its rule."""
    store = Store(tmp_path, 64 * 1024)
    theirs = os.urandom(300 * 1024)
    ours = os.urandom(300 * 1024)
    owners = await _committed_in(store, theirs, 128 * 1024)
    own = await _committed_in(store, ours, None)
    assert store.piece_size_for(len(theirs)) == 64 * 1024  # the rule here: not the owner's
    assert store.complete_piece_size(owners, len(theirs)) == 128 * 1024
    assert store.complete_piece_size(own, len(ours)) == 64 * 1024
    restarted = Store(tmp_path, 64 * 1024)
    assert restarted.complete_piece_size(owners, len(theirs)) == 128 * 1024
    assert restarted.complete_piece_size(own, len(ours)) == 64 * 1024
    # A blob with no record (stored by an earlier version) is served by the rule.
    (tmp_path / "layouts" / owners.split(":")[1]).unlink()
    assert Store(tmp_path, 64 * 1024).complete_piece_size(owners, len(theirs)) == 64 * 1024


async def test_a_layout_record_goes_with_its_blob_and_a_bad_one_is_dropped(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path, 64 * 1024)
    data = os.urandom(200 * 1024)
    digest = await _committed_in(store, data, 128 * 1024)
    hex_ = digest.split(":")[1]
    record = tmp_path / "layouts" / hex_
    assert record.read_text() == f"{128 * 1024}\n"
    store.flush()  # evicts the blob
    assert not record.exists()
    assert store.complete_piece_size(digest, len(data)) == 64 * 1024
    # Records the node did not write as it does (or of blobs gone) go at start-up.
    digest = await _committed_in(store, data, 128 * 1024)
    for text in ("", "1\n", "banana\n", str(1 << 40), "9" * 100):
        record.write_text(text)
        assert Store(tmp_path, 64 * 1024).complete_piece_size(digest, len(data)) == 64 * 1024
        assert not record.exists()
    orphan = tmp_path / "layouts" / ("cd" * 32)
    orphan.write_text(f"{128 * 1024}\n")
    Store(tmp_path, 64 * 1024)
    assert not orphan.exists()
    # Whatever else is put there (by hand) is left alone, and the node starts.
    (tmp_path / "layouts" / ("ef" * 32)).mkdir()
    (tmp_path / "layouts" / "notes.txt").write_text("mine")
    record.write_text(f"{128 * 1024}\n")
    assert Store(tmp_path, 64 * 1024).complete_piece_size(digest, len(data)) == 128 * 1024
    assert (tmp_path / "layouts" / "notes.txt").exists()


async def test_a_store_on_a_slow_declared_uplink_cuts_smaller_pieces(tmp_path: Path) -> None:
    mib = 1024 * 1024
    slow = Store(tmp_path / "slow", 4 * mib, uplink=25_000_000 // 8)
    assert slow.piece_size_for(128 * mib) == 128 * 1024
    assert Store(tmp_path / "fast", 4 * mib).piece_size_for(128 * mib) == 512 * 1024
