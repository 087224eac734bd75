"""The owner's pushed first copies between real nodes (gossip on UDP, links on TCP, loopback, a
fake registry): a fetching node invites the owner, whose first copies then come unasked; what
it pushes is checked like any piece, and comes after its hash whatever link it takes."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from peer.node import Node
from peer.swarm.link import PeerLink
from peer.swarm.uploads import Uploads
from tests.peer.fake_registry import FakeRegistry
from tests.peer.swarm.real_nodes import (
    BLOB,
    PIECE,
    blob_where,
    first_of,
    knows,
    make_node,
    registry_and_seed,
    running,
    until,
)
from wire.events import Event, PieceMeta


async def test_the_owner_pushes_its_first_copies_to_the_node_that_invited_them(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # The owner still fetches while the puller takes its pieces.
    registry, seed, puller, data, digest = await owner_and_puller(tmp_path, nursery, pace=0.02)
    async with running(seed, nursery), running(puller, nursery) as b:
        await until(lambda: knows(seed, puller) and knows(puller, seed))
        assert seed.swarm is not None and puller.swarm is not None
        assert await b.pull(digest) == data
        pushed = seed.swarm.counters.pieces_pushed
        # Every piece went out once, most of them unasked (an offer made before the puller's
        # Invite came is asked for); none came twice.
        assert 0 < pushed <= BLOB // PIECE
        assert seed.swarm.counters.pieces_to_peers == BLOB // PIECE
        assert puller.swarm.counters.pieces_from_peers == BLOB // PIECE
        assert puller.swarm.counters.wasted_bytes == 0
    assert registry.count("GET", digest) == 1


async def test_a_pushed_piece_that_fails_its_hash_bans_the_owner(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    _registry, seed, puller, data, digest = await owner_and_puller(tmp_path, nursery)
    async with running(seed, nursery), running(puller, nursery) as b:
        await until(lambda: knows(seed, puller) and knows(puller, seed))
        assert seed.swarm is not None and puller.swarm is not None
        with tempfile.TemporaryFile() as zeros:
            zeros.truncate(BLOB)
            _push_zeros(seed.swarm.uploads, zeros.fileno())  # the owner lies in its pushes
            # The pull completes (from the registry once the owner is banned), every byte right.
            assert await b.pull(digest) == data
        assert seed.swarm.counters.pieces_pushed >= 1
        assert puller.swarm.counters.bad_pieces >= 1
        assert puller.swarm.is_banned(seed.node_id)


async def test_a_push_on_another_link_than_the_owners_updates_comes_after_its_hash(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # Two nodes that dial each other at once keep both links, and each may send on another:
    # the puller invites on its newest, the owner sends PieceMeta updates on its own newest.
    # The owner still fetches: each piece's hash is an update.
    registry, seed, puller, data, digest = await owner_and_puller(tmp_path, nursery, pace=0.02)
    async with running(seed, nursery), running(puller, nursery) as b:
        await until(lambda: knows(seed, puller) and knows(puller, seed))
        owner, fetcher = seed.swarm, puller.swarm
        assert owner is not None and fetcher is not None
        await until(lambda: puller.node_id in owner.links)
        updates_link = owner.links.pop(puller.node_id)
        await owner.link_to(puller.node_id)  # a second link, the puller's newest
        await until(lambda: len(fetcher._open_links.get(seed.node_id, ())) == 2)
        owner.links[puller.node_id] = updates_link  # the owner's updates keep the first
        _hold_piece_meta(updates_link)  # and there they are slow: held back
        assert await b.pull(digest) == data
        assert owner.counters.pieces_pushed >= 1
        # No pushed piece came before its hash (each would have been thrown away: the whole
        # blob, before the hash went first). What may be wasted: the two pushes on their way
        # when the seeding ends, whose pieces the owner's Bitfield, on the other link, offers
        # again and may be asked for before they arrive.
        assert fetcher.counters.wasted_bytes <= 2 * PIECE
    assert registry.count("GET", digest) == 1


async def owner_and_puller(
    tmp_path: Path, nursery: trio.Nursery, pace: float = 0.0
) -> tuple[FakeRegistry, Node, Node, bytes, str]:
    """A registry (sleeping `pace` s between 64 KiB of a blob), a seed, a puller that joins
    it (neither started), and a blob the seed owns: its bytes and digest."""
    registry, seed = await registry_and_seed(tmp_path, nursery)
    registry.pace = pace
    assert seed.config.peer is not None
    puller = make_node(registry, tmp_path / "puller", join=(seed.config.peer,))
    data = blob_where(lambda d: first_of(d, seed, puller) == seed.node_id)
    return registry, seed, puller, data, registry.add_blob(data)


def _push_zeros(uploads: Uploads, zeros: int) -> None:
    """Make `uploads` push the bytes of file `zeros` in place of each piece (requested pieces
    stay true)."""
    honest = uploads._send_piece

    async def lying(
        link: PeerLink,
        digest: str,
        index: int,
        fd: int,
        offset: int,
        length: int,
        *,
        pushed: bool = False,
    ) -> float | None:
        if pushed:
            fd, offset = zeros, 0
        return await honest(link, digest, index, fd, offset, length, pushed=pushed)

    uploads._send_piece = lying  # type: ignore[method-assign]


def _hold_piece_meta(link: PeerLink) -> None:
    """PieceMeta posted on `link` from now on is never sent (a slow link, at its extreme)."""
    honest = link.post

    def post(event: Event) -> None:
        if not isinstance(event, PieceMeta):
            honest(event)

    link.post = post  # type: ignore[method-assign]
