"""The upstream fetcher's Range requests, against a fake registry on loopback: for the gaps of
a partial blob, how many go at once; a large blob fetched whole, in chunks."""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from peer.fetch import chunks as chunks_module
from peer.fetch.chunks import (
    CHUNK_SHARE,
    CHUNK_WINDOW,
    CHUNKED_MIN_PIECES,
    FINALS_MARGIN,
    FLOW_BYTES,
    RAMP_PIECES,
    WHOLE_FLOWS,
    Chunks,
    least_pieces,
    whole_chunks,
    whole_flows,
)
from peer.fetch.coordinator import DownloadTable, OwnerUpstream
from peer.fetch.download import Download
from peer.fetch.upstream_fetch import BUFFER_COUNT, RANGES_AT_ONCE, UpstreamFetcher
from peer.upstream.blob_stream import BlobStream
from peer.upstream.client import UpstreamConfig, Upstreams
from peer.upstream.errors import UpstreamError
from pieces.descriptors import Repository
from pieces.layout import PieceLayout
from pieces.partial import PartialBlob, SizeRefused
from pieces.store import Store
from tests.peer.fake_registry import FakeRegistry, jwt

PIECE = 64 * 1024
# A blob large enough for chunks, and its first chunk's end (pieces of PIECE: the store's
# largest, and the blob has more than PIECES_PER_BLOB of them).
LARGE = 300 * PIECE + 99


class InFlight:
    """How many are under way now, and the most at once."""

    def __init__(self) -> None:
        self.now = self.most = 0

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            yield
        finally:
            self.now -= 1


