"""An owner whose registry answers 502, 503 or 504 (overloaded, or a proxy in front of it
down): the nodes that asked it wait and ask it again, instead of each asking the registry at
once. Every node asking at once is the load that made the registry fail; asked again, the
owner makes one request for all of them. Real nodes on loopback with a fake registry."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.peer.swarm import real_nodes as cluster
from tests.peer.swarm.real_nodes import Running


async def test_nodes_wait_for_an_owner_whose_registry_is_busy_rather_than_all_asking_it(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, owner = await cluster.registry_and_seed(tmp_path, nursery)
    assert owner.config.peer is not None
    others = [
        cluster.make_node(registry, tmp_path / name, join=(owner.config.peer,))
        for name in ("b", "c")
    ]
    data = cluster.blob_where(lambda d: cluster.first_of(d, owner, *others) == owner.node_id)
    digest = registry.add_blob(data)
    # The owner's first GET waits at the gate until both nodes asked the owner, then is
    # answered 503; the registry serves every later one.
    registry.gate = trio.Event()
    registry.busy_gets = 1
    pulled: list[bytes] = []

    async def pull(node: Running) -> None:
        pulled.append(await node.pull(digest))

    async with (
        cluster.running(owner, nursery),
        cluster.running(others[0], nursery) as b,
        cluster.running(others[1], nursery) as c,
    ):
        await cluster.until(
            lambda: cluster.knows(owner, *others) and all(cluster.knows(o, owner) for o in others)
        )
        assert owner.swarm is not None
        states = owner.swarm.digests
        async with trio.open_nursery() as pulls:
            pulls.start_soon(pull, b)
            pulls.start_soon(pull, c)
            await cluster.until(lambda: digest in states and len(states[digest].answering) == 2)
            registry.gate.set()
    assert pulled == [data, data]
    # The owner's busy GET and its next one: neither other node asked the registry.
    assert registry.count("GET", digest) == 2
