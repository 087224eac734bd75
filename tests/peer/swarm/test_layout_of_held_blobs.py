"""A node that took a blob from a swarm serves it in the swarm's layout (its owner's pieces)
after a restart too, not by its own rule: nodes set otherwise (another --piece-size,
--pieces-per-blob or declared uplink) cut blobs otherwise. A restarted holder that became the
blob's owner answered in its own rule's pieces, and every node fetching the blob in the old
owner's pieces gave that owner up ("the new owner cuts the blob into other pieces") and asked
the registry for the rest. Real nodes (gossip on UDP, links on TCP, all on loopback) with a
fake registry."""

from __future__ import annotations

from pathlib import Path

import trio

from peer.cluster.rendezvous import owner_order
from peer.node import Node
from tests.peer.swarm.real_nodes import (
    PIECE,
    blob_where,
    knows,
    make_node,
    registry_and_seed,
    running,
    until,
)

# Rendezvous weighs a member by the cube of the uplink it declares (none: the fastest):
# 1 Mbit/s ranks far behind 100 Mbit/s, which ranks far behind none. So the owner (none)
# comes first and the holder (100 Mbit/s) second, whatever id the holder has once restarted.
SLOW, MEDIUM = 125_000, 12_500_000


def first_of(digest: str, *nodes: Node) -> bytes:
    """The owner of `digest` among `nodes`, by the capacities they declare."""
    declared = {n.node_id: n.config.declared_capacity() for n in nodes}
    return owner_order(digest, list(declared), declared)[0]


async def test_a_restarted_holder_that_takes_over_answers_in_the_swarms_pieces(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = (await registry_and_seed(tmp_path, nursery))[0]
    seed = make_node(registry, tmp_path / "first", uplink=SLOW)
    assert seed.config.peer is not None
    join = (seed.config.peer,)
    # The owner cuts the 1 MiB blob into 4 pieces of 256 KiB; the others' rule is 64 KiB.
    owner = make_node(registry, tmp_path / "owner", join, piece_size=4 * PIECE)
    holder = make_node(registry, tmp_path / "holder", join, uplink=MEDIUM)
    puller = make_node(registry, tmp_path / "puller", join, uplink=SLOW)
    data = blob_where(lambda d: first_of(d, seed, owner, holder, puller) == owner.node_id)
    digest = registry.add_blob(data)
    async with running(seed, nursery), running(puller, nursery) as p:
        async with trio.open_nursery() as owner_nursery, running(owner, owner_nursery):
            async with trio.open_nursery() as holder_nursery:
                async with running(holder, holder_nursery) as h:
                    await until(lambda: knows(holder, seed, owner) and knows(owner, holder))
                    assert await h.pull(digest) == data
                holder_nursery.cancel_scope.cancel()
            again = make_node(registry, tmp_path / "holder", join, uplink=MEDIUM)
            nursery.start_soon(again.run)
            nodes = (seed, owner, again, puller)
            await until(lambda: all(knows(n, *(m for m in nodes if m is not n)) for n in nodes))
            after_owner = (seed, again, puller)
            assert first_of(digest, *nodes) == owner.node_id
            assert first_of(digest, *after_owner) == again.node_id
            # The owner sends slowly now: the puller opens its download in the owner's
            # pieces, and the owner dies before it is done.
            assert owner.swarm is not None
            owner.swarm.set_upload_rate(16 * 1024)
            pulled: list[bytes] = []

            async def pull() -> None:
                pulled.append(await p.pull(digest))

            nursery.start_soon(pull)
            await until(lambda: puller.store.partial(digest) is not None)
            owner_nursery.cancel_scope.cancel()
        with trio.fail_after(20):
            while not pulled:
                await trio.sleep(0.05)
        assert pulled == [data]
        assert again.swarm is not None and again.swarm.counters.pieces_to_peers > 0
    assert registry.count("GET", digest) == 1, "the puller went to the registry again"
