"""A member's Bitfield is decoded only when its length is that of the blob as the node cuts
it: the frame allows 60 KB of bits (480,000 indices to decode and walk on the link's read
loop), where a blob of 16 pieces takes 2 bytes. A real node and registry; the member is
scripted."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import peer.swarm.swarm as swarm_module
from peer.swarm.bits import bits_of, indices_of
from tests.peer.member_node import node_and_registry, open_link
from wire.events import Bitfield, Want
from wire.identity import NodeIdentity

PIECE = 64 * 1024  # the test node's piece size
PIECES = 16


async def test_a_bitfield_of_another_length_is_not_decoded(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []  # the length of every Bitfield the node decoded

    def recording_indices_of(bits: bytes) -> set[int]:
        decoded.append(len(bits))
        return indices_of(bits)

    monkeypatch.setattr(swarm_module, "indices_of", recording_indices_of)
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        data = bytes(range(256)) * (PIECES * PIECE // 256)
        digest = setup.registry.add_blob(data)
        got = await setup.client.get(f"/v2/org/app/blobs/{digest}")
        assert got.status_code == 200  # the node holds it: 16 pieces
        attacker = NodeIdentity.generate()
        link = await open_link(setup, attacker)
        await link.send(Want(digest, None, "org/app", None))  # the node seeds it to us now
        with trio.fail_after(10):
            while (state := swarm.digests.get(digest)) is None or state.seeder is None:
                await trio.sleep(0.01)
        for _ in range(5):
            await link.send(Bitfield(digest, b"\xff" * 59_900))
        await link.send(Bitfield(digest, b"\xff" * 3))  # one byte too many
        await link.send(Bitfield(digest, bits_of(range(4), PIECES)))  # its own length, last
        with trio.fail_after(10):
            while not decoded:  # read in order: the last one is decoded after the others
                await trio.sleep(0.01)
        await link.close()
        assert decoded == [2]
