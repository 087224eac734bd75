"""What one client can make a node hold of registries' bodies in memory (a helper's probe,
2026-12-04): each of the 200 registry connections held a manifest body of up to 4 MiB while it
trickled in (0.9-1.4 GB), and a stored 4 MiB manifest was read into memory for each GET and
held there while its client read it as slowly as it liked. Now registries' bodies are held
against a budget (503 past it, the named registries' share bounded), and a manifest is answered
from its file. Real node, registry and sockets; the node's Python memory is watched with
tracemalloc, and the budget's accounting must come back to zero. And what a registry that
trickles may hold: a whole body has a deadline, and the registries clients name hold half
the registry connections at most."""

from __future__ import annotations

import json
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import trio.socket
import trio.testing

import peer.upstream.client
from peer.config import Address, NodeConfig
from peer.front.http_server import HttpConnection, Request
from peer.node import Node
from peer.upstream.body_budget import MANIFEST_BODIES, BodyBudget, BodyHold, BudgetSpent
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.errors import RegistriesBusy
from tests.peer.fake_registry import FakeRegistry
from tests.peer.tiny_registry import TinyRegistry

MiB = 1024 * 1024
BODY = 4 * MiB - 1024  # under the 4 MiB a manifest may be
HELD = 24  # requests held at once: 96 MiB of bodies, past the 64 MiB budget


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


class Trickler(TinyRegistry):
    """A registry that sends every manifest's body but its last KiB, then waits for
    `release` (and then sends the rest: a valid manifest)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.held = 0  # answers sent but for their tail
        self._chunk = memoryview(b" " * (64 * 1024))  # shared: the registry allocates no body

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        tag = bytes(request.target).rsplit(b"/", 1)[-1]
        tail = b'{"tag":"' + tag + b'"}'
        await conn.start_response(
            200,
            [
                ("content-type", "application/vnd.oci.image.manifest.v1+json"),
                ("content-length", str(BODY + len(tail))),
            ],
        )
        for _ in range(BODY // len(self._chunk)):
            await conn.send_data(self._chunk)  # type: ignore[arg-type]
        await conn.send_data(b" " * (BODY % len(self._chunk)))
        self.held += 1
        await self.release.wait()
        await conn.send_data(tail)
        await conn.end_response()


def _node(tmp_path: Path, registry_url: str) -> Node:
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=registry_url,
        prefetch=False,
        upstream_timeout=30.0,
    )
    return Node(config)


async def test_bodies_held_by_trickling_registries_are_bounded(
    tmp_path: Path, nursery: trio.Nursery, traced: None
) -> None:
    registry = Trickler()
    await nursery.start(registry.serve)
    node = _node(tmp_path, registry.url)
    port = await nursery.start(node.run)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:

        async def get(tag: int) -> None:
            answer = await client.get(f"/v2/org/app/manifests/t{tag}")
            statuses.append(answer.status_code)
            if answer.status_code == 503:
                assert "try again" in answer.json()["errors"][0]["message"]
                assert answer.headers["retry-after"] == "1"

        tracemalloc.reset_peak()
        async with trio.open_nursery() as clients:
            for tag in range(HELD):
                clients.start_soon(get, tag)
            with trio.fail_after(30):  # every request is held (sent all but its tail) or answered
                while registry.held + len(statuses) < HELD:
                    await trio.sleep(0.05)
                await trio.sleep(0.5)  # the last bytes sent are read
            _, peak = tracemalloc.get_traced_memory()
            registry.release.set()
    assert peak < MANIFEST_BODIES + 24 * MiB, f"{peak / MiB:.0f} MiB held"
    assert statuses.count(503) >= HELD - MANIFEST_BODIES // BODY
    assert statuses.count(200) >= MANIFEST_BODIES // BODY - 1
    assert sorted(set(statuses)) in ([200, 503], [200])
    budget = node.upstreams.manifest_bodies
    assert (budget.held, budget.held_for_named) == (0, 0)  # every hold given back


async def test_a_slow_reader_of_a_stored_manifest_costs_no_memory(
    tmp_path: Path, nursery: trio.Nursery, traced: None
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    body = json.dumps({"schemaVersion": 2, "x": "a" * BODY}).encode()
    digest = registry.add_manifest("big", body)
    node = _node(tmp_path, registry.url)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        assert (await client.get("/v2/org/app/manifests/big")).content == body  # stored
    request = f"GET /v2/org/app/manifests/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    readers: list[trio.SocketStream] = []
    tracemalloc.reset_peak()
    try:
        for _ in range(HELD):
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads nothing
            await sock.connect(("127.0.0.1", port))
            stream = trio.SocketStream(sock)
            readers.append(stream)
            await stream.send_all(request)
        await trio.sleep(1.0)  # every answer started, none read
        _, peak = tracemalloc.get_traced_memory()
    finally:
        for stream in readers:
            await stream.aclose()
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB held for {HELD} slow readers"


def test_the_named_registries_share_leaves_the_rest_to_the_configured_ones() -> None:
    budget = BodyBudget(total=100, named_share=40)
    named, configured = BodyHold(budget, named=True), BodyHold(budget, named=False)
    named.grow(40)
    with pytest.raises(BudgetSpent, match="registries clients name"):
        named.grow(1)
    configured.grow(60)
    with pytest.raises(BudgetSpent, match="at most 100"):
        configured.grow(1)
    assert (named.size, configured.size) == (40, 60)  # a refused grow keeps what it had
    named.release()
    configured.grow(40)
    with pytest.raises(BudgetSpent):
        BodyHold(budget, named=True).grow(1)  # the total binds the named too
    with configured:
        pass
    assert (budget.held, budget.held_for_named) == (0, 0)


class Dribbler(Trickler):
    """Declares a 4 MiB manifest and sends a byte every 0.1 s (a registry that holds its
    connection, and the budget, for as long as it likes)."""

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        await conn.start_response(200, [("content-length", str(BODY))])
        for _ in range(600):  # a minute at most
            await conn.send_data(b" ")
            await trio.sleep(0.1)


async def test_a_body_that_never_ends_is_given_up_with_its_budget(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a 30 s gap between bytes was timed: a registry that sent a byte every 20 s held
    its connection and 4 MiB of the budget after its client had gone, and 16 such requests
    had every registry's manifests answered 503 (a helper's probe). The whole body has a
    deadline now."""
    monkeypatch.setattr(peer.upstream.client, "BODY_DEADLINE", 1.0)
    registry = Dribbler()
    await nursery.start(registry.serve)
    node = _node(tmp_path, registry.url)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        with trio.fail_after(20):
            answer = await client.get("/v2/org/app/manifests/slow")
    assert answer.status_code == 502
    assert "too slow" in answer.json()["errors"][0]["message"]
    budget = node.upstreams.manifest_bodies
    assert (budget.held, budget.held_for_named) == (0, 0)


