"""`--pieces-per-blob` reaches what a node sends and stores: its downloads are cut by it, and
as a blob's owner its PieceMeta gives that layout to every node that fetches the blob (the
fetching nodes take the owner's layout). A real node and registry; the asking member is
scripted."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from bench.components import free_port
from tests.peer.member_node import announce_member, link_member, node_and_registry
from wire.events import PieceMeta, Want
from wire.identity import NodeIdentity

MIB = 1024 * 1024


async def _owner_layout(tmp_path: Path, nursery: trio.Nursery, **settings: int) -> PieceMeta:
    async with node_and_registry(tmp_path, nursery, piece_size=MIB, **settings) as setup:
        data = os.urandom(MIB)
        digest = setup.registry.add_blob(data)
        response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.content == data
        with trio.fail_after(10):  # the last byte goes out before the commit's fsync
            while not setup.node.store.has_blob(digest):
                await trio.sleep(0.01)
        member = await link_member(setup, nursery)
        await member.link.send(Want(digest, None, "org/app", None, held_only=True))
        with trio.fail_after(10):
            while not member.metas:
                await trio.sleep(0.01)
        answer = member.metas[0]
        assert isinstance(answer, PieceMeta)
        return answer


async def test_an_owner_cuts_blobs_into_its_pieces_per_blob(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # 1 MiB in pieces of at most 1 MiB: the default rule halves to 256 KiB (4 pieces), one
    # piece per blob takes the largest.
    default = await _owner_layout(tmp_path / "default", nursery)
    assert (default.piece_size, len(default.hashes)) == (256 * 1024, 4)
    assert default.verified  # held whole, its sha256 checked: its hashes vouch for the blob
    one = await _owner_layout(tmp_path / "one", nursery, pieces_per_blob=1)
    assert (one.piece_size, len(one.hashes)) == (MIB, 1)


async def test_a_node_cuts_blobs_for_the_uplink_its_cluster_declares(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A node that declares a slow uplink cuts the blobs it owns into pieces of at most 0.05 s
    of it (1 MB/s: 64 KiB, where the rule gives 256 KiB); among members that declare nothing
    (as fast as any), it cuts for their median, the fast: as they would."""
    slow = await _owner_layout(tmp_path / "slow", nursery, uplink=1_000_000)
    assert (slow.piece_size, len(slow.hashes)) == (64 * 1024, 16)
    settings = {"piece_size": MIB, "uplink": 1_000_000}
    async with node_and_registry(tmp_path / "cluster", nursery, **settings) as setup:
        assert setup.node.store.piece_size_for(MIB) == 64 * 1024  # alone: its own
        for _ in range(2):
            identity = NodeIdentity.generate()
            await announce_member(setup, identity, free_port(avoid=[setup.peer_port]))
        with trio.fail_after(10):  # the swarm looks again at every rechoke
            while setup.node.store.piece_size_for(MIB) != 256 * 1024:
                await trio.sleep(0.05)
