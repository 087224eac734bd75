"""A size a manifest gives must not evict the cache at once: a download's room is made
ROOM_STEP at a time as its bytes arrive, so that a told size and a trickle cannot empty the
cache. A size the descriptor of a manifest "confirmed" skipped that, and any client can make
the node read a manifest from a registry it names: an attacker's manifest giving a made-up
digest 96 MiB, then its registry trickling that blob, evicted every cached blob once 64 KiB
had arrived. Real node, two fake registries (a helper's attacker probe)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry

MIB = 1024 * 1024


async def test_a_manifests_size_does_not_empty_the_cache(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    good, evil = FakeRegistry(), FakeRegistry(pace=2.0)  # evil: 64 KiB every 2 s
    await nursery.start(good.serve)
    await nursery.start(evil.serve)
    cached = [good.add_blob(os.urandom(8 * MIB)) for _ in range(4)]
    claim = 96 * MIB  # over ROOM_STEP, under the cache size
    fake = "sha256:" + hashlib.sha256(b"made up").hexdigest()
    evil.blobs[fake] = bytes(claim)  # never verifies: only its length matters
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": fake,
            "size": claim,
        },
        "layers": [],
    }
    evil.add_manifest("t", json.dumps(manifest).encode())
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"good.test": good.url, "evil.test": evil.url},
        default_upstream=good.url,
        cache_size=100 * MIB,
        prefetch=False,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for digest in cached:
            assert (await client.get(f"/v2/lib/app/blobs/{digest}?ns=good.test")).status_code == 200
        with trio.fail_after(10):  # committed just after the last byte went out
            while not all(node.store.has_blob(d) for d in cached):
                await trio.sleep(0.02)
        got = await client.get("/v2/x/manifests/t?ns=evil.test")
        assert got.status_code == 200
        with trio.move_on_after(2):
            async with client.stream("GET", f"/v2/x/blobs/{fake}?ns=evil.test") as response:
                async for _ in response.aiter_bytes():
                    pass
        assert all(node.store.has_blob(d) for d in cached), "the claim evicted cached blobs"
