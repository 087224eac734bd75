"""A node without a cluster token is an open cluster: allowed only where other hosts cannot
reach its peer port, unless the operator insists (--insecure-open-cluster)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from bench.components import REPO
from peer.config import Address, NodeConfig
from peer.node import Node


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "node.example"])
def test_an_open_cluster_on_a_reachable_address_is_refused(host: str, tmp_path: Path) -> None:
    config = NodeConfig(data_dir=tmp_path, peer=Address(host, 65002))
    with pytest.raises(ValueError, match="--cluster-token-file"):
        config.check()
    NodeConfig(data_dir=tmp_path, peer=Address(host, 65002), cluster_token=b"t").check()
    NodeConfig(data_dir=tmp_path, peer=Address(host, 65002), insecure_open_cluster=True).check()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost"])
def test_an_open_cluster_on_loopback_is_allowed(host: str, tmp_path: Path) -> None:
    NodeConfig(data_dir=tmp_path, peer=Address(host, 65002)).check()


def test_pollen_run_refuses_to_start_an_open_cluster_on_every_interface(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "run", "--data-dir", str(tmp_path), "--peer",
         "0.0.0.0:0", "--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--insecure-open-cluster" in result.stderr


@pytest.mark.parametrize(
    ("host", "encrypt"), [("10.1.2.3", False), ("10.1.2.3", True), ("127.0.0.1", False)]
)
def test_peer_links_in_clear_on_a_reachable_address_are_warned_of(
    host: str, encrypt: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NodeConfig(
        data_dir=tmp_path, peer=Address(host, 65002), cluster_token=b"t", peer_encryption=encrypt
    )
    with caplog.at_level(logging.WARNING, logger="pollen.node"):
        Node(config)
    warned = "neither encrypted nor authenticated" in caplog.text
    assert warned == (host != "127.0.0.1" and not encrypt)
