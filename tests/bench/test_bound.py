from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.bound import payload_bound, payload_share, t_min

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


def test_payload_share_of_a_1500_byte_mtu_with_timestamps() -> None:
    # 1448 bytes of payload in each 1514-byte frame: what one flow through a tbf measured.
    assert payload_share(1500, timestamps=True) == pytest.approx(1448 / 1514)
    assert payload_share(1500, timestamps=False) == pytest.approx(1460 / 1514)
    assert payload_share(9000, timestamps=True) > payload_share(1500, timestamps=True)


def test_payload_bound_is_later_than_t_min() -> None:
    bound = t_min(512 * 2**20, 25 * MBIT, [25 * MBIT] * 16, [25 * MBIT] * 16)
    share = payload_share(1500, timestamps=True)
    assert payload_bound(bound, share) == pytest.approx(bound * 1514 / 1448)
    assert payload_bound(bound, share) > bound


def test_nonsense_shares_are_refused() -> None:
    with pytest.raises(ValueError):
        payload_share(52, timestamps=True)
    with pytest.raises(ValueError):
        payload_bound(1.0, 0.0)
    with pytest.raises(ValueError):
        payload_bound(1.0, 1.5)
