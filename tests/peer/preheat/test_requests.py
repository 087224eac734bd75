"""Preheat's pure parts: image references, index and manifest reading, the API's request
document (every field from the network checked and bounded), the job record."""

from __future__ import annotations

import json

import pytest

from peer.preheat.api import MAX_IMAGES, BadRequest, parse_request
from peer.preheat.job import MAX_RUNNING, JobState, JobTable, TooManyJobs
from peer.preheat.refs import BadReference, ImageRef, parse_image_ref, parse_manifest_url
from peer.preheat.resolve import (
    Platform,
    UnusableManifest,
    index_manifests,
    manifest_blobs,
    this_platform,
)
from wire.names import MAX_AUTHORIZATION

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("nginx", ImageRef("docker.io", "library/nginx", "latest")),
        ("nginx:1.27", ImageRef("docker.io", "library/nginx", "1.27")),
        ("team/app:v1", ImageRef("docker.io", "team/app", "v1")),
        ("localhost:5000/app", ImageRef("localhost:5000", "app", "latest")),
        ("registry.example.com/a/b/c:2", ImageRef("registry.example.com", "a/b/c", "2")),
        (f"ghcr.io/team/app@{D1}", ImageRef("ghcr.io", "team/app", D1)),
        ("127.0.0.1:5000/test/app:v1", ImageRef("127.0.0.1:5000", "test/app", "v1")),
    ],
)
def test_image_references_by_dockers_rules(text: str, ref: ImageRef) -> None:
    assert parse_image_ref(text) == ref


@pytest.mark.parametrize(
    "text", ["", "UPPER/case", "app:bad tag", "app@sha256:short", "a" * 300, "x.io/:tag"]
)
def test_bad_references_are_refused(text: str) -> None:
    with pytest.raises(BadReference):
        parse_image_ref(text)


def test_harbors_manifest_urls() -> None:
    url = "https://harbor.example.com/v2/library/nginx/manifests/1.0"
    assert parse_manifest_url(url) == ImageRef("harbor.example.com", "library/nginx", "1.0")
    with_user = "http://user:pw@10.0.0.5:8080/v2/p/r/manifests/" + D1
    assert parse_manifest_url(with_user) == ImageRef("10.0.0.5:8080", "p/r", D1)
    for bad in ("ftp://h/v2/a/manifests/1", "https://h/v1/a/manifests/1", "https://h/v2/a/blobs/x"):
        with pytest.raises(BadReference):
            parse_manifest_url(bad)


def index(*entries: tuple[str, str, str]) -> bytes:
    return json.dumps(
        {
            "manifests": [
                {"digest": d, "size": 100, "platform": {"os": os_, "architecture": arch}}
                for d, os_, arch in entries
            ]
        }
    ).encode()


def test_an_index_gives_the_manifests_of_the_chosen_platforms() -> None:
    body = index((D1, "linux", "amd64"), (D2, "linux", "arm64"), (D3, "windows", "amd64"))
    assert index_manifests(body, [Platform("linux", "arm64")]) == [D2]
    assert index_manifests(body, None) == [D1, D2, D3]
    with pytest.raises(UnusableManifest, match=r"linux/s390x.*linux/amd64, linux/arm64"):
        index_manifests(body, [Platform("linux", "s390x")])
    assert this_platform().os == "linux"


def test_a_manifest_gives_its_config_and_layers_once_without_foreign_ones() -> None:
    body = json.dumps(
        {
            "config": {"digest": D1, "size": 10},
            "layers": [
                {"digest": D2, "size": 20},
                {"digest": D2, "size": 20},
                {
                    "digest": D3,
                    "size": 30,
                    "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar",
                },
            ],
        }
    ).encode()
    assert [(b.digest, b.size) for b in manifest_blobs(body)] == [(D1, 10), (D2, 20)]
    for bad in (b"[]", b"{}", b'{"layers": [{"digest": "x", "size": 1}]}', b"not json"):
        with pytest.raises(UnusableManifest):
            manifest_blobs(bad)


def test_the_api_request_is_checked_field_by_field() -> None:
    request = parse_request(
        json.dumps(
            {"images": ["nginx:1", "ghcr.io/a/b:2"], "platforms": ["all"], "scope": "all"}
        ).encode()
    )
    assert [str(i) for i in request.images] == ["docker.io/library/nginx:1", "ghcr.io/a/b:2"]
    assert request.platforms is None and request.scope == "all"
    assert request.authorization is None
    default = parse_request(b'{"images": ["nginx"]}')
    assert default.scope == "owners" and default.platforms == [this_platform()]
    bad = [
        b"nope",
        b"[]",
        b'{"images": []}',
        b'{"images": "nginx"}',
        b'{"images": ["nginx"], "scope": "everyone"}',
        b'{"images": ["nginx"], "platforms": ["linux"]}',
        b'{"images": ["nginx"], "authorization": 5}',
        # Passed on to the other nodes, which refuse what no header could carry (and close
        # the link that carried it): refused here, where the operator sees why.
        json.dumps({"images": ["nginx"], "authorization": "Bearer \u0100"}).encode(),
        json.dumps({"images": ["nginx"], "authorization": "Bearer x\r\nHost: y"}).encode(),
        json.dumps({"images": ["nginx"], "authorization": "B" * (MAX_AUTHORIZATION + 1)}).encode(),
        b'{"images": ["Bad Ref"]}',
        json.dumps({"images": ["nginx"] * (MAX_IMAGES + 1)}).encode(),
    ]
    for body in bad:
        with pytest.raises(BadRequest):
            parse_request(body)


def test_jobs_are_bounded_and_end_by_what_every_node_got() -> None:
    table = JobTable()
    jobs = [table.create(["nginx"], "all", ["linux/amd64"], now=1.0) for _ in range(MAX_RUNNING)]
    with pytest.raises(TooManyJobs):
        table.create(["nginx"], "owners", [], now=2.0)
    job = jobs[0]
    job.blobs = {D1: 10, D2: 20}
    job.blob_done("a", D1, 3.0)
    job.blob_done("a", D2, 3.0)
    job.blob_done("b", D1, 3.0)
    job.finish(4.0)
    assert job.state is JobState.FAILED  # node b lacks a blob
    assert job.document()["nodes"] == {
        "a": {"blobs_done": 2, "bytes_done": 30, "failed": 0},
        "b": {"blobs_done": 1, "bytes_done": 10, "failed": 0},
    }
    second = jobs[1]
    second.blobs = {D1: 10}
    second.blob_done("a", D1, 3.0)
    second.finish(4.0)
    assert second.state is JobState.SUCCEEDED
    table.create(["nginx"], "owners", [], now=5.0)  # two finished: room again
