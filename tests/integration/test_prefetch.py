"""Image-aware prefetch with a real docker-registry and real nodes: one manifest GET, and the
node fetches the image's blobs unasked, as the client that asked (private stays private)."""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.components import Pollen, Registry
from bench.oci_image import write_image
from tests.integration.conftest import MiB, PushedImage

REPO = "test/prefetch"
TAG = "v1"
CREDS = "alice:wonderland"
ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@pytest.fixture(scope="module")
def small_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("prefetch-image")
    write_image(layout, [1 * MiB, 3 * MiB, 2 * MiB], tag=TAG, seed=7)
    return layout


@pytest.fixture(scope="module")
def public_image(registry: Registry, small_layout: Path) -> PushedImage:
    return PushedImage(registry, REPO, TAG, registry.push(small_layout, TAG, REPO))


@pytest.fixture(scope="module")
def private_image(
    tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path, small_layout: Path
) -> Iterator[PushedImage]:
    reg = Registry(tmp_path_factory.mktemp("prefetch-private"), htpasswd=htpasswd_file)
    try:
        yield PushedImage(reg, REPO, TAG, reg.push(small_layout, TAG, REPO, creds=CREDS))
    finally:
        reg.stop()


def fetch(url: str, creds: str | None = None, accept: str | None = None) -> tuple[int, bytes]:
    headers = {}
    if creds is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    if accept is not None:
        headers["Accept"] = accept
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_manifest(node: Pollen, creds: str | None = None) -> int:
    return fetch(f"{node.url}/v2/{REPO}/manifests/{TAG}", creds, ACCEPT)[0]


def wait_prefetched(node: Pollen, count: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = node.status()
        prefetch = status["prefetch"]
        if prefetch["completed"] + prefetch["failed"] >= count and not status["transfers"]:
            return status
        assert time.monotonic() < deadline, f"prefetch not done after {timeout} s: {prefetch}"
        time.sleep(0.05)


def metrics(node: Pollen) -> str:
    with urllib.request.urlopen(node.admin_url + "/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


def test_one_manifest_get_and_the_node_fetches_every_blob_unasked(
    public_image: PushedImage, tmp_path: Path
) -> None:
    registry = public_image.registry
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url)
    try:
        mark = registry.log_mark()
        assert get_manifest(node) == 200
        status = wait_prefetched(node, len(public_image.blobs))
        assert status["prefetch"]["completed"] == len(public_image.blobs)
        assert status["prefetch"]["failed"] == 0
        assert status["store"]["complete_blobs"] == len(public_image.blobs)
        # Nobody asked for a blob: the node fetched each once, on its own.
        assert registry.blob_copies(mark) == {digest: 1 for digest in public_image.blobs}
        served = status["served"]
        assert served["blob_requests_from_cache"] + served["blob_requests_while_downloading"] == 0
        text = metrics(node)
        assert f"pollen_prefetch_completed_total {len(public_image.blobs)}.0" in text
        assert "pollen_prefetch_failed_total 0.0" in text
        # The client's reads come from the store.
        for digest in public_image.blobs:
            code, body = fetch(f"{node.url}/v2/{REPO}/blobs/{digest}")
            assert code == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert registry.blob_copies(mark) == {digest: 1 for digest in public_image.blobs}
    finally:
        node.stop()


def test_a_prefetched_private_blob_is_refused_to_a_client_without_credentials(
    private_image: PushedImage, tmp_path: Path
) -> None:
    registry = private_image.registry
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url)
    try:
        mark = registry.log_mark()
        assert get_manifest(node) == 401  # refused: nothing to prefetch
        assert get_manifest(node, CREDS) == 200
        status = wait_prefetched(node, len(private_image.blobs))
        assert status["prefetch"]["completed"] == len(private_image.blobs)
        assert status["store"]["complete_blobs"] == len(private_image.blobs)
        assert registry.blob_copies(mark) == {digest: 1 for digest in private_image.blobs}
        for digest in private_image.blobs:
            url = f"{node.url}/v2/{REPO}/blobs/{digest}"
            for creds in (None, "alice:guess"):
                code, body = fetch(url, creds)
                assert code == 401, (digest, creds, code)
                assert len(body) < 4096  # an error document, no blob bytes
            code, body = fetch(url, CREDS)
            assert code == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
        assert registry.blob_copies(mark) == {digest: 1 for digest in private_image.blobs}
        assert "wonderland" not in node.log()
    finally:
        node.stop()


def test_no_prefetch_fetches_nothing_unasked(public_image: PushedImage, tmp_path: Path) -> None:
    registry = public_image.registry
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url, "--no-prefetch")
    try:
        mark = registry.log_mark()
        assert get_manifest(node) == 200
        # With prefetch on, the downloads start within milliseconds of the answer.
        time.sleep(1.5)
        status = node.status()
        assert status["prefetch"] == {"enabled": False}
        assert status["store"]["complete_blobs"] == 0
        assert status["transfers"] == []
        assert registry.blob_copies(mark) == {}
        assert "pollen_prefetch" not in metrics(node)
    finally:
        node.stop()
