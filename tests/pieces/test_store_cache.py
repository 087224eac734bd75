"""The store keeping itself within bounds: running totals, the TTL, the disk watermarks,
holds (readers, uploads, preheat jobs) and dry runs."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pieces.digest import digest_hex
from pieces.ledger import Kind
from pieces.partial import NoRoom
from pieces.room import FOR_TTL, FOR_WATERMARK, Watermarks
from pieces.store import CachePolicy, Store
from tests.pieces.stored_manifests import put_manifest, read_manifest
from tests.pieces.test_store_sizes import MANIFEST_TYPE, SOURCE, digest_of, store_blob
from tests.tmpfs import mounted_tmpfs


async def leave_partial(store: Store, data: bytes) -> str:
    """Half a blob written, then the download given up: a partial left on disk."""
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), piece_size=1024, repository=None)
    partial.write_sync(0, [data[: len(data) // 2]])  # whole pieces: recorded in the meta
    store.release_partial(partial)
    return digest


def walked_use(root: Path) -> int:
    """What the store takes on disk, by walking it as the store used to on every request."""
    total = 0
    for sub in ("blobs/sha256", "partial", "manifests/sha256"):
        for entry in os.scandir(root / sub):
            st_ = entry.stat()
            if sub == "partial":
                total += st_.st_blocks * 512 if entry.name.endswith(".data") else 0
            elif not entry.name.endswith((".type", ".from")):
                total += st_.st_size
    return total


OPS = st.lists(
    st.tuples(
        st.sampled_from(["blob", "partial", "manifest", "evict", "flush"]), st.integers(1, 9)
    ),
    max_size=25,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, seed=st.integers(0, 2**32))
def test_the_running_totals_agree_with_a_walk_of_the_disk(
    tmp_path: Path, ops: list[tuple[str, int]], seed: int
) -> None:
    root = tmp_path / f"s{seed}-{len(ops)}"
    rng = random.Random(seed)

    async def main() -> None:
        store = Store(root, 1024)
        for op, n in ops:
            data = rng.randbytes(n * 1000)
            if op == "blob":
                await store_blob(store, data)
            elif op == "partial":
                await leave_partial(store, data)
            elif op == "manifest":
                put_manifest(store, digest_of(data), "application/json", data, SOURCE)
            elif op == "evict":
                store.quota = max(1, store.bytes_used() - n * 500)
                store.make_room(0)
                store.quota = None
            else:
                store.flush()
            assert store.bytes_used() == walked_use(root)
        again = Store(root, 1024)  # built from a walk at start-up
        assert again.stats() == store.stats()

    trio.run(main)


async def test_stats_and_room_are_answered_without_walking_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, 1024, quota=10**9)
    for i in range(5):
        await store_blob(store, os.urandom(1000 + i))

    def no_walk(*_args: object) -> Iterator[os.DirEntry[str]]:
        raise AssertionError("the store walked a directory")

    monkeypatch.setattr(os, "scandir", no_walk)
    assert store.stats().complete_blobs == 5
    store.make_room(5000)  # with a quota: it needs the bytes used
    await store_blob(store, os.urandom(3000))
    assert store.stats().complete_blobs == 6


async def test_a_rescan_notices_files_removed_by_hand(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024)
    digest = await store_blob(store, os.urandom(5000))
    store.complete_path(digest).unlink()
    assert store.bytes_used() == 5000  # the ledger does not know yet
    store.rescan()
    assert store.bytes_used() == 0 and store.stats().complete_blobs == 0


async def test_the_ttl_evicts_blobs_nobody_read_and_spares_held_ones(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024, policy=CachePolicy(ttl=3600.0))
    read, held, idle = [await store_blob(store, os.urandom(2000 + i)) for i in range(3)]
    left = await leave_partial(store, os.urandom(4000))
    later = time.time() + 3600.0 + 10
    assert store.sweep(time.time()) == []  # nothing is an hour old yet
    expiry = store.next_expiry()
    assert expiry is not None and expiry <= time.time() + 3600.0
    with store.reading(read):
        pass
    with store.holding(held):  # an upload to a peer, a preheat job
        would = store.sweep(later, dry_run=True)
        assert {e.digest for e in would} == {read, idle, left}
        assert all(e.reason == FOR_TTL for e in would)
        assert all(store.has_blob(d) for d in (read, held, idle))  # a dry run removes nothing
        gone = store.sweep(later)
    assert {e.digest for e in gone} == {read, idle, left}
    assert store.has_blob(held) and not store.has_blob(idle) and not store.has_blob(read)
    assert store.partial_size_on_disk(left) is None
    assert store.evictions[FOR_TTL] == (3, sum(e.size for e in gone))
    assert store.bytes_used() == walked_use(tmp_path)


async def test_reading_a_blob_restarts_its_ttl(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024, policy=CachePolicy(ttl=100.0))
    old, read = [await store_blob(store, os.urandom(1000 + i)) for i in range(2)]
    now = time.time()
    for digest in (old, read):  # both last used long ago
        entry = store.ledger.get(Kind.BLOB, digest_hex(digest))
        assert entry is not None
        store.ledger.put(dataclasses.replace(entry, last_used=now - 1000.0))
    with store.reading(read):
        pass
    assert [e.digest for e in store.sweep(now + 50.0)] == [old]
    assert store.has_blob(read)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: its real fill level is what the watermarks read."""
    with mounted_tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


