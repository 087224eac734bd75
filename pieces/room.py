"""Whether a blob fits the store, and what to evict for it: a pure decision over a snapshot.

The size of a blob comes from an upstream or a peer, so it is checked here before anything is
allocated or evicted for it: a blob larger than the cache size, or than the free disk plus
everything that could be evicted, is refused outright. Evicting the whole cache for a blob that
cannot fit anyway (a 1 TiB Content-Length) would only destroy the cache.

Disk and quota are both counted: the quota is the operator's wish (a soft limit: blobs in use
may push the store over it, with a warning), the disk is a hard one (past it, writes fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from pieces.partial import NoRoom


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    """Something eviction may remove; ordered least recently used first."""

    last_used: float  # mtime of the file
    hex: str
    size: int  # bytes its removal frees (allocated blocks for a partial)
    partial: bool  # a partial blob no download holds (left by a failure, a crash or a restart)
    manifest: bool = False  # a cached manifest (fetched again by its digest when asked)


@dataclass(frozen=True, slots=True)
class Watermarks:
    """Disk use of the store's file system (fractions of its size): above `high` after a
    write, or at a check, the store evicts least recently used down to `low`."""

    high: float
    low: float


@dataclass(frozen=True, slots=True)
class Space:
    """The store's disk use when a blob asks for room."""

    free: int  # free bytes on the store's file system
    used: int  # bytes the store's files take (partials by allocated blocks)
    pending: int  # bytes that downloads in progress are still to write
    quota: int | None
    total: int = 0  # size of the file system (for the watermarks)
    marks: Watermarks | None = None


# Why something was evicted (log lines and the pollen_evictions_total metric's label).
FOR_DISK = "disk-full"
FOR_QUOTA = "cache-size"
FOR_WATERMARK = "disk-watermark"
FOR_TTL = "ttl"


@dataclass(frozen=True, slots=True)
class RoomPlan:
    evict: list[Candidate]
    over_quota: int  # bytes by which the store will exceed the quota anyway (what is in use)
    reasons: list[str] = field(default_factory=list)  # why, for each of `evict`
    over_watermark: int = 0  # bytes above the low watermark left (only what is in use is)


def _disk_after(need: int, space: Space) -> int:
    """Bytes used on the file system once `need` more (and what downloads still bring) land."""
    return space.total - space.free + need + space.pending


def _short_of(size: int, held: int, space: Space, mark: float | None) -> str | None:
    """Why a blob of `size` (`held` on disk) does not fit now; None when it does. `mark`: the
    watermark the disk must stay under (None: none)."""
    need = max(0, size - held)
    if space.free < need + space.pending:
        return FOR_DISK
    if space.quota is not None and space.used + space.pending + need > space.quota:
        return FOR_QUOTA
    if mark is not None and _disk_after(need, space) > mark * space.total:
        return FOR_WATERMARK
    return None


def fits(size: int, held: int, space: Space) -> bool:
    """True when a blob of `size` bytes, `held` of them on disk already, fits the disk, the
    quota and the high watermark without evicting anything."""
    high = space.marks.high if space.marks is not None else None
    return _short_of(size, held, space, high) is None


def plan_room(
    what: str, size: int, held: int, space: Space, candidates: list[Candidate]
) -> RoomPlan:
    """What to evict, least recently used first, so that `what` (a blob of `size` bytes, of
    which `held` are already on disk from an earlier partial) fits the disk and the quota,
    and, when the disk would go above the high watermark, until it is down to the low one.

    The disk is the only hard limit. The quota and the watermarks are the operator's wishes:
    when only what is in use keeps them from being met, the plan says by how much.

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
    mark = None
    if space.marks is not None and _disk_after(need, space) > space.marks.high * space.total:
        mark = space.marks.low  # above high: down to low, not just under high
    evict: list[Candidate] = []
    reasons: list[str] = []
    for candidate in sorted(candidates):
        reason = _short_of(size, held, space, mark)
        if reason is None:
            break
        evict.append(candidate)
        reasons.append(reason)
        space = replace(space, free=space.free + candidate.size, used=space.used - candidate.size)
    over = 0 if quota is None else max(0, space.used + space.pending + need - quota)
    over_mark = 0 if mark is None else max(0, _disk_after(need, space) - int(mark * space.total))
    return RoomPlan(evict, over, reasons, over_mark)


def plan_sweep(
    space: Space, candidates: list[Candidate], now: float, ttl: float | None
) -> RoomPlan:
    """The store's periodic check at wall-clock time `now`: every candidate not used for
    `ttl` seconds goes, then least recently used ones while the store is over its quota or
    the disk above its high watermark (down to the low one)."""
    expired = [c for c in candidates if ttl is not None and c.last_used + ttl <= now]
    for candidate in expired:
        space = replace(space, free=space.free + candidate.size, used=space.used - candidate.size)
    rest = [c for c in candidates if c not in expired]
    try:
        room = plan_room("the cache", 0, 0, space, rest)
    except NoRoom:
        # Downloads in progress reserve more than the disk has left even with everything
        # evicted: a check has nothing to refuse, so all that can go goes (they may fail).
        room = RoomPlan(sorted(rest), 0, [FOR_DISK] * len(rest))
    return RoomPlan(
        [*expired, *room.evict],
        room.over_quota,
        [FOR_TTL] * len(expired) + room.reasons,
        room.over_watermark,
    )


def next_expiry(candidates: list[Candidate], ttl: float | None) -> float | None:
    """When the first of `candidates` will have gone unused for `ttl` (None: no TTL, or none)."""
    if ttl is None or not candidates:
        return None
    return min(c.last_used for c in candidates) + ttl
