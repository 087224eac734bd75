"""The upload side's choking decisions (no links: the decisions alone)."""

from __future__ import annotations

import os
from pathlib import Path

from peer.cluster.membership import Membership
from peer.swarm.swarm import RECHOKE_PERIOD, UPLOAD_SLOTS, Swarm
from pieces.store import Store


def make_swarm(tmp_path: Path) -> Swarm:
    node_id = os.urandom(16)
    membership = Membership(node_id, ("127.0.0.1", 1))
    return Swarm(node_id, membership, Store(tmp_path), None, None, 1 << 20)  # type: ignore[arg-type]


async def test_best_contributors_stay_unchoked_plus_one_optimistic(tmp_path: Path) -> None:
    swarm = make_swarm(tmp_path)
    peers = [bytes([i]) * 16 for i in range(12)]
    now = 1000.0
    for rank, peer in enumerate(peers):
        swarm._requesters[peer] = now
        swarm._contribution[peer] = 1000 * (12 - rank)  # peers[0] gave the most
    await swarm.rechoke(now)
    unchoked = set(peers) - swarm.choked
    assert len(unchoked) == UPLOAD_SLOTS
    assert set(peers[: UPLOAD_SLOTS - 1]) <= unchoked  # the best contributors
    optimistic = swarm._optimistic
    assert optimistic in unchoked and optimistic not in peers[: UPLOAD_SLOTS - 1]
    # Peers that stopped asking long ago are forgotten, not choked forever.
    for peer in peers:
        swarm._requesters[peer] = now - 10 * RECHOKE_PERIOD
    await swarm.rechoke(now + RECHOKE_PERIOD)
    assert swarm.choked == set(peers) - unchoked


async def test_optimistic_slot_rotates(tmp_path: Path) -> None:
    swarm = make_swarm(tmp_path)
    peers = [bytes([i]) * 16 for i in range(30)]
    picks = set()
    now = 0.0
    for _ in range(20):
        for peer in peers:
            swarm._requesters[peer] = now
        await swarm.rechoke(now)
        picks.add(swarm._optimistic)
        now += 30.0
    assert len(picks) > 3
