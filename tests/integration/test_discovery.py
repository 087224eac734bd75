"""The rest of the read API with real clients and a real docker-registry: `skopeo list-tags`
through a node (public and with a login), referrers of an image whose signature was pushed
the way clients push to a registry without the referrers API (the spec's fallback tag; by
plain HTTP: Debian has no oras, and oras-py writes no fallback tag), and sha512-addressed
content."""

from __future__ import annotations

import hashlib
import json
import subprocess
import urllib.request
from pathlib import Path

import httpx

from bench.components import Pollen, Registry, wait_for
from peer.front.discovery import fallback_tag
from tests.integration.conftest import CREDS, REPO_NAME, TAG

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
EMPTY = b"{}"


def list_tags(node: Pollen, repo: str, *creds: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", *creds, f"docker://{node.host}/{repo}"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def push_blob(registry: Registry, repo: str, data: bytes, digest: str) -> None:
    """The spec's monolithic upload: POST for a session, PUT the bytes with their digest."""
    start = urllib.request.Request(f"{registry.url}/v2/{repo}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start, timeout=30) as answer:
        location = answer.headers["Location"]
    url = location if location.startswith("http") else registry.url + location
    url += ("&" if "?" in url else "?") + f"digest={digest}"
    put = urllib.request.Request(url, data=data, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(put, timeout=30) as answer:
        assert answer.status == 201


def push_manifest(registry: Registry, repo: str, reference: str, body: bytes, kind: str) -> None:
    put = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{reference}", data=body, method="PUT"
    )
    put.add_header("Content-Type", kind)
    with urllib.request.urlopen(put, timeout=30) as answer:
        assert answer.status == 201, answer.read()


def raw_manifest(registry: Registry, repo: str, tag: str) -> bytes:
    return subprocess.run(
        [
            "skopeo",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.host}/{repo}:{tag}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout


def test_skopeo_lists_tags_through_a_node(
    registry: Registry, private_registry: Registry, image_layout: Path, tmp_path: Path
) -> None:
    registry.push(image_layout, TAG, "test/tagged")
    image = raw_manifest(registry, "test/tagged", TAG)
    push_manifest(registry, "test/tagged", "v2", image, json.loads(image)["mediaType"])
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url)
    private = Pollen(tmp_path / "private", "--default-upstream", private_registry.url)
    try:
        listed = list_tags(node, "test/tagged")
        assert listed.returncode == 0, listed.stderr
        assert sorted(json.loads(listed.stdout)["Tags"]) == sorted([TAG, "v2"])
        refused = list_tags(private, REPO_NAME)
        assert refused.returncode != 0
        allowed = list_tags(private, REPO_NAME, "--creds", CREDS)
        assert allowed.returncode == 0, allowed.stderr
        assert TAG in json.loads(allowed.stdout)["Tags"]
    finally:
        node.stop()
        private.stop()


def test_referrers_of_an_image_signed_through_the_fallback_tag(
    registry: Registry, image_layout: Path, tmp_path: Path
) -> None:
    repo = "test/signed"
    registry.push(image_layout, TAG, repo)
    image = raw_manifest(registry, repo, TAG)
    subject = "sha256:" + hashlib.sha256(image).hexdigest()
    empty = "sha256:" + hashlib.sha256(EMPTY).hexdigest()
    push_blob(registry, repo, EMPTY, empty)
    signature = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SIG,
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": empty,
                "size": 2,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}
            ],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(image)},
        }
    ).encode()
    signature_digest = "sha256:" + hashlib.sha256(signature).hexdigest()
    push_manifest(registry, repo, signature_digest, signature, OCI_MANIFEST)
    descriptor = {
        "mediaType": OCI_MANIFEST,
        "digest": signature_digest,
        "size": len(signature),
        "artifactType": SIG,
    }
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
    push_manifest(registry, repo, fallback_tag(subject), index.encode(), OCI_INDEX)
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url)
    try:
        with httpx.Client(base_url=node.url, timeout=30) as client:
            found = client.get(f"/v2/{repo}/referrers/{subject}")
            assert found.status_code == 200 and found.headers["content-type"] == OCI_INDEX
            assert found.json()["manifests"] == [descriptor]
            none = client.get(f"/v2/{repo}/referrers/{subject}", params={"artifactType": "x/y"})
            assert none.json()["manifests"] == []
            assert none.headers["oci-filters-applied"] == "artifactType"
            unsigned = "sha256:" + hashlib.sha256(b"no such image").hexdigest()
            nothing = client.get(f"/v2/{repo}/referrers/{unsigned}")
            assert nothing.status_code == 200 and nothing.json()["manifests"] == []
            # The signature itself is content: fetched (and cached) by its digest.
            fetched = client.get(
                f"/v2/{repo}/manifests/{signature_digest}", headers={"accept": OCI_MANIFEST}
            )
            assert fetched.status_code == 200 and fetched.content == signature
    finally:
        node.stop()


def test_sha512_content_is_served_through_a_node_and_then_from_its_store(
    registry: Registry, tmp_path: Path
) -> None:
    data = b"content addressed by sha512 " * 40_000
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    push_blob(registry, "test/sha512", data, digest)
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url)
    try:
        mark = registry.log_mark()
        with httpx.Client(base_url=node.url, timeout=30) as client:
            for _ in range(2):
                answer = client.get(f"/v2/test/sha512/blobs/{digest}")
                assert answer.status_code == 200 and answer.content == data
                assert answer.headers["docker-content-digest"] == digest
        assert registry.blob_copies(mark) == {digest: 1}
        stored = node.data_dir / "blobs" / "sha256" / digest.removeprefix("sha512:")
        # Committed (fsync, rename) just after the last byte went out: wait for it, bounded.
        wait_for("the blob stored", stored.exists, timeout=30)
        assert hashlib.sha512(stored.read_bytes()).hexdigest() == digest.removeprefix("sha512:")
    finally:
        node.stop()
