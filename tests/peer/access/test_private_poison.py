"""Regression (second review): one request with junk credentials through a registry the
attacker runs (holding a public blob's bytes) marked the public blob private to that
registry, and every other client was refused."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry


async def test_one_request_cannot_make_a_public_blob_private_to_its_registry(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    public = FakeRegistry()  # e.g. docker.io, public image
    evil = FakeRegistry()  # attacker's registry, serves the same public bytes
    await nursery.start(public.serve)
    await nursery.start(evil.serve)
    data = os.urandom(100_000)
    digest = public.add_blob(data)
    evil.add_blob(data)
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=tmp_path / "s",
            upstreams={"pub.test": public.url, "evil.test": evil.url},
            default_upstream=public.url,
            piece_size=64 * 1024,
            upstream_timeout=2.0,
        )
    )
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
        r = await c.get(
            f"/v2/x/y/blobs/{digest}?ns=evil.test", headers={"Authorization": "Bearer junk"}
        )
        assert r.content == data
        with trio.fail_after(5):
            while node.downloads_in_flight():
                await trio.sleep(0.01)
        for ns in ("pub.test", None):
            q = f"?ns={ns}" if ns else ""
            r = await c.get(f"/v2/library/alpine/blobs/{digest}{q}")
            assert r.status_code == 200, "public blob denied to everyone after one request"
            assert r.content == data
        # and it is served from the cache again, public (fetched once more, without
        # credentials; the client has its last byte before that fetch commits: wait for it)
        with trio.fail_after(5):
            while node.downloads_in_flight():
                await trio.sleep(0.01)
        assert not node.store.private_origins(digest)
