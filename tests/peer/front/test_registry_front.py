"""The registry front in-process, over loopback HTTP, against a scripted upstream."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from pieces.descriptors import Repository
from pieces.store import Store
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry, digest_of
from tests.tmpfs import mounted_tmpfs


@dataclass
class Setup:
    registry: FakeRegistry
    node: Node
    client: httpx.AsyncClient
    admin: httpx.AsyncClient  # the admin listener, with the node's admin token


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"reg.test": registry.url, "down.test": "http://127.0.0.1:1"},
        default_upstream=registry.url,
        piece_size=64 * 1024,
        upstream_timeout=2.0,
        admin=Address("127.0.0.1", 0),
    )
    node = Node(config)
    port = await nursery.start(node.run)
    token = {"Authorization": f"Bearer {node.admin_token.decode()}"}
    admin_url = f"http://127.0.0.1:{node.admin_port}"
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client,
        httpx.AsyncClient(base_url=admin_url, headers=token, timeout=10) as admin,
    ):
        yield Setup(registry, node, client, admin)


async def test_api_root_and_admin(setup: Setup) -> None:
    response = await setup.client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["docker-distribution-api-version"] == "registry/2.0"
    assert (await setup.client.get("/healthz")).text == "ok\n"
    assert (await setup.admin.get("/healthz")).text == "ok\n"
    status = (await setup.admin.get("/_pollen/status")).json()
    assert status["store"]["complete_blobs"] == 0
    metrics = (await setup.admin.get("/metrics")).text
    assert "pollen_upstream_bytes_total 0.0" in metrics


async def test_blob_is_fetched_once_and_then_served_from_disk(setup: Setup) -> None:
    data = os.urandom(300_000)
    digest = setup.registry.add_blob(data)
    path = f"/v2/org/app/blobs/{digest}?ns=reg.test"
    first = await setup.client.get(path)
    assert first.status_code == 200
    assert first.content == data
    assert first.headers["docker-content-digest"] == digest
    assert first.headers["content-length"] == str(len(data))
    await _wait_stored(setup, digest)  # the fsync + rename follow the client's last byte
    second = await setup.client.get(path)
    assert second.content == data
    assert setup.registry.count("GET", "/blobs/") == 1
    status = (await setup.admin.get("/_pollen/status")).json()
    assert status["upstream"]["bytes"] == len(data)
    assert status["store"]["complete_blobs"] == 1


async def test_concurrent_clients_share_one_upstream_fetch(setup: Setup) -> None:
    data = os.urandom(1_000_000)
    digest = setup.registry.add_blob(data)
    setup.registry.pace = 0.002
    bodies: list[bytes] = []

    async def fetch() -> None:
        bodies.append((await setup.client.get(f"/v2/org/app/blobs/{digest}")).content)

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(fetch)
    assert bodies == [data] * 100
    assert setup.registry.count("GET", "/blobs/") == 1


async def test_ranges(setup: Setup) -> None:
    data = os.urandom(200_000)
    digest = setup.registry.add_blob(data)
    path = f"/v2/org/app/blobs/{digest}"
    # Cold: the range is served from the download in progress.
    cold = await setup.client.get(path, headers={"Range": "bytes=1000-1999"})
    assert cold.status_code == 206
    assert cold.content == data[1000:2000]
    assert cold.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    await _wait_stored(setup, digest)
    warm = await setup.client.get(path, headers={"Range": "bytes=-10"})
    assert warm.status_code == 206
    assert warm.content == data[-10:]
    bad = await setup.client.get(path, headers={"Range": f"bytes={len(data)}-"})
    assert bad.status_code == 416
    assert bad.headers["content-range"] == f"bytes */{len(data)}"
    assert bad.json()["errors"][0]["code"] == "RANGE_INVALID"


async def test_head_of_uncached_blob_does_not_download(setup: Setup) -> None:
    data = os.urandom(10_000)
    digest = setup.registry.add_blob(data)
    head = await setup.client.head(f"/v2/org/app/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(data))
    assert head.headers["docker-content-digest"] == digest
    assert setup.registry.count("GET", "/blobs/") == 0
    assert not setup.node.store.has_blob(digest)


async def test_lying_upstream_is_never_cached(setup: Setup) -> None:
    data = os.urandom(150_000)
    digest = setup.registry.add_blob(data)
    setup.registry.lie_about.add(digest)
    with pytest.raises(httpx.RemoteProtocolError):
        # The stream is cut before its last byte: the client never gets a whole wrong blob.
        await setup.client.get(f"/v2/org/app/blobs/{digest}")
    await _wait_idle(setup)
    assert not setup.node.store.has_blob(digest)
    setup.registry.lie_about.clear()
    good = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert good.content == data


async def test_bad_digest_and_unknown_route(setup: Setup) -> None:
    bad = await setup.client.get("/v2/org/app/blobs/sha256:abc")
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == "DIGEST_INVALID"
    missing = await setup.client.get("/v2/_catalog")
    assert missing.status_code == 404
    assert missing.json()["errors"][0]["code"] == "UNSUPPORTED"
    bad_name = await setup.client.get("/v2/Org/App/manifests/v1")
    assert bad_name.status_code == 400
    assert bad_name.json()["errors"][0]["code"] == "NAME_INVALID"
    for method, path in [
        ("PUT", "/v2/org/app/blobs/uploads/"),
        ("POST", "/v2/org/app/blobs/uploads/"),
        ("PATCH", "/v2/org/app/blobs/uploads/x"),
        ("PUT", "/v2/org/app/manifests/v1"),
        ("DELETE", "/v2/org/app/manifests/" + digest_of(b"m")),
        ("DELETE", "/v2/org/app/blobs/" + digest_of(b"b")),
    ]:
        refused = await setup.client.request(method, path, content=b"x")
        assert refused.status_code == 405, (method, path)
        error = refused.json()["errors"][0]
        assert error["code"] == "UNSUPPORTED" and "read-only pull mirror" in error["message"]
    assert setup.registry.requests == []


async def test_upstream_missing_blob_is_passed_through(setup: Setup) -> None:
    response = await setup.client.get(f"/v2/org/app/blobs/{digest_of(b'nothing')}")
    assert response.status_code == 404


async def test_unreachable_upstream_is_a_502_naming_it(setup: Setup, tmp_path: Path) -> None:
    response = await setup.client.get(f"/v2/org/app/blobs/{digest_of(b'x')}?ns=down.test")
    assert response.status_code == 502
    error = response.json()["errors"][0]
    assert error["code"] == "UNAVAILABLE"
    assert "http://127.0.0.1:1" in error["message"]


async def test_upstream_cut_mid_blob_then_resume(setup: Setup) -> None:
    data = os.urandom(600_000)
    digest = setup.registry.add_blob(data)
    setup.registry.cut_after = 300_000
    with pytest.raises(httpx.RemoteProtocolError):
        await setup.client.get(f"/v2/org/app/blobs/{digest}")
    await _wait_idle(setup)
    setup.registry.cut_after = None
    response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert response.content == data
    # The second fetch resumed at the first missing piece instead of starting over.
    ranges = [r for m, p, r in setup.registry.requests if m == "GET" and "/blobs/" in p]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1][6:-1]) <= 300_000


async def test_only_the_missing_runs_are_fetched_around_pieces_already_held(
    setup: Setup,
) -> None:
    # A new owner after a crash holds scattered pieces it got from peers: it asks the upstream
    # for the gaps only, one Range request per run of missing pieces, all at once (one after
    # the other, each small gap cost a new connection's slow start behind the registry's busy
    # uplink).
    piece = 64 * 1024
    data = os.urandom(10 * piece + 123)
    digest = setup.registry.add_blob(data)
    store = setup.node.store
    partial = await store.open_partial(digest, len(data), repository=_at_registry(setup))
    for index in (2, 3, 7):
        partial.write_sync(index * piece, [data[index * piece : (index + 1) * piece]])
    partial.close()
    store.release_partial(partial)
    setup.registry.pace = 0.01
    response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert response.content == data
    ranges = [r for m, p, r in setup.registry.requests if m == "GET" and "/blobs/" in p]
    assert sorted(r or "" for r in ranges) == [
        f"bytes=0-{2 * piece - 1}",
        f"bytes={4 * piece}-{7 * piece - 1}",
        f"bytes={8 * piece}-",
    ]
    assert setup.registry.most_blob_gets_open == 3
    status = (await setup.admin.get("/_pollen/status")).json()
    assert status["upstream"]["bytes"] == len(data) - 3 * piece


async def test_client_that_leaves_does_not_cancel_the_download(setup: Setup) -> None:
    data = os.urandom(2_000_000)
    digest = setup.registry.add_blob(data)
    setup.registry.pace = 0.002
    port = setup.client.base_url.port
    assert port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET /v2/org/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await stream.receive_some(65536)).startswith(b"HTTP/1.1 200")
    await stream.aclose()  # read a little, then hang up
    await _wait_stored(setup, digest)
    assert setup.node.store.complete_path(digest).read_bytes() == data
    assert setup.registry.count("GET", "/blobs/") == 1


async def test_manifest_by_tag_resolves_upstream_and_caches_by_digest(setup: Setup) -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE}).encode()
    digest = setup.registry.add_manifest("v1", body)
    head = await setup.client.head("/v2/org/app/manifests/v1")
    assert head.headers["docker-content-digest"] == digest
    by_tag = await setup.client.get("/v2/org/app/manifests/v1", headers={"Accept": MANIFEST_TYPE})
    assert by_tag.content == body
    assert by_tag.headers["content-type"] == MANIFEST_TYPE
    by_digest = await setup.client.get(f"/v2/org/app/manifests/{digest}")
    assert by_digest.content == body
    assert setup.registry.count("GET", f"/manifests/{digest}") == 0  # served from the cache
    await setup.client.get("/v2/org/app/manifests/v1")
    assert setup.registry.count("GET", "/manifests/v1") == 2  # tags always go upstream


async def test_manifest_with_wrong_digest_is_refused(setup: Setup) -> None:
    wanted = digest_of(b"the real one")
    setup.registry.manifests[wanted] = b"an impostor"
    response = await setup.client.get(f"/v2/org/app/manifests/{wanted}")
    assert response.status_code == 502
    assert setup.node.store.get_manifest(wanted) is None


async def test_auth_is_passed_through_and_private_content_is_checked(setup: Setup) -> None:
    data = os.urandom(100_000)
    digest = setup.registry.add_blob(data)
    setup.registry.token = "s3cret"
    path = f"/v2/org/private/blobs/{digest}"
    anonymous = await setup.client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith("Bearer realm=")
    authed = await setup.client.get(path, headers={"Authorization": "Bearer s3cret"})
    assert authed.content == data
    await _wait_stored(setup, digest)
    # Cached now, but still not for a client the upstream would refuse.
    again = await setup.client.get(path)
    assert again.status_code == 401
    wrong = await setup.client.get(path, headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    assert (
        await setup.client.get(path, headers={"Authorization": "Bearer s3cret"})
    ).content == data
    assert setup.registry.count("GET", "/blobs/") == 2  # the 401 and the one real fetch


async def test_credentials_never_reach_disk_or_status(setup: Setup) -> None:
    data = os.urandom(5_000)
    digest = setup.registry.add_blob(data)
    setup.registry.token = "t0ps3cret-token"
    await setup.client.get(
        f"/v2/org/app/blobs/{digest}", headers={"Authorization": "Bearer t0ps3cret-token"}
    )
    status = (await setup.admin.get("/_pollen/status")).text
    assert "t0ps3cret" not in status
    for path in Path(setup.node.config.data_dir).rglob("*"):
        if path.is_file():
            assert b"t0ps3cret" not in path.read_bytes()


async def _wait_stored(setup: Setup, digest: str) -> None:
    with trio.fail_after(10):
        while not setup.node.store.has_blob(digest) or setup.node.downloads_in_flight():
            await trio.sleep(0.01)


async def _wait_idle(setup: Setup) -> None:
    with trio.fail_after(10):
        while setup.node.downloads_in_flight():
            await trio.sleep(0.01)


async def test_fully_written_partial_is_committed_after_a_one_byte_check(setup: Setup) -> None:
    # A crash between the sha256 check and the rename leaves every piece recorded.
    data = os.urandom(200_000)
    digest = setup.registry.add_blob(data)
    other = Store(setup.node.config.data_dir, 64 * 1024)
    partial = await other.open_partial(digest, len(data), repository=_at_registry(setup))
    partial.write_sync(0, [data])
    other.release_partial(partial)
    response = await setup.client.get(f"/v2/org/app/blobs/{digest}")
    assert response.content == data
    ranges = [r for m, p, r in setup.registry.requests if m == "GET" and "/blobs/" in p]
    assert ranges == [f"bytes={len(data) - 1}-"]
    await _wait_stored(setup, digest)


async def test_idle_client_connections_are_closed(tmp_path: Path, nursery: trio.Nursery) -> None:
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=tmp_path / "idle",
            default_upstream="http://127.0.0.1:1",
            idle_timeout=0.3,
        )
    )
    port = await nursery.start(node.run)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(5):
        # The node hangs up on a client that says nothing (EOF: an empty read).
        assert await stream.receive_some(1024) == b""
    await stream.aclose()


async def test_full_disk_fails_the_download_cleanly(
    tmp_path: Path, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    data = os.urandom(3 * 1024 * 1024)
    digest = registry.add_blob(data)
    with mounted_tmpfs(tmp_path / "tiny", "1m") as mount:
        node = Node(
            NodeConfig(
                http=Address("127.0.0.1", 0),
                data_dir=mount,
                default_upstream=registry.url,
                piece_size=256 * 1024,
            )
        )
        async with trio.open_nursery() as inner:
            port = await inner.start(node.run)
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(f"http://127.0.0.1:{port}/v2/org/app/blobs/{digest}")
                assert response.status_code == 507  # said before a byte was promised
                assert "larger than the disk" in response.json()["errors"][0]["message"]
                with trio.fail_after(10):
                    while node.downloads_in_flight():
                        await trio.sleep(0.01)
                # A JSON document: Node.status() types its sections only as `object`.
                status: dict[str, Any] = node.status()
            assert status["upstream"]["downloads_failed"] == 1
            assert status["store"]["complete_blobs"] == 0
            assert f"download of {digest} failed" in caplog.text
            inner.cancel_scope.cancel()


async def test_flushing_the_cache_makes_the_next_pull_cold(setup: Setup) -> None:
    data = os.urandom(200_000)
    digest = setup.registry.add_blob(data)
    assert (await setup.client.get(f"/v2/org/app/blobs/{digest}")).content == data
    await _wait_stored(setup, digest)
    assert (await setup.admin.get("/_pollen/cache")).status_code == 405
    flushed = await setup.admin.delete("/_pollen/cache")
    assert flushed.json() == {"blobs_removed": 1, "bytes_freed": len(data)}
    assert not setup.node.store.has_blob(digest)
    assert (await setup.client.get(f"/v2/org/app/blobs/{digest}")).content == data
    assert setup.registry.count("GET", "/blobs/") == 2


async def test_the_admin_api_needs_its_token_and_its_own_listener(setup: Setup) -> None:
    """Every client of the registry port, loopback ones included, is a stranger to the
    admin API: status and flush answer only the admin listener, with the token."""
    for method, path in (("GET", "/_pollen/status"), ("DELETE", "/_pollen/cache")):
        on_registry_port = await setup.client.request(method, path)
        assert on_registry_port.status_code == 404
        assert "--admin" in on_registry_port.json()["errors"][0]["message"]
        for token in (None, "Bearer wrong", f"Basic {setup.node.admin_token.decode()}"):
            headers = {"Authorization": token} if token else {}
            async with httpx.AsyncClient(base_url=str(setup.admin.base_url)) as stranger:
                answer = await stranger.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path, token)
    assert (await setup.client.get("/metrics")).status_code == 404
    async with httpx.AsyncClient(base_url=str(setup.admin.base_url)) as stranger:
        assert (await stranger.get("/metrics")).status_code == 200
        assert (await stranger.get("/healthz")).status_code == 200
    token_file = Path(setup.node.config.data_dir) / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.read_text().strip().encode() == setup.node.admin_token


def _at_registry(setup: Setup) -> Repository:
    """The repository the node's clients ask here: a partial it left is resumed for them (one
    left by another registry would not be)."""
    return Repository(setup.registry.url, "org/app")
