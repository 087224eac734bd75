"""What the store holds, kept as running totals: bytes used and last access per entry.

The store used to walk every file of its directories for its use (`bytes_used`, `stats`) and
for eviction candidates, on every status request and for every new download: thousands of
stats per request on a large cache. The ledger is built by one walk at start-up and then kept
in step by the store's own changes (a blob committed or evicted, a manifest stored, a partial
left behind); the store walks the disk again only on its maintenance timer, to notice files
someone else removed (`Store.rescan`).

Partials that a download in this process is writing are not in the ledger: they grow with
every write and are counted live from their `bytes_present` (see `Store.bytes_used`).

Thread-safe: the store commits and flushes in worker threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    BLOB = "blob"  # a complete, verified blob: blobs/sha256/<hex>
    PARTIAL = "partial"  # a partial nobody writes now: partial/<hex>.data (allocated blocks)
    MANIFEST = "manifest"  # manifests/sha256/<hex>


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    hex: str
    size: int  # bytes on disk (allocated blocks for a partial)
    last_used: float  # wall-clock seconds: the file's mtime, refreshed by reads


class Ledger:
    """Entries per (kind, hex digest) and the sum of their sizes."""

    def __init__(self) -> None:
        self._entries: dict[tuple[Kind, str], Entry] = {}
        self._total = 0
        self._counts = dict.fromkeys(Kind, 0)
        self._lock = threading.Lock()
        # Bumped by every entry put or dropped (not by touches): a walk of the disk begun at
        # one generation is stale once it has moved on (Store.apply_walk).
        self.generation = 0

    def put(self, entry: Entry) -> None:
        """Record `entry`, replacing what was recorded for its kind and digest."""
        with self._lock:
            old = self._entries.get((entry.kind, entry.hex))
            self._total += entry.size - (old.size if old is not None else 0)
            self._counts[entry.kind] += old is None
            self._entries[(entry.kind, entry.hex)] = entry
            self.generation += 1

    def drop(self, kind: Kind, hex_: str) -> Entry | None:
        """Forget an entry (its file went); what was recorded, if anything."""
        with self._lock:
            old = self._entries.pop((kind, hex_), None)
            if old is not None:
                self._total -= old.size
                self._counts[kind] -= 1
                self.generation += 1
            return old

    def touch(self, kind: Kind, hex_: str, when: float) -> None:
        """A reader used the entry at `when`."""
        with self._lock:
            old = self._entries.get((kind, hex_))
            if old is not None and when > old.last_used:
                self._entries[(kind, hex_)] = Entry(kind, hex_, old.size, when)

    def get(self, kind: Kind, hex_: str) -> Entry | None:
        with self._lock:
            return self._entries.get((kind, hex_))

    def replace_all(self, entries: list[Entry]) -> None:
        """Start again from a walk of the disk."""
        with self._lock:
            self._entries = {(e.kind, e.hex): e for e in entries}
            self.generation += 1
            self._total = sum(e.size for e in entries)
            self._counts = {kind: 0 for kind in Kind}
            for kind, _ in self._entries:
                self._counts[kind] += 1

    @property
    def total(self) -> int:
        return self._total

    def count(self, kind: Kind) -> int:
        return self._counts[kind]

    def entries(self, *kinds: Kind) -> list[Entry]:
        """A snapshot of the entries of these kinds."""
        with self._lock:
            return [e for (k, _), e in self._entries.items() if k in kinds]
