"""One blob being written: its data file, its piece bitmap and hashes, and its waiting readers.

Crash-safety rules (why the code is ordered the way it is):
- Piece bytes go to `<hex>.data` with pwrite; a piece is recorded in `<hex>.meta` (with its
  xxh3-128 hash) only after all its bytes were written. The meta file is first written whole
  and renamed into place (atomic: the old or the new version), then grows by appended records
  of the pieces recorded since; a record torn by a crash ends the reading there.
- We do not fsync per piece: after a crash, every recorded piece is re-hashed before it is trusted
  (`load_partial`), so a piece whose bytes never reached the disk is simply fetched again.
- Nor is the meta file replaced per piece: when META_SAVE_BYTES of pieces were recorded since
  the last save, or a piece is recorded META_SAVE_SECONDS or more after it (so the first piece
  saves it at once, and a slow download at least once a second), and on close and before the
  commit. A crash forgets at most that much, fetched again; rewriting the whole record per
  256 KiB piece cost the swarm's nodes ~7 % of their CPU on the testbed (a py-spy sample).
- The blob becomes complete only after its sha256 matches the digest; then the data file is
  fsynced and renamed into the complete area, so a complete blob is never half-written.
- The sha256 covers exactly the bytes that are stored: bytes of a stream that skips pieces
  already recorded are not hashed (they are not what is on disk); they are read back from disk
  instead, by later writes (`HASH_AHEAD`) or by the check. Otherwise a stream of the right bytes
  could vouch for wrong ones kept from before.

Memory: the size and piece size may come from an upstream or a peer, so nothing here is sized by
them: the bookkeeping grows with the pieces written (`piece_hashes`, `_filling`), not with the
pieces the blob has. `Store.open_partial` checks sizes before a `PartialBlob` is made.

Threading: `write_sync` and `finalize_sync` run in a worker thread (hashing a large buffer
releases the GIL), and so does `write_piece_sync` for pieces larger than the rule cuts (the
others run on the event loop: peer/swarm/fetch.py, INLINE_WRITE), one call at a time per
blob (`write_lock`); the trio thread only reads the monotonically growing fill counters and
is told to wake readers afterwards (`notify`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgpack
import trio
import xxhash

from pieces.digest import digest_hex, hasher_for
from pieces.layout import MAX_PIECE_SIZE, PieceLayout
from pieces.modes import FILE_MODE, OTHERS, fsync_dir, open_for_writing, write_file

log = logging.getLogger("pollen.store")

# 2: the meta records `origins`. A version-1 meta (which did not) is not resumed: its pieces
# may be private, and nothing says which registry could vouch for a reader.
META_VERSION = 3  # 3: records appended after the whole record
META_VERSIONS_READ = (2, 3)  # a version-2 file is a whole record alone: read as it is
META_SAVE_BYTES = 4 * 1024 * 1024  # pieces recorded between two saves of the meta file
META_SAVE_SECONDS = 1.0  # ... or this long
# Bytes written out of stream order are hashed from the data file through a read-only
# mapping of this many bytes at a time: no copy into a buffer first (the sha256 of a swarm's
# blob, whose pieces come in any order, is mostly this). Measured on a page-cached 512 MiB
# file: 0.43-0.44 CPU s through the mapping, 0.53-0.56 s with 1 MiB preads.
_HASH_WINDOW = 64 * 1024 * 1024
# Each write also hashes, from the page cache, up to this many times its own bytes of what
# was recorded after the sha256's position (pieces that came before the one they follow): the
# sha256 keeps up with the bytes stored instead of waiting for the check. Left for the check,
# the whole of a swarm's blob was hashed at its end (76-78 of 78 MB on the 8-host testbed),
# by every node at the same moment: 0.7-1.7 s of wall time between the last piece and the
# client's last byte.
HASH_AHEAD = 2


class StoreError(Exception):
    """A store operation failed; the message says which blob and why."""


class DiskFull(StoreError):
    """The disk under the store has no space left (ENOSPC)."""


class NoRoom(StoreError):
    """A blob cannot fit: it is larger than the cache size, or than the free disk plus what
    eviction could free. Refused before anything was allocated or evicted."""


class SizeRefused(StoreError):
    """A size we were told cannot be right or cannot be used: it disagrees with the size the
    blob's descriptor gives, or splits into too many pieces. Nothing was allocated."""


