"""Blobs held against eviction for members' preheat jobs: leases, bounded.

A member's `Warm` has this node fetch a blob for a job that runs elsewhere and whose end is not
known here, so a blob it stored is held for WARM_LEASE after each such Warm. Members may lie,
so what leases hold is bounded: in bytes, LEASE_SHARE of the cache (of the disk without
--cache-size), so that clients' blobs always find room; in number, MAX_LEASES. Leases without
a bound let one member fill a node's disk with blobs nothing could evict (a helper's probe,
2026-12-04: 6 x the quota in a second, then every client's new blob 507), and a Warm for a
made-up digest kept a lease for 10 minutes.

A lease is counted by the size of its blob when a Warm stores it, and renewed only by a Warm
that stores it again: one that fails holds nothing it did not hold before (else any failing
Warm, 401 without credentials say, would pin a stored blob past the bound).
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass

from pieces.store import Store

WARM_LEASE = 600.0  # a blob warmed for a member's job is held this long (its job's end unknown)
LEASE_SHARE = 0.5  # of the cache (of the disk without a quota) that leases may hold
MAX_LEASES = 4096  # leases at once (each costs memory)


@dataclass
class _Lease:
    hold: contextlib.ExitStack
    end: float
    size: int  # bytes counted against the budget: 0 while a Warm looks for the blob


class Leases:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._leases: dict[str, _Lease] = {}
        self.held_bytes = 0

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, digest: str) -> bool:
        return digest in self._leases

    def full(self) -> bool:
        return len(self._leases) >= MAX_LEASES

    def budget(self) -> int:
        """The bytes leases may hold: LEASE_SHARE of the cache, else of the disk."""
        store = self._store
        if store.quota is not None:
            return int(store.quota * LEASE_SHARE)
        disk = shutil.disk_usage(store.root)
        return int((disk.used + disk.free) * LEASE_SHARE)

    def hold_while_looking(self, digest: str, now: float) -> None:
        """Hold `digest` while a Warm looks for it (counted as 0 bytes until `keep`)."""
        if digest not in self._leases:
            self._leases[digest] = _Lease(self._hold(digest), now + WARM_LEASE, 0)

    def keep(self, digest: str, now: float) -> bool:
        """A Warm stored `digest`: hold it for WARM_LEASE from `now`, counted by its size.
        False, and not held, when that would take leases past the budget."""
        size = self._store.blob_size(digest) or 0
        lease = self._leases.get(digest)
        counted = lease.size if lease is not None else 0
        if self.held_bytes - counted + size > self.budget():
            self.release(digest)
            return False
        if lease is None:  # a Warm of the same digest that failed let it go meanwhile
            lease = self._leases[digest] = _Lease(self._hold(digest), now, 0)
        lease.end = now + WARM_LEASE
        lease.size = size
        self.held_bytes += size - counted
        return True

    def release(self, digest: str) -> None:
        lease = self._leases.pop(digest, None)
        if lease is not None:
            self.held_bytes -= lease.size
            lease.hold.close()

    def expire(self, now: float) -> None:
        """End the leases whose time is up at `now`."""
        for digest, lease in list(self._leases.items()):
            if lease.end <= now:
                self.release(digest)

    def _hold(self, digest: str) -> contextlib.ExitStack:
        hold = contextlib.ExitStack()
        hold.enter_context(self._store.holding(digest))
        return hold
