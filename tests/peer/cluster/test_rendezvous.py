from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from peer.cluster.rendezvous import owner_order

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
