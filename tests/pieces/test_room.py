"""Whether a blob fits, and what is evicted for it (a pure decision)."""

from __future__ import annotations

import pytest

from pieces.partial import NoRoom
from pieces.room import (
    FOR_DISK,
    FOR_QUOTA,
    FOR_TTL,
    FOR_WATERMARK,
    Candidate,
    Space,
    Watermarks,
    next_expiry,
    plan_room,
    plan_sweep,
)


def blob(last_used: float, size: int, partial: bool = False) -> Candidate:
    return Candidate(last_used, f"{int(last_used):064x}", size, partial)


def test_nothing_is_evicted_when_the_blob_fits() -> None:
    plan = plan_room("b", 100, 0, Space(free=1000, used=0, pending=0, quota=None), [blob(1, 50)])
    assert plan.evict == [] and plan.over_quota == 0


def test_a_blob_over_the_quota_is_refused_before_anything_is_evicted() -> None:
    with pytest.raises(NoRoom, match="larger than the cache size"):
        plan_room("b", 1001, 0, Space(free=10**9, used=0, pending=0, quota=1000), [blob(1, 500)])


def test_a_blob_over_the_disk_and_all_that_could_be_freed_is_refused() -> None:
    space = Space(free=100, used=300, pending=0, quota=None)
    with pytest.raises(NoRoom, match="100 free on disk, 300 could be evicted"):
        plan_room("b", 401, 0, space, [blob(1, 200), blob(2, 100)])
    # ... and what other downloads are still to write counts against the disk too.
    space = Space(free=400, used=0, pending=300, quota=None)
    with pytest.raises(NoRoom, match="300 still to come"):
        plan_room("b", 200, 0, space, [])


def test_least_recently_used_go_first_until_the_disk_has_room() -> None:
    candidates = [blob(3, 100), blob(1, 100, partial=True), blob(2, 100)]
    plan = plan_room("b", 250, 0, Space(free=100, used=300, pending=0, quota=None), candidates)
    assert plan.evict == [blob(1, 100, partial=True), blob(2, 100)]


def test_the_quota_is_met_by_eviction_and_overshot_only_for_what_is_in_use() -> None:
    space = Space(free=10**9, used=900, pending=0, quota=1000)
    plan = plan_room("b", 300, 0, space, [blob(2, 100), blob(1, 100)])
    assert plan.evict == [blob(1, 100), blob(2, 100)]
    assert plan.over_quota == 0
    plan = plan_room("b", 300, 0, space, [blob(1, 100)])  # the rest has readers
    assert plan.evict == [blob(1, 100)]
    assert plan.over_quota == 100


def test_bytes_already_on_disk_for_the_blob_are_not_asked_again() -> None:
    # A resume: 600 of its 1000 bytes are in its partial already.
    plan = plan_room("b", 1000, 600, Space(free=400, used=600, pending=0, quota=1000), [])
    assert plan.evict == [] and plan.over_quota == 0


# ---- watermarks and the periodic sweep ---------------------------------------------------


def disk(free: int, total: int = 1000, high: float = 0.85, low: float = 0.70) -> Space:
    """A file system of `total` bytes with `free` free; the store's own use is not counted
    against a quota here (none)."""
    return Space(free, used=0, pending=0, quota=None, total=total, marks=Watermarks(high, low))


def test_a_write_that_crosses_the_high_watermark_evicts_down_to_the_low_one() -> None:
    # 800 of 1000 used; writing 100 would make 900 > 850: evict until 700 + 100 <= ... 700.
    candidates = [blob(1, 50), blob(2, 100), blob(3, 100), blob(4, 100)]
    plan = plan_room("b", 100, 0, disk(free=200), candidates)
    assert plan.evict == [blob(1, 50), blob(2, 100), blob(3, 100)]  # 250 freed: 650 after
    assert set(plan.reasons) == {FOR_WATERMARK}
    assert plan.over_watermark == 0


def test_under_the_high_watermark_nothing_goes() -> None:
    plan = plan_room("b", 40, 0, disk(free=200), [blob(1, 50)])  # 840 <= 850
    assert plan.evict == []


def test_when_only_what_is_in_use_stays_the_plan_says_how_far_above_low() -> None:
    plan = plan_room("b", 100, 0, disk(free=200), [blob(1, 50)])
    assert plan.evict == [blob(1, 50)]
    assert plan.over_watermark == 850 - 700  # 800 - 50 + 100 used after; low is 700


def test_the_watermark_never_refuses_a_blob_that_fits_the_disk() -> None:
    plan = plan_room("b", 150, 0, disk(free=200), [])  # 950 > 850, nothing to evict
    assert plan.evict == [] and plan.over_watermark == 250


def test_the_sweep_evicts_what_the_ttl_expired_then_what_the_watermark_needs() -> None:
    space = disk(free=100)  # 900 used: above 850
    candidates = [blob(10, 100), blob(50, 100), blob(90, 100)]
    plan = plan_sweep(space, candidates, now=110.0, ttl=60.0)  # 10 and 50 unused >= 60 s
    assert plan.evict == [blob(10, 100), blob(50, 100)]
    assert plan.reasons == [FOR_TTL, FOR_TTL]  # 700 used after: at low, nothing more
    plan = plan_sweep(disk(free=0), candidates, now=80.0, ttl=60.0)  # 10 alone expired
    assert plan.evict == [blob(10, 100), blob(50, 100), blob(90, 100)]
    assert plan.reasons == [FOR_TTL, FOR_WATERMARK, FOR_WATERMARK]  # 900 is above 850


def test_without_a_ttl_or_a_limit_the_sweep_keeps_everything() -> None:
    space = Space(free=10, used=990, pending=0, quota=None)
    assert plan_sweep(space, [blob(1, 500)], now=10**9, ttl=None).evict == []


def test_the_sweep_keeps_the_quota() -> None:
    space = Space(free=10**9, used=1200, pending=0, quota=1000)
    plan = plan_sweep(space, [blob(2, 150), blob(1, 150)], now=0.0, ttl=None)
    assert plan.evict == [blob(1, 150), blob(2, 150)] and plan.reasons == [FOR_QUOTA] * 2


def test_next_expiry_is_the_least_recently_used_plus_the_ttl() -> None:
    assert next_expiry([blob(30, 1), blob(20, 1)], 60.0) == 80.0
    assert next_expiry([blob(30, 1)], None) is None
    assert next_expiry([], 60.0) is None


def test_a_sweep_never_refuses_when_downloads_reserve_more_than_the_disk_has() -> None:
    # 50 free, downloads in progress still to write 500: nothing can make room for them,
    # and a check has nothing to refuse: it evicts what it can (it used to raise NoRoom and
    # end the node's timer, and with it the node).
    space = Space(free=50, used=100, pending=500, quota=None)
    plan = plan_sweep(space, [blob(2, 60), blob(1, 40)], now=0.0, ttl=None)
    assert plan.evict == [blob(1, 40), blob(2, 60)]
    assert set(plan.reasons) == {FOR_DISK}
