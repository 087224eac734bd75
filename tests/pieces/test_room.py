"""Whether a blob fits, and what is evicted for it (a pure decision)."""

from __future__ import annotations

import pytest

from pieces.partial import NoRoom
from pieces.room import Candidate, Space, plan_room


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
