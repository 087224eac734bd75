"""A registry that requires credentials (htpasswd): they pass through the node, and cached
private content is never handed to a client without them."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

from bench.components import Cluster, Pollen, Registry, wait_for
from peer.cluster.rendezvous import owner_order
from tests.integration.conftest import CREDS, REPO_NAME, TAG, MiB, auth_file
from tests.integration.relays import ThrottledProxy, curl, sha256_file, skopeo_copy


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
        assert set(private_registry.blob_copies(mark).values()) == {1}

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


def _http_code(url: str, out: Path, *extra: str) -> str:
    probe = subprocess.run(
        ["curl", "-s", "-o", str(out), "-w", "%{http_code}", "--max-time", "60", *extra, url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    return probe.stdout


def test_a_private_blob_does_not_leak_through_the_swarm_while_its_owner_downloads_it(
    private_registry: Registry, tmp_path: Path
) -> None:
    """An authorised pull runs at the blob's owner (slowly, through a throttled link); an
    anonymous client asks another node for the same blob meanwhile, and again afterwards.
    It gets a 401 both times and no byte of the blob, and the other node keeps nothing
    unmarked that a later anonymous client could get."""
    manifest = private_registry.manifest(REPO_NAME, TAG, CREDS)
    digest = max(manifest["layers"], key=lambda layer: layer["size"])["digest"]
    proxy = ThrottledProxy(private_registry.port, 16 * MiB)
    cluster = Cluster(
        tmp_path / "cluster", 2, "--default-upstream", proxy.url, "--cluster-token", "t0ken"
    )
    try:
        cluster.wait_converged()
        ids = {bytes.fromhex(n.node_id): n for n in cluster.nodes}
        owner = ids[owner_order(digest, list(ids))[0]]
        other = next(n for n in cluster.nodes if n is not owner)
        path = f"/v2/{REPO_NAME}/blobs/{digest}"
        authed = curl(owner.url + path, tmp_path / "authed", "-u", CREDS)
        try:
            deadline = time.monotonic() + 30
            while not any(t["bytes_present"] for t in owner.status()["transfers"]):
                assert time.monotonic() < deadline, "the authorised download never started"
                time.sleep(0.05)
            during = _http_code(other.url + path, tmp_path / "during")
            assert authed.wait(timeout=120) == 0
        finally:
            authed.kill()
            authed.wait()
        assert sha256_file(tmp_path / "authed") == digest
        after = _http_code(other.url + path, tmp_path / "after")
        at_owner = _http_code(owner.url + path, tmp_path / "at-owner")
        assert (during, after, at_owner) == ("401", "401", "401")
        for name in ("during", "after", "at-owner"):
            assert (tmp_path / name).stat().st_size < 4096  # an error document, no blob bytes
        # An authorised client at the other node still gets it, through the swarm.
        assert _http_code(other.url + path, tmp_path / "ok", "-u", CREDS) == "200"
        assert sha256_file(tmp_path / "ok") == digest
        assert _http_code(other.url + path, tmp_path / "after-ok") == "401"
    finally:
        cluster.stop()
        proxy.close()


def test_a_node_lends_its_login_only_where_told_and_the_content_stays_private(
    private_registry: Registry, tmp_path: Path
) -> None:
    """--auth-for-clients: node 0 pulls for clients that bring no login (what containerd on
    the node expects); node 1 has the same logins but does not lend them, so its anonymous
    client is refused, although node 0 holds every blob. No secret reaches a log."""
    registry = private_registry
    logins = auth_file(tmp_path / "auth.json", registry)
    secret = CREDS.partition(":")[2]
    encoded = base64.b64encode(CREDS.encode()).decode()  # as the file holds it
    lending = Pollen(
        tmp_path / "lending",
        "--default-upstream",
        registry.url,
        "--auth-file",
        str(logins),
        "--auth-for-clients",
        registry.host,
        ip="127.0.0.41",
    )
    cluster_node = None
    try:
        pulled = skopeo_copy(lending, tmp_path / "lent")
        assert pulled.returncode == 0, pulled.stderr
        cluster_node = Pollen(
            tmp_path / "other",
            "--default-upstream",
            registry.url,
            "--auth-file",
            str(logins),
            "--join",
            lending.peer,
            ip="127.0.0.42",
        )
        node = cluster_node
        wait_for("the cluster", lambda: node.alive_members() == 1 == lending.alive_members())
        refused = skopeo_copy(cluster_node, tmp_path / "refused")
        assert refused.returncode != 0
        assert "unauthorized" in refused.stderr.lower() or "401" in refused.stderr
        for node in (lending, cluster_node):
            assert secret not in node.log() and encoded not in node.log()
    finally:
        lending.stop()
        if cluster_node is not None:
            cluster_node.stop()
