"""A manifest's media type is what its body declares (its `mediaType`, which the digest
covers), not what the last registry to serve it said: a public manifest is stored once per
digest, and a client naming a registry it runs, which served an index's bytes as an image
manifest, set the type every client of every registry then got for that digest (by-digest
pulls of the index failed). A body that declares no type keeps the type it was first stored
with, unless a configured registry says otherwise. Real node, two fake registries (a helper's
attacker probe), and the rule itself."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import trio

from peer.config import Address, NodeConfig
from peer.fetch.manifests import stored_type
from peer.node import Node
from pieces.manifest_facts import read_facts
from tests.peer.fake_registry import FakeRegistry

INDEX = "application/vnd.oci.image.index.v1+json"


async def test_a_registry_cannot_retype_a_stored_manifest(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    good = FakeRegistry(typed_by_body=True)
    evil = FakeRegistry()  # serves every manifest as an OCI image manifest
    await nursery.start(good.serve)
    await nursery.start(evil.serve)
    body = json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": []}).encode()
    digest = good.add_manifest("3.20", body)
    evil.add_manifest("x", body)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"good.test": good.url, "evil.test": evil.url},
        default_upstream=good.url,
    )
    port = await nursery.start(Node(config).run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        honest = await client.get("/v2/library/alpine/manifests/3.20?ns=good.test")
        assert honest.headers["content-type"] == INDEX
        await client.get("/v2/attacker/x/manifests/x?ns=evil.test")
        for method in ("HEAD", "GET"):
            got = await client.request(
                method, f"/v2/library/alpine/manifests/{digest}?ns=good.test"
            )
            assert got.status_code == 200
            assert got.headers["content-type"] == INDEX, method


def test_which_type_a_fetched_manifest_is_stored_with() -> None:
    image = "application/vnd.oci.image.manifest.v1+json"
    # The body's word first, whoever serves it, whatever was stored.
    assert stored_type(INDEX, image, image, named=True) == INDEX
    assert stored_type(INDEX, image, image, named=False) == INDEX
    # A body that declares none: a registry a client names cannot retype what is stored...
    assert stored_type(None, INDEX, image, named=True) == INDEX
    # ...but sets the type of a manifest new here, and a configured registry's word stands
    # (an honest fetch puts right what a client's registry stored first).
    assert stored_type(None, None, image, named=True) == image
    assert stored_type(None, image, INDEX, named=False) == INDEX


def declared_type(body: bytes) -> str | None:
    return read_facts(body).declared_type


def test_a_declared_type_must_be_a_media_type() -> None:
    assert declared_type(json.dumps({"mediaType": INDEX}).encode()) == INDEX
    for said in ("x\r\nSet-Cookie: a=b", "index", "a/b c", "", 7, "a/" + "b" * 200):
        assert declared_type(json.dumps({"mediaType": said}).encode()) is None
    assert declared_type(b"not json") is None
    assert declared_type(b"[]") is None
