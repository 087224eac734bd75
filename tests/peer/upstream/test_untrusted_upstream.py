"""An upstream that lies about sizes, ignores Range or sends wrong bytes: the front stores and
serves only bytes that match the digest, allocates nothing from sizes it is told, answers with a
clear error and keeps serving."""

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
from peer.fetch.chunks import least_pieces, whole_chunks
from peer.node import Node
from pieces.descriptors import Repository
from tests.peer.fake_registry import MANIFEST_TYPE, FakeRegistry, digest_of

PIECE = 64 * 1024
MiB = 1024 * 1024


@dataclass
class Setup:
    registry: FakeRegistry
    node: Node
    client: httpx.AsyncClient


async def start(nursery: trio.Nursery, data_dir: Path, cache_size: int | None) -> Setup:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=data_dir,
        default_upstream=registry.url,
        piece_size=PIECE,
        upstream_timeout=2.0,
        cache_size=cache_size,
    )
    node = Node(config)
    port = await nursery.start(node.run)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
    return Setup(registry, node, client)


@pytest.fixture
async def setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    s = await start(nursery, tmp_path / "store", None)
    async with s.client:
        yield s


@pytest.fixture
async def quota_setup(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Setup]:
    s = await start(nursery, tmp_path / "store", 4 * MiB)
    async with s.client:
        yield s


async def wait_idle(setup: Setup) -> None:
    with trio.fail_after(10):
        while setup.node.downloads_in_flight():
            await trio.sleep(0.01)


def upstream_counts(setup: Setup) -> dict[str, int]:
    """The node's upstream counters (bytes, downloads completed and failed)."""
    upstream = setup.node.status()["upstream"]
    assert isinstance(upstream, dict)
    return upstream


def partial_files(setup: Setup) -> list[Path]:
    return sorted((Path(setup.node.config.data_dir) / "partial").iterdir())


def blob_path(digest: str) -> str:
    return f"/v2/org/app/blobs/{digest}"


async def test_a_resume_answered_with_the_whole_blob_starts_over(setup: Setup) -> None:
    registry = setup.registry
    data = os.urandom(10 * PIECE + 123)
    digest = registry.add_blob(data)
    # A lying upstream leaves pieces of zeros on disk, recorded with their matching hashes.
    registry.lie_about.add(digest)
    registry.cut_after = 5 * PIECE + 100
    with pytest.raises(httpx.RemoteProtocolError):
        await setup.client.get(blob_path(digest))
    await wait_idle(setup)
    assert setup.node.store.partial_size_on_disk(digest) == len(data)
    # Now the bytes are right, but the upstream ignores Range: the resume gets a 200.
    registry.lie_about.clear()
    registry.cut_after = None
    registry.ignore_range = True
    response = await setup.client.get(blob_path(digest))
    assert response.status_code == 200
    assert response.content == data
    await wait_idle(setup)
    assert setup.node.store.complete_path(digest).read_bytes() == data
    assert blob_gets(registry)[-1] is not None  # the node did ask for the rest only


# The gaps of a 10.x-piece blob whose pieces 2, 3 and 7 the node holds (see `held_pieces`).
GAPS = {f"bytes=0-{2 * PIECE - 1}", f"bytes={4 * PIECE}-{7 * PIECE - 1}", f"bytes={8 * PIECE}-"}


async def held_pieces(setup: Setup) -> tuple[bytes, str]:
    """A blob of 10 pieces and a bit at the registry, and its pieces 2, 3 and 7 on the node's
    disk (as if taken from peers before the node took the blob over): its bytes and digest."""
    data = os.urandom(10 * PIECE + 123)
    digest = setup.registry.add_blob(data)
    store = setup.node.store
    partial = await store.open_partial(digest, len(data), repository=_at_registry(setup))
    for index in (2, 3, 7):
        partial.write_sync(index * PIECE, [data[index * PIECE : (index + 1) * PIECE]])
    store.release_partial(partial)
    return data, digest


def blob_gets(registry: FakeRegistry) -> list[str | None]:
    """The Range header of every blob GET the registry answered, in order."""
    return [r for m, p, r in registry.requests if m == "GET" and "/blobs/" in p]


async def test_a_range_answered_past_its_end_fills_only_its_gap(setup: Setup) -> None:
    # A registry that sends more than a Range asked for (zeros): the bytes past the gap
    # belong to another gap, whose own request is still on its way. Taken, they would be
    # recorded as those pieces, the right bytes skipped, and the blob fail its digest.
    registry = setup.registry
    data, digest = await held_pieces(setup)
    registry.range_extra = 3 * PIECE
    registry.range_delay[f"bytes={4 * PIECE}-{7 * PIECE - 1}"] = 0.5
    response = await setup.client.get(blob_path(digest))
    assert response.status_code == 200
    assert response.content == data
    await wait_idle(setup)
    assert setup.node.store.complete_path(digest).read_bytes() == data


