"""The on-disk, content-addressed piece store.

Layout under the data directory:
    blobs/sha256/<hex>         complete blobs, verified before they were moved here (sha512 ones
                               too, by their 128 hex digits: see pieces/digest.py)
    partial/<hex>.data         a blob being written (sparse file of the full size)
    partial/<hex>.meta         msgpack: size, piece size, {piece index: xxh3-128} of written pieces
    manifests/sha256/<hex>     manifest bytes (verified), with <hex>.type holding the media type
                               and <hex>.from the repositories that served them ("<registry
                               base URL> <repository>" a line): the sizes they give are those
                               repositories' word only
    private/<hex>              the registries (a base URL a line) that served this content with
                               credentials, written once it is verified: only they vouch for
                               a reader (see peer/access.py)
    layouts/<hex>              the piece size a complete blob was cut to (its swarm's owner's:
                               pieces/layout_records.py)
    tmp/                       temporary files, emptied at start-up

Modes: the store's directories are 0700 and the files it writes 0600, whatever the umask: what
it holds is the node's user's alone (private content must not reach another local user around
the access check). Directories found looser (an earlier version's) are tightened at start-up;
one another user owns, or a symbolic link to one, is refused (what they put in it would be
served). The data directory itself is made 0700 when missing, else left as the operator made
it, but refused when it is another user's (not root's) or others may write to it without the
sticky bit (pieces/modes.py).

Accounting: bytes used (complete + partial; a partial by its allocated blocks, as it is a sparse
file), last access (the file's mtime, so it survives a restart), and a count of holders per
blob (readers, uploads to peers, preheat jobs); eviction never touches a blob that is held or
a partial that a download writes. Partials left behind (a failure, a crash, a restart) are
evicted like complete blobs. The totals are running ones (pieces/ledger.py): one walk of the
disk at start-up and one per `rescan`, not one per request.

Eviction (least recently used first) happens for room when a download needs it (the disk, the
cache size, the high watermark of the file system) and at `sweep`, the node's periodic check
(also: blobs unused for the TTL). The decisions are pure (pieces/room.py).

Sizes are told by upstreams and peers, and either can lie: `open_partial` checks them against
the blob's descriptor as the repository the download names gives it (learned from the
manifests that repository served, at its registry: pieces/descriptors.py), the piece limit,
the quota and the disk before anything is allocated or evicted for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from pieces.descriptors import DescriptorSizes, Repository
from pieces.digest import digest_hex, digest_of_hex, is_store_key
from pieces.layout import (
    DEFAULT_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MAX_PIECES,
    PIECES_PER_BLOB,
    PieceLayout,
    piece_size_for,
)
from pieces.layout_records import LayoutRecords
from pieces.ledger import Entry, Kind, Ledger
from pieces.modes import DIR_MODE, check_data_dir, close_dir, make_dir, write_file
from pieces.partial import (
    NoRoom,
    PartialBlob,
    SizeRefused,
    StoreError,
    io_error,
    load_meta,
    piece_hash,
    verified_pieces,
)
from pieces.room import (
    Candidate,
    RoomPlan,
    Space,
    Watermarks,
    fits,
    next_expiry,
    plan_room,
    plan_sweep,
)

log = logging.getLogger("pollen.store")

HASH_CACHE_BLOBS = 4096  # blobs whose piece hashes are kept (~2 KiB each at 512 MiB)
MAX_ORIGINS = 8  # registries recorded per private blob (the first ones are kept)
# Repositories recorded per stored manifest (the first ones): a read from the cache teaches its
# sizes for them. One that serves it later still teaches them as it does (`put_manifest`).
MANIFEST_SOURCES = 8
ROOM_STEP = 64 * 1024 * 1024  # eviction for a download runs this far ahead of its bytes
RESERVE_SECONDS = 60.0  # a download reserves disk for this long at its rate (see _reservation)
WARN_EVERY = 60.0  # seconds between two warnings that a bound cannot be met


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How the store keeps itself within bounds, besides the quota (see pieces/room.py)."""

    ttl: float | None = None  # seconds a blob may go unread before it is evicted
    marks: Watermarks | None = None  # disk use of the file system to evict at, and down to


@dataclass(frozen=True, slots=True)
class Eviction:
    """One blob or partial that eviction removed (or, in a dry run, would remove)."""

    digest: str
    size: int
    partial: bool
    last_used: float  # wall-clock seconds
    reason: str  # pieces.room.FOR_*
    manifest: bool = False


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A snapshot of the store's use."""

    bytes_used: int
    quota: int | None
    complete_blobs: int
    partial_blobs: int
    manifests: int
    holders: int  # holds on blobs: readers, uploads to peers, preheat jobs and leases


