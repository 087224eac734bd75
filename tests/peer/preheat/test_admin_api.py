"""The preheat API on a node's admin listener, in process: the admin token, bounded bodies,
refusals in the OCI error form; a job for a fake registry's image runs to its end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry


@pytest.fixture
async def admin(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeRegistry]]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        admin=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={f"127.0.0.1:{registry.port}": registry.url},
        default_upstream=registry.url,
    )
    node = Node(config)
    await nursery.start(node.run)
    token = node.admin_token.decode()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.admin_port}",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    ) as client:
        yield client, registry


async def test_the_api_needs_the_admin_token(admin: tuple[httpx.AsyncClient, FakeRegistry]) -> None:
    client, _ = admin
    answer = await client.post(
        "/_pollen/preheat", json={"images": ["x"]}, headers={"authorization": ""}
    )
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"


async def test_bad_requests_are_refused_in_the_oci_form(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, _ = admin
    answer = await client.post("/_pollen/preheat", content=b"{")
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "BAD_REQUEST"
    huge = json.dumps({"images": ["a" * 100_000]}).encode()
    answer = await client.post("/_pollen/preheat", content=huge)
    assert answer.status_code == 413
    answer = await client.get("/_pollen/preheat/99")
    assert answer.status_code == 404
    answer = await client.get("/_pollen/preheat/not-a-number")
    assert answer.status_code == 404
    answer = await client.delete("/_pollen/preheat/1")
    assert answer.status_code == 405


async def test_a_job_warms_every_blob_of_an_image(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, registry = admin
    config = registry.add_blob(b"{}")
    layer = registry.add_blob(b"layer" * 1000)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"digest": config, "size": 2, "mediaType": "application/json"},
        "layers": [{"digest": layer, "size": 5000, "mediaType": "application/octet-stream"}],
    }
    registry.add_manifest("v1", json.dumps(manifest).encode())
    started = await client.post(
        "/_pollen/preheat", json={"images": [f"127.0.0.1:{registry.port}/team/app:v1"]}
    )
    assert started.status_code == 202
    job_id = started.json()["id"]
    with trio.fail_after(10):
        while (job := (await client.get(f"/_pollen/preheat/{job_id}")).json())["state"] in (
            "pending",
            "running",
        ):
            await trio.sleep(0.05)
    assert job["state"] == "succeeded", job["errors"]
    assert job["blobs"] == 2 and job["bytes"] == 5002
    assert registry.count("GET", f"/blobs/{layer}") == 1
    listed = (await client.get("/_pollen/preheat")).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
