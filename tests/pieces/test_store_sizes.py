"""Sizes the store is told (an upstream's Content-Length, a peer's PieceMeta) are checked
before anything is allocated from them: against the blob's descriptor, the quota and the disk."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

import pieces.store
from pieces.descriptors import DescriptorSizes, Repository
from pieces.layout import MAX_PIECE_SIZE, PieceLayout
from pieces.partial import DigestMismatch, NoRoom, PartialBlob, SizeRefused
from pieces.store import MANIFEST_SOURCES, Store
from tests.pieces.stored_manifests import put_manifest, read_manifest
from tests.tmpfs import mounted_tmpfs

MiB = 1024 * 1024
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
# The repository that served a test's manifests; one at a registry a client named; another
# tenant's of the first one's registry.
SOURCE = Repository("https://registry.example", "org/app")
NAMED = Repository("https://registry.client-named.example", "x")
TENANT = Repository(SOURCE.registry_url, "evil/x")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def store_blob(store: Store, data: bytes) -> str:
    digest = digest_of(data)
    partial = await store.open_partial(digest, len(data), repository=None)
    partial.write_sync(0, [data])
    partial.finalize_sync()
    store.release_partial(partial)
    return digest


def partial_files(store: Store) -> list[str]:
    return sorted(p.name for p in (store.root / "partial").iterdir())


async def test_a_blob_over_the_quota_is_refused_and_evicts_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path, 4 * MiB, quota=10 * MiB)
    cached = await store_blob(store, os.urandom(100_000))
    huge = digest_of(b"claims to be a TiB")
    with pytest.raises(NoRoom, match="larger than the cache size"):
        await store.open_partial(huge, 2**40, repository=None)
    assert store.has_blob(cached)
    assert partial_files(store) == []
    assert store.bytes_used() < MiB


async def test_a_blob_over_the_free_disk_is_refused_before_anything_is_allocated(
    tmp_path: Path,
) -> None:
    # No quota: the disk is the limit. 2^50 bytes is more than any test disk.
    store = Store(tmp_path, MAX_PIECE_SIZE)
    digest = digest_of(b"claims to be a PiB")
    tracemalloc.start()
    try:
        with pytest.raises(NoRoom, match="larger than the disk"):
            await store.open_partial(digest, 2**50, repository=None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB
    assert partial_files(store) == []


async def test_sizes_from_peers_get_the_same_checks(tmp_path: Path) -> None:
    # A peer's PieceMeta gives size and piece size: the swarm opens its partial with both.
    store = Store(tmp_path, 64 * 1024, quota=10 * MiB)
    digest = digest_of(b"a peer says so")
    with pytest.raises(NoRoom, match="larger than the cache size"):
        await store.open_partial(digest, 2**40, 4 * MiB, repository=None)
    with pytest.raises(SizeRefused, match="pieces"):
        await store.open_partial(digest, 8 * MiB, 1, repository=None)  # 8 Mi pieces of one byte
    assert partial_files(store) == []


async def test_a_declared_size_must_match_the_manifest_descriptor(tmp_path: Path) -> None:
    store = Store(tmp_path, 64 * 1024)
    layer = os.urandom(5000)
    layer_digest = digest_of(layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "x", "digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": "y", "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    put_manifest(store, digest_of(manifest), MANIFEST_TYPE, manifest, SOURCE)
    with pytest.raises(SizeRefused, match="descriptor"):
        await store.open_partial(layer_digest, len(layer) + 1, repository=SOURCE)
    with pytest.raises(SizeRefused, match="descriptor"):
        await store.open_partial(layer_digest, len(layer) - 1, 1024, repository=SOURCE)  # a peer
    assert partial_files(store) == []
    # After a restart, the manifest served from the cache teaches the sizes again.
    store = Store(tmp_path, 64 * 1024)
    assert read_manifest(store, digest_of(manifest)) == (MANIFEST_TYPE, manifest)
    with pytest.raises(SizeRefused, match="descriptor"):
        await store.open_partial(layer_digest, len(layer) + 1, repository=SOURCE)
    partial = await store.open_partial(layer_digest, len(layer), repository=SOURCE)
    partial.write_sync(0, [layer])
    partial.finalize_sync()
    store.release_partial(partial)
    assert store.complete_path(layer_digest).read_bytes() == layer


@pytest.mark.parametrize("liar", [NAMED, TENANT], ids=["named-registry", "tenant"])
async def test_a_manifests_sizes_check_only_the_downloads_from_the_repository_that_served_it(
    tmp_path: Path, liar: Repository
) -> None:
    """A client can have the node read a manifest from a registry it names, or from a
    repository it pushes to on a registry anyone can push to, and then read it from the cache
    naming another: its sizes checked the blobs of every registry, then of every repository
    of the registry (a real layer refused from the honest one), after a restart too."""
    store = Store(tmp_path, 64 * 1024)
    layer = os.urandom(5000)
    layer_digest = digest_of(layer)
    lie = json.dumps(
        {"schemaVersion": 2, "layers": [{"digest": layer_digest, "size": len(layer) + 1}]}
    ).encode()
    put_manifest(store, digest_of(lie), MANIFEST_TYPE, lie, liar)
    for restart in (False, True):
        if restart:
            store = Store(tmp_path, 64 * 1024)
        assert read_manifest(store, digest_of(lie)) == (MANIFEST_TYPE, lie)
        with pytest.raises(SizeRefused, match=f"manifest of {liar.name} at {liar.registry_url}"):
            await store.open_partial(layer_digest, len(layer), repository=liar)
        partial = await store.open_partial(layer_digest, len(layer), repository=SOURCE)
        store.release_partial(partial)
        partial = await store.open_partial(layer_digest, len(layer), 1024, repository=SOURCE)
        store.release_partial(partial)
    assert store.descriptor_sizes.size_of(SOURCE, layer_digest) is None


async def test_the_repositories_of_a_stored_manifest_go_with_it(tmp_path: Path) -> None:
    store = Store(tmp_path, 64 * 1024, quota=4 * MiB)
    manifests = [json.dumps({"schemaVersion": 2, "n": n}).encode() for n in range(2)]
    for body in manifests:
        for source in (SOURCE, NAMED, TENANT, SOURCE):  # recorded once each
            put_manifest(store, digest_of(body), MANIFEST_TYPE, body, source)
    sources = store.root / "manifests" / "sha256" / f"{digest_of(manifests[0])[7:]}.from"
    assert sources.read_text().splitlines() == [
        "https://registry.example org/app",
        "https://registry.client-named.example x",
        "https://registry.example evil/x",
    ]
    store.flush()
    assert list((store.root / "manifests" / "sha256").iterdir()) == []
    put_manifest(store, digest_of(manifests[0]), MANIFEST_TYPE, manifests[0], SOURCE)
    store.quota = 1
    store.make_room(0)  # evicts it
    assert list((store.root / "manifests" / "sha256").iterdir()) == []
    store.quota = 4 * MiB
    # A private marker of an earlier version (no origin recorded) takes the manifest with it.
    put_manifest(store, digest_of(manifests[0]), MANIFEST_TYPE, manifests[0], SOURCE)
    (store.root / "private" / digest_of(manifests[0])[7:]).write_text("")
    Store(tmp_path, 64 * 1024)
    assert list((store.root / "manifests" / "sha256").iterdir()) == []


def test_a_manifest_that_records_no_repository_teaches_nothing_and_is_dropped_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest cached by an earlier version records no repository that served it: read
    from here it teaches no size (not for the repository its reader names), so the sizes of
    its layers would go unchecked as long as it stays. Dropped when the store opens (with its
    private marker), fetched again when asked, it records its repository."""
    layer = digest_of(b"a layer")
    bodies = [
        json.dumps({"schemaVersion": 2, "n": n, "layers": [{"digest": layer, "size": 7}]}).encode()
        for n in range(2)
    ]
    old, kept = (digest_of(body) for body in bodies)
    store = Store(tmp_path, 64 * 1024)
    for body in bodies:
        put_manifest(store, digest_of(body), MANIFEST_TYPE, body, SOURCE)
    store.mark_private(old, SOURCE.registry_url)
    folder = store.root / "manifests" / "sha256"
    (folder / f"{old[7:]}.from").unlink()  # as an earlier version stored it
    store.descriptor_sizes = DescriptorSizes()
    assert read_manifest(store, old) == (MANIFEST_TYPE, bodies[0])
    assert len(store.descriptor_sizes) == 0
    with caplog.at_level(logging.INFO, logger="pollen.store"):
        store = Store(tmp_path, 64 * 1024)
    said = " ".join(r.getMessage() for r in caplog.records if "dropped 1 cached" in r.getMessage())
    assert "fails while its registry is unreachable" in said and "rate limit" in said
    assert read_manifest(store, old) is None
    assert not store.private_origins(old)
    assert sorted(path.name for path in folder.iterdir()) == [
        kept[7:],
        f"{kept[7:]}.from",
        f"{kept[7:]}.type",
    ]
    assert store.stats().manifests == 1
    assert read_manifest(store, kept) == (MANIFEST_TYPE, bodies[1])


