"""Redirects through a real node: a registry a client names cannot make the node fetch, and hand
back, what a service on the node's own loopback or link-local network answers (SSRF).

The attacker's registry listens on 127.0.0.2 (another host, for the node); the "internal"
service on 127.0.0.1 answers every request with a secret, as a cloud metadata service or the
node's own admin port would. A registry redirecting within its own host still works.
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
from peer.front.http_server import HttpConnection, Request
from peer.node import Node
from tests.peer.fake_registry import MANIFEST_TYPE, digest_of
from tests.peer.scripted_server import ScriptedServer, redirect_to, reply

SECRET = b'{"AccessKeyId":"ASIAINTERNAL","SecretAccessKey":"metadata-credential"}'


@dataclass
class Attack:
    evil: ScriptedServer
    internal: ScriptedServer
    client: httpx.AsyncClient


async def _start_node(
    tmp_path: Path, nursery: trio.Nursery, upstreams: dict[str, str]
) -> httpx.AsyncClient:
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams=upstreams,
        default_upstream="http://127.0.0.1:1",
        piece_size=64 * 1024,
        upstream_timeout=2.0,
    )
    port = await nursery.start(Node(config).run)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


async def secret(conn: HttpConnection, request: Request) -> None:
    await reply(conn, request, 200, [("content-type", "application/octet-stream")], SECRET)


@pytest.fixture(params=["127.0.0.1", "localhost", "0.0.0.0", "[::ffff:127.0.0.1]"])
async def attack(
    request: pytest.FixtureRequest, tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[Attack]:
    """The node maps `evil.test` to the attacker's registry, which redirects every request to
    the internal service (named in each of the ways that reach it)."""
    internal = ScriptedServer("127.0.0.1", secret)
    await nursery.start(internal.serve)
    host = request.param
    evil = ScriptedServer(
        "127.0.0.2", redirect_to(lambda r: f"http://{host}:{internal.port}{r.target.decode()}")
    )
    await nursery.start(evil.serve)
    async with await _start_node(tmp_path, nursery, {"evil.test": evil.url}) as client:
        yield Attack(evil, internal, client)


_DIGEST = digest_of(SECRET)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"blobs/{_DIGEST}"),
        ("HEAD", f"blobs/{_DIGEST}"),
        ("GET", "manifests/latest"),
        ("HEAD", "manifests/latest"),
        ("GET", f"manifests/{_DIGEST}"),
    ],
)
async def test_a_redirect_to_an_internal_service_is_a_502(
    attack: Attack, method: str, path: str
) -> None:
    response = await attack.client.request(method, f"/v2/org/app/{path}?ns=evil.test")
    assert response.status_code == 502
    assert b"metadata-credential" not in response.content
    if method == "GET":
        message = response.json()["errors"][0]["message"]
        assert attack.evil.url in message
        assert "redirected" in message
    assert attack.evil.seen  # it was asked, and answered with its redirect
    assert attack.internal.seen == []


async def test_the_version_check_does_not_follow_a_redirect_inside(attack: Attack) -> None:
    response = await attack.client.get("/v2/?ns=evil.test")
    assert response.status_code == 200  # the API is here; the upstream's failure is logged
    assert attack.evil.seen
    assert attack.internal.seen == []


# ---- a registry redirecting within its own host --------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_local_registry_may_redirect_to_another_port_of_its_host(
    tmp_path: Path, nursery: trio.Nursery, host: str
) -> None:
    blob = os.urandom(200_000)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE}).encode()
    objects = {f"/objects/{digest_of(blob)}": blob, f"/objects/{digest_of(manifest)}": manifest}

    async def storage_answer(conn: HttpConnection, request: Request) -> None:
        body = objects[request.target.decode().partition("?")[0]]
        await reply(conn, request, 200, [("content-type", MANIFEST_TYPE)], body)

    storage = ScriptedServer("127.0.0.1", storage_answer)  # MinIO beside a local registry
    await nursery.start(storage.serve)

    def location(request: Request) -> str:
        path = request.target.decode()
        digest = digest_of(manifest) if "/manifests/" in path else digest_of(blob)
        return f"http://{host}:{storage.port}/objects/{digest}?X-Amz-Signature=1"

    registry = ScriptedServer("127.0.0.1", redirect_to(location, 307))
    await nursery.start(registry.serve)
    local = f"http://{host}:{registry.port}"
    async with await _start_node(tmp_path, nursery, {"local.test": local}) as client:
        got = await client.get(f"/v2/org/app/blobs/{digest_of(blob)}?ns=local.test")
        assert got.status_code == 200
        assert got.content == blob
        head = await client.head("/v2/org/app/manifests/v1?ns=local.test")
        assert head.status_code == 200
        by_tag = await client.get("/v2/org/app/manifests/v1?ns=local.test")
        assert by_tag.status_code == 200
        assert by_tag.content == manifest
    assert len(storage.seen) == 3
