"""Image-aware prefetch: which blobs a manifest names (hostile bodies included), and how the
prefetcher runs them (bounded, deduplicated, failures counted, never raised)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from peer.fetch.download import BlobSource, Download
from peer.fetch.manifests import DOCKER_MANIFEST, OCI_MANIFEST
from peer.fetch.prefetch import (
    MAX_BLOBS,
    MAX_WAIT,
    ImageBlobs,
    InvalidManifest,
    Prefetcher,
    image_blobs,
)
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from pieces.digest import digest_hex
from pieces.manifest_facts import ManifestFacts, read_facts

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def sha(n: int) -> str:
    return "sha256:" + hashlib.sha256(str(n).encode()).hexdigest()


def manifest(config: Any, layers: Any, **extra: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, "config": config, "layers": layers, **extra}).encode()


def facts(config: Any, layers: Any, **extra: Any) -> ManifestFacts:
    return read_facts(manifest(config, layers, **extra))


def desc(digest: str, **extra: Any) -> dict[str, Any]:
    return {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": digest,
        "size": 1,
        **extra,
    }


# ---- image_blobs ---------------------------------------------------------------------------


def test_config_first_then_layers_in_order_each_once() -> None:
    body = manifest(desc(sha(0)), [desc(sha(1)), desc(sha(2)), desc(sha(1)), desc(sha(3))])
    blobs = image_blobs(OCI_MANIFEST, read_facts(body))
    assert blobs is not None
    assert blobs.digests == (sha(0), sha(1), sha(2), sha(3))
    assert (blobs.invalid, blobs.beyond_limit) == (0, 0)


def test_docker_schema2_with_parameters_in_the_content_type() -> None:
    body = manifest(desc(sha(0)), [desc(sha(1))], mediaType=DOCKER_MANIFEST)
    blobs = image_blobs(DOCKER_MANIFEST.upper() + "; charset=utf-8", read_facts(body))
    assert blobs is not None and blobs.digests == (sha(0), sha(1))


@pytest.mark.parametrize(
    "media_type",
    [
        OCI_INDEX,
        DOCKER_LIST,
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/json",
        "",
    ],
)
def test_indexes_lists_and_other_types_have_nothing_to_prefetch(media_type: str) -> None:
    body = manifest(desc(sha(0)), [desc(sha(1))])
    assert image_blobs(media_type, read_facts(body)) is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "not JSON"),  # nesting deeper than the parser goes
        (b"[]", "not an object"),
        (b'"x"', "not an object"),
        (json.dumps({"layers": {"a": 1}}).encode(), "no list of layers"),
        (json.dumps({"config": {}}).encode(), "no list of layers"),
        (json.dumps({"mediaType": OCI_INDEX, "layers": []}).encode(), "says it is"),
        (json.dumps({"mediaType": 7, "layers": []}).encode(), "says it is"),
    ],
)
def test_an_unreadable_image_manifest_is_invalid(body: bytes, why: str) -> None:
    with pytest.raises(InvalidManifest, match=why):
        image_blobs(OCI_MANIFEST, read_facts(body))


def test_descriptors_without_a_usable_digest_are_counted_not_taken() -> None:
    layers = [
        desc("blake3:" + "a" * 64),
        desc("sha256:" + "A" * 64),
        desc("sha256:" + "a" * 63),
        desc(sha(1) + "\n"),
        {"digest": 12},
        "sha256:" + "b" * 64,
        None,
        desc(sha(2)),
    ]
    blobs = image_blobs(OCI_MANIFEST, facts([desc(sha(0))], layers))
    assert blobs is not None
    assert blobs.digests == (sha(2),)
    assert blobs.invalid == 8  # the config (a list) and seven layers
    with_sha512 = image_blobs(OCI_MANIFEST, facts(desc(sha(0)), [desc("sha512:" + "a" * 128)]))
    assert with_sha512 is not None and with_sha512.digests == (sha(0), "sha512:" + "a" * 128)


def test_foreign_layers_are_left_to_the_client() -> None:
    foreign = desc(sha(1), mediaType="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    nondist = desc(sha(2), mediaType="application/vnd.oci.image.layer.nondistributable.v1.tar")
    blobs = image_blobs(OCI_MANIFEST, facts(desc(sha(0)), [foreign, nondist]))
    assert blobs is not None and blobs.digests == (sha(0),)
    assert blobs.invalid == 0


def test_at_most_max_blobs_descriptors_are_looked_at() -> None:
    layers = [desc(sha(i)) for i in range(1, 10_001)]
    blobs = image_blobs(OCI_MANIFEST, facts(desc(sha(0)), layers))
    assert blobs is not None
    assert blobs.digests == tuple(sha(i) for i in range(MAX_BLOBS))
    assert blobs.beyond_limit == 10_001 - MAX_BLOBS
    small = image_blobs(OCI_MANIFEST, facts(desc(sha(0)), layers[:5]), limit=0)
    assert small is not None and small.digests == () and small.beyond_limit == 6


def test_the_stated_size_is_never_read() -> None:
    layers = [desc(sha(1), size=2**80), desc(sha(2), size="huge"), desc(sha(3), size=-1)]
    blobs = image_blobs(OCI_MANIFEST, facts(desc(sha(0)), layers))
    assert blobs is not None and len(blobs.digests) == 4


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_DIGESTS = st.sampled_from([sha(i) for i in range(8)]) | st.text(max_size=80)
_DESCRIPTORS = _JSON | st.fixed_dictionaries(
    {"digest": _DIGESTS}, optional={"mediaType": st.text(max_size=40), "size": _JSON}
)


def _check(blobs: ImageBlobs | None, limit: int) -> None:
    if blobs is None:
        return
    assert len(blobs.digests) == len(set(blobs.digests)) <= limit
    for digest in blobs.digests:
        digest_hex(digest)  # a valid sha256 digest, or this raises


@given(st.binary(max_size=2000), st.sampled_from([OCI_MANIFEST, DOCKER_MANIFEST]))
def test_any_bytes_give_blobs_none_or_invalid_manifest(body: bytes, media_type: str) -> None:
    with contextlib.suppress(InvalidManifest):
        _check(image_blobs(media_type, read_facts(body)), MAX_BLOBS)


@given(
    _JSON
    | st.fixed_dictionaries(
        {"layers": st.lists(_DESCRIPTORS, max_size=30)},
        optional={
            "config": _DESCRIPTORS,
            "mediaType": st.sampled_from([OCI_MANIFEST, OCI_INDEX]) | _JSON,
        },
    ),
    st.integers(min_value=0, max_value=40),
)
def test_any_json_gives_valid_unique_digests_within_the_limit(doc: Any, limit: int) -> None:
    body = json.dumps(doc).encode()
    try:
        blobs = image_blobs(OCI_MANIFEST, read_facts(body), limit)
    except InvalidManifest:
        return
    _check(blobs, limit)
    assert blobs is not None
    named = json.dumps(doc)
    assert all(d in named for d in blobs.digests)  # nothing invented


# ---- the prefetcher ------------------------------------------------------------------------


@dataclass
class FakeStore:
    blobs: set[str] = field(default_factory=set)

    def has_blob(self, digest: str) -> bool:
        return digest in self.blobs


@dataclass
class FakeDownloads:
    """Joins record their source; each download ends when the test says (or at once)."""

    store: FakeStore
    nursery: trio.Nursery
    active: dict[str, Download] = field(default_factory=dict)
    joined: list[BlobSource] = field(default_factory=list)
    most_at_once: int = 0
    hold: trio.Event | None = None  # downloads end only once this is set
    outcome: dict[str, str] = field(default_factory=dict)  # digest -> "error" | "refused" | "raise"

    async def join(self, source: BlobSource) -> Download:
        self.joined.append(source)
        if self.outcome.get(source.digest) == "raise":
            raise RuntimeError("a bug in the fetch side")
        download = Download(source.digest, source.namespace, source.name, source.auth_key)
        self.active[source.digest] = download
        self.most_at_once = max(self.most_at_once, len(self.active))
        self.nursery.start_soon(self._finish, download)
        return download

    async def _finish(self, download: Download) -> None:
        if self.hold is not None:
            await self.hold.wait()
        await trio.sleep(0.01)
        outcome = self.outcome.get(download.digest)
        if outcome == "error":
            download.failed(UpstreamError("http://reg.test", "answered 500"))
        elif outcome == "refused":
            download.refused(UpstreamRefusal(401, {}, b""))
        else:
            self.store.blobs.add(download.digest)
        del self.active[download.digest]
        download.finished()


def _offer(prefetcher: Prefetcher, digests: list[str], **kw: Any) -> None:
    body = manifest(desc(digests[0]), [desc(d) for d in digests[1:]])
    prefetcher.offer(
        kw.get("namespace", "reg.test"),
        kw.get("name", "org/app"),
        kw.get("headers", {"authorization": "Bearer t"}),
        kw.get("auth_key", "key"),
        kw.get("media_type", OCI_MANIFEST),
        read_facts(body),
    )


async def _settle(prefetcher: Prefetcher) -> None:
    with trio.fail_after(10):
        while prefetcher.queued or prefetcher.running:
            await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        while prefetcher.queued or prefetcher.running:
            await trio.sleep(0.01)


async def test_blobs_are_fetched_as_the_client_at_most_n_at_once(nursery: trio.Nursery) -> None:
    store = FakeStore({sha(3)})
    downloads = FakeDownloads(store, nursery)
    prefetcher = Prefetcher(store, downloads, concurrency=2)
    await nursery.start(prefetcher.run)
    digests = [sha(i) for i in range(10)]
    _offer(prefetcher, digests, headers={"authorization": "Bearer t"}, auth_key="key")
    await _settle(prefetcher)
    joined = [s.digest for s in downloads.joined]
    assert set(joined[:2]) == {sha(0), sha(1)}  # in manifest order, two at a time
    assert sorted(joined) == sorted(d for d in digests if d != sha(3))
    for source in downloads.joined:
        assert (source.namespace, source.name, source.auth_key) == ("reg.test", "org/app", "key")
        assert source.headers == {"authorization": "Bearer t"}
    assert downloads.most_at_once == 2
    counters = prefetcher.counters
    assert (counters.manifests, counters.started, counters.completed) == (1, 9, 9)
    assert (counters.failed, counters.skipped) == (0, 0)
    # The same manifest again: everything is held, nothing is fetched.
    _offer(prefetcher, digests)
    await _settle(prefetcher)
    assert len(downloads.joined) == 9


async def test_a_blob_queued_or_downloading_is_not_fetched_twice(nursery: trio.Nursery) -> None:
    store = FakeStore()
    downloads = FakeDownloads(store, nursery, hold=trio.Event())
    prefetcher = Prefetcher(store, downloads, concurrency=1)
    await nursery.start(prefetcher.run)
    _offer(prefetcher, [sha(0), sha(1), sha(2)])
    _offer(prefetcher, [sha(0), sha(1), sha(2)], name="org/other")  # another client, same image
    await trio.testing.wait_all_tasks_blocked()
    assert [s.digest for s in downloads.joined] == [sha(0)]
    assert prefetcher.queued == 2
    assert downloads.hold is not None
    downloads.hold.set()
    await _settle(prefetcher)
    assert sorted(s.digest for s in downloads.joined) == [sha(0), sha(1), sha(2)]


async def test_prefetched_downloads_run_ahead_of_their_client_until_it_asks(
    nursery: trio.Nursery,
) -> None:
    # A download this node prefetches keeps part of its registry flows until a client here
    # asks for the blob (Download.ahead_of_client): the ones it starts, and one already in
    # flight for peers' Wants when the manifest comes or when its turn comes. One a client
    # here asked for first is not ahead.
    store = FakeStore()
    downloads = FakeDownloads(store, nursery, hold=trio.Event())
    for_peers = Download(sha(1), None, "org/app", None)  # an owner's fetch for its peers
    read_first = Download(sha(2), None, "org/app", None)
    read_first.client_reads()
    downloads.active.update({sha(1): for_peers, sha(2): read_first})
    prefetcher = Prefetcher(store, downloads, concurrency=1)
    await nursery.start(prefetcher.run)
    assert not for_peers.ahead_of_client
    _offer(prefetcher, [sha(0), sha(1), sha(2), sha(3)])
    await trio.testing.wait_all_tasks_blocked()
    assert for_peers.ahead_of_client  # marked when the manifest came
    assert not read_first.ahead_of_client
    started = downloads.active[sha(0)]
    assert started.ahead_of_client
    started.client_reads()
    assert not started.ahead_of_client
    late = Download(sha(3), None, "org/app", None)  # a peer's Want began it while it queued
    downloads.active[sha(3)] = late
    del downloads.active[sha(1)], downloads.active[sha(2)]
    assert downloads.hold is not None
    downloads.hold.set()
    await _settle(prefetcher)
    assert late.ahead_of_client  # marked when its turn came
    assert [s.digest for s in downloads.joined] == [sha(0)]


async def test_a_full_queue_skips_and_counts(nursery: trio.Nursery) -> None:
    store = FakeStore()
    downloads = FakeDownloads(store, nursery, hold=trio.Event())
    prefetcher = Prefetcher(store, downloads, concurrency=1, queue_limit=3)
    await nursery.start(prefetcher.run)
    _offer(prefetcher, [sha(i) for i in range(10)])
    await trio.testing.wait_all_tasks_blocked()
    # One running, three queued; the other six skipped. (The worker took the first before
    # the rest were queued, or not: either way at most 1 + 3 are fetched.)
    assert downloads.hold is not None
    downloads.hold.set()
    await _settle(prefetcher)
    assert len(downloads.joined) + prefetcher.counters.skipped == 10
    assert len(downloads.joined) <= 4


async def test_failures_are_counted_and_the_workers_go_on(nursery: trio.Nursery) -> None:
    store = FakeStore()
    downloads = FakeDownloads(
        store, nursery, outcome={sha(1): "error", sha(2): "refused", sha(3): "raise"}
    )
    prefetcher = Prefetcher(store, downloads, concurrency=1)
    await nursery.start(prefetcher.run)
    _offer(prefetcher, [sha(i) for i in range(5)])
    await _settle(prefetcher)
    counters = prefetcher.counters
    assert (counters.started, counters.completed, counters.failed) == (5, 2, 3)
    assert store.blobs == {sha(0), sha(4)}


async def test_invalid_manifests_and_indexes_are_counted_not_fetched(
    nursery: trio.Nursery,
) -> None:
    store = FakeStore()
    downloads = FakeDownloads(store, nursery)
    prefetcher = Prefetcher(store, downloads)
    await nursery.start(prefetcher.run)
    for media_type, body in [
        (OCI_MANIFEST, b"{not json"),
        (OCI_INDEX, manifest(desc(sha(0)), [])),
        (
            OCI_MANIFEST,
            manifest(desc(sha(0)), ["x", desc("md5:abc")] + [desc(sha(i)) for i in range(1, 300)]),
        ),
    ]:
        prefetcher.offer(None, "org/app", {}, None, media_type, read_facts(body))
    await _settle(prefetcher)
    counters = prefetcher.counters
    assert counters.invalid_manifests == 1
    assert counters.manifests == 1
    assert len(downloads.joined) == MAX_BLOBS - 2
    assert counters.skipped == 2 + (302 - MAX_BLOBS)


async def test_offers_beyond_the_manifest_queue_are_skipped(nursery: trio.Nursery) -> None:
    store = FakeStore()
    prefetcher = Prefetcher(store, FakeDownloads(store, nursery))  # not running: nothing is parsed
    for _ in range(100):
        _offer(prefetcher, [sha(0)])
    assert prefetcher.counters.skipped == 100 - 16


async def test_a_blob_that_waited_too_long_is_dropped(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    store = FakeStore()
    hold = trio.Event()
    downloads = FakeDownloads(store, nursery, hold=hold)
    prefetcher = Prefetcher(store, downloads, concurrency=1)
    await nursery.start(prefetcher.run)
    _offer(prefetcher, [sha(0), sha(1)])
    await trio.sleep(MAX_WAIT + 1)
    hold.set()
    await _settle(prefetcher)
    assert [s.digest for s in downloads.joined] == [sha(0)]
    assert prefetcher.counters.skipped == 1


async def test_concurrency_below_one_is_refused(nursery: trio.Nursery) -> None:
    store = FakeStore()
    with pytest.raises(ValueError, match="at least 1"):
        Prefetcher(store, FakeDownloads(store, nursery), concurrency=0)