def test_only_whole_lines_of_a_manifests_repositories_count(tmp_path: Path) -> None:
    """A line cut short (a torn write) can name another repository; a file that cannot be
    read records none, and the manifest is still served (a read error failed every read of
    it) until the next start drops it; and no more repositories than a manifest records
    count, however many the file holds."""
    store = Store(tmp_path, 64 * 1024)
    layer = digest_of(b"a layer")
    body = json.dumps({"schemaVersion": 2, "layers": [{"digest": layer, "size": 7}]}).encode()
    digest = digest_of(body)
    put_manifest(store, digest, MANIFEST_TYPE, body, SOURCE)
    sources = store.root / "manifests" / "sha256" / f"{digest[7:]}.from"
    others = [Repository(f"https://r{n}.example", "org/app") for n in range(MANIFEST_SOURCES + 1)]
    torn = Repository(TENANT.registry_url, "evil")  # what "... evil/x" cut short names
    lines = [SOURCE.registry_url, *(" ".join(other) for other in others)]  # no repository
    sources.write_text("".join(f"{line}\n" for line in lines) + " ".join(torn))
    store = Store(tmp_path, 64 * 1024)
    assert read_manifest(store, digest) == (MANIFEST_TYPE, body)
    known = [SOURCE, *others, torn]
    learned = [r for r in known if store.descriptor_sizes.size_of(r, layer) == 7]
    assert learned == others[:MANIFEST_SOURCES]
    sources.unlink()
    sources.mkdir()  # unreadable as a file
    store.descriptor_sizes = DescriptorSizes()
    assert read_manifest(store, digest) == (MANIFEST_TYPE, body)
    assert len(store.descriptor_sizes) == 0
    store = Store(tmp_path, 64 * 1024)  # and, recording nothing, it goes at the next start
    assert read_manifest(store, digest) is None


