"""Private content and who vouches for a client: only the registry the content came from.

The attack: a client without credentials names, with `?ns=`, a registry it controls, which
answers 200 to every access check. It must not get any private blob or manifest it knows the
digest of, whatever it names.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.http_server import HttpConnection, Request, serve_connection
from peer.node import Node
from pieces.store import Store
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry

TOKEN = "Bearer s3cret"


class YesRegistry:
    """An attacker's registry: 200 to every HEAD, 404 to everything else."""

    def __init__(self) -> None:
        self.port = 0
        self.heads = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]

        async def handle(conn: HttpConnection, request: Request) -> None:
            if request.method == "HEAD":
                self.heads += 1
                await conn.start_response(200, [("content-length", "0")])
                await conn.end_response()
            else:
                await conn.respond(404, [], b"")

        async def handler(stream: trio.SocketStream) -> None:
            await serve_connection(stream, handle, idle_timeout=30, send_timeout=30)

        task_status.started()
        await trio.serve_listeners(handler, listeners)


@dataclass
class Setup:
    registry: FakeRegistry
    evil: YesRegistry
    node: Node
    client: httpx.AsyncClient


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    registry = FakeRegistry(token="s3cret")
    evil = YesRegistry()
    await nursery.start(registry.serve)
    await nursery.start(evil.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"reg.test": registry.url, "evil.test": evil.url},
        default_upstream=registry.url,
        piece_size=64 * 1024,
        upstream_timeout=2.0,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield Setup(registry, evil, node, client)


async def _wait_idle(node: Node) -> None:
    with trio.fail_after(10):
        while node.downloads_in_flight():
            await trio.sleep(0.01)


@pytest.mark.parametrize("ns", ["evil.test", None])
async def test_a_client_cannot_name_the_registry_that_vouches_for_it(
    setup: Setup, ns: str | None
) -> None:
    data = os.urandom(150_000)
    digest = setup.registry.add_blob(data)
    config = setup.registry.add_blob(b'{"architecture":"amd64"}')
    manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": digest}]}).encode()
    manifest_digest = setup.registry.add_manifest("v1", manifest)
    authed = {"Authorization": TOKEN}
    query = "?ns=reg.test"
    for path in (f"blobs/{digest}", f"blobs/{config}", f"manifests/{manifest_digest}"):
        response = await setup.client.get(f"/v2/org/private/{path}{query}", headers=authed)
        assert response.status_code == 200
    await _wait_idle(setup.node)
    assert setup.node.store.has_blob(digest)

    # Now the attacker: no credentials, and a registry of its choosing (or the default one,
    # where it has no access either).
    attack = "" if ns is None else f"?ns={ns}"
    for method in ("GET", "HEAD"):
        for path in (f"blobs/{digest}", f"blobs/{config}", f"manifests/{manifest_digest}"):
            response = await setup.client.request(method, f"/v2/org/private/{path}{attack}")
            assert response.status_code == 401, (method, path, response.status_code)
            assert data not in response.content and manifest not in response.content
    assert setup.evil.heads == 0  # never asked: it is not where the content came from


async def test_a_private_marker_without_its_origin_is_not_trusted(
    setup: Setup, tmp_path: Path
) -> None:
    """A blob marked private by an earlier version (no origin recorded) is dropped when the
    store opens: nobody could vouch for a client, so the next client's credentials fetch it."""
    data = os.urandom(70_000)
    digest = setup.registry.add_blob(data)
    authed = {"Authorization": TOKEN}
    response = await setup.client.get(f"/v2/org/private/blobs/{digest}", headers=authed)
    assert response.content == data
    await _wait_idle(setup.node)
    store_dir = Path(setup.node.config.data_dir)
    (store_dir / "private" / digest.split(":")[1]).write_bytes(b"")  # as before
    reopened = Store(store_dir, 64 * 1024)
    assert not reopened.has_blob(digest)
    assert not reopened.is_private(digest)


async def test_content_fetched_with_credentials_records_its_registry(setup: Setup) -> None:
    data = os.urandom(10_000)
    digest = setup.registry.add_blob(data)
    await setup.client.get(f"/v2/org/private/blobs/{digest}?ns=reg.test", headers={
        "Authorization": TOKEN
    })
    await _wait_idle(setup.node)
    assert setup.node.store.private_origins(digest) == [setup.registry.url]
    assert MANIFEST_TYPE  # manifests of the fake registry are OCI image manifests
