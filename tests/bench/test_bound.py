from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.bound import t_min

MBIT = 1_000_000 // 8


def test_origin_bound_dominates_a_swarm_of_equal_links() -> None:
    # 16 hosts and the origin at 100 Mbit/s: the origin must send F once (F / u_s), and
    # 16 F over 17 uplinks is a little less.
    size = 512 * 2**20
    assert t_min(size, 100 * MBIT, [100 * MBIT] * 16, [100 * MBIT] * 16) == pytest.approx(
        size / (100 * MBIT)
    )


def test_aggregate_upload_dominates_slow_host_uplinks() -> None:
    size = 10**9
    bound = t_min(size, 100 * MBIT, [10 * MBIT] * 20, [None] * 20)
    assert bound == pytest.approx(20 * size / (300 * MBIT))


def test_slowest_downlink_bounds() -> None:
    assert t_min(1000, 1000, [1000, 1000], [1000, 10]) == pytest.approx(100)


@given(
    size=st.integers(1, 10**12),
    origin=st.integers(1, 10**10),
    ups=st.lists(st.integers(1, 10**10), min_size=1, max_size=50),
)
def test_no_bound_below_any_of_its_three_terms(size: int, origin: int, ups: list[int]) -> None:
    bound = t_min(size, origin, ups, [None] * len(ups))
    assert bound >= size / origin
    assert bound >= len(ups) * size / (origin + sum(ups)) * (1 - 1e-12)
    # More upload capacity never makes the bound worse.
    assert t_min(size, origin, [u * 2 for u in ups], [None] * len(ups)) <= bound


def test_nonsense_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        t_min(1, 0, [1], [None])
