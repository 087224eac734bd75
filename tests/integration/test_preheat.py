"""Preheat with real processes: a private image warmed through a 3-node cluster with the
nodes' own logins (--auth-file): each blob leaves the registry once, and with scope all every
node then serves the pull from its own disk; clear job errors for a missing tag, a private
repository without a login, and a registry that is down."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.components import REPO, Cluster, Pollen, Registry, free_port
from tests.integration.conftest import CREDS, REPO_NAME, TAG, PushedImage, auth_file
from tests.integration.relays import skopeo_copy

Factory = Callable[..., Cluster]


def pollen_cli(node: Pollen, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "peer.cli", *args]
    command += ["--admin", f"{node.ip}:{node.admin_port}", "--data-dir", str(node.data_dir)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def preheat(node: Pollen, *args: str, check: bool = True) -> dict[str, Any]:
    result = pollen_cli(node, "preheat", "--wait", "--json", *args, check=check)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def test_a_private_image_preheated_to_every_node_is_pulled_from_each_nodes_disk(
    private_registry: Registry, cluster_factory: Factory, tmp_path: Path
) -> None:
    registry = private_registry
    logins = auth_file(tmp_path / "auth.json", registry)
    cluster = cluster_factory(
        3,
        registry.url,
        "--upstream",
        f"{registry.host}={registry.url}",
        "--auth-file",
        str(logins),
    )
    cluster.wait_converged()
    manifest = registry.manifest(REPO_NAME, TAG, CREDS)
    blobs = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
    mark = registry.log_mark()

    job = preheat(cluster.nodes[0], f"{registry.host}/{REPO_NAME}:{TAG}", "--scope", "all")

    assert job["state"] == "succeeded", job["errors"]
    assert job["blobs"] == len(blobs) and job["errors"] == []
    assert len(job["nodes"]) == 3
    assert all(n["blobs_done"] == len(blobs) for n in job["nodes"].values())
    assert registry.blob_copies(mark) == {digest: 1 for digest in blobs}  # each blob once
    for i, node in enumerate(cluster.nodes):
        stored = node.data_dir / "blobs" / "sha256"
        assert {f"sha256:{p.name}" for p in stored.iterdir()} >= set(blobs), f"node {i}"
    # The first real pull on any node is a local hit: nothing more leaves the registry.
    mark = registry.log_mark()
    for i, node in enumerate(cluster.nodes):
        pulled = skopeo_copy(node, tmp_path / f"pull{i}", "--src-creds", CREDS)
        assert pulled.returncode == 0, pulled.stderr
        served = node.status()["served"]
        assert served["blob_requests_from_cache"] == len(blobs), f"node {i}: {served}"
    assert registry.blob_copies(mark) == {}
    # Fetched with the nodes' logins, the content is private: a client without one gets
    # nothing from any node (none lends its login to clients here).
    refused = skopeo_copy(cluster.nodes[2], tmp_path / "anonymous")
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr
    status = pollen_cli(cluster.nodes[0], "status").stdout
    assert f"preheat   job {job['id']} succeeded" in status


def test_scope_owners_warms_each_blob_once_and_the_job_node(
    private_registry: Registry, cluster_factory: Factory, tmp_path: Path
) -> None:
    registry = private_registry
    logins = auth_file(tmp_path / "auth.json", registry)
    cluster = cluster_factory(
        3, registry.url, "--upstream", f"{registry.host}={registry.url}", "--auth-file", str(logins)
    )
    cluster.wait_converged()
    mark = registry.log_mark()
    job = preheat(cluster.nodes[1], f"{registry.host}/{REPO_NAME}:{TAG}")
    assert job["state"] == "succeeded", job["errors"]
    assert list(job["nodes"]) == [cluster.nodes[1].node_id]
    gets = registry.blob_copies(mark)
    assert len(gets) == job["blobs"] and set(gets.values()) == {1}


def test_clear_errors_for_a_missing_tag_a_missing_login_and_a_registry_that_is_down(
    private_registry: Registry, pushed: PushedImage, tmp_path: Path
) -> None:
    registry = private_registry
    down = f"127.0.0.1:{free_port('127.0.0.1')}"
    node = Pollen(
        tmp_path / "node",
        "--upstream",
        f"{registry.host}={registry.url}",
        "--upstream",
        f"{pushed.registry.host}={pushed.registry.url}",
        "--upstream",
        f"{down}=http://{down}",
    )
    try:
        missing = preheat(node, f"{pushed.registry.host}/{REPO_NAME}:no-such-tag", check=False)
        assert missing["state"] == "failed"
        assert "404: the registry has no no-such-tag" in missing["errors"][0]

        private = preheat(node, f"{registry.host}/{REPO_NAME}:{TAG}", check=False)
        assert private["state"] == "failed"
        assert "401: the registry wants credentials" in private["errors"][0]
        assert "--auth-file" in private["errors"][0]

        unreachable = preheat(node, f"{down}/{REPO_NAME}:{TAG}", check=False)
        assert unreachable["state"] == "failed"
        assert "the registry failed" in unreachable["errors"][0]

        result = pollen_cli(node, "preheat", "--wait", f"{down}/{REPO_NAME}:{TAG}", check=False)
        assert result.returncode != 0 and "failed" in result.stderr

        bad = pollen_cli(node, "preheat", "not a reference!", check=False)
        assert bad.returncode != 0 and "400" in bad.stderr
    finally:
        node.stop()
