"""The preheat API on a node's admin listener, in process: the admin token, bounded bodies,
refusals in the OCI error form; a job for a fake registry's image runs to its end."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from peer.swarm.warming import Warming
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry, node_config
from wire.events import Warm, Warmed


@pytest.fixture
async def admin(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeRegistry]]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        admin=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={f"127.0.0.1:{registry.port}": registry.url},
        default_upstream=registry.url,
    )
    node = Node(config)
    await nursery.start(node.run)
    token = node.admin_token.decode()
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.admin_port}",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
    ) as client:
        yield client, registry


async def test_the_api_needs_the_admin_token(admin: tuple[httpx.AsyncClient, FakeRegistry]) -> None:
    client, _ = admin
    answer = await client.post(
        "/_pollen/preheat", json={"images": ["x"]}, headers={"authorization": ""}
    )
    assert answer.status_code == 401
    assert answer.json()["errors"][0]["code"] == "UNAUTHORIZED"


async def test_bad_requests_are_refused_in_the_oci_form(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, _ = admin
    answer = await client.post("/_pollen/preheat", content=b"{")
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "BAD_REQUEST"
    huge = json.dumps({"images": ["a" * 100_000]}).encode()
    answer = await client.post("/_pollen/preheat", content=huge)
    assert answer.status_code == 413
    answer = await client.get("/_pollen/preheat/99")
    assert answer.status_code == 404
    answer = await client.get("/_pollen/preheat/not-a-number")
    assert answer.status_code == 404
    answer = await client.delete("/_pollen/preheat/1")
    assert answer.status_code == 405


async def test_a_job_warms_every_blob_of_an_image(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, registry = admin
    config = registry.add_blob(b"{}")
    layer = registry.add_blob(b"layer" * 1000)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"digest": config, "size": 2, "mediaType": "application/json"},
        "layers": [{"digest": layer, "size": 5000, "mediaType": "application/octet-stream"}],
    }
    registry.add_manifest("v1", json.dumps(manifest).encode())
    started = await client.post(
        "/_pollen/preheat", json={"images": [f"127.0.0.1:{registry.port}/team/app:v1"]}
    )
    assert started.status_code == 202
    job_id = started.json()["id"]
    job = await finished(client, job_id)
    assert job["state"] == "succeeded", job["errors"]
    assert job["blobs"] == 2 and job["bytes"] == 5002
    assert registry.count("GET", f"/blobs/{layer}") == 1
    listed = (await client.get("/_pollen/preheat")).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]


async def test_a_job_may_not_aim_the_node_at_this_host_or_a_link_local_service(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, _ = admin
    for image in ("169.254.169.254/latest/meta-data:iam", "127.0.0.1:9/secret/thing:v1"):
        answer = await client.post("/_pollen/preheat", json={"images": [image]})
        assert answer.status_code == 400, image
        assert "only an --upstream mapping may point the node at one" in answer.text


async def test_a_blob_warmed_for_a_members_job_is_held_for_a_lease(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A member's job ends elsewhere: the blob it had this node warm is held a lease's time
    (WARM_LEASE), not evicted by the next check while the job still runs."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    host = f"127.0.0.1:{registry.port}"
    # Every blob not held is past the TTL at the check below.
    node = Node(node_config(registry, tmp_path / "store", cache_ttl=1.0))
    await nursery.start(node.run)
    digest = registry.add_blob(b"blob" * 1000)
    answers: list[Warmed] = []

    class Link:
        peer_id = b"M" * 16

        def post_answer(self, event: Warmed) -> None:
            answers.append(event)

    swarm = SimpleNamespace(warming=Warming())
    assert node.preheater is not None
    warm = Warm(7, digest, host, "team/app", None)
    await node.preheater._serve_warm(swarm, Link(), warm)  # type: ignore[arg-type]
    assert [(a.request, a.status) for a in answers] == [(7, 200)]
    assert node.store.has_blob(digest) and node.store.is_held(digest)
    assert node.store.sweep(time.time() + 10**6, dry_run=True) == []  # not evictable
    node.preheater.leases.expire(float("inf"))  # the lease ends: now the TTL takes it
    assert [e.digest for e in node.store.sweep(time.time() + 10**6)] == [digest]


async def test_a_multi_platform_image_is_warmed_for_the_platforms_asked(
    admin: tuple[httpx.AsyncClient, FakeRegistry],
) -> None:
    client, registry = admin
    registry.typed_by_body = True
    manifests = {}
    for arch in ("amd64", "arm64"):
        config_bytes = f'{{"architecture": "{arch}"}}'.encode()
        config = registry.add_blob(config_bytes)
        layer = registry.add_blob(arch.encode() * 1000)
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_TYPE,
                "config": {
                    "digest": config,
                    "size": len(config_bytes),
                    "mediaType": "application/json",
                },
                "layers": [
                    {"digest": layer, "size": len(arch) * 1000, "mediaType": "application/x-tar"}
                ],
            }
        ).encode()
        manifests[arch] = (registry.add_manifest(f"only-{arch}", body), layer)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "digest": digest,
                "size": 100,
                "mediaType": MANIFEST_TYPE,
                "platform": {"os": "linux", "architecture": arch},
            }
            for arch, (digest, _) in manifests.items()
        ],
    }
    registry.add_manifest("multi", json.dumps(index).encode())
    image = f"127.0.0.1:{registry.port}/team/app:multi"
    started = await client.post(
        "/_pollen/preheat", json={"images": [image], "platforms": ["linux/arm64"]}
    )
    job_id = started.json()["id"]
    job = await finished(client, job_id)
    assert job["state"] == "succeeded", job["errors"]
    assert job["manifests"][1] == manifests["arm64"][0]  # the index, then arm64's manifest
    assert registry.count("GET", f"/blobs/{manifests['arm64'][1]}") == 1
    assert registry.count("GET", f"/blobs/{manifests['amd64'][1]}") == 0


async def test_harbor_as_kraken_starts_one_job_for_a_whole_notification(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    host = f"127.0.0.1:{registry.port}"
    token = tmp_path / "preheat.token"
    token.write_text("t" * 40)
    listen = Address("127.0.0.1", 0)
    node = Node(
        node_config(registry, tmp_path / "store", preheat_listen=listen, preheat_token_file=token)
    )
    await nursery.start(node.run)
    events = [
        {
            "action": "push",
            "target": {
                "mediaType": MANIFEST_TYPE,
                "repository": "team/app",
                "url": f"http://{host}/v2/team/app/manifests/{tag}",
                "tag": tag,
            },
        }
        for tag in ("v1", "v2")
    ]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.preheat_port}",
        headers={"authorization": "Bearer " + "t" * 40},
        timeout=10,
    ) as harbor:
        answer = await harbor.post("/registry/notifications", json={"events": events})
    assert answer.status_code == 200
    (job_id,) = answer.json()["jobs"]  # one job: all of it started, or none
    assert node.preheater is not None
    job = node.preheater.jobs.get(job_id)
    assert job is not None and len(job.images) == 2


async def test_a_job_on_the_nodes_login_asks_for_it_again_for_every_blob(
    admin: tuple[httpx.AsyncClient, FakeRegistry], tmp_path: Path
) -> None:
    """A Bearer token bought when the job started would run out during a long job."""
    from peer.fetch.download import BlobSource
    from peer.preheat.runner import Preheater

    tokens = iter(["Bearer first", "Bearer second"])

    class Login:
        async def authorization(self, namespace: str | None, repository: str | None) -> str:
            return next(tokens)

    preheater = Preheater.__new__(Preheater)
    preheater._node_auth = Login()  # type: ignore[assignment]
    source = BlobSource("sha256:" + "a" * 64, "r.example", "team/app", {}, None)
    one = await preheater._renewed(source, True)
    two = await preheater._renewed(source, True)
    assert one.headers == {"authorization": "Bearer first"}
    assert two.headers == {"authorization": "Bearer second"} and two.auth_key != one.auth_key
    assert await preheater._renewed(source, False) is source  # the job's own credentials


async def finished(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    """The job's document once it has ended (bounded: 10 s)."""
    with trio.fail_after(10):
        while True:
            job: dict[str, Any] = (await client.get(f"/_pollen/preheat/{job_id}")).json()
            if job["state"] not in ("pending", "running"):
                return job
            await trio.sleep(0.05)


