"""A host whose declared uplink is slow beside the cluster's paces its piece uploads a little
under it (peer/swarm/pacing.py): the rule alone, and real nodes on loopback that learn each
other's declared uplinks by gossip."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import trio
from hypothesis import given
from hypothesis import strategies as st

from peer.cluster.rendezvous import UNDECLARED, cluster_uplink
from peer.config import Address
from peer.node import Node
from peer.swarm.pacing import PACE_SHARE, SLOW_SHARE, upload_pace
from tests.peer.fake_registry import FakeRegistry
from tests.peer.swarm.real_nodes import knows, make_node, registry_and_seed, running, until

FAST = 4_000_000
SLOW = 1_000_000


def test_a_host_at_a_quarter_of_the_clusters_uplink_paces_its_uploads() -> None:
    assert upload_pace(None, SLOW, FAST) == int(SLOW * PACE_SHARE)


def test_a_host_as_fast_as_the_cluster_is_not_paced() -> None:
    assert upload_pace(None, FAST, FAST) is None
    assert upload_pace(None, FAST, SLOW) is None  # faster than the cluster


def test_the_pace_starts_at_half_the_clusters_uplink() -> None:
    assert upload_pace(None, int(FAST * SLOW_SHARE), FAST) is not None
    assert upload_pace(None, int(FAST * SLOW_SHARE) + 1, FAST) is None


def test_a_host_that_declares_nothing_is_not_paced() -> None:
    assert upload_pace(None, 0, FAST) is None


def test_the_operators_upload_rate_always_wins() -> None:
    assert upload_pace(123, SLOW, FAST) == 123
    assert upload_pace(10 * FAST, SLOW, FAST) == 10 * FAST  # even above the pace
    assert upload_pace(123, 0, 0) == 123


def test_a_cluster_of_undeclared_members_counts_as_the_fastest() -> None:
    # cluster_uplink gives 0 where the median member declares nothing (10 Gbit/s).
    assert upload_pace(None, 125_000_000, 0) == int(125_000_000 * PACE_SHARE)  # 1 Gbit/s
    assert upload_pace(None, UNDECLARED, 0) is None


@given(
    declared=st.integers(min_value=1, max_value=UNDECLARED),
    cluster=st.integers(min_value=0, max_value=UNDECLARED),
)
def test_a_pace_is_under_the_declared_uplink_and_only_for_slow_hosts(
    declared: int, cluster: int
) -> None:
    pace = upload_pace(None, declared, cluster)
    reference = cluster or UNDECLARED
    assert (pace is not None) == (declared <= SLOW_SHARE * reference)
    if pace is not None:  # under the uplink, by the share: room for requests and ACKs
        assert 0 < pace <= max(1, declared * PACE_SHARE)  # never 0: that is no cap at all
        assert pace < declared or declared == 1


@given(
    declared=st.integers(min_value=1, max_value=UNDECLARED),
    gossiped=st.lists(st.integers(min_value=0, max_value=2**64), max_size=40),
)
def test_what_members_gossip_never_caps_a_host_above_its_uplink_or_at_nothing(
    declared: int, gossiped: list[int]
) -> None:
    # Members say what they like of themselves (0, or far past any link): the cluster's
    # uplink clamps it, and the pace stays within (0, declared] or is None.
    pace = upload_pace(None, declared, cluster_uplink([*gossiped, declared]))
    assert pace is None or 0 < pace <= declared


def _fast_pair(registry: FakeRegistry, tmp_path: Path) -> tuple[Node, Node, tuple[Address, ...]]:
    """Two members that declare FAST, and the address the others join at."""
    first = make_node(registry, tmp_path / "first", uplink=FAST)
    assert first.config.peer is not None
    join = (first.config.peer,)
    return first, make_node(registry, tmp_path / "second", join, uplink=FAST), join


def _all_know(nodes: tuple[Node, ...]) -> bool:
    return all(knows(n, *(m for m in nodes if m is not n)) for n in nodes)


def _cap(node: Node) -> object:
    swarm = node.status()["swarm"]
    assert isinstance(swarm, dict)
    return swarm["upload_cap_bytes_per_s"]


async def test_the_slow_host_of_a_cluster_paces_and_the_fast_ones_do_not(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first, second, join = _fast_pair(registry, tmp_path)
    third = make_node(registry, tmp_path / "third", join, uplink=FAST)
    slow = make_node(registry, tmp_path / "slow", join, uplink=SLOW)
    capped = make_node(registry, tmp_path / "capped", join, uplink=SLOW, upload_rate=SLOW // 2)
    nodes = (first, second, third, slow, capped)
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(running(node, nursery))
        await until(lambda: _all_know(nodes))
        # The cluster's uplink, the median of 4 MB/s, 4, 4, 1, 1, is 4 MB/s once the others'
        # declarations have arrived by gossip.
        await until(lambda: _cap(slow) == int(SLOW * PACE_SHARE))
        assert slow.swarm is not None and slow.swarm.upload_limit.rate == int(SLOW * PACE_SHARE)
        assert _cap(first) is None and _cap(second) is None and _cap(third) is None
        assert _cap(capped) == SLOW // 2  # the operator's --upload-rate stands
        # A timer tick that finds the same pace leaves the token bucket alone (a new one would
        # start with a full second's burst: twice the pace, every second).
        limiter = slow.swarm.upload_limit
        bucket = limiter._bucket
        slow.store.uplink = 0  # the tick sets it again
        await until(lambda: slow.store.uplink == FAST)
        assert limiter._bucket is bucket and limiter.rate == int(SLOW * PACE_SHARE)


async def test_a_reload_that_drops_the_upload_rate_leaves_a_slow_host_paced(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first, second, join = _fast_pair(registry, tmp_path)
    config = make_node(registry, tmp_path / "slow", join, uplink=SLOW, upload_rate=SLOW).config
    slow = Node(config, reread_config=lambda: dataclasses.replace(config, upload_rate=None))
    nodes = (first, second, slow)
    async with running(first, nursery), running(second, nursery), running(slow, nursery):
        await until(lambda: _all_know(nodes))
        # A timer tick that saw the others' uplinks (it sets the cluster's) keeps the
        # operator's cap.
        await until(lambda: slow.store.uplink == FAST)
        assert _cap(slow) == SLOW
        slow.reload()
        assert _cap(slow) == int(SLOW * PACE_SHARE)
        assert slow.swarm is not None and slow.swarm.upload_limit.rate == int(SLOW * PACE_SHARE)
