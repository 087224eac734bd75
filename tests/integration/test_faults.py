"""Faults with real processes: the registry dies mid-blob, a client is killed mid-stream, the
node is SIGKILLed mid-download. A throttling proxy stands for a slow link to the registry so
that each fault lands while the blob is still moving."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.components import Pollen, Registry
from tests.integration.conftest import REPO_NAME, TAG, MiB, PushedImage
from tests.integration.relays import ThrottledProxy, curl, sha256_file

RATE = 25 * MiB


@pytest.fixture(scope="module")
def fault_registry(
    tmp_path_factory: pytest.TempPathFactory, image_layout: Path
) -> Iterator[PushedImage]:
    registry = Registry(tmp_path_factory.mktemp("fault-registry"))
    try:
        manifest = registry.push(image_layout, TAG, REPO_NAME)
        yield PushedImage(registry, REPO_NAME, TAG, manifest)
    finally:
        registry.stop()


@pytest.fixture
def proxy(fault_registry: PushedImage) -> Iterator[ThrottledProxy]:
    p = ThrottledProxy(fault_registry.registry.port, RATE)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def slow_node(tmp_path: Path, proxy: ThrottledProxy) -> Iterator[Pollen]:
    node = Pollen(tmp_path / "node", "--default-upstream", proxy.url, "--upstream-timeout", "5")
    try:
        yield node
    finally:
        node.stop()


def wait_bytes_present(node: Pollen, digest: str, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in node.status()["transfers"]:
            if t["digest"] == digest and t["bytes_present"] >= at_least:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{digest} never reached {at_least} bytes")


def wait_stored(node: Pollen, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = node.status()
        if status["store"]["complete_blobs"] >= count and not status["transfers"]:
            return
        time.sleep(0.05)
    raise TimeoutError("blob never stored")


def resumed_at(node: Pollen, digest: str) -> int:
    match = re.search(rf"resuming {digest} at byte (\d+)", node.log())
    assert match, "the node did not resume the partial blob"
    return int(match.group(1))


def range_requests(proxy: ThrottledProxy, digest: str) -> list[str]:
    return [
        m.group(1)
        for head in proxy.request_heads
        if f"/blobs/{digest}" in head
        for m in [re.search(r"(?im)^range: (bytes=\d+-)\r?$", head)]
        if m
    ]


def test_registry_killed_mid_blob(
    fault_registry: PushedImage, slow_node: Pollen, proxy: ThrottledProxy, tmp_path: Path
) -> None:
    digest = fault_registry.largest_layer
    url = f"{slow_node.url}/v2/{REPO_NAME}/blobs/{digest}"
    client = curl(url, tmp_path / "first")
    try:
        wait_bytes_present(slow_node, digest, 10 * MiB)
        fault_registry.registry.stop(signal.SIGKILL)
        assert client.wait(timeout=60) != 0, "a cut upstream must reach the client as an error"
    finally:
        client.kill()
        client.wait()
        fault_registry.registry.start()
    status = slow_node.status()
    assert status["upstream"]["downloads_failed"] == 1
    assert status["store"]["complete_blobs"] == 0
    assert status["store"]["partial_blobs"] == 1

    second = curl(url, tmp_path / "second")
    assert second.wait(timeout=60) == 0
    assert sha256_file(tmp_path / "second") == digest
    assert resumed_at(slow_node, digest) > 0
    assert range_requests(proxy, digest), "the resume asks the registry for the rest only"


def test_client_killed_mid_stream_does_not_stop_the_download(
    fault_registry: PushedImage, slow_node: Pollen, tmp_path: Path
) -> None:
    registry = fault_registry.registry
    digest = fault_registry.largest_layer
    mark = registry.log_mark()
    url = f"{slow_node.url}/v2/{REPO_NAME}/blobs/{digest}"
    client = curl(url, tmp_path / "killed")
    try:
        wait_bytes_present(slow_node, digest, 8 * MiB)
    finally:
        client.send_signal(signal.SIGKILL)
        client.wait()
    wait_stored(slow_node, 1)
    stored = slow_node.data_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert sha256_file(stored) == digest
    again = curl(url, tmp_path / "again")
    assert again.wait(timeout=60) == 0
    assert sha256_file(tmp_path / "again") == digest
    assert registry.blob_copies(mark) == {digest: 1}
    assert slow_node.status()["served"]["blob_requests_from_cache"] == 1


def test_node_killed_mid_download_resumes_after_restart(
    fault_registry: PushedImage, slow_node: Pollen, proxy: ThrottledProxy, tmp_path: Path
) -> None:
    digest = fault_registry.largest_layer
    url = f"{slow_node.url}/v2/{REPO_NAME}/blobs/{digest}"
    client = curl(url, tmp_path / "first")
    try:
        wait_bytes_present(slow_node, digest, 20 * MiB)
        slow_node.stop(signal.SIGKILL)
        assert client.wait(timeout=30) != 0
    finally:
        client.kill()
        client.wait()
    slow_node.start()
    second = curl(url, tmp_path / "second")
    assert second.wait(timeout=60) == 0
    assert sha256_file(tmp_path / "second") == digest
    assert resumed_at(slow_node, digest) >= 16 * MiB  # most of what was written was kept
    assert range_requests(proxy, digest)