class DigestMismatch(StoreError):
    """The bytes of a blob do not hash to its digest; the blob was discarded."""


class BlobFailed(StoreError):
    """The download of a blob failed; readers waiting on it get this."""


def io_error(exc: OSError, doing: str) -> StoreError:
    """The store error for an OSError while `doing` something: DiskFull for ENOSPC."""
    if exc.errno == errno.ENOSPC:
        return DiskFull(f"no space left on device {doing}")
    return StoreError(f"{doing}: {exc.strerror or exc}")


def piece_hash(data: bytes | bytearray | memoryview) -> bytes:
    """The per-piece hash: xxh3-128, 16 bytes."""
    return bytes(xxhash.xxh3_128_digest(data))


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class PartialBlob:
    """A blob whose pieces are arriving. Create with `Store.open_partial`, not directly."""

    def __init__(
        self,
        digest: str,
        layout: PieceLayout,
        data_path: Path,
        meta_path: Path,
        complete_path: Path,
        pieces: dict[int, bytes],
        origins: list[str] | None = None,
        registry: str | None = None,
    ) -> None:
        self.digest = digest
        # The registry the download asks (its base URL; None: none named): a partial left on
        # disk is resumed only for a download from it (Store.open_partial).
        self.registry = registry
        # The registries these bytes come from with credentials (empty: public). They vouch
        # for readers of the partial, and become the blob's private marker once it is verified.
        self.origins: list[str] = list(origins or [])
        self.opened_at = time.monotonic()  # for the disk it may reserve (Store.make_room)
        self.room_until = 0  # bytes_present up to which the store has made room (ensure_room)
        self.hex = digest_hex(digest)
        self.layout = layout
        self.data_path = data_path
        self.meta_path = meta_path
        self.complete_path = complete_path
        # Recorded pieces: every byte written. Written only by the writer thread; the trio
        # thread reads single keys or copies the dict (both atomic under the GIL).
        self.piece_hashes: dict[int, bytes] = dict(pieces)
        # Pieces being written: bytes written contiguously from the piece's start (> 0, < its
        # length). A piece is recorded before it leaves this dict, so a reader that looks in
        # `piece_hashes` first never sees more bytes than were written.
        self._filling: dict[int, int] = {}
        self._bytes_present = sum(layout.length(index) for index in self.piece_hashes)
        self._piece_hashers: dict[int, Any] = {}
        self._unsaved = 0  # bytes of pieces recorded since the meta file was saved
        self._unsaved_pieces: dict[int, bytes] = {}  # those pieces
        self._saved_origins: list[str] | None = None  # as the meta file has them
        self._appending = False  # this object wrote the whole file: records may follow
        self._saved_at = float("-inf")  # when it was saved (monotonic)
        self._sha = hasher_for(digest)  # sha256 or sha512, as the digest says
        self._sha_offset = 0
        self._hash_ahead_failed = False  # a read-back failed: the check hashes the rest
        self.verified = False  # sha256 checked: every byte may be served
        self.complete = False  # fsynced and moved into the complete area
        self.error: Exception | None = None
        self._lot = trio.lowlevel.ParkingLot()
        # One writer thread at a time: the upstream pump and pieces from peers may both write
        # (after an owner change); write_sync and the finalize steps are not reentrant.
        self.write_lock = trio.Lock()
        # Called (in the trio thread) with the indices of newly recorded pieces: the swarm
        # announces them to peers.
        self.piece_listeners: list[Callable[[list[int]], None]] = []
        self._fd, started_over = _open_data(data_path, layout.size)
        if started_over:
            meta_path.unlink(missing_ok=True)
            self.piece_hashes.clear()
            self._bytes_present = 0
            log.warning(
                "the partial of %s left on disk could not be closed to other users (another "
                "user's file, %s): started over",
                digest,
                data_path,
            )

    # ---- state seen by readers -------------------------------------------------------------

    @property
    def bytes_present(self) -> int:
        """Bytes written so far (whole pieces and the written head of pieces in progress)."""
        return self._bytes_present

    @property
    def hashed(self) -> int:
        """Bytes from the start that the sha256 has taken in so far."""
        return self._sha_offset

    def _filled(self, index: int) -> int:
        """Bytes of piece `index` written contiguously from its start."""
        if index in self.piece_hashes:
            return self.layout.length(index)
        return self._filling.get(index, 0)

    def first_missing_offset(self) -> int:
        """Offset of the first byte not yet written; `size` when everything is written."""
        index = 0
        while index < self.layout.count and index in self.piece_hashes:
            index += 1
        if index == self.layout.count:
            return self.layout.size
        return self.layout.start(index) + self._filling.get(index, 0)

    def missing_runs(self) -> list[tuple[int, int]]:
        """Byte ranges [start, end) not yet written, each run of unfinished pieces merged."""
        filling = dict(self._filling)  # copied first: a piece moves from here to recorded
        recorded = dict(self.piece_hashes)
        runs: list[tuple[int, int]] = []
        missing_from = 0  # the bytes from here to the next written byte are missing
        for index in sorted(recorded.keys() | filling.keys()):
            start = self.layout.start(index)
            if missing_from < start:
                runs.append((missing_from, start))
            filled = self.layout.length(index) if index in recorded else filling[index]
            missing_from = start + filled
        if missing_from < self.layout.size:
            runs.append((missing_from, self.layout.size))
        return runs

    def readable_end(self, offset: int) -> int:
        """End of the run of written bytes that starts at `offset` (== offset when none).

        The last byte of the blob is held back until the sha256 has been checked, so that a
        client never receives a whole blob that turns out to be wrong: it sees a cut stream.
        """
        size = self.layout.size
        if self.verified:
            return size
        end = self._written_end(offset, size) if offset < size else offset
        return min(end, size - 1)

    async def wait_readable(self, offset: int) -> int:
        """Wait until at least one byte at `offset` can be read; return the end of that run.

        Raises:
            BlobFailed: the download failed (the reason is chained).
        """
        while True:
            if self.error is not None:
                raise BlobFailed(f"download of {self.digest} failed: {self.error}") from self.error
            end = self.readable_end(offset)
            if end > offset or offset >= self.layout.size:
                return end
            await self._lot.park()

    async def wait_change(self) -> None:
        """Wait for the next `notify`: bytes written, completion or failure (the caller checks
        what it waits for before each wait: nothing can come between the check and this)."""
        await self._lot.park()

    async def wait_verified(self) -> None:
        """Wait until the sha256 has been checked, so that every byte may be served.

        Raises:
            BlobFailed: the download failed (the reason is chained).
        """
        while not self.verified:
            if self.error is not None:
                raise BlobFailed(f"download of {self.digest} failed: {self.error}") from self.error
            await self._lot.park()

    def notify(self) -> None:
        """Wake readers after progress, completion or failure (call from the trio thread)."""
        self._lot.unpark_all()

    def announce(self, completed: list[int]) -> None:
        """Wake readers and tell listeners which pieces were just recorded (trio thread)."""
        self.notify()
        if completed:
            for listener in list(self.piece_listeners):
                listener(completed)

    def fail(self, error: Exception) -> None:
        """Mark the download failed and wake every reader with the error."""
        self.error = error
        self.notify()

    # ---- writing (worker thread) ---------------------------------------------------------

    def write_sync(self, offset: int, chunks: Sequence[bytes | memoryview]) -> list[int]:
        """Write consecutive chunks starting at `offset`; return the pieces this completed.

        Each piece must be written front to back (an upstream stream or one whole piece from a
        peer). Bytes of pieces that are already recorded are skipped, not rewritten, and not
        hashed into the sha256 either: it must cover the bytes stored, which are read back
        from disk (`HASH_AHEAD`, and `verify_sync` for the rest).

        Raises:
            DiskFull: ENOSPC; the pieces recorded so far stay valid.
            StoreError: any other I/O error, or a write that is not at a piece's write position.
        """
        completed: list[int] = []
        layout = self.layout
        written = 0
        for chunk in chunks:
            view = memoryview(chunk)
            written += len(view)
            if offset + len(view) > layout.size:
                raise StoreError(
                    f"{self.digest}: write past the end ({offset}+{len(view)} > {layout.size})"
                )
            while view:
                index = layout.index_of(offset)
                piece_start = layout.start(index)
                piece_len = layout.length(index)
                take = min(len(view), piece_start + piece_len - offset)
                part = view[:take]
                if index not in self.piece_hashes:
                    filled = self._filling.get(index, 0)
                    if offset != piece_start + filled:
                        raise StoreError(
                            f"{self.digest}: piece {index} written out of order at {offset}"
                        )
                    self._write(part, offset)
                    hasher = self._piece_hashers.get(index)
                    if hasher is None:
                        hasher = self._piece_hashers[index] = xxhash.xxh3_128()
                    hasher.update(part)
                    if offset == self._sha_offset:
                        self._sha.update(part)
                        self._sha_offset += take
                    if filled + take == piece_len:
                        # Recorded before it leaves `_filling`: see there.
                        self.piece_hashes[index] = hasher.digest()
                        self._filling.pop(index, None)
                        del self._piece_hashers[index]
                        completed.append(index)
                    else:
                        self._filling[index] = filled + take
                    self._bytes_present += take
                offset += take
                view = view[take:]
        if completed:
            self._recorded(completed)
        self._hash_ahead(HASH_AHEAD * written)
        return completed

    def write_piece_sync(
        self, index: int, data: bytes | bytearray | memoryview, expected: bytes
    ) -> list[int] | None:
        """Check one whole piece (from a peer) against its xxh3-128 `expected`, then write
        and record it: hashed once, in the worker thread, where `piece_hash` on the trio
        thread and then `write_sync` hash the same 4 MiB twice. None when the bytes do not
        match (nothing is written); else the pieces this completed (empty when `index` was
        recorded already).

        Raises:
            StoreError: not the length of piece `index`, a piece begun by a stream, or as
                `write_sync` (DiskFull for ENOSPC).
        """
        layout = self.layout
        if not 0 <= index < layout.count or len(data) != layout.length(index):
            raise StoreError(f"{self.digest}: {len(data)} bytes are not piece {index}")
        if piece_hash(data) != expected:
            return None
        if index in self.piece_hashes:
            return []
        if self._filling.get(index, 0):
            raise StoreError(f"{self.digest}: piece {index} written out of order")
        view = memoryview(data)
        offset = layout.start(index)
        self._write(view, offset)
        if offset == self._sha_offset:
            self._sha.update(view)
            self._sha_offset += len(view)
        self.piece_hashes[index] = expected
        self._bytes_present += len(view)
        self._recorded([index])
        self._hash_ahead(HASH_AHEAD * len(view))
        return [index]

    def _write(self, data: memoryview, offset: int) -> None:
        try:
            _write_all(self._fd, data, offset)
        except OSError as exc:
            raise io_error(exc, f"writing {self.digest} to {self.data_path.parent}") from exc

    def _recorded(self, indices: list[int]) -> None:
        """These pieces were recorded: save the meta file if enough are unsaved, or if it
        was saved a while ago."""
        for index in indices:
            self._unsaved_pieces[index] = self.piece_hashes[index]
            self._unsaved += self.layout.length(index)
        now = time.monotonic()
        if self._unsaved >= META_SAVE_BYTES or now - self._saved_at >= META_SAVE_SECONDS:
            self._save_meta()
            self._saved_at = now

    def flush_meta_sync(self) -> None:
        """Save the meta file if pieces were recorded since it was last saved."""
        if self._unsaved_pieces or self._saved_origins != self.origins:
            self._save_meta()

    def _save_meta(self) -> None:
        """The first save of this object writes the whole record (a new file, renamed over
        the old one); later saves append what changed. Appending costs no rename: replacing
        the file per save stalled the node on ext4 (its replace-via-rename flush; 5.7 % of a
        node's samples on the testbed). A crash may tear the last record: `load_meta` stops
        there, and those pieces are fetched again."""
        if self._appending:
            record: dict[str, Any] = {"pieces": self._unsaved_pieces}
            if self._saved_origins != self.origins:
                record["origins"] = list(self.origins)
            try:
                with open_for_writing(self.meta_path, append=True) as f:
                    f.write(msgpack.packb(record))
            except OSError as exc:
                # Part of the record may be on disk: the next save writes the whole record
                # (appended after a torn one, later records would be lost).
                self._appending = False
                raise io_error(exc, f"recording pieces of {self.digest}") from exc
            self._saved()
            return
        meta = {
            "v": META_VERSION,
            "digest": self.digest,
            "size": self.layout.size,
            "piece_size": self.layout.piece_size,
            "pieces": self.piece_hashes,
            "origins": list(self.origins),
            "registry": self.registry,
        }
        tmp = self.meta_path.with_suffix(".meta.tmp")
        try:
            write_file(tmp, msgpack.packb(meta))
            os.replace(tmp, self.meta_path)
        except OSError as exc:
            raise io_error(exc, f"recording pieces of {self.digest}") from exc
        self._appending = True
        self._saved()

    def _saved(self) -> None:
        self._unsaved = 0
        self._unsaved_pieces = {}
        self._saved_origins = list(self.origins)

    def finalize_sync(self) -> None:
        """`verify_sync` then `commit_sync`: check the sha256, then store the blob for good."""
        self.verify_sync()
        self.commit_sync()

    def verify_sync(self) -> None:
        """Check the sha256 over all bytes; from then on readers may read the last byte.

        Raises:
            DigestMismatch: the bytes are wrong; data and meta files are removed.
            StoreError: not every byte was written, or an I/O error.
        """
        missing = self.first_missing_offset()
        if missing != self.layout.size:
            raise StoreError(f"{self.digest}: cannot finalize, byte {missing} not written")
        # Bytes written out of stream order (pieces from peers, a resumed download) that
        # the writes did not hash ahead are hashed here from disk.
        self._hash_stored(self.layout.size)
        actual = f"{self._sha.name}:{self._sha.hexdigest()}"
        if actual != self.digest:
            self.discard_sync()
            raise DigestMismatch(
                f"blob {self.digest} has wrong content (its bytes hash to {actual})"
            )
        self.verified = True

    def _hash_ahead(self, budget: int) -> None:
        """Feed the sha256 up to `budget` bytes of those written from `_sha_offset` on.

        Only a head start for the check: bytes that cannot be read back now are left to it
        (which fails the blob if they still cannot be), not charged to the write that was
        made and recorded, nor tried again by every write after it."""
        offset = self._sha_offset
        if offset >= self.layout.size or budget <= 0 or self._hash_ahead_failed:
            return
        end = self._written_end(offset, offset + budget)
        if end > offset:
            try:
                self._hash_stored(end)
            except StoreError as exc:
                self._hash_ahead_failed = True
                log.warning("%s: left for the check: %s", self.digest, exc)

    def _written_end(self, offset: int, limit: int) -> int:
        """End of the written bytes from `offset` on, looked at up to `limit`."""
        layout = self.layout
        end = offset
        index = layout.index_of(offset)
        while end < limit and index < layout.count:
            filled = self._filled(index)
            end = max(end, layout.start(index) + filled)
            if filled < layout.length(index):
                break
            index += 1
        return min(end, limit)

    def _hash_stored(self, end: int) -> None:
        """Feed the sha256 every byte from `_sha_offset` to `end`, read from the data file
        (the caller knows them written).

        Raises:
            StoreError: the file is shorter than the blob (a mapping past its end would
                fault), or an I/O error.
        """
        size = self.layout.size
        if self._sha_offset >= end:
            return
        try:
            if os.fstat(self._fd).st_size < size:
                raise StoreError(f"{self.digest}: data file shorter than {size}")
            while self._sha_offset < end:
                start = self._sha_offset - self._sha_offset % mmap.ALLOCATIONGRANULARITY
                length = min(_HASH_WINDOW, end - start)
                with (
                    mmap.mmap(self._fd, length, prot=mmap.PROT_READ, offset=start) as window,
                    memoryview(window) as view,
                ):
                    self._sha.update(view[self._sha_offset - start :])
                self._sha_offset = start + length
        except OSError as exc:
            raise io_error(exc, f"reading {self.digest} back") from exc

    def add_origins(self, origins: list[str]) -> None:
        """More registries vouch for these bytes (the next meta save records them)."""
        self.origins += [o for o in origins if o not in self.origins]

    def commit_sync(self) -> None:
        """fsync the verified data and move it into the complete area.

        Kept apart from `verify_sync` so clients are not held up by the fsync (1 GiB took 1.4 s
        on our test disk): a crash before the rename leaves a partial whose every piece is
        recorded, and the next request only re-verifies and commits it.
        """
        if not self.verified:
            raise StoreError(f"{self.digest}: commit before verify")
        with contextlib.suppress(StoreError):
            # A crash before the rename: every piece is recorded. A record that cannot be
            # written (a full disk) must not fail the commit: the rename needs no room, and
            # the record is deleted right after it.
            self.flush_meta_sync()
        os.fsync(self._fd)
        os.replace(self.data_path, self.complete_path)
        fsync_dir(self.complete_path.parent)
        self.meta_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1
        self.complete = True

    def discard_sync(self) -> None:
        """Remove the data and meta files (bad content or given up)."""
        self._unsaved_pieces = {}  # nothing to save: both files go
        self._saved_origins = list(self.origins)
        self.close()
        self.data_path.unlink(missing_ok=True)
        self.meta_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the data file; the partial stays on disk for a later resume."""
        if self._fd >= 0:
            with contextlib.suppress(StoreError):
                # Unsaved, those pieces are fetched again after a restart: nothing is lost
                # that a failing disk would let us keep anyway.
                self.flush_meta_sync()
            os.close(self._fd)
            self._fd = -1


def _open_data(path: Path, size: int) -> tuple[int, bool]:
    """The data file of a partial, open to read and write, FILE_MODE and `size` bytes long;
    and True when the one left on disk was replaced by an empty one. One open to other users
    is closed (an earlier version's: it becomes a blob as it is); one that cannot be (EPERM:
    another user's file) is removed and made anew: its bytes are not the node's to vouch
    for, and it would fail every open of the blob for as long as it stayed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    started_over = False
    try:
        st = os.fstat(fd)
        if st.st_mode & OTHERS:
            try:
                os.fchmod(fd, FILE_MODE)
            except PermissionError:
                os.close(fd)
                fd = -1
                path.unlink()
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
                started_over = True
                st = os.fstat(fd)
        if st.st_size != size:
            os.ftruncate(fd, size)
    except OSError:
        if fd >= 0:
            os.close(fd)
        raise
    return fd, started_over


# What msgpack raises on damaged bytes: a map key that is a list or map is TypeError (unhashable).
_DAMAGE = (ValueError, TypeError, msgpack.FormatError, msgpack.StackError)


def load_meta(meta_path: Path) -> dict[str, Any] | None:
    """Read a partial's meta file; None when it is missing or unreadable (start over).

    The file is the whole record, then records appended by later saves (`pieces` to add,
    `origins` to replace): read up to the first torn or unreadable one (a crash mid-append)."""
    try:
        raw = meta_path.read_bytes()
    except OSError:
        return None
    unpacker = msgpack.Unpacker(strict_map_key=False, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    try:
        meta = next(unpacker)
    except (StopIteration, *_DAMAGE):
        return None
    if not isinstance(meta, dict) or meta.get("v") not in META_VERSIONS_READ:
        return None
    pieces = meta.get("pieces")
    if not isinstance(pieces, dict) or not isinstance(meta.get("size"), int):
        return None
    if not isinstance(meta.get("piece_size"), int) or not 0 < meta["piece_size"] <= MAX_PIECE_SIZE:
        return None  # an older node's record of pieces no peer could take: start over
    if not _is_origins(meta.get("origins")):
        return None
    if not isinstance(meta.get("registry"), str | None):
        return None
    try:
        for record in unpacker:
            if not isinstance(record, dict) or not isinstance(record.get("pieces"), dict):
                break
            if "origins" in record:
                if not _is_origins(record["origins"]):
                    break
                meta["origins"] = record["origins"]
            pieces.update(record["pieces"])
    except _DAMAGE:
        pass  # a torn or damaged record: what came before it stands
    return meta


def _is_origins(origins: Any) -> bool:
    return isinstance(origins, list) and all(isinstance(o, str) for o in origins)


def verified_pieces(
    data_path: Path, layout: PieceLayout, recorded: dict[Any, Any]
) -> dict[int, bytes]:
    """Re-hash every recorded piece from disk; keep only those that match their recorded hash."""
    good: dict[int, bytes] = {}
    try:
        fd = os.open(data_path, os.O_RDONLY)
    except OSError:
        return good
    try:
        for index, expected in recorded.items():
            if not isinstance(index, int) or not 0 <= index < layout.count:
                continue
            if not isinstance(expected, bytes):
                continue
            data = os.pread(fd, layout.length(index), layout.start(index))
            if len(data) == layout.length(index) and piece_hash(data) == expected:
                good[index] = expected
    finally:
        os.close(fd)
    return good
