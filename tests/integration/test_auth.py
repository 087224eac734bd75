"""A registry that requires credentials (htpasswd): they pass through the node, and cached
private content is never handed to a client without them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.components import Pollen, Registry, sha256_file
from tests.integration.conftest import REPO_NAME, TAG

CREDS = "alice:wonderland"


@pytest.fixture(scope="module")
def private_registry(
    tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path, image_layout: Path
) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("private-registry"), htpasswd=htpasswd_file)
    try:
        reg.push(image_layout, TAG, REPO_NAME, creds=CREDS)
        yield reg
    finally:
        reg.stop()


def skopeo_copy(node: Pollen, out: Path, *creds: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            *creds,
            f"docker://{node.host}/{REPO_NAME}:{TAG}",
            f"dir:{out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_credentials_pass_through_and_private_blobs_stay_private(
    private_registry: Registry, tmp_path: Path
) -> None:
    node = Pollen(tmp_path / "node", "--default-upstream", private_registry.url)
    try:
        refused = skopeo_copy(node, tmp_path / "anon")
        assert refused.returncode != 0
        assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr

        wrong = skopeo_copy(node, tmp_path / "wrong", "--src-creds", "alice:guess")
        assert wrong.returncode != 0

        mark = private_registry.log_mark()
        ok = skopeo_copy(node, tmp_path / "ok", "--src-creds", CREDS)
        assert ok.returncode == 0, ok.stderr
        manifest_blobs = [p for p in (tmp_path / "ok").iterdir() if len(p.name) == 64]
        assert len(manifest_blobs) == 4
        for path in manifest_blobs:
            assert sha256_file(path) == "sha256:" + path.name
        assert set(private_registry.blob_gets(mark).values()) == {1}

        # Everything is cached now; still, no credentials means no blob.
        status = node.status()
        assert status["store"]["complete_blobs"] == 4
        again = skopeo_copy(node, tmp_path / "anon2")
        assert again.returncode != 0
        for blob in manifest_blobs:
            digest = "sha256:" + blob.name
            probe = subprocess.run(
                [
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    f"{node.url}/v2/{REPO_NAME}/blobs/{digest}",
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert probe.stdout == "401"
        log = node.log() + (tmp_path / "node" / "store").as_posix()
        assert "wonderland" not in log
        for path in (tmp_path / "node" / "store").rglob("*"):
            if path.is_file() and path.stat().st_size < 1 << 20:
                assert b"wonderland" not in path.read_bytes()
    finally:
        node.stop()