class Unanswered(trio.abc.HostnameResolver):
    """Every name waits (a resolver that never answers): requests to registries clients
    name hold their place meanwhile."""

    async def getaddrinfo(  # type: ignore[override]
        self, host: bytes | str | None, port: bytes | str | int | None, *args: object, **kw: object
    ) -> list[tuple[int, int, int, str, tuple[str, int]]]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int
    ) -> tuple[str, str]:
        raise NotImplementedError


async def test_registries_clients_name_hold_half_the_connections_at_most(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One client's 200 requests at a registry it named that trickled held every registry
    connection of the node: every registry's manifests failed, the configured ones' too (a
    helper's probe). The registries clients name now hold NAMED_CONNECTIONS at most."""
    monkeypatch.setattr(peer.upstream.client, "NAMED_CONNECTIONS", 3)
    registry = FakeRegistry()
    registry.add_manifest("v1", b"{}")
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.serve)
        upstreams = Upstreams(UpstreamConfig(mapping={"reg.test": registry.url}, default=""))
        trio.socket.set_custom_hostname_resolver(Unanswered())
        try:

            async def named(n: int) -> None:
                async with upstreams.open("GET", f"r{n}.example", "/v2/", {}):
                    pass

            for n in range(3):
                nursery.start_soon(named, n)
            await trio.testing.wait_all_tasks_blocked()
            assert upstreams.named_requests == 3
            with pytest.raises(RegistriesBusy, match="3 requests to registries clients name"):
                await named(3)
            path = "/v2/org/app/manifests/v1"
            async with upstreams.open("GET", "reg.test", path, {}) as answer:
                assert answer.status_code == 200  # a configured registry is asked all the same
            nursery.cancel_scope.cancel()
        finally:
            trio.socket.set_custom_hostname_resolver(None)
            await upstreams.aclose()
    assert upstreams.named_requests == 0