def test_a_manifest_whose_repositories_cannot_be_recorded_is_not_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record of its repositories goes first: a full disk writing it leaves no manifest
    served (one would teach no sizes, and be missing from the totals), and what was written
    of it is gone at the next start."""
    store = Store(tmp_path, 64 * 1024)
    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    digest = digest_of(body)
    write_lines = pieces.store._write_lines_atomically

    def full_disk(path: Path, lines: list[str], tmp_dir: Path) -> None:
        if path.name.endswith(".from"):
            raise OSError(errno.ENOSPC, "No space left on device")
        write_lines(path, lines, tmp_dir)

    monkeypatch.setattr(pieces.store, "_write_lines_atomically", full_disk)
    with pytest.raises(OSError, match="No space left"):
        put_manifest(store, digest, MANIFEST_TYPE, body, SOURCE)
    assert read_manifest(store, digest) is None and store.manifest_type(digest) is None
    assert store.stats().manifests == 0
    assert list((tmp_path / "tmp").iterdir()) == []
    monkeypatch.undo()
    put_manifest(store, digest, MANIFEST_TYPE, body, SOURCE)  # room again
    assert read_manifest(store, digest) == (MANIFEST_TYPE, body)


@pytest.mark.parametrize("record", ["", "https://registry.example org/a"])
def test_a_manifest_whose_record_names_no_whole_repository_is_dropped_at_start(
    tmp_path: Path, record: str
) -> None:
    """An empty record (power lost before its bytes reached the disk, the body's rename
    after it did) or a torn one teaches nothing: as a manifest that records no repository."""
    store = Store(tmp_path, 64 * 1024)
    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    digest = digest_of(body)
    put_manifest(store, digest, MANIFEST_TYPE, body, SOURCE)
    folder = store.root / "manifests" / "sha256"
    (folder / f"{digest[7:]}.from").write_text(record)
    store = Store(tmp_path, 64 * 1024)
    assert read_manifest(store, digest) is None
    assert list(folder.iterdir()) == []


def test_a_record_or_a_type_left_without_its_manifest_is_removed_at_start(
    tmp_path: Path,
) -> None:
    """A put cut short before the body (a full disk, a crash) leaves them behind."""
    store = Store(tmp_path, 64 * 1024)
    bodies = [json.dumps({"schemaVersion": 2, "n": n}).encode() for n in range(3)]
    for body in bodies:
        put_manifest(store, digest_of(body), MANIFEST_TYPE, body, SOURCE)
    folder = store.root / "manifests" / "sha256"
    (folder / digest_of(bodies[0])[7:]).unlink()
    (folder / digest_of(bodies[1])[7:]).unlink()
    (folder / f"{digest_of(bodies[1])[7:]}.type").unlink()
    Store(tmp_path, 64 * 1024)
    kept = digest_of(bodies[2])[7:]
    assert sorted(p.name for p in folder.iterdir()) == [kept, f"{kept}.from", f"{kept}.type"]


async def test_a_sparse_partial_counts_its_allocated_blocks_not_its_size(tmp_path: Path) -> None:
    store = Store(tmp_path, 64 * 1024, quota=100 * MiB)
    data = os.urandom(64 * 1024)
    partial = await store.open_partial(digest_of(b"big, barely started"), 64 * MiB, repository=None)
    partial.write_sync(0, [data])
    store.release_partial(partial)  # left on disk for a resume
    assert store.bytes_used() < MiB
    assert store.stats().partial_blobs == 1


async def test_a_leftover_partial_is_evicted_to_make_room(tmp_path: Path) -> None:
    store = Store(tmp_path, 64 * 1024, quota=4 * MiB)
    old = os.urandom(3 * MiB)
    partial = await store.open_partial(digest_of(old), len(old), repository=None)
    partial.write_sync(0, [old[: 2 * MiB]])
    store.release_partial(partial)
    # A restart: the leftover is nobody's download now, and stays on disk.
    store = Store(tmp_path, 64 * 1024, quota=4 * MiB)
    assert store.bytes_used() >= 2 * MiB
    new = os.urandom(3 * MiB)
    fresh = await store.open_partial(digest_of(new), len(new), repository=None)
    assert store.partial_size_on_disk(digest_of(old)) is None
    assert partial_files(store) == [f"{digest_of(new)[7:]}.data"]
    fresh.write_sync(0, [new])
    fresh.finalize_sync()
    store.release_partial(fresh)
    assert store.bytes_used() <= 4 * MiB


async def test_a_partial_allocates_nothing_per_piece(tmp_path: Path) -> None:
    # After the checks a blob may still have many pieces; its bookkeeping grows with the
    # pieces written, not with the pieces it has.
    layout = PieceLayout(2**40, 1)
    tracemalloc.start()
    try:
        partial = PartialBlob(
            "sha256:" + "0" * 64, layout, tmp_path / "d", tmp_path / "m", tmp_path / "c", {}
        )
        partial.write_sync(0, [b"abc"])
        assert partial.missing_runs() == [(3, 2**40)]
        assert partial.first_missing_offset() == 3
        assert partial.bytes_present == 3
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    partial.close()
    assert peak < MiB


async def test_verification_covers_the_stored_bytes_not_the_stream(tmp_path: Path) -> None:
    # A lying upstream left pieces of zeros, recorded with their (matching) hashes. A later
    # stream of the right bytes from byte 0 skips those pieces: the sha256 must then see the
    # zeros that are stored, not the bytes that went by.
    piece = 1000
    data = os.urandom(10 * piece + 7)
    digest = digest_of(data)
    store = Store(tmp_path, piece)
    partial = await store.open_partial(digest, len(data), repository=None)
    partial.write_sync(0, [bytes(3 * piece)])
    store.release_partial(partial)
    resumed = await Store(tmp_path, piece).open_partial(digest, len(data), repository=None)
    assert sorted(resumed.piece_hashes) == [0, 1, 2]
    resumed.write_sync(0, [data])
    with pytest.raises(DigestMismatch):
        resumed.finalize_sync()
    assert not store.has_blob(digest)


async def test_evicting_a_partial_keeps_the_private_marker_of_a_manifest_of_that_digest(
    tmp_path: Path,
) -> None:
    """Blobs and manifests share a digest space: a partial fetched (as a blob, from a
    registry a client named) under a private manifest's digest, then evicted, must not take
    the manifest's private marker with it."""
    store = Store(tmp_path, 64 * 1024, quota=4 * MiB)
    manifest = b'{"schemaVersion": 2, "layers": []}'
    digest = digest_of(manifest)
    put_manifest(store, digest, MANIFEST_TYPE, manifest, SOURCE)
    store.mark_private(digest, "https://registry.example")
    partial = await store.open_partial(digest, 3 * MiB, repository=None)
    partial.write_sync(0, [os.urandom(2 * MiB)])
    store.release_partial(partial)
    store = Store(tmp_path, 64 * 1024, quota=4 * MiB)  # a restart: the partial is a leftover
    assert read_manifest(store, digest) is not None  # read since: the partial is older
    await store.open_partial(digest_of(b"x" * 10), 3 * MiB, repository=None)  # evicts it
    assert store.partial_size_on_disk(digest) is None
    assert store.private_origins(digest) == ["https://registry.example"]
    store.flush()  # the manifest goes: its marker may go with it
    assert read_manifest(store, digest) is None
    assert not store.private_origins(digest)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 MiB tmpfs (written only as far as the test writes)."""
    with mounted_tmpfs(tmp_path / "small", "256m") as mount:
        yield mount


async def test_a_told_size_that_trickles_in_reserves_no_disk(small_disk: Path) -> None:
    """An upstream that claims 200 MiB and sends a trickle must not make the node evict its
    cache or refuse every other blob for as long as it keeps the download alive."""
    store = Store(small_disk, 64 * 1024)
    cached = await store_blob(store, os.urandom(100 * MiB))
    trickle = await store.open_partial(digest_of(b"claimed big"), 200 * MiB, repository=None)
    try:
        trickle.write_sync(0, [os.urandom(64 * 1024)])
        new = await store.open_partial(
            digest_of(b"a real blob"), 8 * MiB, repository=None
        )  # no NoRoom
        store.release_partial(new)
        assert store.has_blob(cached)  # and nothing evicted for the claim
    finally:
        store.release_partial(trickle)  # closes its file: the tmpfs can be unmounted


async def test_a_manifest_flushed_while_a_blob_of_its_digest_commits_leaves_the_blob_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit writes the private marker, then fsyncs and renames the blob (a worker
    thread). A manifest of the same digest evicted in between (here: a flush during the
    fsync) found no blob yet and took the shared marker with it: the blob then landed with
    no marker and was served to anyone. A digest with a partial in this process keeps it."""
    store = Store(tmp_path, 64 * 1024)
    manifest = b'{"schemaVersion": 2, "layers": []}'
    digest = digest_of(manifest)
    origin = "https://registry.example"
    put_manifest(store, digest, MANIFEST_TYPE, manifest, SOURCE)
    store.mark_private(digest, origin)
    partial = await store.open_partial(digest, len(manifest), origins=[origin], repository=None)
    partial.write_sync(0, [manifest])
    partial.verify_sync()
    real_fsync = os.fsync
    flushed: list[tuple[int, int]] = []

    def fsync_then_flush(fd: int) -> None:
        real_fsync(fd)
        if not flushed:
            flushed.append(store.flush())  # as the event loop would, between two steps

    monkeypatch.setattr(os, "fsync", fsync_then_flush)
    store.commit_sync(partial)
    store.release_partial(partial)
    assert flushed and read_manifest(store, digest) is None  # the manifest went meanwhile
    assert store.has_blob(digest)
    assert store.private_origins(digest) == [origin]


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The lengths of the bodies parsed as JSON from now on (json.loads, which
    pieces.descriptors uses)."""
    lengths: list[int] = []
    loads = json.loads

    def counting(body: bytes) -> object:
        lengths.append(len(body))
        return loads(body)

    monkeypatch.setattr(json, "loads", counting)
    return lengths


def test_a_stored_manifest_is_parsed_once_not_on_every_read(
    tmp_path: Path, parsed: list[int]
) -> None:
    """Its descriptor sizes were learned again on every GET and HEAD by digest: a 4 MiB
    manifest cost ~0.36 s of the event loop per read, and four connections asking for one
    held every other request of the node back ~1 s (a helper's attacker probe)."""
    manifest = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    digest = digest_of(manifest)
    store = Store(tmp_path, 64 * 1024)
    put_manifest(store, digest, MANIFEST_TYPE, manifest, SOURCE)
    for _ in range(5):
        assert read_manifest(store, digest) == (MANIFEST_TYPE, manifest)
    assert len(parsed) == 1
    # After a restart: once more (the sizes live in memory only), then no more.
    store = Store(tmp_path, 64 * 1024)
    for _ in range(5):
        assert read_manifest(store, digest) == (MANIFEST_TYPE, manifest)
    assert len(parsed) == 2


def test_a_manifest_of_many_repositories_and_descriptors_is_parsed_once(
    tmp_path: Path, parsed: list[int]
) -> None:
    """A read parsed the body once per repository recorded, and each repository's learning
    moved the count its memo is held to before the next was remembered: once repositories
    times descriptors reached the table's bound, every read parsed it once per repository (a
    client that pushes one manifest of many layers to 8 repositories it owns, then reads it
    by digest on 4 connections, holds the node's event loop as the 4 MiB one did)."""
    layers = [digest_of(b"%d" % n) for n in range(40)]
    descriptors = [{"digest": layer, "size": n} for n, layer in enumerate(layers)]
    body = json.dumps({"schemaVersion": 2, "layers": descriptors}).encode()
    digest = digest_of(body)
    sources = [Repository(SOURCE.registry_url, f"tenant/{n}") for n in range(MANIFEST_SOURCES)]
    store = Store(tmp_path, 64 * 1024)
    for source in sources:
        put_manifest(store, digest, MANIFEST_TYPE, body, source)
    store = Store(tmp_path, 64 * 1024)  # a restart: nothing learned yet
    store.descriptor_sizes = DescriptorSizes(limit=64)  # 8 x 40 sizes fill it five times
    parsed.clear()
    for _ in range(5):
        assert read_manifest(store, digest) == (MANIFEST_TYPE, body)
    assert len(parsed) == 1
    assert store.descriptor_sizes.size_of(sources[-1], layers[-1]) == 39
