"""Tag lists, referrers (through the spec's fallback tag), sha512 content and refusals in the
spec's error form, through a node in process against a fake registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer.front.discovery import INDEX_LIMIT, LIST_LIMIT, fallback_tag
from peer.node import Node
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry, digest_of, node_config

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"


@dataclass
class Setup:
    registry: FakeRegistry
    node: Node
    client: httpx.AsyncClient


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    registry = FakeRegistry(typed_by_body=True)
    await nursery.start(registry.serve)
    config = node_config(registry, tmp_path / "store", name="reg.test")
    node = Node(config)
    port = await nursery.start(node.run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        yield Setup(registry, node, client)


async def test_tags_are_asked_of_the_registry_and_paged_through_the_node(setup: Setup) -> None:
    for tag in ("v1", "v2", "v3"):
        setup.registry.add_manifest(tag, json.dumps({"tag": tag}).encode())
    first = await setup.client.get("/v2/org/app/tags/list?n=2&ns=reg.test")
    assert first.status_code == 200
    assert first.json() == {"name": "org/app", "tags": ["v1", "v2"]}
    link = first.headers["link"]
    assert link == '</v2/org/app/tags/list?n=2&last=v2&ns=reg.test>; rel="next"'
    second = await setup.client.get(link.partition(">")[0].lstrip("<"))
    assert second.json()["tags"] == ["v3"] and "link" not in second.headers
    setup.registry.add_manifest("v4", b"{}")  # tags move: never cached
    again = await setup.client.get("/v2/org/app/tags/list?ns=reg.test")
    assert again.json()["tags"] == ["v1", "v2", "v3", "v4"]
    assert setup.registry.count("GET", "/tags/list") == 3


def _artifact(subject: str, artifact_type: str) -> tuple[bytes, dict[str, object]]:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "artifactType": artifact_type,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": digest_of(b"{}"),
                "size": 2,
            },
            "layers": [],
            "subject": {"mediaType": MANIFEST_TYPE, "digest": subject, "size": 10},
        }
    ).encode()
    descriptor = {
        "mediaType": MANIFEST_TYPE,
        "digest": digest_of(body),
        "size": len(body),
        "artifactType": artifact_type,
    }
    return body, descriptor


async def test_referrers_come_from_the_fallback_tag_filtered_by_artifact_type(
    setup: Setup,
) -> None:
    image = setup.registry.add_manifest("v1", json.dumps({"image": 1}).encode())
    path = f"/v2/org/app/referrers/{image}"
    empty = await setup.client.get(path)  # no referrers API, no fallback tag yet
    assert empty.status_code == 200
    assert empty.headers["content-type"] == OCI_INDEX
    assert empty.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    _sig, sig_desc = _artifact(image, SIG)
    _sbom, sbom_desc = _artifact(image, SBOM)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig_desc, sbom_desc]}
    setup.registry.add_manifest(fallback_tag(image), json.dumps(index).encode())
    both = await setup.client.get(path)
    assert both.json()["manifests"] == [sig_desc, sbom_desc]
    assert "oci-filters-applied" not in both.headers
    only = await setup.client.get(path, params={"artifactType": SIG})
    assert only.json()["manifests"] == [sig_desc]
    assert only.headers["oci-filters-applied"] == "artifactType"
    bad = await setup.client.get("/v2/org/app/referrers/sha256:nope")
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "DIGEST_INVALID"


async def test_a_referrers_api_answer_is_passed_on_and_filtered_when_the_registry_did_not(
    setup: Setup,
) -> None:
    image = digest_of(b"an image")
    _, sig_desc = _artifact(image, SIG)
    _, sbom_desc = _artifact(image, SBOM)
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig_desc, sbom_desc]}
    )
    setup.registry.refusals["/referrers/"] = (200, [("content-type", OCI_INDEX)], index.encode())
    answer = await setup.client.get(f"/v2/org/app/referrers/{image}", params={"artifactType": SBOM})
    assert answer.status_code == 200 and answer.json()["manifests"] == [sbom_desc]
    assert answer.headers["oci-filters-applied"] == "artifactType"


async def test_sha512_content_is_verified_stored_and_served(setup: Setup) -> None:
    data = b"sha512 content " * 5000
    digest = setup.registry.add_blob(data, "sha512")
    first = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert first.status_code == 200 and first.content == data
    assert first.headers["docker-content-digest"] == digest
    again = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert again.content == data and setup.registry.count("GET", digest) == 1  # fetched once
    with trio.fail_after(10):  # committed (fsync, rename) just after the last byte went out
        while not setup.node.store.has_blob(digest):
            await trio.sleep(0.01)
    # A registry that lies about sha512 content is caught like one that lies about sha256.
    liar = setup.registry.add_blob(b"the truth " * 1000, "sha512")
    setup.registry.lie_about.add(liar)
    with contextlib.suppress(httpx.RemoteProtocolError):  # cut before its last byte
        lied = await setup.client.get(f"/v2/org/app/blobs/{liar}")
        assert lied.content != bytes(10_000)  # never the lie whole
    assert not setup.node.store.has_blob(liar)
    manifest = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    by512 = "sha512:" + hashlib.sha512(manifest).hexdigest()
    setup.registry.manifests[by512] = manifest
    fetched = await setup.client.get(f"/v2/org/app/manifests/{by512}")
    assert fetched.status_code == 200 and fetched.content == manifest


async def test_refusals_reach_the_client_in_the_specs_form(setup: Setup) -> None:
    registry = setup.registry
    registry.refusals["/limited/"] = (429, [("retry-after", "30")], b"slow down")
    registry.refusals["/forbidden/"] = (403, [("content-type", "text/html")], b"<h1>no</h1>")
    registry.refusals["/gone/"] = (404, [], b"")
    limited = await setup.client.get("/v2/limited/app/manifests/v1")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "30"
    assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    forbidden = await setup.client.get("/v2/forbidden/app/tags/list")
    assert forbidden.status_code == 403 and forbidden.json()["errors"][0]["code"] == "DENIED"
    blob = await setup.client.get(f"/v2/gone/app/blobs/{digest_of(b'x')}")
    assert blob.status_code == 404 and blob.json()["errors"][0]["code"] == "BLOB_UNKNOWN"
    manifest = await setup.client.get("/v2/gone/app/manifests/v1")
    assert manifest.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    tags = await setup.client.get("/v2/gone/app/tags/list")
    assert tags.json()["errors"][0]["code"] == "NAME_UNKNOWN"
    # A refusal already in the spec's form goes on as the registry wrote it.
    registry.refusals["/auth/"] = (
        401,
        [("www-authenticate", 'Bearer realm="x"'), ("content-type", "application/json")],
        b'{"errors":[{"code":"UNAUTHORIZED","message":"the registry says so"}]}',
    )
    denied = await setup.client.get("/v2/auth/app/manifests/v1")
    assert denied.json()["errors"][0]["message"] == "the registry says so"
    assert denied.headers["www-authenticate"] == 'Bearer realm="x"'


@pytest.mark.parametrize(
    ("upstream_link", "ours"),
    [
        # Quay pages with a token: the registry's query goes on as it wrote it.
        (
            '</v2/org/app/tags/list?n=2&next_page=T0K3N>; rel="next"',
            '</v2/org/app/tags/list?n=2&next_page=T0K3N&ns=reg.test>; rel="next"',
        ),
        # Two link-values: the next one, not the first.
        (
            '</v2/org/app/tags/list?last=a>; rel="prev", '
            '</v2/org/app/tags/list?last=c>; rel="next"',
            '</v2/org/app/tags/list?last=c&ns=reg.test>; rel="next"',
        ),
        (
            "</v2/org/app/tags/list?last=c>; rel=next",
            '</v2/org/app/tags/list?last=c&ns=reg.test>; rel="next"',
        ),
        # A registry behind a path prefix, an absolute URL: the path on this node.
        (
            '<https://reg.example/prefix/v2/org/app/tags/list?last=c>; rel="next"',
            '</v2/org/app/tags/list?last=c&ns=reg.test>; rel="next"',
        ),
        # Anywhere else: no Link (a client must not be sent elsewhere through the node).
        ('</v2/other/repo/tags/list?last=c>; rel="next"', None),
        ('</v2/org/app/tags/list?last=c>; rel="prev"', None),
    ],
)
async def test_the_registrys_next_page_link_becomes_a_path_on_the_node(
    setup: Setup, upstream_link: str, ours: str | None
) -> None:
    body = json.dumps({"name": "org/app", "tags": ["a", "b"]}).encode()
    setup.registry.refusals["/tags/list"] = (200, [("link", upstream_link)], body)
    answer = await setup.client.get("/v2/org/app/tags/list?n=2&next_page=x&ns=reg.test")
    assert answer.status_code == 200 and answer.content == body
    assert answer.headers.get("link") == ours
    asked = [p for m, p, _ in setup.registry.requests if "/tags/list" in p][-1]
    assert asked == "/v2/org/app/tags/list?n=2&next_page=x"  # the client's query, as sent


async def test_odd_referrers_answers_are_read_as_the_spec_says(setup: Setup) -> None:
    image = digest_of(b"an image")
    # A referrers API that answers 200 with a web page: no referrers API, the fallback tag.
    setup.registry.refusals["/referrers/"] = (200, [("content-type", "text/html")], b"<html/>")
    _, sig_desc = _artifact(image, SIG)
    fallback = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig_desc]}
    setup.registry.add_manifest(fallback_tag(image), json.dumps(fallback).encode())
    found = await setup.client.get(f"/v2/org/app/referrers/{image}")
    assert found.json()["manifests"] == [sig_desc]
    # A fallback tag that holds an image manifest rather than an index: no referrers.
    other = digest_of(b"another image")
    setup.registry.add_manifest(fallback_tag(other), json.dumps({"layers": []}).encode())
    none = await setup.client.get(f"/v2/org/app/referrers/{other}")
    assert none.status_code == 200 and none.json()["manifests"] == []
    # A paged referrers answer keeps its Link, made ours.
    page = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [sig_desc]})
    link = f'</v2/org/app/referrers/{image}?page=2>; rel="next"'
    setup.registry.refusals["/referrers/"] = (
        200,
        [("content-type", OCI_INDEX), ("link", link)],
        page.encode(),
    )
    paged = await setup.client.get(f"/v2/org/app/referrers/{image}")
    assert paged.headers["link"] == f'</v2/org/app/referrers/{image}?page=2>; rel="next"'


async def test_a_tag_a_registry_knows_by_sha512_keeps_that_digest(setup: Setup) -> None:
    body = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    by512 = "sha512:" + hashlib.sha512(body).hexdigest()
    headers = [("content-type", MANIFEST_TYPE), ("docker-content-digest", by512)]
    setup.registry.refusals["/manifests/v512"] = (200, headers, body)
    answer = await setup.client.get("/v2/org/app/manifests/v512")
    assert answer.status_code == 200 and answer.headers["docker-content-digest"] == by512
    assert setup.node.store.get_manifest(by512) is not None
    # A digest header the body does not match is not believed: the body's sha256 is used.
    lie = "sha512:" + "0" * 128
    setup.registry.refusals["/manifests/vlie"] = (200, [("docker-content-digest", lie)], body)
    lied = await setup.client.get("/v2/org/app/manifests/vlie")
    assert lied.headers["docker-content-digest"] == digest_of(body)


async def test_a_reference_that_is_no_tag_is_unknown(setup: Setup) -> None:
    answer = await setup.client.get("/v2/org/app/manifests/no!such")
    assert answer.status_code == 404
    assert answer.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert setup.registry.requests == []


async def test_a_registry_that_sends_an_endless_index_gets_a_502_not_the_nodes_memory(
    setup: Setup,
) -> None:
    """A client can name any registry: a referrers answer or a tag list larger than the
    node reads (INDEX_LIMIT, LIST_LIMIT) ends that request, nothing else."""
    image = digest_of(b"an image")
    too_big = b"[" + b" " * INDEX_LIMIT + b"]"
    setup.registry.refusals["/referrers/"] = (200, [("content-type", OCI_INDEX)], too_big)
    answer = await setup.client.get(f"/v2/org/app/referrers/{image}")
    assert answer.status_code == 502 and answer.json()["errors"][0]["code"] == "UNAVAILABLE"
    setup.registry.refusals["/tags/list"] = (200, [], b"x" * (LIST_LIMIT + 1))
    answer = await setup.client.get("/v2/org/app/tags/list")
    assert answer.status_code == 502
    setup.registry.add_manifest("v1", b"{}")
    assert (await setup.client.get("/v2/org/app/manifests/v1")).status_code == 200
