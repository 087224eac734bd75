"""What one client can make a node hold: downloads it starts must not cost memory the bytes
in flight do not need (an attacker can start many, from a slow registry it controls)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry

MiB = 1024 * 1024


async def test_slow_downloads_hold_only_the_buffers_they_fill(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry(pace=0.2)  # 64 KiB every 0.2 s: a trickle
    await nursery.start(registry.serve)
    digests = [registry.add_blob(os.urandom(MiB)) for _ in range(16)]
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=tmp_path / "store",
            default_upstream=registry.url,
            upstream_timeout=10.0,
        )
    )
    port = await nursery.start(node.run)
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as clients:
            for digest in digests:
                url = f"http://127.0.0.1:{port}/v2/org/app/blobs/{digest}"
                clients.start_soon(client.get, url)
            with trio.fail_after(20):
                while node.downloads_in_flight() < len(digests) or not all(
                    d.bytes_from_upstream
                    for d in node.downloads.active.values()  # type: ignore[union-attr]
                ):
                    await trio.sleep(0.05)
            held = tracemalloc.get_traced_memory()[0] - baseline
            clients.cancel_scope.cancel()
    finally:
        tracemalloc.stop()
    # 16 buffers of 1 MiB per download up front would be 256 MiB here; a trickle fills one.
    assert held < 48 * MiB, f"{held / MiB:.0f} MiB held by {len(digests)} slow downloads"