class CountingFetcher(UpstreamFetcher):
    """Counts the Range requests in flight, the answers arriving at once and the receive
    buffers they hold at once (a test's subclass: production has no hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.requests, self.answers = InFlight(), InFlight()
        self.buffers_now = self.buffers_most = 0
        # Each request's partial's bytes when it was asked, and how many were then in flight.
        self.asked: list[tuple[int, int]] = []

    async def _fetch_range(self, *args: Any, **kwargs: Any) -> Any:
        with self.requests.one():
            partial = args[2]
            self.asked.append((partial.bytes_present if partial else 0, self.requests.now))
            return await super()._fetch_range(*args, **kwargs)

    async def _pump(
        self,
        download: Download,
        body: BlobStream,
        partial: PartialBlob,
        start: int,
        end: int,
        buffers: int = BUFFER_COUNT,
    ) -> None:
        self.buffers_now += buffers
        self.buffers_most = max(self.buffers_most, self.buffers_now)
        try:
            with self.answers.one():
                await super()._pump(download, body, partial, start, end, buffers)
        finally:
            self.buffers_now -= buffers


async def test_range_requests_for_one_blob_share_their_slots(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A takeover hands gaps to the upstream more than once: each hand-off must not open
    # RANGES_AT_ONCE more connections (and receive buffers) of its own.
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    registry.pace = 0.01
    data = os.urandom(12 * PIECE)
    digest = registry.add_blob(data)
    store = Store(tmp_path)
    partial = await store.open_partial(digest, len(data), piece_size=PIECE, repository=None)
    for index in range(1, 12, 2):  # pieces 0, 2, 4, ... missing: six gaps
        partial.write_sync(index * PIECE, [data[index * PIECE : (index + 1) * PIECE]])
    fetcher = CountingFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    download = Download(digest, None, "org/app", None)
    gaps = [(i * PIECE, (i + 1) * PIECE) for i in range(0, 12, 2)]
    with trio.fail_after(20):
        async with trio.open_nursery() as both:
            both.start_soon(fetcher.fetch_runs, download, {}, partial, gaps[:3])
            both.start_soon(fetcher.fetch_runs, download, {}, partial, gaps[3:])
    assert fetcher.requests.most == RANGES_AT_ONCE
    assert partial.missing_runs() == []
    store.release_partial(partial)


@pytest.fixture
async def registry(nursery: trio.Nursery) -> FakeRegistry:
    fake = FakeRegistry()
    await nursery.start(fake.serve)
    return fake


async def fetch_whole(
    tmp_path: Path, registry: FakeRegistry, data: bytes, *, described: bool = True
) -> CountingFetcher:
    """A blob of `data` at the registry, fetched whole into an empty store (its size given
    by a manifest when `described`) and stored right."""
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=PIECE)
    if described:
        store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, len(data))
    fetcher = CountingFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    with trio.fail_after(20):
        await fetcher.fetch(Download(digest, None, "org/app", None), {})
    assert store.complete_path(digest).read_bytes() == data
    return fetcher


def blob_gets(registry: FakeRegistry) -> list[str | None]:
    """The Range header of every blob GET the registry answered, in order."""
    return [r for m, p, r in registry.requests if m == "GET" and "/blobs/" in p]


def chunk_ranges(size: int) -> list[str]:
    """The Range headers of the chunks of a blob of `size` bytes in PIECE pieces, in order
    (the last one open-ended: the form every registry supports)."""
    count = -(-size // PIECE)
    chunks = whole_chunks(count, least_pieces(PIECE), whole_flows(size), size)
    bounds = [start * PIECE for start, _ in chunks]
    return [f"bytes={a}-{b - 1}" for a, b in itertools.pairwise(bounds)] + [f"bytes={bounds[-1]}-"]


def range_start(header: str | None) -> int:
    return int((header or "bytes=0-").removeprefix("bytes=").split("-")[0])


async def test_a_large_blob_whose_size_a_manifest_gives_comes_in_chunks_on_several_flows(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # An owner's one flow from the registry shares its downlink with the flows of the blobs
    # it takes from peers. The first chunk is asked alone; the others, in order, once its
    # answer shows the registry honours Range, WHOLE_FLOWS at once. Each byte comes once.
    registry.pace = 0.002
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    gets = blob_gets(registry)
    chunks = chunk_ranges(LARGE)
    assert len(chunks) > WHOLE_FLOWS
    assert gets[0] == chunks[0]  # asked first
    assert sorted(gets, key=range_start) == chunks
    assert fetcher.answers.most == WHOLE_FLOWS  # answers arriving at once
    assert fetcher.bytes_from_upstream == LARGE


async def test_the_flows_of_a_blob_fetched_whole_open_one_at_a_time(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # All at once, a 128 MiB layer's 8 flows each got an eighth of the owner's share of the
    # registry's uplink, and no piece came for seconds: on the testbed three of four owners
    # had nothing to send for 4-8 s. The first request alone; one flow more for every
    # RAMP_PIECES pieces in; the blob still comes whole, each byte once.
    registry.pace = 0.005
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    assert len(fetcher.asked) == len(chunk_ranges(LARGE))
    assert fetcher.asked[0] == (0, 1)
    for present, in_flight in fetcher.asked:
        assert in_flight <= 1 + (present // PIECE) // RAMP_PIECES
    assert fetcher.answers.most == WHOLE_FLOWS  # all of them open in the end
    assert fetcher.bytes_from_upstream == LARGE


async def test_a_larger_blob_comes_on_more_flows_sharing_the_same_buffers(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The registry's uplink gives each flow a like share: with the same flows for every
    # blob, the largest came last and alone (the registry half idle for the last 30 s of a
    # testbed run). A blob of five FLOW_BYTES comes on five flows at once, more than a
    # gap-filling fetch may open, through no more receive buffers than one download has.
    size = 5 * FLOW_BYTES - 99
    assert whole_flows(size) == 5 > RANGES_AT_ONCE
    registry.pace = 0.001
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(size))
    assert sorted(blob_gets(registry), key=range_start) == chunk_ranges(size)
    assert fetcher.answers.most == 5
    assert fetcher.buffers_most <= BUFFER_COUNT
    assert fetcher.bytes_from_upstream == size


def prefetch_setup(
    tmp_path: Path, registry: FakeRegistry, nursery: trio.Nursery, size: int
) -> tuple[bytes, Store, CountingFetcher, Download, OwnerUpstream, Download]:
    """A blob of `size` at the registry (described), a download of it that this node's
    prefetch asked for, and another download (of the blob a client here reads first), in a
    table as `join` keeps them."""
    data = os.urandom(size)
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=PIECE)
    store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, size)
    table = DownloadTable(store, nursery)
    fetcher = CountingFetcher(
        store, Upstreams(UpstreamConfig({}, registry.url)), held_back=table.held_back
    )
    download = Download(digest, None, "org/app", None)
    download.prefetch_wants()
    table.active[digest] = download
    first = Download("sha256:" + "f" * 64, None, "org/app", None)
    table.active[first.digest] = first
    return data, store, fetcher, download, OwnerUpstream(table, fetcher), first


async def test_a_prefetched_download_is_held_back_only_while_a_client_here_reads_another(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    # A client that reads nothing (its pull done or cancelled, or the blob skipped because
    # its runtime holds it) must not keep a download that other hosts' clients wait for on
    # part of its flows.
    table = DownloadTable(Store(tmp_path), nursery)
    ahead = Download("sha256:" + "a" * 64, None, "o/a", None)
    other = Download("sha256:" + "b" * 64, None, "o/a", None)
    ahead.prefetch_wants()
    table.active.update({ahead.digest: ahead, other.digest: other})
    assert ahead.ahead_of_client and not table.held_back(ahead)  # nobody reads
    with ahead.serving():  # its own reader (a HEAD, say) is not another blob's
        assert not table.held_back(ahead)
        # A download for peers' Wants only is never held back, whoever reads what.
        assert not other.ahead_of_client and not table.held_back(other)
    with other.serving():
        assert table.held_back(ahead)
        ahead.client_reads()
        assert not table.held_back(ahead)


async def test_a_prefetched_download_nobody_here_reads_beside_opens_every_flow(
    tmp_path: Path, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    # Its client never asks (its runtime holds the layer, or its pull ended) and reads
    # nothing else: the other hosts' clients may wait for this blob. It takes all its flows
    # and counts for the peer limit, as a fetch for peers does.
    size = 5 * FLOW_BYTES - 99
    registry.pace = 0.001
    data, store, fetcher, download, view, _ = prefetch_setup(tmp_path, registry, nursery, size)
    counted: list[int] = []

    async def look_half_way() -> None:
        while download.partial is None or download.partial.bytes_present < size // 2:
            await trio.sleep(0.005)
        counted.append(view.blobs_wanted_now())

    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(fetcher.fetch, download, {})
            both.start_soon(look_half_way)
    assert download.ahead_of_client  # never asked for, and yet:
    assert fetcher.answers.most == whole_flows(size)
    assert counted == [1]
    assert store.complete_path(download.digest).read_bytes() == data


async def test_a_blob_prefetched_ahead_of_its_client_keeps_to_part_of_its_flows(
    tmp_path: Path, registry: FakeRegistry, nursery: trio.Nursery
) -> None:
    # Every blob on its full count of flows, the largest (read first) ended last, and a
    # client reading one blob at a time read all the others after it. A blob this node
    # prefetches takes part of the registry's uplink until a client here asks for it; then
    # the rest of its flows open. Each byte still comes once; and only then does it hold
    # this node's peers back (peers_while_owning). (A download for peers' Wants only, or for
    # a client that asked first, opens every flow: the tests above.)
    size = 5 * FLOW_BYTES - 99
    flows = whole_flows(size)
    unread = Chunks(1000, 0, 1, 0.0, window=None, flows=flows).unread_flows
    assert 1 <= unread < flows
    registry.pace = 0.001
    data, store, fetcher, download, view, first = prefetch_setup(tmp_path, registry, nursery, size)
    fetched = trio.Event()
    most_ahead = -1

    async def fetch() -> None:
        with first.serving():  # the client here reads the first blob meanwhile
            await fetcher.fetch(download, {})
        fetched.set()

    async def client_from_half_way() -> None:
        nonlocal most_ahead
        while download.partial is None or download.partial.bytes_present < size // 2:
            await trio.sleep(0.005)
        most_ahead = fetcher.answers.most
        assert (view.blobs(), view.blobs_wanted_now()) == (1, 0)
        download.client_reads()
        assert (view.blobs(), view.blobs_wanted_now()) == (1, 1)
        await fetched.wait()

    with trio.fail_after(30):
        async with trio.open_nursery() as both:
            both.start_soon(fetch)
            both.start_soon(client_from_half_way)
    assert most_ahead == unread
    assert fetcher.answers.most == flows
    assert store.complete_path(download.digest).read_bytes() == data
    assert fetcher.bytes_from_upstream == size


async def test_flows_kept_for_a_client_open_when_it_asks_with_no_byte_coming(
    tmp_path: Path, registry: FakeRegistry, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flows kept back wait on the partial: the client's asking must wake them itself,
    # not leave them for the next piece, which a slow registry may send seconds later.
    monkeypatch.setattr(chunks_module, "RAMP_PIECES", 0)  # every flow may open at once
    size = 5 * FLOW_BYTES - 99
    flows = whole_flows(size)
    unread = Chunks(1000, 0, 1, 0.0, window=None, flows=flows).unread_flows
    registry.pace = 60.0  # after its first 64 KiB, no answer sends more within the test
    _, _, fetcher, download, _, first = prefetch_setup(tmp_path, registry, nursery, size)
    with trio.fail_after(20), first.serving():
        async with trio.open_nursery() as both:
            both.start_soon(fetcher.fetch, download, {})
            while fetcher.requests.now < unread:
                await trio.sleep(0.01)
            await trio.sleep(0.2)  # (had more opened, the assertion below would see them)
            assert fetcher.requests.now == unread
            download.client_reads()
            while fetcher.requests.now < flows:
                await trio.sleep(0.01)
            both.cancel_scope.cancel()


async def test_a_slow_flow_holds_back_its_chunk_while_the_others_take_the_rest(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # Three equal parts at once: on the testbed the registry's flows went at unlike rates,
    # the slowest part ended seconds after the others, and every client (reading in order)
    # waited for it with the blob's last third or two in store. Here the second chunk comes
    # slowly: the other flows take every chunk after it meanwhile.
    chunks = chunk_ranges(LARGE)
    slow = chunks[1]
    registry.range_pace[slow] = 0.05  # 33 pieces of 64 KiB: 1.6 s
    await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    gets = blob_gets(registry)
    assert sorted(gets, key=range_start) == chunks
    slow_size = range_start(chunks[2]) - range_start(slow)
    # The last chunk was asked for before the slow one was in.
    assert registry.range_sent_when_asked[chunks[-1]].get(slow, 0) < slow_size


async def test_a_blob_of_unknown_size_comes_in_one_answer(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # No manifest gave its size: no part boundary to ask for before the answer.
    await fetch_whole(tmp_path, registry, os.urandom(LARGE), described=False)
    assert blob_gets(registry) == [None]


async def test_a_small_blob_comes_in_one_answer(tmp_path: Path, registry: FakeRegistry) -> None:
    await fetch_whole(tmp_path, registry, os.urandom((CHUNKED_MIN_PIECES - 1) * PIECE))
    assert blob_gets(registry) == [None]


async def test_a_large_blob_in_few_pieces_still_comes_in_chunks(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    """Fewer, larger pieces (--pieces-per-blob) must not cost the registry's flows: a 20 MiB
    blob in 40 pieces came in one answer (CHUNKED_MIN_PIECES counted pieces alone)."""
    data = os.urandom(20 * 1024 * 1024)
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=4 * 1024 * 1024, pieces_per_blob=32)
    assert PieceLayout(len(data), store.piece_size_for(len(data))).count < CHUNKED_MIN_PIECES
    store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, len(data))
    fetcher = UpstreamFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    with trio.fail_after(20):
        await fetcher.fetch(Download(digest, None, "org/app", None), {})
    assert store.complete_path(digest).read_bytes() == data
    gets = blob_gets(registry)
    assert len(gets) > 1 and gets[0] is not None and gets[0].startswith("bytes=0-")


async def test_a_registry_that_ignores_range_gives_the_blob_in_its_first_answer(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The first chunk answered with the whole blob (200): taken whole, no other one asked.
    registry.ignore_range = True
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    assert blob_gets(registry) == [chunk_ranges(LARGE)[0]]
    assert fetcher.bytes_from_upstream == LARGE


async def test_chunks_the_registry_will_not_answer_beside_the_first_come_after_it(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The first Range honoured, the others answered with the whole blob: each is dropped at
    # its headers, no flow takes another chunk, and the rest is asked one range at a time
    # after the first chunk (the next answer, the whole blob again, starts the download
    # over: still each byte once stored).
    registry.ranges_honoured = 1
    await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    gets = blob_gets(registry)
    # (The third chunk may be stopped before it is sent, once the first refusal is in; flow
    # 0, its first chunk in before that refusal, may have asked for the next one too: seen
    # on a loaded machine.)
    assert gets[0] == chunk_ranges(LARGE)[0] and WHOLE_FLOWS <= len(gets) <= WHOLE_FLOWS + 2


async def test_flows_not_open_yet_end_when_the_registry_stops_honouring_ranges(
    tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A flow opens once enough of the blob is in. Flow 0's next chunk answered with the whole
    # blob closes the chunks, and no byte more comes beside it: the flows still waiting must
    # end there (a review found them waiting for ever, and the fetch with them), and the
    # next round fetches the rest.
    monkeypatch.setattr(chunks_module, "RAMP_PIECES", 10_000)  # none opens beside flow 0
    registry.ranges_honoured = 1
    fetcher = await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    assert blob_gets(registry)[0] == chunk_ranges(LARGE)[0]
    assert fetcher.answers.most == 1


async def test_a_first_chunk_answered_from_another_byte_fails_the_fetch(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # Asked from byte 0, answered 206 from byte 5: nothing of it is stored as the blob's.
    registry.range_shift = 5
    with pytest.raises(UpstreamError, match="from byte 5, not 0"):
        await fetch_whole(tmp_path, registry, os.urandom(LARGE))
    left = Store(tmp_path).stats()  # what the failed fetch left on disk
    assert (left.complete_blobs, left.partial_blobs, left.bytes_used) == (0, 0, 0)


async def test_a_chunk_answered_for_another_blob_size_never_joins_the_blob(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # A hostile (or changing) registry: every other Range answer names a blob a piece longer
    # in its Content-Range, the first chunk's answer among the honest ones. A chunk that
    # names another size is not written into the blob its first chunk opened: the chunks
    # stop, the next round asks again one range at a time, and a blob that changes twice
    # ends the fetch. Nothing but the right bytes is ever stored, and the asking ends.
    registry.range_total_extra = PIECE
    data = os.urandom(LARGE)
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=PIECE)
    store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, len(data))
    fetcher = CountingFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    # (Refused by the store against the manifest's size, or ended as a blob that changed.)
    with trio.fail_after(20), contextlib.suppress(SizeRefused, UpstreamError):
        await fetcher.fetch(Download(digest, None, "org/app", None), {})
    if store.has_blob(digest):
        assert store.complete_path(digest).read_bytes() == data
    assert blob_gets(registry)[0] == chunk_ranges(LARGE)[0]
    assert len(blob_gets(registry)) <= WHOLE_FLOWS + 3


async def fetch_with(
    tmp_path: Path, registry: FakeRegistry, authorization: str, begun_ago: float
) -> list[str | None]:
    """A large blob fetched whole with `authorization`, its download begun `begun_ago`
    seconds before its first request (a fetch that has run that long): the blob GETs."""
    data = os.urandom(LARGE)
    digest = registry.add_blob(data)
    store = Store(tmp_path, piece_size=PIECE)
    store.descriptor_sizes.learn(Repository(registry.url, "org/app"), digest, len(data))
    fetcher = UpstreamFetcher(store, Upstreams(UpstreamConfig({}, registry.url)))
    download = Download(digest, None, "org/app", None, started=trio.current_time() - begun_ago)
    with trio.fail_after(20):
        await fetcher.fetch(download, {"authorization": authorization})
    assert store.complete_path(digest).read_bytes() == data
    return blob_gets(registry)


def least_first() -> str:
    """The first chunk's Range with credentials that may expire: the least (1 MiB)."""
    return f"bytes=0-{least_pieces(PIECE) * PIECE - 1}"


