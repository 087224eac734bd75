from __future__ import annotations

import base64
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.components import Cluster, Containerd, Pollen, Registry
from bench.oci_image import write_image

MiB = 1024 * 1024
REPO_NAME = "test/app"
TAG = "v1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _real_components_present() -> None:
    missing = [
        c
        for c in (
            "docker-registry",
            "containerd",
            "ctr",
            "skopeo",
            "htpasswd",
            "curl",
            "dockerd",
            "docker",
            "podman",
            "unshare",
        )
        if not shutil.which(c)
    ]
    if missing:
        pytest.fail(f"integration tests need {missing}: run `make test`, which installs them")


@dataclass
class PushedImage:
    registry: Registry
    repo: str
    tag: str
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.registry.host}/{self.repo}:{self.tag}"

    @property
    def blobs(self) -> dict[str, int]:
        """digest -> size of the config and every layer, as the registry stores them."""
        parts = [self.manifest["config"], *self.manifest["layers"]]
        return {p["digest"]: p["size"] for p in parts}

    @property
    def largest_layer(self) -> str:
        digest: str = max(self.manifest["layers"], key=lambda d: d["size"])["digest"]
        return digest


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    layout = tmp_path_factory.mktemp("image")
    # Three layers of random data, one over 64 MiB.
    write_image(layout, [1 * MiB, 8 * MiB, 72 * MiB], tag=TAG, seed=1)
    return layout


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def pushed(registry: Registry, image_layout: Path) -> PushedImage:
    manifest = registry.push(image_layout, TAG, REPO_NAME)
    assert len(manifest["layers"]) == 3
    return PushedImage(registry, REPO_NAME, TAG, manifest)


@pytest.fixture
def pollen(tmp_path: Path, registry: Registry) -> Iterator[Pollen]:
    node = Pollen(
        tmp_path / "pollen",
        "--upstream",
        f"{registry.host}={registry.url}",
        "--default-upstream",
        registry.url,
    )
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def containerd() -> Iterator[Containerd]:
    ctd = Containerd()
    try:
        yield ctd
    finally:
        ctd.close()


@pytest.fixture(scope="session")
def htpasswd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "htpasswd"
    out = subprocess.run(
        ["htpasswd", "-Bbn", "alice", "wonderland"], check=True, capture_output=True, text=True
    ).stdout
    path.write_text(out)
    return path


CREDS = "alice:wonderland"  # the htpasswd_file's login


def auth_file(path: Path, registry: Registry) -> Path:
    """A docker config.json (mode 0600) with CREDS for `registry`: a node's --auth-file."""
    login = base64.b64encode(CREDS.encode()).decode()
    path.write_text(json.dumps({"auths": {registry.host: {"auth": login}}}))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def private_registry(
    tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path, image_layout: Path
) -> Iterator[Registry]:
    """A registry that wants a login (htpasswd: CREDS), with the test image pushed."""
    reg = Registry(tmp_path_factory.mktemp("private-registry"), htpasswd=htpasswd_file)
    try:
        reg.push(image_layout, TAG, REPO_NAME, creds=CREDS)
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(count: int, upstream: str, *args: str, **kwargs: object) -> Cluster:
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}",
            count,
            "--default-upstream",
            upstream,
            *args,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