async def test_a_range_waiting_for_a_download_that_starts_over_follows_it(setup: Setup) -> None:
    # Pieces held from peers: the node asks the upstream for the gaps. One is honoured, the
    # others answered with the whole blob: the node goes on one Range at a time, the next one
    # is ignored too and the download starts over, and a Range request waiting for the check
    # waits for the new one.
    registry = setup.registry
    data, digest = await held_pieces(setup)
    registry.ranges_honoured = 1
    registry.pace = 0.01
    response = await setup.client.get(blob_path(digest), headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == data[100:200]
    ranges = blob_gets(registry)
    assert set(ranges[:3]) == GAPS
    assert len(ranges) == 4 and ranges[3] is not None
    await wait_idle(setup)
    assert setup.node.store.complete_path(digest).read_bytes() == data


async def test_a_refusal_beside_other_ranges_reaches_the_client(setup: Setup) -> None:
    # The registry refuses the ranges (the client's token ran out, say): the node does not
    # act on a refusal while other requests fill the partial, and the client still gets the
    # registry's answer, from the one-at-a-time path.
    registry = setup.registry
    data, digest = await held_pieces(setup)
    registry.refusals[digest] = (429, [("content-type", "application/json")], b'{"errors":[]}')
    response = await setup.client.get(blob_path(digest))
    assert response.status_code == 429
    ranges = blob_gets(registry)
    assert set(ranges[:3]) == GAPS and len(ranges) == 4  # at once, then the first gap alone
    await wait_idle(setup)
    assert setup.node.store.partial_size_on_disk(digest) == len(data)


async def test_a_registry_that_answers_every_range_from_another_byte_ends_the_fetch(
    setup: Setup,
) -> None:
    # Each gap asked is answered from 3 bytes further on: a clear 502 before a byte goes
    # out. The node used to start over on such an answer and write the bytes where the
    # registry claimed (here mid-piece: the client got a 200 and a broken stream; shifted by
    # whole pieces, each round left a gap before them to ask for, answered the same way).
    registry = setup.registry
    _data, digest = await held_pieces(setup)
    registry.range_shift = 3
    with trio.fail_after(10):
        response = await setup.client.get(blob_path(digest))
        await wait_idle(setup)
    assert response.status_code == 502
    assert "from byte" in response.text
    assert not setup.node.store.has_blob(digest)
    assert len(blob_gets(registry)) <= 4  # the gaps at once, then one alone: no more


async def test_a_registry_that_changes_the_blob_size_back_and_forth_ends_the_fetch(
    setup: Setup,
) -> None:
    # Every other Range answer claims the blob is a piece longer. Each claim started the
    # download over with the other size, whose next gap was answered with the first size:
    # over and over. A blob's size does not change twice.
    registry = setup.registry
    _data, digest = await held_pieces(setup)
    registry.range_total_extra = PIECE
    with trio.fail_after(10):
        # (The client's 200 went out with the first start-over: its stream breaks.)
        with pytest.raises(httpx.RemoteProtocolError):
            await setup.client.get(blob_path(digest))
        await wait_idle(setup)
    assert not setup.node.store.has_blob(digest)
    assert upstream_counts(setup)["downloads_failed"] == 1
    assert len(blob_gets(registry)) <= 6


async def test_a_refusal_after_the_blob_began_streaming_fails_its_client(setup: Setup) -> None:
    # A large blob whose size a manifest gave comes in chunks: the first chunk's answer is
    # streaming to the client when the registry refuses the others (a token that ran out,
    # say). The 200 has gone out: the refusal cannot reach the client, the download
    # must fail (the client's connection breaks) and be counted failed, not left hanging.
    registry = setup.registry
    data = os.urandom(300 * PIECE)
    digest = registry.add_blob(data)
    setup.node.store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, len(data))
    registry.refuse_ranges_from = 1
    with trio.fail_after(10), pytest.raises(httpx.RemoteProtocolError):
        await setup.client.get(blob_path(digest))
    await wait_idle(setup)
    first_end = whole_chunks(300, least_pieces(PIECE))[0][1] * PIECE
    assert blob_gets(setup.registry)[0] == f"bytes=0-{first_end - 1}"
    upstream = upstream_counts(setup)
    assert upstream["downloads_failed"] == 1 and upstream["downloads_completed"] == 0
    assert not setup.node.store.has_blob(digest)


