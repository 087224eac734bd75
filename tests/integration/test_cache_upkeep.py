"""A node's cache managing itself, with real processes: the TTL and the disk watermarks evict
least recently used blobs, never one a client is still reading; `pollen gc --dry-run` lists
what would go and removes nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.components import REPO, Pollen
from tests.integration.conftest import REPO_NAME, PushedImage
from tests.integration.relays import curl, sha256_file
from tests.tmpfs import mounted_tmpfs

MiB = 1024 * 1024


def fetch(node: Pollen, digest: str, out: Path) -> None:
    client = curl(f"{node.url}/v2/{REPO_NAME}/blobs/{digest}", out)
    assert client.wait(timeout=60) == 0
    assert sha256_file(out) == digest


class StalledReader:
    """A client that asks for a blob, reads its first bytes and then stops reading: the node's
    response (and its hold on the blob) stays open until the reader goes on."""

    def __init__(self, node: Pollen, digest: str) -> None:
        self.digest = digest
        self.sock = socket.create_connection((node.ip, node.port), timeout=30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self.sock.sendall(
            f"GET /v2/{REPO_NAME}/blobs/{digest} HTTP/1.1\r\nHost: {node.host}\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        self.head, _, self.body_start = head.partition(b"\r\n\r\n")

    def read_rest(self, out: Path) -> None:
        """Read the whole body (Content-Length) into `out`, then close."""
        length = int(
            next(
                line.split(b":", 1)[1]
                for line in self.head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
        )
        with open(out, "wb") as f:
            f.write(self.body_start)
            got = len(self.body_start)
            while got < length:
                chunk = self.sock.recv(1 << 20)
                assert chunk, "the node cut the response"
                f.write(chunk)
                got += len(chunk)
        self.sock.close()


def wait_until(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError(what)


def stored(node: Pollen, digest: str) -> bool:
    return (node.data_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")).exists()


def gc(node: Pollen, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "peer.cli",
            "gc",
            "--admin",
            f"{node.ip}:{node.admin_port}",
            "--data-dir",
            str(node.data_dir),
            "--json",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_the_ttl_evicts_unread_blobs_but_not_one_a_client_is_reading(
    pushed: PushedImage, tmp_path: Path
) -> None:
    registry = pushed.registry
    node = Pollen(tmp_path / "node", "--default-upstream", registry.url, "--cache-ttl", "3s")
    try:
        _config, small, middle, large = sorted(pushed.blobs, key=pushed.blobs.__getitem__)
        for digest in (small, middle, large):
            fetch(node, digest, tmp_path / "out")
        reader = StalledReader(node, large)  # reads a little and stops
        wait_until(
            "the unread blobs expire", lambda: not stored(node, small) and not stored(node, middle)
        )
        evictions = node.status()["store"]["evictions"]
        assert evictions["ttl"]["blobs"] == 2
        assert stored(node, large), "a blob being read was evicted"
        reader.read_rest(tmp_path / "large")
        assert sha256_file(tmp_path / "large") == large
        # Read and released: past its TTL, the next check takes it.
        wait_until("the blob read expires once released", lambda: not stored(node, large))
        assert "evicted sha256:" in node.log() and ": ttl" in node.log()
    finally:
        node.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", "128m") as mount:
        yield mount


def test_the_high_watermark_evicts_lru_down_to_the_low_one_sparing_a_reader(
    pushed: PushedImage, tmp_path: Path, small_disk: Path
) -> None:
    registry = pushed.registry
    node = Pollen(
        tmp_path / "node",
        "--default-upstream",
        registry.url,
        "--disk-high",
        "60%",
        "--disk-low",
        "30%",
        data_dir=small_disk / "store",
    )
    try:
        _config, small, middle, large = sorted(pushed.blobs, key=pushed.blobs.__getitem__)
        fetch(node, large, tmp_path / "out")  # 72 of 128 MiB: 56 %, under 60 %
        reader = StalledReader(node, large)  # the least recently used, but being read
        fetch(node, small, tmp_path / "out")
        assert node.status()["store"]["evictions"] == {}
        fetch(node, middle, tmp_path / "out")  # 81 MiB: 63 % > 60 %: down to 30 % if it can
        assert not stored(node, small)
        # Committed (fsync, rename) just after its last byte went out: waited for, bounded.
        wait_until("the middle blob stored", lambda: stored(node, middle))
        assert stored(node, large) and stored(node, middle)
        assert node.status()["store"]["evictions"]["disk-watermark"]["blobs"] == 1
        reader.read_rest(tmp_path / "large")
        assert sha256_file(tmp_path / "large") == large
        metrics = urllib_get(node.admin_url + "/metrics")
        assert 'pollen_evictions_total{reason="disk-watermark"} 1.0' in metrics
        # Someone else fills the disk: the next check (or `pollen gc`) evicts for it; a dry
        # run lists the same and removes nothing.
        (small_disk / "filler").write_bytes(bytes(8 * MiB))  # 89 of 128 MiB: 70 %
        would = gc(node, "--dry-run")
        assert [e["digest"] for e in would["evicted"]] == [large]
        assert [e["reason"] for e in would["evicted"]] == ["disk-watermark"]
        assert stored(node, large)
        gone = gc(node)
        assert [e["digest"] for e in gone["evicted"]] == [large]
        assert not stored(node, large) and stored(node, middle)
    finally:
        node.stop()


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
        return text
