"""Real containerd and skopeo pull through a real pollen node from a real docker-registry."""

from __future__ import annotations

import subprocess
from pathlib import Path

from bench.components import Containerd, Pollen
from peer.fetch.chunks import least_pieces, whole_chunks, whole_flows
from pieces.layout import PieceLayout, piece_size_for
from tests.integration.conftest import PushedImage
from tests.integration.relays import sha256_file


def test_containerd_pulls_through_the_node_and_the_registry_serves_each_blob_once(
    pushed: PushedImage, pollen: Pollen, containerd: Containerd
) -> None:
    registry = pushed.registry
    containerd.mirror(registry.host, registry.url, pollen.url)
    mark = registry.log_mark()

    result = containerd.pull(pushed.ref)
    assert "unpacking linux/amd64" in result.stdout, result.stdout + result.stderr
    assert containerd.ctr("images", "ls", "-q").stdout.split() == [pushed.ref]

    # Each blob left the registry exactly once, and it went to pollen: pollen sent every byte.
    assert registry.blob_copies(mark) == {digest: 1 for digest in pushed.blobs}
    # The large layer (288 pieces) in chunks, by Range: the manifest gave its size.
    largest = max(pushed.manifest["layers"], key=lambda d: d["size"])["size"]
    layout = PieceLayout(largest, piece_size_for(largest))
    chunks = whole_chunks(layout.count, least_pieces(layout.piece_size), whole_flows(largest))
    assert registry.blob_statuses(mark)[pushed.largest_layer] == [206] * len(chunks)
    served = pollen.status()["served"]
    total = sum(pushed.blobs.values())
    assert served["blob_bytes_from_cache"] + served["blob_bytes_while_downloading"] == total

    # Remove the image and its content from containerd, then pull again.
    containerd.ctr("images", "rm", "--sync", pushed.ref)
    left = containerd.content_digests() & set(pushed.blobs)
    if left:
        containerd.ctr("content", "rm", *left)
    assert not containerd.content_digests() & set(pushed.blobs)
    mark = registry.log_mark()
    containerd.pull(pushed.ref)
    assert registry.blob_copies(mark) == {}, (
        "the second pull must not fetch blobs from the registry"
    )
    assert pollen.status()["served"]["blob_bytes_from_cache"] >= total


def test_skopeo_copies_from_the_node(pushed: PushedImage, pollen: Pollen, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{pollen.host}/{pushed.repo}:{pushed.tag}",
            f"dir:{out}",
        ],
        check=True,
        timeout=300,
    )
    for digest, size in pushed.blobs.items():
        path = out / digest.removeprefix("sha256:")
        assert path.stat().st_size == size
        assert sha256_file(path) == digest
    status = pollen.status()
    assert status["store"]["complete_blobs"] == len(pushed.blobs)
    assert status["upstream"]["downloads_failed"] == 0
