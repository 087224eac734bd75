"""`pollen bench pull` against a real registry, a real pollen node and real clients."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.components import Pollen, Registry

pytestmark = pytest.mark.integration


def pollen_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `pollen` command line, as a user runs it."""
    command = [sys.executable, "-m", "peer.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def push_image(registry: Registry, layout: Path, layers: str, layer_size: str) -> None:
    """`pollen bench image` into `layout`, pushed to the registry as bench/app:latest."""
    result = pollen_cli(
        "bench", "image", str(layout), "--layers", layers, "--layer-size", layer_size,
        "--push", f"{registry.url}/bench/app", timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Registry, Pollen, str]]:
    registry = Registry(tmp_path / "registry")
    node = None
    try:
        push_image(registry, tmp_path / "img", "2", "2MiB")
        upstream = f"{registry.host}={registry.url}"
        node = Pollen(tmp_path / "node", "--default-upstream", registry.url, "--upstream", upstream)
        yield registry, node, f"{registry.host}/bench/app:latest"
    finally:
        if node is not None:
            node.stop()
        registry.stop()


@pytest.mark.parametrize("driver", ["ctr", "cri", "skopeo"])
def test_ab_runs_alternate_and_every_run_is_a_real_pull(
    setup: tuple[Registry, Pollen, str], tmp_path: Path, driver: str
) -> None:
    registry, node, image = setup
    mark = registry.log_mark()
    result = pollen_cli(
        "bench", "pull", image, "--driver", driver, "--runs", "2",
        "--via", f"pollen={node.url}", "--via", "direct", "--flush",
        "--admin", f"pollen={node.admin_url}",
        "--admin-token-file", f"pollen={node.data_dir / 'admin.token'}",
        "--json", str(tmp_path / "ab.json"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert [r["setting"] for r in doc["runs"]] == ["pollen", "direct", "pollen", "direct"]
    assert all(r["ok"] and r["seconds"] > 0 for r in doc["runs"])
    for name in ("pollen", "direct"):
        s = doc["summary"][name]
        assert s["min_s"] <= s["median_s"] <= s["max_s"] and s["failed"] == 0
    # Every run pulled every blob: twice straight from the registry, and through pollen twice,
    # each time cold (flushed), so the registry served each layer 4 times in all.
    gets = registry.blob_copies(mark)
    layers = [d for d in gets if gets[d] >= 1]
    assert len(layers) == 3 and all(gets[d] == 4 for d in layers), gets
    served = node.status()["served"]
    through_pollen = served["blob_bytes_while_downloading"] + served["blob_bytes_from_cache"]
    assert through_pollen >= 2 * 4 * 2**20
    assert "median" in result.stdout and "pollen / direct median time" in result.stdout


def test_a_bad_image_name_is_a_clear_error() -> None:
    result = pollen_cli("bench", "pull", "no-tag-here", timeout=60)
    assert result.returncode != 0
    assert "HOST[:PORT]/REPO:TAG" in result.stderr


def test_a_mirror_the_client_goes_around_is_reported_not_timed(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    # No --upstream for the registry's host: pollen cannot reach it by the name containerd
    # gives (https is assumed), containerd falls back to the registry itself.
    node = Pollen(tmp_path / "node")
    try:
        push_image(registry, tmp_path / "img", "1", "1MiB")
        result = pollen_cli(
            "bench", "pull", f"{registry.host}/bench/app:latest", "--runs", "1",
            "--via", f"pollen={node.url}", "--admin", f"pollen={node.admin_url}",
            "--admin-token-file", f"pollen={node.data_dir / 'admin.token'}",
        )  # fmt: skip
    finally:
        node.stop()
        registry.stop()
    assert result.returncode != 0
    assert "went around it" in result.stdout


def test_flush_without_the_admin_api_is_a_clear_error(tmp_path: Path) -> None:
    result = pollen_cli(
        "bench", "pull", "127.0.0.1:9/bench/app:latest", "--runs", "1",
        "--via", "pollen=http://127.0.0.1:9", "--flush", timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--flush needs --admin pollen=URL" in result.stderr