async def test_a_bearer_token_s_fetch_asks_for_no_chunk_after_the_window(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The registry checks the token on every request, and a token may last a minute: past
    # CHUNK_WINDOW, one request takes all the rest.
    registry.token = "t0k"
    gets = await fetch_with(tmp_path, registry, "Bearer t0k", begun_ago=CHUNK_WINDOW)
    assert gets == [least_first(), f"bytes={least_pieces(PIECE) * PIECE}-"]


async def test_near_the_window_each_flow_takes_a_share_of_the_rest(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # A fetch that has run almost to the window, from a registry slow enough that a usual
    # chunk would end past it: after at most a least chunk each (no measure of the rate
    # yet), each of the WHOLE_FLOWS flows takes its last chunk, an equal share of the rest,
    # so that all of them carry the blob to its end.
    registry.token = "t0k"
    registry.pace = 0.02  # an eighth of the blob, 37 pieces, in ~0.7 s: back too late
    begun = CHUNK_WINDOW - FINALS_MARGIN - 0.5
    gets = await fetch_with(tmp_path, registry, "Bearer t0k", begun_ago=begun)
    assert gets[0] == least_first()
    assert 1 + WHOLE_FLOWS <= len(gets) <= 1 + (WHOLE_FLOWS - 1) + WHOLE_FLOWS
    starts = [*sorted(range_start(get) for get in gets), LARGE]
    finals = [b - a for a, b in itertools.pairwise(starts[-WHOLE_FLOWS - 1 :])]
    assert max(finals) - min(finals) <= (least_pieces(PIECE) + 1) * PIECE


async def test_without_a_token_chunks_are_asked_for_however_long_the_fetch(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # Basic credentials (or none) do not expire: the chunks go on to the end.
    gets = await fetch_with(tmp_path, registry, "Basic dTpw", begun_ago=10 * CHUNK_WINDOW)
    assert sorted(gets, key=range_start) == chunk_ranges(LARGE)


async def test_a_jwt_that_names_a_later_expiry_keeps_the_chunks_going(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # Docker Hub's tokens name their expiry, 300 s after issue: a fetch that has run past
    # the minute rule's window still asks chunk after chunk (not one request for the rest),
    # none more than the usual share of what is left.
    now = time.time()
    registry.token = jwt({"iat": int(now), "exp": int(now) + 300})
    gets = await fetch_with(
        tmp_path, registry, f"Bearer {registry.token}", begun_ago=2 * CHUNK_WINDOW
    )
    starts = [*sorted(range_start(get) for get in gets), LARGE]
    assert len(gets) > 1 + WHOLE_FLOWS
    for start, end in itertools.pairwise(starts):
        assert end - start <= (LARGE - start) // CHUNK_SHARE + 2 * (least_pieces(PIECE) + 1) * PIECE


async def test_a_jwt_s_expiry_is_held_to_the_registry_s_clock(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    # The same 300 s token, but the registry's clock (its answers' Date) says it expired
    # five minutes ago: this node's clock does not count, and past the first chunk one
    # request takes all the rest.
    now = time.time()
    registry.token = jwt({"exp": int(now) + 300})
    registry.clock_offset = 600.0
    gets = await fetch_with(tmp_path, registry, f"Bearer {registry.token}", begun_ago=0.0)
    assert gets == [least_first(), f"bytes={least_pieces(PIECE) * PIECE}-"]