class Store:
    """Content-addressed blob store. One per node; not shared between processes."""

    def __init__(
        self,
        root: Path,
        piece_size: int = DEFAULT_PIECE_SIZE,
        quota: int | None = None,
        policy: CachePolicy | None = None,
        pieces_per_blob: int = PIECES_PER_BLOB,
        uplink: int = 0,
    ) -> None:
        self.root = Path(root)
        self.piece_size = piece_size  # the largest; `piece_size_for` cuts each blob
        self.pieces_per_blob = pieces_per_blob
        # bytes/s blobs are cut for (0: not declared): the cluster's (peer/cluster/rendezvous.py
        # `cluster_uplink`), kept by the swarm; on slow links, smaller pieces.
        self.uplink = uplink
        self.quota = quota
        self.policy = policy or CachePolicy()
        self._blobs = self.root / "blobs" / "sha256"
        self._partial = self.root / "partial"
        self._manifests = self.root / "manifests" / "sha256"
        self._tmp = self.root / "tmp"
        self._private = self.root / "private"
        self._layouts_dir = self.root / "layouts"
        self._close_directories()
        # Piece hashes of complete blobs, per (hex digest, piece size): peers ask for them
        # with every Want. Read from worker threads, hence the lock.
        self._hash_cache: OrderedDict[tuple[str, int], dict[int, bytes]] = OrderedDict()
        self._hash_cache_lock = threading.Lock()
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)
        for leftover in self._partial.glob("*.meta.tmp"):
            leftover.unlink(missing_ok=True)
        # Holders per hex digest (readers, uploads, preheat jobs): never evicted while held.
        self._readers: dict[str, int] = {}
        self._partials: dict[str, PartialBlob] = {}
        # Blob sizes that the stored manifests give, per repository that served them (bounded):
        # told sizes are checked against the word of the repository they come from.
        self.descriptor_sizes = DescriptorSizes()
        # The private markers, kept in memory as well (hex digest -> origins): the access
        # check runs for every piece a peer asks of us, twice, and reading a file each time
        # cost a failed open and an exception per check for public blobs. Only this process
        # writes the markers (through the methods below, under the lock: commits run in
        # worker threads), so the copy is exact.
        self._markers_lock = threading.Lock()
        self._markers: dict[str, tuple[str, ...]] = self._load_markers()
        self._drop_unrecorded_manifests()
        self.ledger = Ledger()
        self.rescan()
        self._layouts = LayoutRecords(self._layouts_dir, self._tmp)
        self._layouts.load(self._walked_blob_size)
        self._warned_at = -WARN_EVERY  # the last over-quota or over-watermark warning
        # Evictions since start-up, per reason: (count, bytes).
        self.evictions: dict[str, tuple[int, int]] = {}

    def _close_directories(self) -> None:
        """Make the store's directories, or tighten those an earlier version left open to
        other local users (pieces/modes.py). The data directory is made 0700 if it is missing,
        and left as it is if not (the operator's: a hostPath, say).

        Raises:
            UnsafeDirectory: the data directory is another user's or open to their writes
                (no sticky bit), or one of the store's is not the node's user's (nor a link
                to one of theirs), or cannot be tightened.
            OSError: one cannot be made or looked at.
        """
        make_dir(self.root)
        check_data_dir(self.root)
        ours = (
            self.root / "blobs",
            self._blobs,
            self._partial,
            self.root / "manifests",
            self._manifests,
            self._tmp,
            self._private,
            self._layouts_dir,
        )
        for directory in ours:
            was = close_dir(directory)
            if was is not None:  # said as it is done: a later one may stop the start
                log.info(
                    "%s was mode %04o, open to other local users: set to %04o (the store's "
                    "directories are the node's user's alone)",
                    directory,
                    was,
                    DIR_MODE,
                )

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
        """Hold `digest` against eviction while a reader uses it; refresh its last access
        (the file's mtime too, so that it survives a restart)."""
        with self.holding(digest):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self._blobs / digest_hex(digest))
            yield

    @contextlib.contextmanager
    def holding(self, digest: str) -> Iterator[None]:
        """Hold `digest` (blob or partial) against eviction, and count it as used now: an
        upload to a peer, a preheat job until it ends."""
        hex_ = digest_hex(digest)
        self._readers[hex_] = self._readers.get(hex_, 0) + 1
        now = time.time()
        self.ledger.touch(Kind.BLOB, hex_, now)
        self.ledger.touch(Kind.PARTIAL, hex_, now)  # a partial left on disk, held by a job
        try:
            yield
        finally:
            self._readers[hex_] -= 1
            if not self._readers[hex_]:
                del self._readers[hex_]

    def is_held(self, digest: str) -> bool:
        return digest_hex(digest) in self._readers

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
        self,
        digest: str,
        size: int,
        piece_size: int | None = None,
        origins: list[str] | None = None,
        *,
        repository: Repository | None,
    ) -> PartialBlob:
        """Open (resuming from disk when possible) the partial blob for `digest` of `size` bytes.

        `piece_size` overrides the store's rule (`piece_size_for` the size, the configured piece
        size the largest); a swarm uses its owner's piece size.
        `origins`: the registries the bytes come from with credentials (none: public). A
        partial left on disk is resumed only for the same origins: its bytes must not reach a
        reader whose registry never vouched for them. One open in this process gains them. Nor
        is one resumed for a download from another registry than its own (`repository`'s), even
        public: a registry a client names could send the right size and wrong bytes, hang up
        short, and have the real registry asked only for the rest (until 2026-12-04).

        `size` and `piece_size` come from an upstream or a peer: they are checked (descriptor,
        piece limit, quota, disk) before anything is allocated or evicted for them.
        `repository`: the repository the download names, at its registry, whose bytes these
        are, from it or through a peer: the descriptor is the one its manifests give (None: no
        repository's, the descriptor is not asked; said at every call, never by default). A
        manifest from another repository or registry, perhaps one a client named or pushed to,
        checks nothing here.

        A partial left by an earlier process is resumed only if its size matches; every piece it
        recorded is re-hashed first, and pieces that fail are dropped (fetched again).

        Raises:
            SizeRefused: `size` disagrees with the blob's descriptor, or is no usable size.
            NoRoom: the blob cannot fit the cache size or the disk; nothing was evicted.
            StoreError: `size` disagrees with the download in progress, or an I/O error.
        """
        hex_ = digest_hex(digest)
        registry = repository.registry_url if repository is not None else None
        existing = self._partials.get(hex_)
        if existing is not None:
            if existing.layout.size != size:
                raise StoreError(
                    f"{digest}: size {size} disagrees with the download in progress "
                    f"({existing.layout.size})"
                )
            existing.add_origins(list(origins or []))
            return existing
        required = piece_size  # a swarm's (its owner's); None: ours, or the one on disk
        piece_size = piece_size or self.piece_size_for(size)
        self._check_size(digest, size, piece_size, repository)
        data_path = self._partial / f"{hex_}.data"
        meta_path = self._partial / f"{hex_}.meta"
        pieces: dict[int, bytes] = {}
        layout = PieceLayout(size, piece_size)
        meta = load_meta(meta_path)
        if (
            meta is not None
            and meta["size"] == size
            and meta.get("digest") == digest
            and (required is None or meta["piece_size"] == required)
            and PieceLayout(size, meta["piece_size"]).count <= MAX_PIECES
            and sorted(meta["origins"]) == sorted(origins or [])
            and meta.get("registry") == registry
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
                log.info(
                    "discarding the partial of %s left on disk (size, piece size or the "
                    "registries it came from differ)",
                    digest,
                )
            meta_path.unlink(missing_ok=True)
            data_path.unlink(missing_ok=True)
            self.ledger.drop(Kind.PARTIAL, hex_)
        # Room for the whole blob must be there (else NoRoom now, nothing evicted), but only
        # the first ROOM_STEP is made now, the rest as the bytes arrive (ensure_room): a told
        # size and a trickle cannot evict the cache. Even for a size a manifest's descriptor
        # gives: any client can make the node read a manifest from a registry it names (one
        # giving a made-up digest 96 MiB, then a trickle of it, emptied the cache). No await
        # from here to the registration below.
        step = min(size, ROOM_STEP)
        self.make_room(size, digest, evict_for=step)
        try:
            blob = PartialBlob(
                digest, layout, data_path, meta_path, self._blobs / hex_, pieces, origins, registry
            )
        except OSError as exc:
            raise io_error(exc, f"creating {digest} in {self.root}") from exc
        blob.room_until = blob.bytes_present + step
        self._partials[hex_] = blob
        # Written by this process from now on: counted live (bytes_used), not in the ledger
        # (until here, its bytes on disk counted there, for make_room above as well).
        self.ledger.drop(Kind.PARTIAL, hex_)
        return blob

    def ensure_room(self, blob: PartialBlob, incoming: int) -> None:
        """Before writing `incoming` more bytes of `blob`: evict what the next ROOM_STEP needs
        once the room made so far is used up, so a download evicts in step with the bytes it
        really receives.

        Raises:
            NoRoom: the disk cannot hold them even with everything evictable gone.
        """
        if blob.bytes_present + incoming <= blob.room_until:
            return
        remaining = max(0, blob.layout.size - blob.bytes_present)
        step = max(incoming, min(remaining, ROOM_STEP))
        self.make_room(step, None, exclude=blob.hex)
        blob.room_until = blob.bytes_present + step

    def piece_size_for(self, size: int) -> int:
        """The piece size this node cuts a blob of `size` bytes into (the rule, with this
        node's largest piece, least pieces per blob and declared uplink)."""
        return piece_size_for(size, self.piece_size, self.pieces_per_blob, self.uplink)

    def _walked_blob_size(self, hex_: str) -> int | None:
        """The size of a complete blob as the start-up walk found it (None: not there)."""
        entry = self.ledger.get(Kind.BLOB, hex_)
        return entry.size if entry is not None else None

    def complete_piece_size(self, digest: str, size: int) -> int:
        """The piece size the complete blob `digest` (of `size` bytes) is served in: the one
        it was completed in (its swarm's owner's), else this node's rule."""
        recorded = self._layouts.piece_size(digest_hex(digest))
        return recorded if recorded is not None else self.piece_size_for(size)

    def _check_size(
        self, digest: str, size: int, piece_size: int, repository: Repository | None
    ) -> None:
        """Refuse a told size that cannot be right or cannot fit, before any allocation; the
        finer check against free space and eviction follows in `make_room`.

        Raises:
            SizeRefused: no usable size, not the descriptor's size, or too many pieces.
            NoRoom: larger than the cache size or than the whole disk.
        """
        if size < 0 or not 0 < piece_size <= MAX_PIECE_SIZE:
            raise SizeRefused(f"{digest}: no usable size ({size} bytes, pieces of {piece_size})")
        if repository is not None:
            described = self.descriptor_sizes.size_of(repository, digest)
            if described is not None and described != size:
                raise SizeRefused(
                    f"{digest}: told it is {size} bytes, but the descriptor of a manifest of "
                    f"{repository.name} at {repository.registry_url} says {described}"
                )
        if self.quota is not None and size > self.quota:
            raise NoRoom(f"{digest} ({size} bytes) is larger than the cache size ({self.quota})")
        disk = shutil.disk_usage(self.root).total
        if size > disk:
            raise NoRoom(f"{digest} ({size} bytes) is larger than the disk of the store ({disk})")
        pieces = -(-size // piece_size)
        if pieces > MAX_PIECES:
            raise SizeRefused(
                f"{digest}: {size} bytes in pieces of {piece_size} would be {pieces} pieces, "
                f"more than {MAX_PIECES}"
            )

    def commit_sync(self, blob: PartialBlob) -> None:
        """Store a verified partial for good (worker thread): its origins become the blob's
        private marker first, so the blob is never complete without it. Bytes that a
        registry served without credentials (no origins) prove the blob public: a marker
        left by others' fetches goes (one client's claim must not lock the blob away)."""
        if not blob.origins:
            self.mark_public(blob.digest)
        for origin in blob.origins:
            self.mark_private(blob.digest, origin)
        self._layouts.record(blob.hex, blob.layout.piece_size)
        blob.commit_sync()

    def release_partial(self, blob: PartialBlob) -> None:
        """Forget an in-process partial (after it completed, failed or was abandoned)."""
        if self._partials.get(blob.hex) is blob:  # not a newer one for the same digest
            del self._partials[blob.hex]
            self._enter_in_ledger(blob)
        if blob.complete:
            # Keep its piece hashes: peers asking for this blob get them without a re-read.
            self._remember_hashes(blob.hex, blob.layout.piece_size, dict(blob.piece_hashes))
        blob.close()

    def _enter_in_ledger(self, blob: PartialBlob) -> None:
        """A partial this process stops writing: the complete blob, or what is left on disk."""
        if blob.complete:
            self.ledger.put(Entry(Kind.BLOB, blob.hex, blob.layout.size, time.time()))
            return
        try:
            st = os.stat(blob.data_path)
        except FileNotFoundError:
            return  # discarded
        self.ledger.put(Entry(Kind.PARTIAL, blob.hex, st.st_blocks * 512, st.st_mtime))

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

    def put_manifest(
        self,
        digest: str,
        media_type: str,
        body: bytes,
        source: Repository,
        descriptors: Sequence[tuple[str, int]],
    ) -> None:
        """Store verified manifest bytes (the caller checked the digest) that the repository
        `source` served: the sizes it gives (its `descriptors`, as `ManifestFacts` reads
        them) are learned as that repository's word."""
        if any(part.split() != [part] for part in source):  # a word each: <hex>.from's line
            raise ValueError(f"not a registry URL and a repository: {source!r}")
        hex_ = digest_hex(digest)
        # Room as for a blob: manifests stored without it let one client, whose registry
        # served unique 4 MiB manifests, take the store to 18 x its quota before the next
        # sweep (until 2026-12-04). NoRoom: larger than the cache, or the disk is full. A
        # manifest stored already (every read by tag stores it again) replaces its own bytes:
        # it needs no room, and asking would evict a blob at the quota. No `digest` for
        # make_room: that names a blob's partial, whose bytes on disk count as there.
        if self.ledger.get(Kind.MANIFEST, hex_) is None:
            self.make_room(len(body))
        body_tmp = self._tmp / f"{hex_}.manifest"
        type_tmp = self._tmp / f"{hex_}.type"
        try:
            write_file(body_tmp, body)
            write_file(type_tmp, media_type.encode("utf-8"))
            # The body last: one in place is served (with its type), and its record must be
            # there, or it teaches no sizes. A put cut short (a full disk, a crash) leaves a
            # record or a type without a body: never served, removed at the next start
            # (`_drop_unrecorded_manifests`), as a record torn or empty after a power loss.
            sources = self._manifest_sources(hex_)
            if source not in sources and len(sources) < MANIFEST_SOURCES:
                lines = [" ".join(known) for known in [*sources, source]]
                _write_lines_atomically(self._manifests / f"{hex_}.from", lines, self._tmp)
            os.replace(type_tmp, self._manifests / f"{hex_}.type")
            os.replace(body_tmp, self._manifests / hex_)
        finally:
            body_tmp.unlink(missing_ok=True)
            type_tmp.unlink(missing_ok=True)
        self.ledger.put(Entry(Kind.MANIFEST, hex_, len(body), time.time()))
        self.descriptor_sizes.learn_stored_manifest([source], digest, descriptors)

    def manifest_type(self, digest: str) -> str | None:
        """The media type a stored manifest is served with (None: not stored)."""
        try:
            return (self._manifests / f"{digest_hex(digest)}.type").read_text("utf-8")
        except FileNotFoundError:
            return None

    def get_manifest(self, digest: str) -> tuple[str, bytes] | None:
        """(media type, bytes) of a stored manifest, or None. Its reader learns its sizes
        (`manifest_sizes_due`, `learn_manifest_sizes`): parsing is not for the store, which
        would do it on the event loop."""
        hex_ = digest_hex(digest)
        try:
            body = (self._manifests / hex_).read_bytes()
            media_type = (self._manifests / f"{hex_}.type").read_text("utf-8")
        except FileNotFoundError:
            return None
        self.ledger.touch(Kind.MANIFEST, hex_, time.time())  # read: not for the TTL to take
        return media_type, body

    def open_manifest(self, digest: str) -> tuple[str, int] | None:
        """(media type, an open file descriptor of its bytes) of a stored manifest, or None;
        the caller closes the descriptor. Answered from the file, a manifest costs a client's
        connection no memory however slowly it reads (a 4 MiB body held per connection, until
        2026-12-04), and an eviction meanwhile leaves the open file readable."""
        hex_ = digest_hex(digest)
        try:
            fd = os.open(self._manifests / hex_, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            media_type = (self._manifests / f"{hex_}.type").read_text("utf-8")
        except FileNotFoundError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        self.ledger.touch(Kind.MANIFEST, hex_, time.time())  # read: not for the TTL to take
        return media_type, fd

    def manifest_sizes_due(self, digest: str) -> bool:
        """Whether the sizes of the stored manifest `digest` are to be learned (again) for a
        repository that served it (`learn_manifest_sizes`)."""
        return bool(self.descriptor_sizes.due(self._manifest_sources(digest_hex(digest)), digest))

    def learn_manifest_sizes(self, digest: str, descriptors: Sequence[tuple[str, int]]) -> None:
        """Learn the (digest, size) `descriptors` of the stored manifest `digest` again, for
        the repositories that served it (never for the one a reader names: any client can
        have a registry it names, or a repository it pushes to, serve a manifest, and read it
        from here naming another): after a restart, clients (containerd) resolve a tag with a
        HEAD, which stores nothing, then GET the manifest by digest from here. One that
        records no repository teaches nothing, and does not outlive a restart
        (`_drop_unrecorded_manifests`)."""
        sources = self._manifest_sources(digest_hex(digest))
        self.descriptor_sizes.learn_stored_manifest(sources, digest, descriptors)

    def _drop_unrecorded_manifests(self) -> None:
        """Drop, at start-up, the cached manifests that record no repository that served
        them: stored by a version before 2026-12-03, or with a record that names no whole
        repository (empty or torn by a power loss, unreadable), read from here they would
        never teach their sizes, and their layers' sizes would go unchecked for as long as
        they stay. Fetched again when asked, they record it. A type or a record left without
        its body (a put cut short) goes too."""
        names = set(os.listdir(self._manifests))
        dropped = {
            name
            for name in names
            if is_store_key(name)
            and (f"{name}.from" not in names or not self._manifest_sources(name))
        }
        for hex_ in dropped:
            (self._manifests / hex_).unlink(missing_ok=True)  # body first: never served alone
        orphans: set[str] = set()  # digests whose type or record went without a body
        for name in names:
            hex_, _, suffix = name.partition(".")
            if suffix not in ("type", "from") or not is_store_key(hex_):
                continue
            if hex_ in dropped or hex_ not in names:
                with contextlib.suppress(OSError):  # a directory there, say: harmless
                    (self._manifests / name).unlink()
                orphans.add(hex_)
        for hex_ in dropped | orphans:
            self._drop_marker_if_unused(hex_)
        if dropped:
            log.info(
                "dropped %d cached manifests that record no repository that served them "
                "(stored by an earlier version, or their record lost): each is fetched again "
                "from its registry when next asked, so a pull by digest of one fails while "
                "its registry is unreachable, and on Docker Hub each of those manifest GETs "
                "counts against the pull rate limit",
                len(dropped),
            )

    def _remove_manifest(self, hex_: str) -> None:
        """A stored manifest's files: its body first (one without its type is never served),
        then its type and its record."""
        for name in (hex_, f"{hex_}.type", f"{hex_}.from"):
            (self._manifests / name).unlink(missing_ok=True)

    def _manifest_sources(self, hex_: str) -> list[Repository]:
        """The repositories recorded as having served the stored manifest `hex_` (the first
        MANIFEST_SOURCES). Whole lines of a registry URL and a repository only: a line cut
        short (a write torn by a crash) can name another repository. A file that cannot be
        read records none: the manifest is still served, it teaches no sizes (an error here
        failed every read of it), and it is dropped at the next start."""
        try:
            text = (self._manifests / f"{hex_}.from").read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            return []
        sources = []
        for line in text.split("\n")[:-1]:  # what follows the last newline is no whole line
            url, _, name = line.partition(" ")
            if url and name and " " not in name:
                sources.append(Repository(url, name))
        return sources[:MANIFEST_SOURCES]

    # ---- private content ------------------------------------------------------------------

    def mark_private(self, digest: str, origin: str) -> None:
        """Remember that `digest` came with credentials from the registry at `origin` (its base
        URL): serve it only to clients that registry accepts.

        The marker is written before the content is served from the cache, and it is never
        removed while the content is kept: once private, always checked (a wrong 'public'
        would leak). Content fetched with credentials from several registries keeps each one.
        """
        if "\n" in origin or not origin:
            raise ValueError(f"not a registry URL: {origin!r}")
        hex_ = digest_hex(digest)
        with self._markers_lock:
            origins = self._markers.get(hex_, ())
            if origin not in origins and len(origins) < MAX_ORIGINS:
                _write_lines_atomically(self._private / hex_, [*origins, origin], self._tmp)
                self._markers[hex_] = (*origins, origin)

    def mark_public(self, digest: str) -> None:
        """A registry served `digest` without credentials and the bytes verified: public."""
        self._drop_marker(digest_hex(digest))

    def _drop_marker(self, hex_: str) -> None:
        with self._markers_lock:
            (self._private / hex_).unlink(missing_ok=True)
            self._markers.pop(hex_, None)

    def private_origins(self, digest: str) -> list[str]:
        """The registries private content came from; empty when the content is public.

        The decision who vouches for a client rests on this list alone: never on a registry
        the client names.
        """
        with self._markers_lock:
            return list(self._markers.get(digest_hex(digest), ()))

    def _load_markers(self) -> dict[str, tuple[str, ...]]:
        """The markers on disk, read once at start-up. Markers of earlier versions did not
        record where the content came from: without that, nobody can vouch for a client, so
        such content is dropped (fetched again with the next client's own credentials)."""
        markers = {}
        for marker in self._private.iterdir():
            try:
                text = marker.read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                text = ""
            if text.strip():
                markers[marker.name] = tuple(line for line in text.splitlines() if line)
                continue
            log.warning("dropping private %s: its origin was not recorded", marker.name)
            (self._blobs / marker.name).unlink(missing_ok=True)
            self._remove_manifest(marker.name)
            marker.unlink(missing_ok=True)
        return markers

    def is_private(self, digest: str) -> bool:
        return bool(self.origins_of(digest))

    def origins_of(self, digest: str) -> list[str]:
        """Who may vouch for a reader of `digest`: the registries its stored copy came from
        with credentials, and those of a partial being written in this process (only ever
        written by a fetch with those credentials; a failed fetch leaves none behind)."""
        origins = self.private_origins(digest)
        partial = self._partials.get(digest_hex(digest))
        if partial is not None:
            origins += [o for o in partial.origins if o not in origins]
        return origins

    # ---- accounting and eviction ---------------------------------------------------------

    def rescan(self) -> None:
        """Walk the store's directories and start the running totals again from what is on
        disk (at start-up; the node's timer walks in a thread: `walk` then `apply_walk`)."""
        self.apply_walk(self.walk(), self.ledger.generation)

    def apply_walk(self, entries: list[Entry], generation: int) -> bool:
        """Start the running totals again from `entries` (a `walk` begun at ledger
        `generation`), unless the ledger changed meanwhile (then False: the next walk
        will do). Uses the files do not show (uploads to peers, preheat holds) are kept."""
        if self.ledger.generation != generation:
            return False
        merged = []
        for entry in entries:
            known = self.ledger.get(entry.kind, entry.hex)
            if known is not None and known.last_used > entry.last_used:
                entry = Entry(entry.kind, entry.hex, entry.size, known.last_used)
            merged.append(entry)
        self.ledger.replace_all(merged)
        return True

    def walk(self) -> list[Entry]:
        """What the store's directories hold, file by file (a worker thread may run it: it
        only reads). Partials that this process writes are counted live, not here."""
        entries = []
        writing = set(self._partials)
        kinds = ((self._blobs, Kind.BLOB), (self._partial, Kind.PARTIAL))
        for directory, kind in (*kinds, (self._manifests, Kind.MANIFEST)):
            for dir_entry in os.scandir(directory):
                hex_, _, suffix = dir_entry.name.partition(".")
                if not is_store_key(hex_):
                    continue  # not ours (a file left by hand): never counted, never evicted
                if kind is Kind.PARTIAL and (suffix != "data" or hex_ in writing):
                    continue
                if kind is Kind.MANIFEST and suffix:
                    continue  # <hex>.type, <hex>.from: a few bytes, counted with its manifest
                with contextlib.suppress(FileNotFoundError):
                    st = dir_entry.stat()
                    size = st.st_blocks * 512 if kind is Kind.PARTIAL else st.st_size
                    entries.append(Entry(kind, hex_, size, st.st_mtime))
        return entries

    def bytes_used(self) -> int:
        """Bytes the store's files take; partials by their allocated blocks, or the bytes
        written so far for those being written (a sparse file of a told size must not count
        as used). A running total: no walk of the disk."""
        return self.ledger.total + sum(p.bytes_present for p in list(self._partials.values()))

    def stats(self) -> StoreStats:
        return StoreStats(
            bytes_used=self.bytes_used(),
            quota=self.quota,
            complete_blobs=self.ledger.count(Kind.BLOB),
            partial_blobs=self.ledger.count(Kind.PARTIAL)
            + sum(1 for p in list(self._partials.values()) if not p.complete),
            manifests=self.ledger.count(Kind.MANIFEST),
            holders=sum(self._readers.values()),
        )

    def _space(self, exclude: str | None) -> Space:
        """The disk, the store's use and what downloads (but `exclude`) still bring, now."""
        now = time.monotonic()
        others = (blob for key, blob in list(self._partials.items()) if key != exclude)
        pending = sum(_reservation(blob, now) for blob in others)
        disk = shutil.disk_usage(self.root)
        # The file system's size as `df` counts it for Use%: what is used plus what an
        # unprivileged writer may still use (blocks reserved for root count as neither).
        size = disk.used + disk.free
        return Space(disk.free, self.bytes_used(), pending, self.quota, size, self.policy.marks)

    def make_room(
        self,
        size: int,
        digest: str | None = None,
        *,
        evict_for: int | None = None,
        exclude: str | None = None,
    ) -> None:
        """Evict least recently used blobs until a blob of `size` bytes fits the disk, the
        quota and the high watermark (past it, down to the low one); a partial of `digest`
        left on disk counts as the part already there. With `evict_for`, check that `size`
        could fit but evict only for the first `evict_for` bytes. `exclude`: the hex digest
        of a partial being written, not counted as pending.

        Blobs that are held and partials being written are never evicted. If only they keep
        the quota or the watermark from being met, the write goes ahead (a warning is
        logged): failing a pull is worse than a soft overshoot. The disk is a hard limit.

        Raises:
            NoRoom: the blob is larger than the quota, or than the free disk plus all that
                eviction could free; nothing was evicted.
        """
        hex_ = digest_hex(digest) if digest is not None else exclude
        held = 0
        if digest is not None:
            with contextlib.suppress(FileNotFoundError):
                held = (self._partial / f"{hex_}.data").stat().st_blocks * 512
        space = self._space(hex_)
        candidates: list[Candidate] = []
        if not fits(size, held, space):
            candidates = [c for c in self._evictable() if c.hex != hex_]
        plan = plan_room(digest or "a blob", size, held, space, candidates)
        if evict_for is not None and evict_for < size:
            plan = plan_room(digest or "a blob", evict_for, held, space, candidates)
        self._carry_out(plan)

    def sweep(self, now: float, *, dry_run: bool = False) -> list[Eviction]:
        """The periodic check at wall-clock time `now`: evict blobs unused for the TTL, then
        for the quota and the watermarks. With `dry_run`, only say what would go.

        Returns:
            What went (or would go), and why.
        """
        plan = plan_sweep(self._space(None), self._evictable(), now, self.policy.ttl)
        if dry_run:
            return [_eviction(c, why) for c, why in zip(plan.evict, plan.reasons, strict=True)]
        return self._carry_out(plan)

    def next_expiry(self) -> float | None:
        """Wall-clock time at which the least recently used evictable blob passes the TTL."""
        return next_expiry(self._evictable(), self.policy.ttl)

    def _carry_out(self, plan: RoomPlan) -> list[Eviction]:
        done = []
        for victim, reason in zip(plan.evict, plan.reasons, strict=True):
            self._evict(victim)  # planned from `_evictable` with no await since: not held
            count, size = self.evictions.get(reason, (0, 0))
            self.evictions[reason] = (count + 1, size + victim.size)
            kind = "partial " if victim.partial else "manifest " if victim.manifest else ""
            log.info(
                "evicted %s%s (%d bytes, unused for %.0fs): %s",
                kind,
                digest_of_hex(victim.hex),
                victim.size,
                max(0.0, time.time() - victim.last_used),
                reason,
            )
            done.append(_eviction(victim, reason))
        now = time.monotonic()
        if (plan.over_quota or plan.over_watermark) and now - self._warned_at >= WARN_EVERY:
            self._warned_at = now  # once a minute: every write would say it again
            if plan.over_quota:
                log.warning(
                    "cache size %s exceeded by %d bytes: the rest is in use",
                    self.quota,
                    plan.over_quota,
                )
            if plan.over_watermark:
                log.warning(
                    "the disk stays %d bytes above its low watermark: the rest is in use or "
                    "not the store's (other programs' files)",
                    plan.over_watermark,
                )
        return done

    def flush(self) -> tuple[int, int]:
        """Remove every complete blob nobody holds, every partial no download holds, and
        every cached manifest; blobs in flight stay. Returns (blobs removed, bytes freed). For
        benchmarks of cold pulls."""
        removed = freed = 0
        for candidate in self._evictable():
            self._evict(candidate)
            removed += not candidate.manifest
            freed += candidate.size
        for entry in os.scandir(self._manifests):  # and any manifest the totals missed
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            hex_ = entry.name.partition(".")[0]
            self.ledger.drop(Kind.MANIFEST, hex_)
            self._drop_marker_if_unused(hex_)
        log.info("cache flushed: %d blobs, %d bytes", removed, freed)
        return removed, freed

    def _evictable(self) -> list[Candidate]:
        """The complete blobs that nobody holds, the partials that no download holds, and the
        cached manifests (a manifest is served from memory once read: nothing holds it)."""
        held = set(self._readers) | set(self._partials)
        return [
            Candidate(
                e.last_used,
                e.hex,
                e.size,
                partial=e.kind is Kind.PARTIAL,
                manifest=e.kind is Kind.MANIFEST,
            )
            for e in self.ledger.entries(Kind.BLOB, Kind.PARTIAL, Kind.MANIFEST)
            if e.kind is Kind.MANIFEST or e.hex not in held
        ]

    def _evict(self, victim: Candidate) -> None:
        hex_ = victim.hex
        if victim.manifest:
            self._remove_manifest(hex_)
            self.ledger.drop(Kind.MANIFEST, hex_)
        elif victim.partial:
            (self._partial / f"{hex_}.data").unlink(missing_ok=True)
            (self._partial / f"{hex_}.meta").unlink(missing_ok=True)
            self.ledger.drop(Kind.PARTIAL, hex_)
            if (self._blobs / hex_).exists():
                return  # the complete copy keeps its marker and its hashes
        else:
            (self._blobs / hex_).unlink(missing_ok=True)
            self.ledger.drop(Kind.BLOB, hex_)
            self._forget_hashes(hex_)
            self._layouts.drop(hex_)
        self._drop_marker_if_unused(hex_)

    def _drop_marker_if_unused(self, hex_: str) -> None:
        """Remove a private marker once nothing of that digest is stored. Blobs and manifests
        share the digest space and the marker: a manifest keeps it after its digest's blob or
        partial is evicted (or it would be served to anyone). A partial of the digest in this
        process keeps it too: its commit (a worker thread) writes the marker before the blob
        is renamed into place, and a drop in between would leave the blob without one."""
        if hex_ in self._partials:
            return
        stored = (self._blobs / hex_, self._manifests / hex_)
        if not any(path.exists() for path in stored):
            self._drop_marker(hex_)

    def disk_free(self) -> int:
        return shutil.disk_usage(self.root).free


def _eviction(candidate: Candidate, reason: str) -> Eviction:
    return Eviction(
        digest_of_hex(candidate.hex),
        candidate.size,
        candidate.partial,
        candidate.last_used,
        reason,
        candidate.manifest,
    )


def _reservation(blob: PartialBlob, now: float) -> int:
    """Disk a download in progress holds for the bytes still to come: what it has shown it
    can deliver in the next RESERVE_SECONDS at its rate so far, never more than it lacks.

    The full remaining size would let any upstream reserve the disk with a told size and a
    trickle (a client names the upstream): the cache evicted, every other blob refused for as
    long as the trickle lasts. A fast download reserves its remainder as before; downloads
    that start at the same moment reserve nothing yet, and one may then meet a full disk
    mid-stream (its partial is dropped, its client sees a cut stream).
    """
    remaining = max(0, blob.layout.size - blob.bytes_present)
    rate = blob.bytes_present / max(now - blob.opened_at, 1.0)
    return min(remaining, int(rate * RESERVE_SECONDS))


def _write_lines_atomically(path: Path, lines: list[str], tmp_dir: Path) -> None:
    """Replace `path` by these lines in one rename: a reader never sees a torn line (the
    prefix of a registry URL or a repository can name another)."""
    tmp = tmp_dir / f"{path.name}.private"
    write_file(tmp, "".join(line + "\n" for line in lines).encode("utf-8"))
    os.replace(tmp, path)
