"""`pollen bench image`: layouts whose layers, releases and compression are what they claim."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bench.cli import bench
from bench.components import Registry


def manifest(layout: Path, tag: str) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    path = layout / "blobs" / "sha256" / entry["digest"][7:]
    doc: dict[str, Any] = json.loads(path.read_bytes())
    return doc


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest[7:]).read_bytes()


def run(*args: str) -> str:
    result = CliRunner().invoke(bench, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_jib_releases_share_every_layer_but_the_classes(tmp_path: Path) -> None:
    layout = tmp_path / "jib"
    for release in ("1", "2"):
        run("image", str(layout), "--profile", "jib", "--scale", "0.02", "--release", release)
    r1, r2 = manifest(layout, "r1"), manifest(layout, "r2")
    d1 = [layer["digest"] for layer in r1["layers"]]
    d2 = [layer["digest"] for layer in r2["layers"]]
    assert d1[:3] == d2[:3] and d1[3] != d2[3]
    sizes = [layer["size"] for layer in r1["layers"]]
    # 80 / 200 / 300 / 1 MB at scale 0.02, plus the tar headers
    assert [s // 20_000 for s in sizes] == [80, 200, 300, 1]
    # Every blob's file hashes to its digest.
    for layer in r1["layers"]:
        assert (
            "sha256:" + hashlib.sha256(blob(layout, layer["digest"])).hexdigest() == layer["digest"]
        )


def test_gzip_text_layers_compress_and_declare_their_diff_ids(tmp_path: Path) -> None:
    layout = tmp_path / "plain"
    run(
        "image",
        str(layout),
        "--layers",
        "2",
        "--layer-size",
        "1MiB",
        "--content",
        "text",
        "--gzip",
    )
    doc = manifest(layout, "latest")
    config = json.loads(blob(layout, doc["config"]["digest"]))
    for layer, diff_id in zip(doc["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"].endswith("tar+gzip")
        tar = gzip.decompress(blob(layout, layer["digest"]))
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
        assert 0.3 < layer["size"] / len(tar) < 0.7  # compressible, not trivially


def test_bad_push_url_fails_before_writing(tmp_path: Path) -> None:
    result = CliRunner().invoke(bench, ["image", str(tmp_path / "x"), "--push", "127.0.0.1:5000"])
    assert result.exit_code != 0
    assert "http(s)://HOST[:PORT]/REPO" in result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.integration
def test_push_to_a_real_registry(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    try:
        output = run(
            "image",
            str(tmp_path / "img"),
            "--layers",
            "2",
            "--layer-size",
            "256KiB",
            "--push",
            f"{registry.url}/bench/app",
        )
        assert f"pushed {registry.host}/bench/app:latest" in output
        raw = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--raw",
                "--tls-verify=false",
                f"docker://{registry.host}/bench/app:latest",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        ).stdout
        assert json.loads(raw)["layers"] == manifest(tmp_path / "img", "latest")["layers"]
    finally:
        registry.stop()