async def test_a_write_above_the_high_watermark_evicts_lru_down_to_the_low_one(
    small_disk: Path,
) -> None:
    store = Store(small_disk, 64 * 1024, policy=CachePolicy(marks=Watermarks(0.6, 0.3)))
    blobs = [await store_blob(store, os.urandom(512 * 1024)) for _ in range(4)]  # 2 of 4 MiB
    assert all(store.has_blob(d) for d in blobs)
    with store.reading(blobs[0]):  # the least recently used, but held
        # 2 MiB used + 1 MiB would be 75 % > 60 %: down to 30 % (1.2 MiB) after the write.
        new = await store_blob(store, os.urandom(1024 * 1024))
    kept = [d for d in blobs if store.has_blob(d)]
    assert blobs[0] in kept and store.has_blob(new)
    assert kept == [blobs[0]]  # 0.5 + 1 MiB: as low as it goes with the held one kept
    assert store.evictions[FOR_WATERMARK][0] == 3


async def test_the_sweep_brings_a_disk_filled_by_others_down_to_the_low_watermark(
    small_disk: Path,
) -> None:
    store = Store(small_disk, 64 * 1024)
    blobs = [await store_blob(store, os.urandom(512 * 1024)) for _ in range(4)]
    (small_disk / "someone-else").write_bytes(bytes(1024 * 1024))  # 3 of 4 MiB used now
    store.policy = CachePolicy(marks=Watermarks(0.7, 0.5))
    gone = store.sweep(time.time())
    assert [e.digest for e in gone] == blobs[:2]  # the oldest first, to 2 MiB = 50 %
    assert {e.reason for e in gone} == {FOR_WATERMARK}


async def test_a_rescan_keeps_uses_the_files_do_not_show(tmp_path: Path) -> None:
    """Uploads to peers and preheat holds refresh a blob's last use in the ledger only: the
    periodic rescan must not put the file's older mtime back (the TTL would then evict a
    blob that peers use all the time)."""
    store = Store(tmp_path, 1024, policy=CachePolicy(ttl=100.0))
    digest = await store_blob(store, os.urandom(3000))
    os.utime(store.complete_path(digest), (1.0, 1.0))  # written long ago
    with store.holding(digest):  # served to a peer now
        pass
    store.rescan()
    assert store.sweep(time.time()) == []
    assert store.has_blob(digest)


