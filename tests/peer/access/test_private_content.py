"""Private content and who vouches for a client: only the registry the content came from.

The attack: a client without credentials names, with `?ns=`, a registry it controls, which
answers 200 to every access check. It must not get any private blob or manifest it knows the
digest of, whatever it names.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.front.http_server import HttpConnection, Request
from peer.node import Node
from pieces.store import Store
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry
from tests.peer.tiny_registry import TinyRegistry

TOKEN = "Bearer s3cret"


class YesRegistry(TinyRegistry):
    """An attacker's registry: 200 to every HEAD, 404 to everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 0

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        if request.method == "HEAD":
            self.heads += 1
            await conn.start_response(200, [("content-length", "0")])
            await conn.end_response()
        else:
            await conn.respond(404, [], b"")


@dataclass
class Setup:
    registry: FakeRegistry
    evil: YesRegistry
    node: Node
    client: httpx.AsyncClient


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    registry = FakeRegistry(token="s3cret")
    evil = YesRegistry()
    await nursery.start(registry.serve)
    await nursery.start(evil.serve)
    node, client = await _start_node(tmp_path, nursery, registry.url, ("evil.test", evil.url))
    async with client:
        yield Setup(registry, evil, node, client)


async def _start_node(
    tmp_path: Path, nursery: trio.Nursery, registry_url: str, other: tuple[str, str]
) -> tuple[Node, httpx.AsyncClient]:
    """A node whose default registry (`reg.test`) is `registry_url`, with `other` mapped too."""
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        upstreams={"reg.test": registry_url, other[0]: other[1]},
        default_upstream=registry_url,
        piece_size=64 * 1024,
        upstream_timeout=2.0,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    return node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


async def _wait_idle(node: Node) -> None:
    with trio.fail_after(10):
        while node.downloads_in_flight():
            await trio.sleep(0.01)


@pytest.mark.parametrize("ns", ["evil.test", None])
async def test_a_client_cannot_name_the_registry_that_vouches_for_it(
    setup: Setup, ns: str | None
) -> None:
    data = os.urandom(150_000)
    digest = setup.registry.add_blob(data)
    config = setup.registry.add_blob(b'{"architecture":"amd64"}')
    manifest = json.dumps({"schemaVersion": 2, "layers": [{"digest": digest}]}).encode()
    manifest_digest = setup.registry.add_manifest("v1", manifest)
    authed = {"Authorization": TOKEN}
    query = "?ns=reg.test"
    for path in (f"blobs/{digest}", f"blobs/{config}", f"manifests/{manifest_digest}"):
        response = await setup.client.get(f"/v2/org/private/{path}{query}", headers=authed)
        assert response.status_code == 200
    await _wait_idle(setup.node)
    assert setup.node.store.has_blob(digest)

    # Now the attacker: no credentials, and a registry of its choosing (or the default one,
    # where it has no access either).
    attack = "" if ns is None else f"?ns={ns}"
    for method in ("GET", "HEAD"):
        for path in (f"blobs/{digest}", f"blobs/{config}", f"manifests/{manifest_digest}"):
            response = await setup.client.request(method, f"/v2/org/private/{path}{attack}")
            # Naming the registry the content came from: its refusal. Naming another: the
            # node asks that one for the content itself (it has none to give: a GET gets
            # its 404; a HEAD, its word, which carries no byte of the content).
            if ns is None:
                assert response.status_code == 401, (method, path, response.status_code)
            elif method == "GET":
                assert response.status_code == 404, (method, path, response.status_code)
            assert data not in response.content and manifest not in response.content
    # The attacker's registry was only ever asked about its own content, for the attacker's
    # own requests; whatever it said, no byte of the private content went out (above).


async def test_a_private_marker_without_its_origin_is_not_trusted(
    setup: Setup, tmp_path: Path
) -> None:
    """A blob marked private by an earlier version (no origin recorded) is dropped when the
    store opens: nobody could vouch for a client, so the next client's credentials fetch it."""
    data = os.urandom(70_000)
    digest = setup.registry.add_blob(data)
    authed = {"Authorization": TOKEN}
    response = await setup.client.get(f"/v2/org/private/blobs/{digest}", headers=authed)
    assert response.content == data
    await _wait_idle(setup.node)
    store_dir = Path(setup.node.config.data_dir)
    (store_dir / "private" / digest.split(":")[1]).write_bytes(b"")  # as before
    reopened = Store(store_dir, 64 * 1024)
    assert not reopened.has_blob(digest)
    assert not reopened.is_private(digest)