async def test_a_range_during_a_download_gets_only_verified_bytes(setup: Setup) -> None:
    registry = setup.registry
    data = os.urandom(12 * PIECE)
    digest = registry.add_blob(data)
    registry.lie_about.add(digest)
    registry.pace = 0.01
    # Cold: this request starts the download and is served from it.
    received = b""
    async with setup.client.stream(
        "GET", blob_path(digest), headers={"Range": "bytes=0-999"}
    ) as response:
        with contextlib.suppress(httpx.RemoteProtocolError):
            async for chunk in response.aiter_bytes():
                received += chunk
    if response.status_code == 206:
        assert received == b""  # a cut stream with no byte is an honest answer too
    else:
        assert response.status_code == 502
        assert json.loads(received)["errors"][0]["code"] == "UNAVAILABLE"
    await wait_idle(setup)
    assert not setup.node.store.has_blob(digest)
    # Honest again: the range comes, once the whole blob has been checked.
    registry.lie_about.clear()
    good = await setup.client.get(blob_path(digest), headers={"Range": "bytes=1000-1999"})
    assert good.status_code == 206
    assert good.content == data[1000:2000]


@pytest.mark.parametrize("declared", [2**40, 2**50])
async def test_a_huge_content_length_is_refused_and_evicts_nothing(
    quota_setup: Setup, declared: int
) -> None:
    setup = quota_setup
    registry = setup.registry
    cached = os.urandom(200_000)
    cached_digest = registry.add_blob(cached)
    assert (await setup.client.get(blob_path(cached_digest))).content == cached
    await wait_idle(setup)
    huge = registry.add_blob(os.urandom(100_000))
    registry.declared_size[huge] = declared
    response = await setup.client.get(blob_path(huge))
    assert response.status_code == 507
    error = response.json()["errors"][0]
    assert "larger than the cache size" in error["message"]
    await wait_idle(setup)
    assert setup.node.store.has_blob(cached_digest)
    assert partial_files(setup) == []
    assert setup.node.store.bytes_used() < MiB
    # The node keeps serving.
    other = os.urandom(300_000)
    assert (await setup.client.get(blob_path(registry.add_blob(other)))).content == other
    assert (await setup.client.get(blob_path(cached_digest))).content == cached


async def test_a_content_length_over_the_free_disk_is_refused(setup: Setup) -> None:
    registry = setup.registry
    huge = registry.add_blob(os.urandom(100_000))
    registry.declared_size[huge] = 2**50
    response = await setup.client.get(blob_path(huge))
    assert response.status_code == 507
    assert "larger than the disk" in response.json()["errors"][0]["message"]
    await wait_idle(setup)
    assert partial_files(setup) == []
    other = os.urandom(100_000)  # the node keeps serving
    assert (await setup.client.get(blob_path(registry.add_blob(other)))).content == other


async def test_a_size_that_disagrees_with_the_manifest_is_refused(setup: Setup) -> None:
    registry = setup.registry
    layer = os.urandom(150_000)
    layer_digest = registry.add_blob(layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "c", "digest": digest_of(b"{}"), "size": 2},
            "layers": [{"mediaType": "l", "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    registry.add_manifest("v1", manifest)
    pulled = await setup.client.get("/v2/org/app/manifests/v1", headers={"Accept": MANIFEST_TYPE})
    assert pulled.content == manifest
    registry.declared_size[layer_digest] = len(layer) + PIECE
    response = await setup.client.get(blob_path(layer_digest))
    assert response.status_code == 502
    assert "descriptor" in response.json()["errors"][0]["message"]
    await wait_idle(setup)
    assert partial_files(setup) == []
    del registry.declared_size[layer_digest]
    assert (await setup.client.get(blob_path(layer_digest))).content == layer


async def test_a_busy_answer_beside_other_ranges_is_asked_again_one_at_a_time(
    setup: Setup,
) -> None:
    # A 503 to one of several requests at once may be that very concurrency: the gaps go
    # one at a time from there (where a 5xx would end the download, as it always did).
    registry = setup.registry
    data, digest = await held_pieces(setup)
    registry.pace = 0.01
    registry.busy_ranges = 1
    response = await setup.client.get(blob_path(digest))
    assert response.status_code == 200
    assert response.content == data
    assert set(blob_gets(registry)[:3]) == GAPS
    await wait_idle(setup)
    assert setup.node.store.complete_path(digest).read_bytes() == data


def _at_registry(setup: Setup) -> Repository:
    """The repository the node's clients ask here: a partial it left is resumed for them (one
    left by another registry would not be)."""
    return Repository(setup.registry.url, "org/app")
