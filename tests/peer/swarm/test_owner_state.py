"""The owner keeps one state per blob while it answers a Want: a sweep of idle digests (or a
fetch of the same blob ending) while the answer waits for the registry must not leave the
answer's seeder outside the node's table, where the peer's Haves, the offers' time-outs and
the choker never reach it (a stall seen in the swarm integration tests: a node waited for
ever for offers of a blob its owner held)."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from peer.swarm.bits import indices_of
from peer.swarm.swarm import Swarm
from tests.peer.fake_registry import FakeRegistry
from tests.peer.member_node import Member, link_member, start_node
from wire.events import Bitfield, Have, Want

PIECES = 8  # of the node's 64 KiB


def _offered(member: Member, digest: str) -> set[int]:
    offered: set[int] = set()
    for offer in member.offers:
        if isinstance(offer, Have) and offer.digest == digest:
            offered.add(offer.index)
        elif isinstance(offer, Bitfield) and offer.digest == digest:
            offered |= indices_of(offer.bits)
    return offered


async def _owner_behind_a_gated_registry(
    tmp_path: Path, nursery: trio.Nursery
) -> tuple[Swarm, FakeRegistry, trio.Event, Member, str]:
    """A node whose registry holds a blob but answers for it only once `registry.gate` is
    set, and a member linked to the node's peer port."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    setup = await start_node(tmp_path, nursery, registry)
    assert setup.node.swarm is not None
    digest = registry.add_blob(os.urandom(PIECES * 64 * 1024))
    gate = registry.gate = trio.Event()
    member = await link_member(setup, nursery)
    return setup.node.swarm, registry, gate, member, digest


async def test_a_want_answered_across_an_idle_sweep_is_offered_every_piece(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    swarm, registry, gate, member, digest = await _owner_behind_a_gated_registry(tmp_path, nursery)
    await member.link.send(Want(digest, None, "org/app", None))
    with trio.fail_after(10):
        while not registry.count("GET", digest):
            await trio.sleep(0.01)
    # The owner's answer waits for the registry; nothing is held or fetched here yet.
    swarm.forget_idle_digests()
    gate.set()
    confirmed: set[int] = set()
    with trio.move_on_after(15):  # offers time out after 10 s: one round of those at most
        while _offered(member, digest) != set(range(PIECES)):
            for index in _offered(member, digest) - confirmed:
                # As a fetching node does once it has the piece: the owner's next offer
                # follows each Have.
                await member.link.send(Have(digest, index))
                confirmed.add(index)
            await trio.sleep(0.02)
    assert _offered(member, digest) == set(range(PIECES))
    assert swarm.digests[digest].seeder is not None


async def test_wants_repeated_while_one_is_answered_cost_nothing_more(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A member (a liar, perhaps) repeating a Want while the first is still being answered
    must not start an answer each time (each copies the blob's hashes and holds a task)."""
    swarm, registry, gate, member, digest = await _owner_behind_a_gated_registry(tmp_path, nursery)
    for _ in range(50):
        await member.link.send(Want(digest, None, "org/app", None))
    with trio.fail_after(10):
        while not registry.count("GET", digest):
            await trio.sleep(0.01)
    await trio.sleep(0.3)  # every Want has been read by now
    assert len(swarm.digests[digest].answering) == 1
    gate.set()
    with trio.fail_after(10):
        while not _offered(member, digest):
            await trio.sleep(0.02)
    assert not swarm.digests[digest].answering
