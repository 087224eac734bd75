"""A manifest a registry built to parse slowly (a helper's probe, 2026-12-04: 4 MiB of
`[[]],`, ~0.6 s a parse) was parsed three times on the event loop for each client's GET (its
type, its sizes, its blobs for prefetch), and once more for each prefetch after a GET by
digest: every connection of the node waited (`/healthz` p50 2.4 s). Now a body is parsed once,
a large one in the node's worker process. A real node and registry; what the node's own
process parses is watched through `json.loads`, which the worker (another process) does not
share."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from peer.body_parser import INLINE_BYTES
from peer.fetch.manifests import OCI_MANIFEST
from peer.node import Node
from pieces.descriptors import Repository
from tests.peer.fake_registry import FakeRegistry, digest_of, node_config


@pytest.fixture
def parsed_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The lengths of the bodies this process parses as JSON from now on."""
    lengths: list[int] = []
    loads = json.loads

    def counting(body: str | bytes, **kw: object) -> object:
        lengths.append(len(body))
        return loads(body, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(json, "loads", counting)
    yield lengths


def slow_manifest(layers: list[tuple[str, int]]) -> bytes:
    """An image manifest of real descriptors, padded with ~1 MiB of nested empty lists (what
    parses slowest per byte)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "x", "digest": layers[0][0], "size": layers[0][1]},
            "layers": [{"mediaType": "y", "digest": d, "size": n} for d, n in layers[1:]],
            "annotations-not": [[[]]] * 200_000,
        },
        separators=(",", ":"),
    ).encode()


async def test_a_large_manifest_is_parsed_once_and_never_on_the_event_loop(
    tmp_path: Path, nursery: trio.Nursery, parsed_here: list[int]
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = registry.add_blob(b'{"architecture":"amd64"}')
    layer = registry.add_blob(b"layer bytes" * 1000)
    body = slow_manifest([(config, 24), (layer, 11_000)])
    assert len(body) > 10 * INLINE_BYTES
    digest = registry.add_manifest("v1", body)
    node = Node(node_config(registry, tmp_path / "store", prefetch=True))
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        by_tag = await client.get("/v2/org/app/manifests/v1")
        assert by_tag.status_code == 200 and by_tag.content == body
        assert by_tag.headers["docker-content-digest"] == digest == digest_of(body)
        for _ in range(3):  # read from the store, each followed by a prefetch offer
            by_digest = await client.get(f"/v2/org/app/manifests/{digest}")
            assert by_digest.status_code == 200 and by_digest.content == body
        with trio.fail_after(20):  # the prefetch took the config and the layer
            while not (node.store.has_blob(config) and node.store.has_blob(layer)):
                await trio.sleep(0.05)
    assert [n for n in parsed_here if n > INLINE_BYTES] == []
    assert node.parser.parsed_in_worker == 1  # once for the fetch, its type, sizes and blobs
    # What the worker read was used: the sizes check downloads, the blobs were prefetched.
    repository = Repository(registry.url, "org/app")
    assert node.store.descriptor_sizes.size_of(repository, layer) == 11_000
    assert node.store.descriptor_sizes.size_of(repository, config) == 24
    assert node.prefetcher is not None and node.prefetcher.counters.manifests == 4


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_stored_manifest_read_after_a_restart_teaches_its_sizes_again(
    tmp_path: Path, nursery: trio.Nursery, method: str
) -> None:
    """Sizes live in memory: after a restart, clients resolve a tag with a HEAD (which
    stores nothing) and read the manifest by digest from the store, which teaches them
    again; a blob of another size from that repository is then refused before a byte is
    allocated."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    layer = registry.add_blob(b"layer bytes" * 100)
    config = registry.add_blob(b"{}")
    body = slow_manifest([(config, 2), (layer, 1100)])
    digest = registry.add_manifest("v1", body)
    repository = Repository(registry.url, "org/app")
    for restart in (False, True):
        async with trio.open_nursery() as running:  # one node at a time on the store
            node = Node(node_config(registry, tmp_path / "store", prefetch=False))
            port = await running.start(node.run)
            url = f"http://127.0.0.1:{port}/v2/org/app/manifests"
            async with httpx.AsyncClient(timeout=30) as client:
                if not restart:
                    assert (await client.get(f"{url}/v1")).status_code == 200
                    assert node.store.descriptor_sizes.size_of(repository, layer) == 1100
                else:
                    assert node.store.descriptor_sizes.size_of(repository, layer) is None
                    answer = await client.request(method, f"{url}/{digest}")
                    assert answer.status_code == 200
                    assert answer.headers["content-length"] == str(len(body))
                    assert answer.content == (body if method == "GET" else b"")
                    assert node.store.descriptor_sizes.size_of(repository, layer) == 1100
            running.cancel_scope.cancel()
