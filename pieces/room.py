"""Whether a blob fits the store, and what to evict for it: a pure decision over a snapshot.

The size of a blob comes from an upstream or a peer, so it is checked here before anything is
allocated or evicted for it: a blob larger than the cache size, or than the free disk plus
everything that could be evicted, is refused outright. Evicting the whole cache for a blob that
cannot fit anyway (a 1 TiB Content-Length) would only destroy the cache.

Disk and quota are both counted: the quota is the operator's wish (a soft limit: blobs in use
may push the store over it, with a warning), the disk is a hard one (past it, writes fail).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pieces.partial import NoRoom


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    """Something eviction may remove; ordered least recently used first."""

    last_used: float  # mtime of the file
    hex: str
    size: int  # bytes its removal frees (allocated blocks for a partial)
    partial: bool  # a partial blob no download holds (left by a failure, a crash or a restart)


@dataclass(frozen=True, slots=True)
class Space:
    """The store's disk use when a blob asks for room."""

    free: int  # free bytes on the store's file system
    used: int  # bytes the store's files take (partials by allocated blocks)
    pending: int  # bytes that downloads in progress are still to write
    quota: int | None


@dataclass(frozen=True, slots=True)
class RoomPlan:
    evict: list[Candidate]
    over_quota: int  # bytes by which the store will exceed the quota anyway (what is in use)


def fits(size: int, held: int, space: Space) -> bool:
    """True when a blob of `size` bytes, `held` of them on disk already, fits the disk and the
    quota without evicting anything."""
    need = max(0, size - held)
    if space.free < need + space.pending:
        return False
    return space.quota is None or space.used + space.pending + need <= space.quota


def plan_room(
    what: str, size: int, held: int, space: Space, candidates: list[Candidate]
) -> RoomPlan:
    """What to evict, least recently used first, so that `what` (a blob of `size` bytes, of
    which `held` are already on disk from an earlier partial) fits the disk and the quota.

    Raises:
        NoRoom: `size` is larger than the quota, or the disk cannot hold it even with every
            candidate evicted. Nothing is to be evicted then.
    """
    quota = space.quota
    if quota is not None and size > quota:
        raise NoRoom(f"{what} ({size} bytes) is larger than the cache size ({quota} bytes)")
    need = max(0, size - held)
    evictable = sum(c.size for c in candidates)
    if need + space.pending > space.free + evictable:
        raise NoRoom(
            f"{what} needs {need} more bytes: {space.free} free on disk, {evictable} could be "
            f"evicted, {space.pending} still to come for downloads in progress"
        )
    evict: list[Candidate] = []
    for candidate in sorted(candidates):
        if fits(size, held, space):
            break
        evict.append(candidate)
        space = replace(space, free=space.free + candidate.size, used=space.used - candidate.size)
    over = 0 if quota is None else max(0, space.used + space.pending + need - quota)
    return RoomPlan(evict, over)
