"""Harbor's P2P preheat, replayed: the exact requests Harbor's Dragonfly and Kraken provider
drivers send (src/pkg/p2p/preheat/provider/{dragonfly,kraken}.go), against a 2-node cluster
and a real docker-registry with htpasswd auth. The registry credentials Harbor puts in a
Dragonfly job are a Bearer token from Harbor's token service; this registry takes Basic, so
the replayed job carries a Basic header in the same place."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.components import Cluster, Registry
from tests.integration.conftest import CREDS, REPO_NAME, TAG, auth_file

TOKEN = "harbor-provider-instance-token-0123456789"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def harbor_client(cluster: Cluster, token: str | None = TOKEN) -> httpx.Client:
    """What Harbor's provider HTTP client sends: JSON, the instance's OAuth token."""
    node = cluster.nodes[0]
    headers = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    port = node.status()["node"]["preheat_port"]
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30)


def dragonfly_job(registry: Registry, tag: str, scope: str) -> dict[str, Any]:
    """Harbor's dragonflyCreateJobRequest, every key as encoding/json writes it."""
    login = base64.b64encode(CREDS.encode()).decode()
    return {
        "type": "preheat",
        "args": {
            "type": "image",
            "url": f"http://{registry.host}/v2/{REPO_NAME}/manifests/{tag}",
            "tag": "",
            "filtered_query_params": "",
            "headers": {"Authorization": f"Basic {login}"},
            "scope": scope,
            "concurrent_count": 0,
            "timeout": 0,
        },
        "scheduler_cluster_ids": None,
    }


def poll(
    get: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        doc = get()
        if done(doc):
            return doc
        time.sleep(0.2)  # Harbor polls every 10 s; the test need not wait that long
    raise TimeoutError(doc)


def make_cluster(
    cluster_factory: Callable[..., Cluster], registry: Registry, tmp_path: Path
) -> Cluster:
    token_file = tmp_path / "preheat.token"
    token_file.write_text(TOKEN + "\n")
    logins = auth_file(tmp_path / "auth.json", registry)
    cluster = cluster_factory(
        2,
        registry.url,
        "--upstream",
        f"{registry.host}={registry.url}",
        "--auth-file",
        str(logins),
        "--preheat-listen",
        "0.0.0.0:0",
        "--preheat-token-file",
        str(token_file),
    )
    cluster.wait_converged()
    return cluster


def stored_blobs(cluster: Cluster, index: int) -> set[str]:
    blobs = cluster.nodes[index].data_dir / "blobs" / "sha256"
    return {f"sha256:{p.name}" for p in blobs.iterdir()}


def test_harbor_as_dragonfly_preheats_to_all_peers_and_sees_success_and_failure(
    private_registry: Registry, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    registry = private_registry
    cluster = make_cluster(cluster_factory, registry, tmp_path)
    manifest = registry.manifest(REPO_NAME, TAG, CREDS)
    blobs = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    mark = registry.log_mark()
    with harbor_client(cluster, token=None) as anonymous:
        assert anonymous.get("/healthy").status_code == 401
        refused = anonymous.post("/oapi/v1/jobs", json=dragonfly_job(registry, TAG, "all_peers"))
        assert refused.status_code == 401
    with harbor_client(cluster, token="wrong") as wrong:
        assert wrong.get("/healthy").status_code == 401
    with harbor_client(cluster) as harbor:
        assert harbor.get("/healthy").status_code == 200
        created = harbor.post("/oapi/v1/jobs", json=dragonfly_job(registry, TAG, "all_peers"))
        assert created.status_code == 200, created.text
        job = created.json()
        assert type(job["id"]) is int and job["state"] == "PENDING"
        assert RFC3339.fullmatch(job["created_at"]) and RFC3339.fullmatch(job["updated_at"])
        path = f"/oapi/v1/jobs/{job['id']}"
        final = poll(lambda: harbor.get(path).json(), lambda d: d["state"] != "PENDING")
        assert final["state"] == "SUCCESS", final
        assert registry.blob_copies(mark) == {digest: 1 for digest in blobs}
        assert stored_blobs(cluster, 0) >= blobs and stored_blobs(cluster, 1) >= blobs

        missing = harbor.post("/oapi/v1/jobs", json=dragonfly_job(registry, "gone", "single_peer"))
        path = f"/oapi/v1/jobs/{missing.json()['id']}"
        failed = poll(lambda: harbor.get(path).json(), lambda d: d["state"] != "PENDING")
        assert failed["state"] == "FAILURE"
        assert "404: the registry has no gone" in failed["result"]["job_states"][0]["error"]
        assert harbor.get("/oapi/v1/jobs/987654").status_code == 404
        bad = dragonfly_job(registry, TAG, "everywhere")
        assert harbor.post("/oapi/v1/jobs", json=bad).status_code == 400
        # A Harbor on plain http that the node would reach over https: said at once.
        plain = dragonfly_job(registry, TAG, "all_peers")
        plain["args"]["url"] = f"http://harbor.example:8080/v2/{REPO_NAME}/manifests/{TAG}"
        answer = harbor.post("/oapi/v1/jobs", json=plain)
        assert answer.status_code == 400
        assert "--upstream harbor.example:8080=http://harbor.example:8080" in answer.text


def test_harbor_as_kraken_sends_a_push_event_and_the_node_preheats_with_its_own_login(
    private_registry: Registry, cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    registry = private_registry
    cluster = make_cluster(cluster_factory, registry, tmp_path)
    raw = subprocess.run(
        [
            *("skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", CREDS),
            f"docker://{registry.host}/{REPO_NAME}:{TAG}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    manifest_digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    event = {
        "Events": [
            {
                "Id": str(uuid.uuid4()),
                "TimeStamp": "2026-11-28T19:00:00.123456789Z",
                "Action": "push",
                "Target": {
                    "MediaType": "application/vnd.docker.distribution.manifest.v2+json",
                    "Digest": manifest_digest,
                    "Repository": REPO_NAME,
                    "Url": f"http://{registry.host}/v2/{REPO_NAME}/manifests/{TAG}",
                    "Tag": TAG,
                },
                "Request": None,
                "Actor": None,
            }
        ]
    }
    with harbor_client(cluster) as harbor:
        assert harbor.get("/health").status_code == 200
        answer = harbor.post("/registry/notifications", json=event)
        assert answer.status_code == 200, answer.text
        (job_id,) = answer.json()["jobs"]
    node = cluster.nodes[0]

    def job() -> dict[str, Any]:
        with httpx.Client(timeout=10) as admin:
            request = node.admin_request(f"/_pollen/preheat/{job_id}")
            doc: dict[str, Any] = admin.get(request.full_url, headers=dict(request.headers)).json()
            return doc

    final = poll(job, lambda d: d["state"] not in ("pending", "running"))
    assert final["state"] == "succeeded", final["errors"]
    assert final["manifests"][0] == manifest_digest  # pinned to the pushed digest
    assert stored_blobs(cluster, 0)
