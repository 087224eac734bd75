"""Real nodes on loopback (gossip on UDP, links on TCP) with a fake registry, for tests of
what a cluster does: start, join, pull, and look at the registry's log."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.config import Address
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry, digest_of, node_config

TOKEN = b"a cluster token of thirty-two bytes!"
PIECE = 64 * 1024
BLOB = 16 * PIECE


@dataclass
class Running:
    node: Node
    client: httpx.AsyncClient
    peer: Address

    async def pull(self, digest: str) -> bytes:
        response = await self.client.get(f"/v2/org/app/blobs/{digest}")
        assert response.status_code == 200, response.text
        return response.content


def make_node(
    registry: FakeRegistry,
    data_dir: Path,
    join: tuple[Address, ...] = (),
    piece_size: int = PIECE,
    **settings: Any,
) -> Node:
    peer = Address("127.0.0.1", free_port())
    config = node_config(
        registry,
        data_dir,
        peer=peer,
        join=join,
        cluster_token=TOKEN,
        piece_size=piece_size,
        **settings,
    )
    return Node(config)


@asynccontextmanager
async def running(node: Node, nursery: trio.Nursery) -> AsyncIterator[Running]:
    port = await nursery.start(node.run)
    assert node.config.peer is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        yield Running(node, client, node.config.peer)


def blob_where(first: Callable[[str], bool]) -> bytes:
    """Random bytes whose digest satisfies `first` (about every second or third try does)."""
    for _ in range(1000):
        data = os.urandom(BLOB)
        if first(digest_of(data)):
            return data
    raise AssertionError("no blob found with that owner order")


def first_of(digest: str, *nodes: Node) -> bytes:
    return owner_order(digest, [n.node_id for n in nodes])[0]


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def registry_and_seed(tmp_path: Path, nursery: trio.Nursery) -> tuple[FakeRegistry, Node]:
    """A fake registry serving, and the cluster's first node (not started)."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    return registry, make_node(registry, tmp_path / "seed")


def knows(node: Node, *others: Node) -> bool:
    assert node.membership is not None
    alive = node.membership.alive_ids()
    return all(other.node_id in alive for other in others)
