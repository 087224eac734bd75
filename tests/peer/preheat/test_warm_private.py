"""A member's Warm must not tell whether the node holds a private blob: a blob held from one
registry, warmed in the name of another with no credentials, was answered 200 at once (the
access check's "cached elsewhere" taken for a success), where a blob not held could only get
that other registry's answer. Now both get it from that registry, as a client's GET would:
a download whose verified bytes prove the access.
A real node and two fake registries; the member is scripted."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
import trio

from bench.components import free_port
from peer.config import Address, NodeConfig
from peer.node import Node
from peer.swarm.link import LinkClosed, PeerLink
from tests.peer.fake_registry import FakeRegistry
from tests.peer.member_node import TOKEN, Setup, open_link
from wire.events import Event, Warm, Warmed
from wire.identity import NodeIdentity

OTHER = "other.test"  # the second registry's name, mapped to it with --upstream


async def test_a_warm_does_not_tell_whether_a_private_blob_is_held(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    private, other = FakeRegistry(token="s3cret"), FakeRegistry()
    await nursery.start(private.serve)
    await nursery.start(other.serve)
    peer_port = free_port()
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=private.url,
        upstreams={OTHER: other.url},
        piece_size=64 * 1024,
        peer=Address("127.0.0.1", peer_port),
        cluster_token=TOKEN,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        held = private.add_blob(os.urandom(4 * 64 * 1024))
        lacked = private.add_blob(os.urandom(4 * 64 * 1024))
        shared_bytes = os.urandom(4 * 64 * 1024)
        shared = private.add_blob(shared_bytes)
        assert other.add_blob(shared_bytes) == shared  # the other registry has this one
        # Two it says it has (a HEAD is answered 200) but serves wrong bytes of: a registry
        # the member runs, say.
        lied = [private.add_blob(os.urandom(4 * 64 * 1024)) for _ in range(2)]
        for digest in lied:
            other.blobs[digest] = private.blobs[digest]
            other.lie_about.add(digest)
        for digest in (held, shared, lied[0]):
            got = await client.get(
                f"/v2/org/app/blobs/{digest}", headers={"Authorization": "Bearer s3cret"}
            )
            assert got.status_code == 200
        assert node.store.origins_of(held)  # held, private to the first registry

        link = await open_link(Setup(private, node, client, peer_port), NodeIdentity.generate())
        answers: dict[int, Warmed] = {}

        async def on_event(link: PeerLink, event: Event) -> None:
            if isinstance(event, Warmed):
                answers[event.request] = event

        async def run() -> None:
            with contextlib.suppress(LinkClosed):
                await link.run(on_event)

        nursery.start_soon(run)
        # No credentials, in the name of the registry that has neither blob.
        await link.send(Warm(1, held, OTHER, "org/app", None))
        await link.send(Warm(2, lacked, OTHER, "org/app", None))
        await link.send(Warm(3, shared, OTHER, "org/app", None))
        await link.send(Warm(4, lied[0], OTHER, "org/app", None))  # held
        await link.send(Warm(5, lied[1], OTHER, "org/app", None))  # not held
        with trio.fail_after(20):
            while len(answers) < 5:
                await trio.sleep(0.02)
        await link.close()
        assert answers[1].status == answers[2].status != 200
        assert not node.store.origins_of(lacked)
        assert node.store.origins_of(held)  # still private: nothing the member did changed it
        # Held, and the named registry has it too: what a blob not held would get, fetched
        # from it (200); served without credentials, the bytes are public (the store's rule).
        assert answers[3].status == 200
        assert ("GET", f"/v2/org/app/blobs/{shared}", None) in other.requests
        assert node.store.origins_of(shared) == []
        # Bytes that do not match: the same failure, held here or not.
        assert answers[4].status == answers[5].status == 502
        assert node.store.origins_of(lied[0]) == [private.url]
