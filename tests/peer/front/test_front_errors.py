"""Malformed or hostile input to the registry front: each is an error answer on its own
connection, never an exception out of the node."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from peer.access.auth_gate import AuthGate
from peer.access.policy import AccessPolicy
from peer.body_parser import BodyParser
from peer.config import Address, NodeConfig
from peer.fetch.coordinator import DownloadTable, FetchCoordinator
from peer.fetch.download import Download
from peer.fetch.manifest_reader import ManifestReader
from peer.fetch.upstream_fetch import UpstreamFetcher
from peer.front.http_server import serve_connection
from peer.front.registry import RegistryFront
from peer.node import Node
from peer.upstream.client import UpstreamConfig, Upstreams
from pieces.store import Store
from tests.peer.fake_registry import FakeRegistry


class LyingRegistry:
    """Answers every request with the same head and a few body bytes, then hangs up."""

    def __init__(self, head: str) -> None:
        self.head = head
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handler(stream: trio.SocketStream) -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.receive_some(65536)
                await stream.send_all(f"{self.head}\r\n\r\n".encode("latin-1") + b"x" * 1000)
            await stream.aclose()

        task_status.started()
        await trio.serve_listeners(handler, listeners)


@dataclass
class Front:
    node: Node
    port: int
    registry: FakeRegistry

    async def raw(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send one raw request; (status, headers, body) of the answer, read to the close."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        await stream.send_all(request)
        answer = b""
        with trio.fail_after(10):
            while data := await stream.receive_some(65536):
                answer += data
        await stream.aclose()
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, body

    async def get(self, target: str, *headers: bytes) -> tuple[int, dict[str, str], bytes]:
        extra = b"".join(h + b"\r\n" for h in headers)
        request = b"GET " + target.encode("latin-1") + b" HTTP/1.1\r\nHost: t\r\n"
        return await self.raw(request + extra + b"Connection: close\r\n\r\n")

    async def still_serves(self) -> None:
        data = os.urandom(50_000)
        digest = self.registry.add_blob(data)
        status, _, body = await self.get(f"/v2/org/app/blobs/{digest}")
        assert (status, body) == (200, data)


@pytest.fixture
async def front(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Front]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    liar = LyingRegistry(f"HTTP/1.1 200 OK\r\nContent-Length: {2**62}")
    await nursery.start(liar.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"reg.test": registry.url, "liar.test": f"http://127.0.0.1:{liar.port}"},
        default_upstream=registry.url,
        piece_size=64 * 1024,
        upstream_timeout=2.0,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    yield Front(node, port, registry)


def _error(body: bytes) -> dict[str, str]:
    error: dict[str, str] = json.loads(body)["errors"][0]
    return error


DIGEST = "sha256:" + "ab" * 32
PATHS = [f"/v2/org/app/blobs/{DIGEST}", "/v2/org/app/manifests/v1"]


async def _serve_front(
    nursery: trio.Nursery, store: Store, upstreams: Upstreams, coordinator: FetchCoordinator
) -> Front:
    access = AccessPolicy(store, upstreams, AuthGate(upstreams))
    front = RegistryFront(store, upstreams, coordinator, access, ManifestReader(BodyParser()))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def serve(stream: trio.SocketStream) -> None:
        await serve_connection(stream, front.handle, idle_timeout=5, send_timeout=5)

    nursery.start_soon(trio.serve_listeners, serve, listeners)
    return Front(Node.__new__(Node), listeners[0].socket.getsockname()[1], FakeRegistry())


class BuggySwarm:
    """A swarm fetch with a bug (the KeyError the issue saw in the old scheduler)."""

    def __init__(self) -> None:
        self.calls = 0

    async def fetch(self, download: Download, headers: Mapping[str, str]) -> None:
        self.calls += 1
        raise KeyError(b"peer that left")


async def test_a_bug_in_a_fetch_is_a_500_for_its_clients_not_the_end_of_the_node(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "store", 64 * 1024)
    upstreams = Upstreams(UpstreamConfig(mapping={}, default="http://127.0.0.1:1"))
    swarm = BuggySwarm()
    coordinator = FetchCoordinator(
        DownloadTable(store, nursery), UpstreamFetcher(store, upstreams), swarm
    )
    client = await _serve_front(nursery, store, upstreams, coordinator)
    for _ in range(2):  # the failed download is gone: the next request tries again
        status, _, body = await client.get(f"/v2/org/app/blobs/{DIGEST}")
        assert status == 500
        assert _error(body)["code"] == "UNKNOWN"
    assert swarm.calls == 2 and coordinator.failed == 2 and not coordinator.active
    assert any(
        r.name == "pollen.download" and r.levelno == logging.ERROR and r.exc_info
        for r in caplog.records
    )
    assert (await client.get("/healthz"))[2] == b"ok\n"
    await upstreams.aclose()


@pytest.mark.parametrize(
    "ns", ["[", "example.com:99999", "a%00b", "a%0Ab", "%C3%A9.test", "u@example.com", "a..b"]
)
@pytest.mark.parametrize("path", PATHS, ids=["blob", "manifest"])
async def test_an_invalid_namespace_is_a_400(front: Front, path: str, ns: str) -> None:
    status, headers, body = await front.get(f"{path}?ns={ns}")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert _error(body)["code"] == "NAME_INVALID"
    assert front.registry.requests == []
    await front.still_serves()


@pytest.mark.parametrize("name", [b"Accept", b"User-Agent", b"Authorization"])
@pytest.mark.parametrize("path", PATHS, ids=["blob", "manifest"])
async def test_a_header_that_cannot_be_forwarded_is_a_400(
    front: Front, path: str, name: bytes
) -> None:
    status, _, body = await front.get(path, name + b": caf\xe9 \xff")
    assert status == 400
    error = _error(body)
    assert error["code"] == "UNSUPPORTED"
    assert name.decode().lower() in error["message"].lower()
    assert "caf" not in error["message"]  # never echo a value: it may be a credential
    assert front.registry.requests == []
    await front.still_serves()


async def test_a_range_with_thousands_of_digits_is_ignored(front: Front) -> None:
    data = os.urandom(100_000)
    digest = front.registry.add_blob(data)
    huge = b"Range: bytes=" + b"9" * 5000 + b"-"
    # Cold (served while downloading), then warm (from the store).
    for _ in range(2):
        status, _, body = await front.get(f"/v2/org/app/blobs/{digest}", huge)
        assert (status, body) == (200, data)
        with trio.fail_after(10):
            while not front.node.store.has_blob(digest) or front.node.downloads_in_flight():
                await trio.sleep(0.01)


async def test_an_upstream_content_length_of_2_62_is_an_error_answer(front: Front) -> None:
    status, _, body = await front.get(f"/v2/org/app/blobs/{DIGEST}?ns=liar.test")
    # 502 for the lying upstream, or 507 when the store refuses the size first; never the 500
    # of an unexpected exception, never the end of the node.
    assert status in (502, 507), status
    assert _error(body)["code"]
    await front.still_serves()


class BrokenStore(Store):
    """A store with a bug: asking for a blob raises what nobody expects."""

    def has_blob(self, digest: str) -> bool:
        raise RuntimeError("has_blob is broken")


async def test_the_front_answers_500_for_an_unexpected_error(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    store = BrokenStore(tmp_path / "store", 64 * 1024)
    upstreams = Upstreams(UpstreamConfig(mapping={}, default="http://127.0.0.1:1"))
    coordinator = FetchCoordinator(
        DownloadTable(store, nursery), UpstreamFetcher(store, upstreams), None
    )
    client = await _serve_front(nursery, store, upstreams, coordinator)
    status, headers, body = await client.get(f"/v2/org/app/blobs/{DIGEST}")
    assert status == 500
    assert headers["docker-distribution-api-version"] == "registry/2.0"  # the front's own form
    assert _error(body)["code"] == "UNKNOWN"
    assert "has_blob is broken" not in body.decode()
    assert any(
        r.name == "pollen.front" and r.levelno == logging.ERROR and r.exc_info
        for r in caplog.records
    )
    assert (await client.get("/healthz"))[2] == b"ok\n"
    await upstreams.aclose()


@pytest.mark.parametrize(
    "ns",
    [
        "127.0.0.1:{port}",
        "localhost:{port}",
        "[::1]:{port}",
        "169.254.169.254",
        "0.0.0.0",
        "127.1:{port}",
        "2130706433:{port}",
        "0",
    ],
)
async def test_a_client_cannot_name_an_internal_host_as_its_registry(front: Front, ns: str) -> None:
    """`?ns=` is the client's to choose: naming this host's own services (the admin port,
    say) or a link-local metadata service would make the node a proxy into them."""
    listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener[0].socket.getsockname()[1]
    connections = 0

    async def count(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, count, listener)
        digest = "sha256:" + "a" * 64
        for path in (f"/v2/x/blobs/{digest}", "/v2/x/manifests/latest", "/v2/"):
            status, _, body = await front.get(f"{path}?ns={ns.format(port=port)}")
            assert status == 400, (path, status, body)
        nursery.cancel_scope.cancel()
    assert connections == 0
