"""A node that joins a cluster whose nodes hold a blob, and pulls it at once, takes it from
them: the registry sends it once. Real nodes (gossip on UDP, links on TCP, all on loopback)
with a fake registry.

Two holes, each shown by one test (both fetched the blob from the registry a second time):
a pull that came as a node started (a kubelet does not wait for its readiness) was served
knowing no member, or the seed alone, until gossip or the 30 s sync told it the rest: it took
itself or its seed for the owner; and a node that joins and ranks first for a blob owned it
and fetched it from the registry, though the previous owner (next in order) held it.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.peer.swarm.real_nodes import (
    blob_where,
    first_of,
    knows,
    make_node,
    registry_and_seed,
    running,
    until,
)


async def test_a_pull_at_a_joining_nodes_start_waits_for_it_to_learn_the_cluster(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, seed = await registry_and_seed(tmp_path, nursery)
    async with running(seed, nursery) as a:
        holder = make_node(registry, tmp_path / "holder", join=(a.peer,))
        joiner = make_node(registry, tmp_path / "joiner", join=(a.peer,))
        # The holder owns the blob now and once the joiner is in: the joiner that knows
        # only its seed takes itself or the seed for the owner, and either fetches it again.
        data = blob_where(
            lambda d: (
                first_of(d, seed, holder) == first_of(d, seed, holder, joiner) == holder.node_id
            )
        )
        digest = registry.add_blob(data)
        async with running(holder, nursery) as b:
            await until(lambda: knows(seed, holder) and knows(holder, seed))
            assert await b.pull(digest) == data
            async with running(joiner, nursery) as j:
                # At once, as a kubelet pulls whatever the node's readiness says.
                assert await j.pull(digest) == data
    assert registry.count("GET", digest) == 1


async def test_a_joining_node_that_ranks_first_takes_the_blob_from_the_previous_owner(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, seed = await registry_and_seed(tmp_path, nursery)
    assert seed.config.peer is not None
    joiner = make_node(registry, tmp_path / "joiner", join=(seed.config.peer,))
    data = blob_where(lambda d: first_of(d, seed, joiner) == joiner.node_id)
    digest = registry.add_blob(data)
    async with running(seed, nursery) as a:
        assert await a.pull(digest) == data  # alone, the seed owns it
        async with running(joiner, nursery) as j:
            await until(lambda: knows(joiner, seed))
            assert await j.pull(digest) == data
    assert registry.count("GET", digest) == 1


async def test_a_node_that_ranks_first_answers_a_peers_want_from_the_node_that_holds_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """Another node (not the joiner's own client) asks the joiner first: the joiner takes
    the blob from the node that holds it and passes it on, instead of the registry."""
    registry, seed = await registry_and_seed(tmp_path, nursery)
    assert seed.config.peer is not None
    joiner = make_node(registry, tmp_path / "joiner", join=(seed.config.peer,))
    puller = make_node(registry, tmp_path / "puller", join=(seed.config.peer,))
    data = blob_where(lambda d: first_of(d, seed, joiner, puller) == joiner.node_id)
    digest = registry.add_blob(data)
    async with running(seed, nursery) as a:
        assert await a.pull(digest) == data  # alone, the seed owns it
        async with running(joiner, nursery), running(puller, nursery) as c:
            await until(lambda: knows(puller, seed, joiner) and knows(joiner, seed, puller))
            assert await c.pull(digest) == data
    assert registry.count("GET", digest) == 1
