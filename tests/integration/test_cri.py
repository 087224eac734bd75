"""The kubelet's pull path: containerd's CRI plugin pulls through a pollen node (its
config_path's hosts.toml names the node first), asked over the CRI API by bench/cri.py as the
kubelet (or crictl) asks: PullImage, ImageStatus, RemoveImage."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.components import Containerd, Pollen
from bench.cri import ImageService
from tests.integration.conftest import PushedImage


@pytest.fixture
def cri_containerd() -> Iterator[Containerd]:
    ctd = Containerd(cri=True)
    try:
        yield ctd
    finally:
        ctd.close()


def test_the_cri_plugin_pulls_through_the_node(
    pushed: PushedImage, pollen: Pollen, cri_containerd: Containerd
) -> None:
    registry = pushed.registry
    cri_containerd.mirror(registry.host, registry.url, pollen.url)
    images = ImageService(cri_containerd.socket, timeout=300)
    try:
        assert images.status(pushed.ref) is None
        mark = registry.log_mark()
        image_id = images.pull(pushed.ref)
        assert image_id == pushed.manifest["config"]["digest"]
        status = images.status(pushed.ref)
        assert status is not None and status.id == image_id
        assert pushed.ref in status.repo_tags
        assert status.size > 0  # unpacked by the snapshotter
        # Each blob left the registry once, to the node, which served every byte.
        assert registry.blob_copies(mark) == {digest: 1 for digest in pushed.blobs}
        served = pollen.status()["served"]
        sent = served["blob_bytes_from_cache"] + served["blob_bytes_while_downloading"]
        assert sent == sum(pushed.blobs.values())
        images.remove(pushed.ref)
        assert images.status(pushed.ref) is None
        images.remove(pushed.ref)  # again: not there is no error
    finally:
        images.close()
