"""The on-disk, content-addressed piece store.

Layout under the data directory:
    blobs/sha256/<hex>         complete blobs; sha256 verified before they were moved here
    partial/<hex>.data         a blob being written (sparse file of the full size)
    partial/<hex>.meta         msgpack: size, piece size, {piece index: xxh3-128} of written pieces
    manifests/sha256/<hex>     manifest bytes (verified), with <hex>.type holding the media type
    private/<hex>              marker: this content was fetched with credentials (access-checked)
    tmp/                       temporary files, emptied at start-up

Accounting: bytes used (complete + partial), last access (the file's mtime, so it survives a
restart), and a count of readers per blob; eviction never touches a blob that a reader holds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from pieces.digest import digest_hex
from pieces.layout import DEFAULT_PIECE_SIZE, PieceLayout
from pieces.partial import (
    PartialBlob,
    StoreError,
    io_error,
    load_meta,
    piece_hash,
    verified_pieces,
)

log = logging.getLogger("pollen.store")

HASH_CACHE_BLOBS = 4096  # blobs whose piece hashes are kept (~2 KiB each at 512 MiB)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the store's use."""

    bytes_used: int
    quota: int | None
    complete_blobs: int
    partial_blobs: int
    manifests: int
    readers: int


class Store:
    """Content-addressed blob store. One per node; not shared between processes."""

    def __init__(
        self, root: Path, piece_size: int = DEFAULT_PIECE_SIZE, quota: int | None = None
    ) -> None:
        self.root = Path(root)
        self.piece_size = piece_size
        self.quota = quota
        self._blobs = self.root / "blobs" / "sha256"
        self._partial = self.root / "partial"
        self._manifests = self.root / "manifests" / "sha256"
        self._tmp = self.root / "tmp"
        self._private = self.root / "private"
        for directory in (self._blobs, self._partial, self._manifests, self._tmp, self._private):
            directory.mkdir(parents=True, exist_ok=True)
        # Piece hashes of complete blobs, per (hex digest, piece size): peers ask for them
        # with every Want. Read from worker threads, hence the lock.
        self._hash_cache: OrderedDict[tuple[str, int], dict[int, bytes]] = OrderedDict()
        self._hash_cache_lock = threading.Lock()
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for leftover in self._partial.glob("*.meta.tmp"):
            leftover.unlink(missing_ok=True)
        self._readers: dict[str, int] = {}
        self._partials: dict[str, PartialBlob] = {}

    # ---- complete blobs ------------------------------------------------------------------

    def complete_path(self, digest: str) -> Path:
        return self._blobs / digest_hex(digest)

    def has_blob(self, digest: str) -> bool:
        """True when a complete, verified copy of `digest` is stored."""
        return self.complete_path(digest).is_file()

    def blob_size(self, digest: str) -> int | None:
        try:
            return self.complete_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def reading(self, digest: str) -> Iterator[None]:
        """Hold `digest` against eviction while a reader uses it; refresh its last access."""
        hex_ = digest_hex(digest)
        self._readers[hex_] = self._readers.get(hex_, 0) + 1
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._blobs / hex_)
        try:
            yield
        finally:
            self._readers[hex_] -= 1
            if not self._readers[hex_]:
                del self._readers[hex_]

    # ---- partial blobs -------------------------------------------------------------------

    def partial(self, digest: str) -> PartialBlob | None:
        """The partial blob open in this process for `digest`, if any."""
        return self._partials.get(digest_hex(digest))

    def partial_size_on_disk(self, digest: str) -> int | None:
        """Size recorded by a partial of `digest` left on disk (by this or an earlier process)."""
        hex_ = digest_hex(digest)
        if hex_ in self._partials:
            return self._partials[hex_].layout.size
        meta = load_meta(self._partial / f"{hex_}.meta")
        if meta is None or meta.get("digest") != digest:
            return None
        size: int = meta["size"]
        return size

    async def open_partial(
        self, digest: str, size: int, piece_size: int | None = None
    ) -> PartialBlob:
        """Open (resuming from disk when possible) the partial blob for `digest` of `size` bytes.

        `piece_size` overrides the store's default (a swarm uses its owner's piece size).

        A partial left by an earlier process is resumed only if its size matches; every piece it
        recorded is re-hashed first, and pieces that fail are dropped (fetched again).
        """
        hex_ = digest_hex(digest)
        existing = self._partials.get(hex_)
        if existing is not None:
            if existing.layout.size != size:
                raise StoreError(
                    f"{digest}: size {size} disagrees with the download in progress "
                    f"({existing.layout.size})"
                )
            return existing
        data_path = self._partial / f"{hex_}.data"
        meta_path = self._partial / f"{hex_}.meta"
        pieces: dict[int, bytes] = {}
        layout = PieceLayout(size, piece_size or self.piece_size)
        meta = load_meta(meta_path)
        if (
            meta is not None
            and meta["size"] == size
            and meta.get("digest") == digest
            and (piece_size is None or meta["piece_size"] == piece_size)
        ):
            layout = PieceLayout(size, meta["piece_size"])
            pieces = await trio.to_thread.run_sync(
                verified_pieces, data_path, layout, meta["pieces"]
            )
            dropped = len(meta["pieces"]) - len(pieces)
            log.info(
                "resuming %s: %d of %d pieces verified%s",
                digest,
                len(pieces),
                layout.count,
                f", {dropped} failed their hash and will be fetched again" if dropped else "",
            )
        else:
            if meta is not None:
                log.info("discarding stale partial of %s (size or format changed)", digest)
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
        self.make_room(size)
        try:
            blob = PartialBlob(digest, layout, data_path, meta_path, self._blobs / hex_, pieces)
        except OSError as exc:
            raise io_error(exc, f"creating {digest} in {self.root}") from exc
        self._partials[hex_] = blob
        return blob

    def release_partial(self, blob: PartialBlob) -> None:
        """Forget an in-process partial (after it completed, failed or was abandoned)."""
        self._partials.pop(blob.hex, None)
        if blob.complete:
            # Keep its piece hashes: peers asking for this blob get them without a re-read.
            self._remember_hashes(blob.hex, blob.layout.piece_size, dict(blob.piece_hashes))
        blob.close()

    def _remember_hashes(self, hex_: str, piece_size: int, hashes: dict[int, bytes]) -> None:
        with self._hash_cache_lock:
            self._hash_cache[(hex_, piece_size)] = hashes
            self._hash_cache.move_to_end((hex_, piece_size))
            while len(self._hash_cache) > HASH_CACHE_BLOBS:
                self._hash_cache.popitem(last=False)

    # ---- pieces for peers ----------------------------------------------------------------

    def open_piece_sync(
        self, digest: str, index: int, piece_size: int
    ) -> tuple[int, int, int] | None:
        """(open fd, offset, length) of a verified piece we hold; the caller closes the fd."""
        partial = self._partials.get(digest_hex(digest))
        if partial is not None and not partial.complete:
            if index not in partial.piece_hashes or partial.layout.piece_size != piece_size:
                return None
            paths = [partial.data_path, partial.complete_path]
            layout = partial.layout
        else:
            paths = [self.complete_path(digest)]
            size = self.blob_size(digest)
            if size is None:
                return None
            layout = PieceLayout(size, piece_size)
        if not 0 <= index < layout.count:
            return None
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # renamed from partial to complete meanwhile: try the other
            return fd, layout.start(index), layout.length(index)
        return None

    def complete_piece_hashes_sync(self, digest: str, piece_size: int) -> dict[int, bytes] | None:
        """xxh3-128 of every piece of a complete blob: kept from when it was written, or
        computed from disk (~10 GB/s) and then kept."""
        size = self.blob_size(digest)
        if size is None:
            return None
        hex_ = digest_hex(digest)
        with self._hash_cache_lock:
            cached = self._hash_cache.get((hex_, piece_size))
        if cached is not None:
            return dict(cached)
        layout = PieceLayout(size, piece_size)
        hashes = {}
        try:
            with open(self.complete_path(digest), "rb") as f:
                for index in range(layout.count):
                    data = os.pread(f.fileno(), layout.length(index), layout.start(index))
                    hashes[index] = piece_hash(data)
        except FileNotFoundError:
            return None
        self._remember_hashes(hex_, piece_size, hashes)
        return dict(hashes)

    def _forget_hashes(self, hex_: str) -> None:
        with self._hash_cache_lock:
            for key in [k for k in self._hash_cache if k[0] == hex_]:
                del self._hash_cache[key]

    # ---- manifests -----------------------------------------------------------------------

    def put_manifest(self, digest: str, media_type: str, body: bytes) -> None:
        """Store verified manifest bytes (the caller checked the digest)."""
        hex_ = digest_hex(digest)
        body_tmp = self._tmp / f"{hex_}.manifest"
        type_tmp = self._tmp / f"{hex_}.type"
        body_tmp.write_bytes(body)
        type_tmp.write_text(media_type)
        # Type first: a manifest body without its type is never served (get_manifest needs both).
        os.replace(type_tmp, self._manifests / f"{hex_}.type")
        os.replace(body_tmp, self._manifests / hex_)

    def get_manifest(self, digest: str) -> tuple[str, bytes] | None:
        """(media type, bytes) of a stored manifest, or None."""
        hex_ = digest_hex(digest)
        try:
            body = (self._manifests / hex_).read_bytes()
            media_type = (self._manifests / f"{hex_}.type").read_text()
        except FileNotFoundError:
            return None
        return media_type, body

    # ---- private content ------------------------------------------------------------------

    def mark_private(self, digest: str) -> None:
        """Remember that `digest` came with credentials: serve it only after an access check.

        The marker is written before the content is served from the cache, and it is never
        removed: once private, always checked (a wrong 'public' would leak).
        """
        (self._private / digest_hex(digest)).touch()

    def is_private(self, digest: str) -> bool:
        return (self._private / digest_hex(digest)).exists()

    # ---- accounting and eviction ---------------------------------------------------------

    def bytes_used(self) -> int:
        total = 0
        for directory in (self._blobs, self._partial, self._manifests):
            for entry in os.scandir(directory):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
        return total

    def stats(self) -> StoreStats:
        return StoreStats(
            bytes_used=self.bytes_used(),
            quota=self.quota,
            complete_blobs=sum(1 for _ in self._blobs.iterdir()),
            partial_blobs=sum(1 for _ in self._partial.glob("*.data")),
            manifests=sum(1 for p in self._manifests.iterdir() if p.suffix != ".type"),
            readers=sum(self._readers.values()),
        )

    def make_room(self, incoming: int) -> None:
        """Evict least recently used complete blobs until `incoming` more bytes fit the quota.

        Blobs with readers are never evicted. If the quota still cannot be met, the write goes
        ahead over quota (a warning is logged): failing a pull is worse than a soft overshoot,
        and a real shortage of disk still fails cleanly with DiskFull.
        """
        if self.quota is None:
            return
        used = self.bytes_used()
        if used + incoming <= self.quota:
            return
        for _mtime, hex_, size in sorted(self._evictable()):
            if used + incoming <= self.quota:
                break
            self._evict(hex_)
            used -= size
            log.info("evicted sha256:%s (%d bytes) to stay under the cache size", hex_, size)
        if used + incoming > self.quota:
            log.warning(
                "cache size %d exceeded: %d bytes used, %d incoming, the rest is in use",
                self.quota,
                used,
                incoming,
            )

    def flush(self) -> tuple[int, int]:
        """Remove every complete blob nobody is reading, and every cached manifest; blobs in
        flight stay. Returns (blobs removed, bytes freed). For benchmarks of cold pulls."""
        removed = freed = 0
        for _mtime, hex_, size in self._evictable():
            self._evict(hex_)
            removed += 1
            freed += size
        for entry in os.scandir(self._manifests):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        log.info("cache flushed: %d blobs, %d bytes", removed, freed)
        return removed, freed

    def _evictable(self) -> list[tuple[float, str, int]]:
        """(mtime, hex digest, size) of the complete blobs that no reader holds."""
        candidates = []
        for entry in os.scandir(self._blobs):
            if entry.name in self._readers:
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat()
                candidates.append((st.st_mtime, entry.name, st.st_size))
        return candidates

    def _evict(self, hex_: str) -> None:
        (self._blobs / hex_).unlink(missing_ok=True)
        (self._private / hex_).unlink(missing_ok=True)
        self._forget_hashes(hex_)

    def disk_free(self) -> int:
        return shutil.disk_usage(self.root).free