class _MemberLink:
    """A member's link as `_serve_warm` answers on it."""

    peer_id = b"M" * 16

    def __init__(self) -> None:
        self.answers: list[Warmed] = []

    def post_answer(self, event: Warmed) -> None:
        self.answers.append(event)


async def _node_for_warms(
    tmp_path: Path, nursery: trio.Nursery, **settings: Any
) -> tuple[Node, FakeRegistry, str]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    node = Node(node_config(registry, tmp_path / "store", **settings))
    await nursery.start(node.run)
    assert node.preheater is not None
    return node, registry, f"127.0.0.1:{registry.port}"


async def test_members_warms_hold_no_more_than_half_the_cache(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A member's Warm holds its blob against eviction for a lease. Leases past the cache
    size let one member fill the disk with blobs nothing could evict, and every client's
    new blob got 507 (a helper's probe of a real node: 6 x the quota in a second). What
    members' leases hold stays within half the cache; a Warm past it is refused, and the
    blob it brought is the cache's to evict."""
    node, registry, host = await _node_for_warms(tmp_path, nursery, cache_size=40_000)
    swarm = SimpleNamespace(warming=Warming())
    link = _MemberLink()
    digests = [registry.add_blob(bytes([i]) * 4000) for i in range(8)]
    for request, digest in enumerate(digests):
        warm = Warm(request, digest, host, "team/app", None)
        await node.preheater._serve_warm(swarm, link, warm)  # type: ignore[arg-type,union-attr]
    # Every blob is stored as asked; only the first five are held.
    assert [answer.status for answer in link.answers] == [200] * 8
    assert all(node.store.has_blob(digest) for digest in digests)
    held = [digest for digest in digests if node.store.is_held(digest)]
    assert held == digests[:5]
    assert node.preheater.leases.held_bytes == 20_000  # type: ignore[union-attr]
    assert [a.message for a in link.answers[:5]] == [""] * 5
    assert all("stored, not held" in a.message for a in link.answers[5:])


async def test_a_failing_warm_neither_holds_nor_renews_a_stored_blob(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A Warm that fails (401 without credentials, 404 at another registry) kept the lease it
    took before looking, for a stored blob too: any stored blob, a client's private one, could
    be pinned past the bound (a review found it: 32,000 bytes held against 20,000)."""
    node, registry, host = await _node_for_warms(tmp_path, nursery, cache_size=40_000)
    registry.token = "secret"  # private blobs: a Warm without the token is refused
    swarm = SimpleNamespace(warming=Warming())
    link = _MemberLink()
    digests = [registry.add_blob(bytes([i]) * 4000) for i in range(6)]
    for request, digest in enumerate(digests):
        warm = Warm(request, digest, host, "team/app", "Bearer secret")
        await node.preheater._serve_warm(swarm, link, warm)  # type: ignore[arg-type,union-attr]
    assert [a.status for a in link.answers] == [200] * 6
    assert not node.store.is_held(digests[5]) and node.store.has_blob(digests[5])
    for request, digest in enumerate(digests, start=10):
        warm = Warm(request, digest, host, "team/app", None)
        await node.preheater._serve_warm(swarm, link, warm)  # type: ignore[arg-type,union-attr]
    assert [a.status for a in link.answers[6:]] == [401] * 6
    assert not node.store.is_held(digests[5])
    assert node.preheater.leases.held_bytes == 20_000  # type: ignore[union-attr]
    # Nor did they renew the leases they found: those end when the stored Warms' end.
    node.preheater.leases.expire(trio.current_time() + 600.5)  # type: ignore[union-attr]
    assert not any(node.store.is_held(digest) for digest in digests)


async def test_a_members_warm_that_fails_leaves_no_lease(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A lease was taken before the blob was looked at and kept for its whole time even when
    the registry had no such blob: made-up digests cost ~2 KB each for 10 minutes (a probe:
    +57 MiB after 30,000 Warms from one member)."""
    node, _, host = await _node_for_warms(tmp_path, nursery)
    swarm = SimpleNamespace(warming=Warming())
    link = _MemberLink()
    missing = "sha256:" + "0" * 64
    warm = Warm(1, missing, host, "team/app", None)
    await node.preheater._serve_warm(swarm, link, warm)  # type: ignore[arg-type,union-attr]
    assert [answer.status for answer in link.answers] == [404]
    assert not node.store.is_held(missing)
    assert len(node.preheater.leases) == 0  # type: ignore[union-attr]


async def test_members_warms_hold_a_bounded_number_of_blobs(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("peer.preheat.leases.MAX_LEASES", 2)
    node, registry, host = await _node_for_warms(tmp_path, nursery)
    swarm = SimpleNamespace(warming=Warming())
    link = _MemberLink()
    digests = [registry.add_blob(bytes([i]) * 10) for i in range(3)]
    for request, digest in enumerate([*digests, digests[0]]):
        warm = Warm(request, digest, host, "team/app", None)
        await node.preheater._serve_warm(swarm, link, warm)  # type: ignore[arg-type,union-attr]
    # The third is refused at once; the first again only renews its lease.
    assert [answer.status for answer in link.answers] == [200, 200, 503, 200]
    assert "holds 2 blobs for members' jobs" in link.answers[2].message
    assert not node.store.has_blob(digests[2])