async def test_a_partial_that_fails_to_open_stays_counted_and_evictable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming a partial left on disk: if making room for it fails, its bytes on disk stay
    in the totals and it stays evictable (it used to leave the ledger before the room was
    made, and be neither until the next walk of the disk)."""
    store = Store(tmp_path, 1024)
    data = os.urandom(8000)
    digest = await leave_partial(store, data)
    before = store.bytes_used()
    assert before == walked_use(tmp_path) > 0

    def no_room(*_args: object, **_kwargs: object) -> None:
        raise NoRoom("the disk is full")

    monkeypatch.setattr(store, "make_room", no_room)
    with pytest.raises(NoRoom):
        await store.open_partial(digest, len(data), piece_size=1024, repository=None)
    assert store.bytes_used() == before == walked_use(tmp_path)
    assert any(c.partial for c in store._evictable())


async def test_a_walk_that_the_ledger_outran_is_not_applied(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024)
    await store_blob(store, os.urandom(1000))
    generation = store.ledger.generation
    entries = store.walk()  # as the timer's thread does
    await store_blob(store, os.urandom(2000))  # meanwhile, on the loop
    assert not store.apply_walk(entries, generation)
    assert store.stats().complete_blobs == 2 and store.bytes_used() == walked_use(tmp_path)
    assert store.apply_walk(store.walk(), store.ledger.generation)


async def test_a_held_partial_counts_as_used(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024, policy=CachePolicy(ttl=100.0))
    digest = await leave_partial(store, os.urandom(8000))
    entry = store.ledger.get(Kind.PARTIAL, digest_hex(digest))
    assert entry is not None
    store.ledger.put(dataclasses.replace(entry, last_used=time.time() - 1000.0))
    with store.holding(digest):  # a preheat job's, a member's lease
        pass
    assert store.sweep(time.time() + 50.0) == []


async def test_manifests_unread_for_the_ttl_go_too(tmp_path: Path) -> None:
    store = Store(tmp_path, 1024, policy=CachePolicy(ttl=100.0))
    old = json_manifest(1)
    read = json_manifest(2)
    for body in (old, read):
        put_manifest(store, digest_of(body), MANIFEST_TYPE, body, SOURCE)
        entry = store.ledger.get(Kind.MANIFEST, digest_hex(digest_of(body)))
        assert entry is not None
        store.ledger.put(dataclasses.replace(entry, last_used=time.time() - 1000.0))
    assert read_manifest(store, digest_of(read)) is not None  # a client read it just now
    gone = store.sweep(time.time() + 50.0)
    assert [(e.digest, e.manifest) for e in gone] == [(digest_of(old), True)]
    assert read_manifest(store, digest_of(old)) is None
    assert read_manifest(store, digest_of(read)) is not None
    assert store.bytes_used() == walked_use(tmp_path)


def json_manifest(n: int) -> bytes:
    return b'{"schemaVersion": 2, "layers": [], "n": %d}' % n


async def test_a_manifest_makes_room_within_the_quota_as_a_blob_does(tmp_path: Path) -> None:
    """Manifests were stored without making room: one client had a registry it named serve
    unique 4 MiB manifests and the store grew to 1.8 GB over a 100 MiB quota before the sweep
    (a helper's probe, 2026-12-04). Least recently used blobs go for a manifest as for a
    blob, and a manifest larger than the cache is refused."""
    store = Store(tmp_path, 1024, quota=100_000)
    old = await store_blob(store, os.urandom(60_000))
    await store_blob(store, os.urandom(30_000))
    body = json_manifest(1) + b" " * 40_000
    put_manifest(store, digest_of(body), MANIFEST_TYPE, body, SOURCE)
    assert not store.has_blob(old)
    assert store.bytes_used() <= 100_000
    assert read_manifest(store, digest_of(body)) is not None
    # Stored again (a read by tag does that), it evicts nothing.
    kept = await store_blob(store, os.urandom(20_000))
    used = store.bytes_used()
    put_manifest(store, digest_of(body), MANIFEST_TYPE, body, SOURCE)
    assert store.has_blob(kept) and store.bytes_used() == used
    huge = json_manifest(2) + b" " * 200_000
    with pytest.raises(NoRoom):
        put_manifest(store, digest_of(huge), MANIFEST_TYPE, huge, SOURCE)
    assert read_manifest(store, digest_of(huge)) is None
