"""Downloads in flight are bounded: a download runs on when its client hangs up (the bytes
are for the cache and the other clients), so a client that asked for made-up digests at a
registry it runs, which trickled, hanging up each time, left every download running (750 of
them held 1.6 GB and 2,250 file descriptors). Past MAX_DOWNLOADS a new one is refused with a
502 (containerd then asks its next host). A real node; the registry is scripted."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.fetch import coordinator
from peer.front.http_server import HttpConnection, Request
from peer.node import Node
from tests.peer.member_node import Setup, link_member, node_and_registry
from tests.peer.scripted_server import ScriptedServer
from wire.events import Refused, Want

LIMIT = 4


def node_downloads(setup: Setup) -> int:
    assert setup.node.downloads is not None
    return len(setup.node.downloads.active)


async def trickle(conn: HttpConnection, request: Request) -> None:
    """Any blob, 100 MiB long, 64 KiB every 2 s."""
    await conn.start_response(
        200, [("content-type", "application/octet-stream"), ("content-length", str(100 << 20))]
    )
    for _ in range(100):
        await conn.send_data(b"\0" * 65536)
        await trio.sleep(2)


async def test_abandoned_downloads_are_bounded(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator, "MAX_DOWNLOADS", LIMIT)
    registry = ScriptedServer(answer=trickle)
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0), data_dir=tmp_path / "store", default_upstream=registry.url
    )
    node = Node(config)
    port = await nursery.start(node.run)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i in range(LIMIT + 3):
            digest = "sha256:" + hashlib.sha256(b"made up %d" % i).hexdigest()
            async with client.stream("GET", f"/v2/x/blobs/{digest}") as response:
                statuses.append(response.status_code)  # and hang up
                if response.status_code != 200:
                    await response.aread()
                    assert b"downloads in flight" in response.content
    assert node.downloads is not None and len(node.downloads.active) <= LIMIT
    assert statuses == [200] * LIMIT + [502] * 3


async def test_a_peers_want_past_the_limit_is_refused_and_its_link_stays(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner answers 503 (the peer fetches the blob itself); the refusal escaped as an
    error before and closed the peer's link."""
    monkeypatch.setattr(coordinator, "MAX_DOWNLOADS", 0)
    async with node_and_registry(tmp_path, nursery) as setup:
        digest = setup.registry.add_blob(b"x" * 100_000)
        member = await link_member(setup, nursery)
        await member.link.send(Want(digest, None, "org/app", None))
        with trio.fail_after(10):
            while not member.metas:
                await trio.sleep(0.01)
        answer = member.metas[0]
        assert isinstance(answer, Refused) and answer.status == 503
        await trio.sleep(0.2)
        assert not member.link.closed
        assert setup.registry.count("GET", digest) == 0


async def test_one_member_may_start_only_its_share_of_the_downloads(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's Wants for blobs at a registry that trickles started a download each, until
    they held every one of the node's (an attacker's review, 2026-12-06): every other pull
    then got a 502 or a 503. One asker now starts at most a quarter of them; another member
    still starts its own, and joining a download in flight is not starting one."""
    monkeypatch.setattr(coordinator, "MAX_DOWNLOADS", 8)  # a share of 2
    async with node_and_registry(tmp_path, nursery) as setup:
        setup.registry.pace = 2.0  # each download stays in flight for the test
        digests = [setup.registry.add_blob(bytes([i]) * 1_000_000) for i in range(4)]
        greedy, other = await link_member(setup, nursery), await link_member(setup, nursery)
        for digest in digests[:3]:
            await greedy.link.send(Want(digest, None, "org/app", None))
        await other.link.send(Want(digests[3], None, "org/app", None))
        await other.link.send(Want(digests[0], None, "org/app", None))  # in flight: joined
        with trio.fail_after(20):
            while len(greedy.metas) < 3 or len(other.metas) < 2:
                await trio.sleep(0.05)
        refused = [m for m in greedy.metas if isinstance(m, Refused)]
        assert len(refused) == 1 and refused[0].status == 503
        assert b"started by this asker" in refused[0].body
        assert not any(isinstance(m, Refused) for m in other.metas)
        assert node_downloads(setup) == 3
