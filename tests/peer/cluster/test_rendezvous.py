from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from peer.cluster.rendezvous import UNDECLARED, cluster_uplink, owner_order

ids = st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=30, unique=True)
digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())


@given(ids, digests)
def test_order_is_the_same_whatever_the_input_order(nodes: list[bytes], digest: str) -> None:
    assert owner_order(digest, nodes) == owner_order(digest, list(reversed(nodes)))


@given(ids, digests)
def test_removing_a_node_keeps_the_order_of_the_rest(nodes: list[bytes], digest: str) -> None:
    order = owner_order(digest, nodes)
    gone = order[0]
    assert owner_order(digest, [n for n in nodes if n != gone]) == order[1:]


def test_owners_spread_over_nodes() -> None:
    nodes = [os.urandom(16) for _ in range(8)]
    owners = [owner_order("sha256:" + os.urandom(32).hex(), nodes)[0] for _ in range(800)]
    counts = [owners.count(n) for n in nodes]
    assert min(counts) > 50  # ~100 each; a skewed hash would starve some nodes


@given(ids, digests, st.integers(1, 10**10))
def test_equal_declared_capacities_keep_the_plain_order(
    nodes: list[bytes], digest: str, capacity: int
) -> None:
    """All hosts alike (all declare, or none): the order nodes of an older version compute."""
    assert owner_order(digest, nodes, dict.fromkeys(nodes, capacity)) == owner_order(digest, nodes)


@given(ids, digests, st.data())
def test_weighted_orders_agree_whatever_the_input_order_and_survive_a_death(
    nodes: list[bytes], digest: str, data: st.DataObject
) -> None:
    capacity = {n: data.draw(st.sampled_from([0, 25, 100])) for n in nodes}
    order = owner_order(digest, nodes, capacity)
    assert order == owner_order(digest, list(reversed(nodes)), capacity)
    rest = {n: c for n, c in capacity.items() if n != order[0]}
    assert owner_order(digest, order[1:], rest) == order[1:]


def test_hosts_that_declare_a_quarter_of_the_uplink_rarely_own() -> None:
    fast = [os.urandom(16) for _ in range(12)]
    slow = [os.urandom(16) for _ in range(4)]
    capacity = {**dict.fromkeys(fast, 100), **dict.fromkeys(slow, 25)}
    digests = ["sha256:" + os.urandom(32).hex() for _ in range(20_000)]
    owners = [owner_order(d, fast + slow, capacity)[0] for d in digests]
    slow_share = sum(o in slow for o in owners) / len(owners)
    # Weights 1 and 1/64: 4 x 1/64 of 12.06 is 0.52 % (~104 of 20,000, give or take 10);
    # squared weights would give 2 %, unweighted 25 %.
    assert 0.002 < slow_share < 0.012
    # Undeclared hosts count as the fastest.
    undeclared = {**dict.fromkeys(fast, 0), **dict.fromkeys(slow, 25)}
    owners = [owner_order(d, fast + slow, undeclared)[0] for d in digests]
    assert sum(o in slow for o in owners) / len(owners) < 0.05


def test_a_claimed_capacity_above_any_real_link_weighs_no_more_than_an_undeclared_one() -> None:
    """A member that declares 2**48 - 1 bytes/s (every rate a datagram can carry) owns the
    blobs an undeclared member would, not all of them (it would get every pull's Want)."""
    nodes = [bytes([i]) * 16 for i in range(8)]
    liar = nodes[0]
    digests = [f"sha256:{i:064x}" for i in range(2000)]
    claimed = {liar: 2**48 - 1}
    undeclared: dict[bytes, int] = {liar: UNDECLARED}
    owned = sum(owner_order(d, nodes, claimed)[0] == liar for d in digests)
    assert owned == sum(owner_order(d, nodes, undeclared)[0] == liar for d in digests)
    assert owned < len(digests) // 4


def test_the_cluster_uplink_is_the_median_of_what_members_declare() -> None:
    mbit = 1_000_000 // 8
    assert cluster_uplink([]) == 0
    assert cluster_uplink([25 * mbit]) == 25 * mbit
    assert cluster_uplink([25 * mbit] * 12 + [100 * mbit] * 4) == 25 * mbit
    # A few slow hosts among fast ones: the fast (those that declare nothing count as any).
    assert cluster_uplink([100 * mbit] * 12 + [25 * mbit] * 4) == 100 * mbit
    assert cluster_uplink([0] * 12 + [25 * mbit] * 4) == 0
    assert cluster_uplink([0, 25 * mbit]) == 25 * mbit  # the lower of the middle two
    assert cluster_uplink([10 * UNDECLARED, 10 * UNDECLARED]) == 0  # past any real link


@given(st.lists(st.integers(0, 2 * UNDECLARED), max_size=40))
def test_the_cluster_uplink_does_not_hang_on_the_order_members_are_seen(
    declared: list[int],
) -> None:
    uplink = cluster_uplink(declared)
    assert uplink == cluster_uplink(list(reversed(declared)))
    assert uplink == 0 or uplink in declared