async def test_content_fetched_with_credentials_records_its_registry(setup: Setup) -> None:
    data = os.urandom(10_000)
    digest = setup.registry.add_blob(data)
    await setup.client.get(
        f"/v2/org/private/blobs/{digest}?ns=reg.test", headers={"Authorization": TOKEN}
    )
    await _wait_idle(setup.node)
    assert setup.node.store.private_origins(digest) == [setup.registry.url]
    assert MANIFEST_TYPE  # manifests of the fake registry are OCI image manifests


class RecordingRegistry(FakeRegistry):
    """A registry that remembers the Authorization of every request it got."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.authorizations: list[str | None] = []

    async def _handle(self, conn: HttpConnection, request: Request) -> None:
        self.authorizations.append(request.headers.get("authorization"))
        await super()._handle(conn, request)


@pytest.fixture
async def two_registries(
    tmp_path: Path, nursery: trio.Nursery
) -> AsyncIterator[tuple[FakeRegistry, RecordingRegistry, Node, httpx.AsyncClient]]:
    """The real registry (private) and one a client names that holds the same bytes."""
    registry = FakeRegistry(token="s3cret")
    other = RecordingRegistry()
    await nursery.start(registry.serve)
    await nursery.start(other.serve)
    node, client = await _start_node(tmp_path, nursery, registry.url, ("other.test", other.url))
    async with client:
        yield registry, other, node, client


async def test_a_clients_credentials_never_go_to_a_registry_it_did_not_name(
    two_registries: tuple[FakeRegistry, RecordingRegistry, Node, httpx.AsyncClient],
) -> None:
    registry, other, node, client = two_registries
    data = os.urandom(150_000)
    digest = registry.add_blob(data)
    other.blobs[digest] = data  # it really holds the bytes: it becomes an origin
    first = await client.get(
        f"/v2/x/y/blobs/{digest}?ns=other.test", headers={"Authorization": "Bearer junk"}
    )
    assert first.content == data
    await _wait_idle(node)
    asked_before = len(other.authorizations)
    victim = await client.get(
        f"/v2/org/app/blobs/{digest}?ns=reg.test", headers={"Authorization": TOKEN}
    )
    assert TOKEN not in other.authorizations[asked_before:]
    assert victim.status_code in (200, 404)  # served after its own registry's check, or a miss


async def test_a_failed_fetch_leaves_no_origin_that_could_vouch(
    two_registries: tuple[FakeRegistry, RecordingRegistry, Node, httpx.AsyncClient],
) -> None:
    registry, other, node, client = two_registries
    data = os.urandom(150_000)
    digest = registry.add_blob(data)
    other.blobs[digest] = data
    other.lie_about.add(digest)  # serves zeros of the right length: never verified
    with contextlib.suppress(httpx.HTTPError):
        await client.get(
            f"/v2/x/y/blobs/{digest}?ns=other.test", headers={"Authorization": "Bearer junk"}
        )
    await _wait_idle(node)
    assert not node.store.has_blob(digest)
    victim = await client.get(
        f"/v2/org/app/blobs/{digest}?ns=reg.test", headers={"Authorization": TOKEN}
    )
    assert victim.content == data
    await _wait_idle(node)
    other.lie_about.clear()
    del other.blobs[digest]  # it never had the bytes; it says yes to its own friends
    other.token = "only-the-attacker"
    attacker = await client.get(
        f"/v2/org/app/blobs/{digest}?ns=other.test",
        headers={"Authorization": "Bearer only-the-attacker"},
    )
    assert data not in attacker.content
    assert node.store.private_origins(digest) == [registry.url]


async def test_a_partial_left_by_an_authorised_pull_is_not_resumed_for_another_registry(
    two_registries: tuple[FakeRegistry, RecordingRegistry, Node, httpx.AsyncClient],
) -> None:
    """The pieces on disk came from the private registry; a client naming another registry
    (that answers for everyone) must not get them as the head of its stream."""
    registry, other, node, client = two_registries
    data = os.urandom(512 * 1024)
    digest = registry.add_blob(data)
    registry.cut_after = 300 * 1024  # the authorised download breaks off: a partial stays
    with contextlib.suppress(httpx.HTTPError):
        await client.get(f"/v2/org/app/blobs/{digest}", headers={"Authorization": TOKEN})
    await _wait_idle(node)
    assert node.store.partial_size_on_disk(digest) == len(data)
    other.blobs[digest] = bytes(len(data))  # it has no idea of the content
    stolen = bytearray()
    with contextlib.suppress(httpx.HTTPError):  # a cut stream is fine: what came counts
        async with client.stream("GET", f"/v2/x/y/blobs/{digest}?ns=other.test") as answer:
            async for chunk in answer.aiter_raw():
                stolen += chunk
    assert data[: 64 * 1024] not in stolen


async def test_a_client_whose_registry_has_the_blob_gets_it_while_another_registrys_download_runs(
    two_registries: tuple[FakeRegistry, RecordingRegistry, Node, httpx.AsyncClient],
) -> None:
    """The blob downloads from the private registry; a client naming another registry, which
    has the blob, asks meanwhile. It joined that download, failed the access check (content
    from other registries than its own) and got the node's 404 miss. It must get the blob,
    from its own registry, once the other download is done."""
    registry, other, node, client = two_registries
    data = os.urandom(4 * 64 * 1024)
    digest = registry.add_blob(data)
    other.blobs[digest] = data
    registry.pace = 0.05  # the private download takes a while
    first: list[httpx.Response] = []

    async def private_pull() -> None:
        first.append(
            await client.get(f"/v2/org/app/blobs/{digest}", headers={"Authorization": TOKEN})
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(private_pull)
        with trio.fail_after(10):
            while node.downloads_in_flight() == 0:
                await trio.sleep(0.005)
        second = await client.get(f"/v2/org/app/blobs/{digest}?ns=other.test")
    assert first[0].status_code == 200 and first[0].content == data
    assert second.status_code == 200 and second.content == data


class HeldRefuser(TinyRegistry):
    """An attacker's registry: every request waits for `release`, then gets 401 (a login
    realm of its own) or 404."""

    def __init__(self, status: int) -> None:
        super().__init__()
        self.status = status
        self.release = trio.Event()

    async def handle(self, conn: HttpConnection, request: Request) -> None:
        await self.release.wait()
        realm = 'Bearer realm="https://attacker.test/collect-logins",service="x"'
        await conn.respond(self.status, [("www-authenticate", realm)], b"")


@pytest.mark.parametrize("status", [401, 404])
async def test_another_registrys_refusal_never_answers_a_client(
    tmp_path: Path, nursery: trio.Nursery, status: int
) -> None:
    """A client names a registry it runs for a public digest, which holds the request and then
    refuses it. A client of the real registry that asked meanwhile joined that download and got
    the attacker's refusal: its 404, or its 401 with a login realm of the attacker's choosing
    (a helper's probe, 2026-12-04). It must get the blob from its own registry."""
    registry = FakeRegistry()
    evil = HeldRefuser(status)
    await nursery.start(registry.serve)
    await nursery.start(evil.serve)
    node, client = await _start_node(tmp_path, nursery, registry.url, ("evil.test", evil.url))
    data = os.urandom(200_000)
    digest = registry.add_blob(data)
    answers: dict[str, httpx.Response] = {}

    async def pull(who: str, ns: str) -> None:
        answers[who] = await client.get(f"/v2/org/app/blobs/{digest}{ns}")

    async with client, trio.open_nursery() as pulls:
        pulls.start_soon(pull, "attacker", "?ns=evil.test")
        with trio.fail_after(10):
            while node.downloads_in_flight() == 0:
                await trio.sleep(0.005)
        pulls.start_soon(pull, "victim", "")
        assert node.downloads is not None
        with trio.fail_after(10):  # the victim waits on the attacker's download
            while node.downloads.active[digest].clients < 2:
                await trio.sleep(0.005)
        evil.release.set()
    assert answers["attacker"].status_code == status
    assert answers["victim"].status_code == 200, answers["victim"].headers
    assert answers["victim"].content == data
    assert "attacker.test" not in answers["victim"].headers.get("www-authenticate", "")
