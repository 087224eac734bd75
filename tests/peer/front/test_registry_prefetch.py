"""The front's side of prefetch, in-process against a scripted upstream: which manifest answers
start downloads of their blobs, as whom, and what they never change for the client."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer.fetch.manifests import DOCKER_MANIFEST
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry, digest_of, node_config

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@dataclass
class Setup:
    registry: FakeRegistry
    node: Node
    client: httpx.AsyncClient
    blobs: list[str]  # the config, then the layers
    manifest: str  # the manifest's digest (tag v1)


async def _start(
    tmp_path: Path, nursery: trio.Nursery, *, prefetch: bool = True
) -> tuple[Node, FakeRegistry, httpx.AsyncClient]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = node_config(
        registry,
        tmp_path / "store",
        name="reg.test",
        piece_size=64 * 1024,
        upstream_timeout=2.0,
        prefetch=prefetch,
        prefetch_downloads=2,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    return node, registry, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


def _image(registry: FakeRegistry) -> tuple[list[str], str]:
    config = registry.add_blob(b'{"architecture":"amd64","os":"linux"}')
    layers = [registry.add_blob(os.urandom(size)) for size in (70_000, 200_000, 5_000)]
    body = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": config, "size": len(registry.blobs[config])},
            "layers": [{"digest": d, "size": len(registry.blobs[d])} for d in layers],
        }
    ).encode()
    return [config, *layers], registry.add_manifest("v1", body)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    node, registry, client = await _start(tmp_path, nursery)
    blobs, manifest = _image(registry)
    async with client:
        yield Setup(registry, node, client, blobs, manifest)


async def _until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.01)


def _idle(node: Node) -> bool:
    prefetcher = node.prefetcher
    return (
        prefetcher is not None
        and not prefetcher.manifests_waiting
        and not prefetcher.queued
        and not prefetcher.running
        and not node.downloads_in_flight()
    )


async def test_a_manifest_get_fetches_its_blobs_unasked(setup: Setup) -> None:
    answer = await setup.client.get("/v2/org/app/manifests/v1?ns=reg.test")
    assert answer.status_code == 200
    await _until(lambda: all(setup.node.store.has_blob(d) for d in setup.blobs))
    await _until(lambda: _idle(setup.node))
    assert setup.registry.count("GET", "/blobs/") == 4
    assert setup.node.prefetcher is not None
    counters = setup.node.prefetcher.counters
    assert (counters.manifests, counters.started, counters.completed, counters.failed) == (
        1,
        4,
        4,
        0,
    )
    # The client's own GETs come from the store; the registry is not asked again.
    for digest in setup.blobs:
        blob = await setup.client.get(f"/v2/org/app/blobs/{digest}?ns=reg.test")
        assert digest_of(blob.content) == digest
    assert setup.registry.count("GET", "/blobs/") == 4
    assert setup.node.front is not None
    assert setup.node.front.served.blob_requests_from_cache == 4
    # By digest, from the node's cache: nothing left to fetch.
    await setup.client.get(f"/v2/org/app/manifests/{setup.manifest}?ns=reg.test")
    await _until(lambda: counters.manifests == 2 and _idle(setup.node))
    assert setup.registry.count("GET", "/blobs/") == 4


async def test_a_client_reading_while_prefetch_runs_joins_its_download(setup: Setup) -> None:
    setup.registry.pace = 0.01
    await setup.client.get("/v2/org/app/manifests/v1")
    bodies = [(await setup.client.get(f"/v2/org/app/blobs/{d}")).content for d in setup.blobs]
    assert [digest_of(b) for b in bodies] == setup.blobs
    await _until(lambda: _idle(setup.node))
    assert setup.registry.count("GET", "/blobs/") == 4


async def test_a_prefetched_download_runs_ahead_of_its_client_until_its_get(
    setup: Setup,
) -> None:
    # A blob prefetched before its client asks keeps part of its registry flows
    # (Download.ahead_of_client); the client's GET, not a HEAD, ends that.
    setup.registry.pace = 0.5  # a 64 KiB chunk each half second: the layer is in flight
    await setup.client.get("/v2/org/app/manifests/v1")
    layer = setup.blobs[2]
    assert setup.node.downloads is not None
    active = setup.node.downloads.active
    await _until(lambda: layer in active and active[layer].partial is not None)
    download = active[layer]
    assert download.ahead_of_client
    head = await setup.client.head(f"/v2/org/app/blobs/{layer}")
    assert head.status_code == 200
    assert download.ahead_of_client
    body = await setup.client.get(f"/v2/org/app/blobs/{layer}")
    assert digest_of(body.content) == layer
    assert download.read_by_client and not download.ahead_of_client
    # The node's registry flows follow the table's rule (DownloadTable.held_back).
    coordinator = setup.node.downloads
    assert coordinator._fetcher._held_back == coordinator._table.held_back


async def test_a_refused_client_cannot_end_the_hold_on_a_prefetched_blob(setup: Setup) -> None:
    # A client without the credentials asks for a private blob in flight: it is refused, and
    # the blob stays held back for the client that may read it (a first version counted any
    # GET, before its access check, as the client reading).
    setup.registry.token = "s3cret"
    authed = {"Authorization": "Bearer s3cret"}
    setup.registry.pace = 0.5  # a 64 KiB chunk each half second: the layer is in flight
    await setup.client.get("/v2/org/private/manifests/v1", headers=authed)
    layer = setup.blobs[2]
    assert setup.node.downloads is not None
    active = setup.node.downloads.active
    await _until(lambda: layer in active and active[layer].partial is not None)
    download = active[layer]
    path = f"/v2/org/private/blobs/{layer}"
    wrong = await setup.client.get(path, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    assert download.ahead_of_client
    body = await setup.client.get(path, headers=authed)
    assert digest_of(body.content) == layer
    assert not download.ahead_of_client


async def test_head_index_and_refused_manifests_start_nothing(setup: Setup) -> None:
    assert (await setup.client.head("/v2/org/app/manifests/v1")).status_code == 200
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"digest": setup.manifest, "size": 1}],
            "layers": [{"digest": d} for d in setup.blobs],
        }
    ).encode()
    setup.registry.add_manifest("multi", index)
    # The fake serves every manifest as an OCI image manifest; the body says it is an index.
    multi = await setup.client.get("/v2/org/app/manifests/multi")
    assert multi.status_code == 200 and multi.headers["content-type"] == OCI_INDEX
    impostor = digest_of(b"the real one")
    setup.registry.manifests[impostor] = setup.registry.manifests["v1"]
    assert (await setup.client.get(f"/v2/org/app/manifests/{impostor}")).status_code == 502
    await trio.sleep(0.2)
    await _until(lambda: _idle(setup.node))
    assert setup.registry.count("GET", "/blobs/") == 0
    assert setup.node.prefetcher is not None
    # The index served as an image manifest is typed by its body (an index), and an index
    # starts nothing; its `layers` are never taken for an image's.
    assert setup.node.prefetcher.counters.invalid_manifests == 0


async def test_prefetch_asks_as_the_client_and_private_blobs_stay_private(setup: Setup) -> None:
    setup.registry.token = "s3cret"
    authed = {"Authorization": "Bearer s3cret"}
    # Refused: nothing to prefetch, nothing asked.
    assert (await setup.client.get("/v2/org/private/manifests/v1")).status_code == 401
    answer = await setup.client.get("/v2/org/private/manifests/v1", headers=authed)
    assert answer.status_code == 200
    await _until(lambda: all(setup.node.store.has_blob(d) for d in setup.blobs))
    await _until(lambda: _idle(setup.node))
    blob_gets = [r for r in setup.registry.requests if r[0] == "GET" and "/blobs/" in r[1]]
    assert len(blob_gets) == 4 and all("/org/private/" in r[1] for r in blob_gets)
    for digest in setup.blobs:
        assert setup.node.store.is_private(digest)
        path = f"/v2/org/private/blobs/{digest}"
        assert (await setup.client.get(path)).status_code == 401
        wrong = await setup.client.get(path, headers={"Authorization": "Bearer guess"})
        assert wrong.status_code == 401
        ok = await setup.client.get(path, headers=authed)
        assert digest_of(ok.content) == digest


async def test_a_failed_prefetch_is_counted_and_no_client_sees_it(setup: Setup) -> None:
    setup.registry.lie_about.add(setup.blobs[2])
    del setup.registry.blobs[setup.blobs[3]]
    answer = await setup.client.get("/v2/org/app/manifests/v1")
    assert answer.status_code == 200
    assert setup.node.prefetcher is not None
    counters = setup.node.prefetcher.counters
    await _until(lambda: counters.started == 4 and _idle(setup.node))
    assert (counters.started, counters.completed, counters.failed) == (4, 2, 2)
    assert (await setup.client.get("/v2/")).status_code == 200


async def test_no_prefetch_fetches_only_what_clients_ask(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    node, registry, client = await _start(tmp_path, nursery, prefetch=False)
    blobs, _ = _image(registry)
    async with client:
        response = await client.get("/v2/org/app/manifests/v1", headers={"Accept": DOCKER_MANIFEST})
        assert response.status_code == 200
        await trio.sleep(0.3)
        assert node.prefetcher is None
        assert node.downloads_in_flight() == 0
        assert registry.count("GET", "/blobs/") == 0
        assert not any(node.store.has_blob(d) for d in blobs)
        metrics = node.status()
        assert metrics["prefetch"] == {"enabled": False}
