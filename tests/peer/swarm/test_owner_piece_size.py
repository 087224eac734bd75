"""A lying owner must not choose a piece size no node could be set to: its PieceMeta's piece
size made the fetching node keep state for every piece (a 1 MiB blob in pieces of one byte is
2^20 pieces: sets and tables of a million entries per fetch, and a million Requests to finish
it). No honest node cuts pieces under `LEAST_PIECE_SIZE` (nor under its own setting, in
tests), so such an owner is passed over and the blob comes from the registry. A real node
and registry; the owner is a scripted member."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import trio

from bench.components import free_port
from peer.swarm.link import PeerLink
from pieces.store import Store
from tests.peer.member_node import announce_member, blob_owned_by, node_and_registry, serve_member
from wire.events import Event, Peers, PeersRequest, PieceMeta, Want
from wire.identity import NodeIdentity

SIZE = 1 << 20


async def test_an_owners_tiny_piece_size_is_refused(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int | None] = []
    open_partial = Store.open_partial

    async def recording(
        self: Store, digest: str, size: int, piece_size: int | None = None, **kwargs: object
    ) -> object:
        opened.append(piece_size)
        return await open_partial(self, digest, size, piece_size, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "open_partial", recording)
    async with node_and_registry(tmp_path, nursery) as setup:
        node = setup.node
        liar, liar_port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        data = blob_owned_by(liar, node.node_id, SIZE)
        digest = setup.registry.add_blob(data)
        wants: list[Want] = []

        async def liar_on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Want):
                wants.append(event)
                link.post(PieceMeta(event.digest, SIZE, 1, {}, []))  # pieces of one byte
            elif isinstance(event, PeersRequest):
                link.post(Peers(event.digest, []))

        await serve_member(nursery, liar, liar_port, liar_on_event)
        await announce_member(setup, liar, liar_port)

        with trio.fail_after(30):
            response = await setup.client.get(f"/v2/org/app/blobs/{digest}", timeout=30)
        assert response.status_code == 200
        assert response.content == data
        assert wants, "the liar was never asked: the test shows nothing"
        assert 1 not in opened, "the owner's one-byte pieces were taken"
        swarm = node.swarm
        assert swarm is not None
        with contextlib.suppress(KeyError):
            fetch = swarm.digests[digest].fetch
            assert fetch is None or fetch.picker is None or fetch.picker.layout.piece_size > 1
