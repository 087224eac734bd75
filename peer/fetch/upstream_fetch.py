"""Fetching a blob from its upstream registry into the store, resumable, verified.

Bytes are written to the partial blob as they arrive and readers are woken at once, so clients
stream the blob while it downloads. The upstream is not trusted: the size it declares is
checked by the store before anything is allocated (`Store.open_partial`; against the size that
repository's own manifests give), and an answer that does not start where we asked (a 200 to a
Range request) starts the blob over instead of being mixed with the pieces kept from before.

Resuming (after a crash, or taking a blob over from the swarm) asks for the runs of missing
pieces with up to RANGES_AT_ONCE Range requests at once: one after the other, each small run
cost a new connection's handshake and slow start behind the registry's busy uplink (on the
testbed a 1.5 MB range took 4 s while the registry served other blobs).

A blob whose size a manifest of its repository gives comes in chunks, several Range requests at
once (more for a larger blob: chunks.whole_flows), when it is large (peer/fetch/chunks.py): the
first asked alone, and once its answer shows the upstream honours Range (and agrees on the
size), each flow that is free takes the next chunk in order. An upstream that answers the first
with the whole blob gives it in one stream.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import email.utils
import logging
import random
import re
import time
import weakref
from collections.abc import Callable, Iterator

import trio

from peer.fetch.busy_registry import BUSY_MEMORY, BUSY_STATUSES, busy_retry_wait, still_busy
from peer.fetch.chunks import (
    Chunks,
    chunk_window,
    chunked,
    first_chunk,
    least_pieces,
    may_expire,
    whole_flows,
)
from peer.fetch.download import Download
from peer.rate_limit import RateLimiter
from peer.upstream.blob_stream import BlobStream, open_blob
from peer.upstream.client import ERROR_BODY_LIMIT, Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from peer.upstream.headers import FORWARDED_ERROR_HEADERS, pick_headers
from pieces.descriptors import Repository
from pieces.layout import PieceLayout
from pieces.partial import PartialBlob, SizeRefused
from pieces.store import Store

log = logging.getLogger("pollen.download")

# Receive buffers per download: 16 x 1 MiB bounds memory; one thread call writes and hashes
# every buffer filled meanwhile, so the thread hand-off costs little per byte.
BUFFER_SIZE = 1024 * 1024
BUFFER_COUNT = 16
# A buffer goes to an idle writer once it holds this much, so slow links still stream promptly.
EARLY_HANDOFF = 64 * 1024
# Range requests in flight at once for the runs of a resumed blob (each its own connection).
RANGES_AT_ONCE = 4
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class _NotBesideOthers(Exception):
    """An answer to one of several Range requests in flight that only the one-at-a-time path
    may act on (a refusal, or bytes that do not continue the partial: starting over would
    pull the partial from under the other requests)."""


class _BufferPipe:
    """Pooled buffers between the receiver and the writer thread.

    The receiver fills free buffers from the socket and hands them over; the writer takes every
    full buffer at once, writes them in one thread call and gives them back. A bounded pool
    bounds memory per download and makes a slow disk slow the upstream down (backpressure).
    Buffers are made only when none is free: a download from a slow upstream (any client can
    start many) holds one or two, not the whole pool.
    """

    def __init__(self, count: int, size: int) -> None:
        self._size = size
        self._unmade = count
        self._free: list[bytearray] = []
        self._full: list[tuple[bytearray, int]] = []
        self._closed = False
        self.writer_waiting = False
        self._lot = trio.lowlevel.ParkingLot()

    async def get_free(self) -> bytearray:
        while not self._free:
            if self._unmade:
                self._unmade -= 1
                return bytearray(self._size)
            await self._lot.park()
        return self._free.pop()

    def put_full(self, buffer: bytearray, length: int) -> None:
        self._full.append((buffer, length))
        self._lot.unpark_all()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    async def take_full(self) -> list[tuple[bytearray, int]] | None:
        """Every full buffer (waits for one); None once closed and drained."""
        while not self._full:
            if self._closed:
                return None
            self.writer_waiting = True
            try:
                await self._lot.park()
            finally:
                self.writer_waiting = False
        full, self._full = self._full, []
        return full

    def give_back(self, buffers: list[bytearray]) -> None:
        self._free.extend(buffers)
        self._lot.unpark_all()


class UpstreamFetcher:
    """Fills downloads from their upstream registries; counts what it fetched."""

    def __init__(
        self,
        store: Store,
        upstreams: Upstreams,
        download_limit: RateLimiter | None = None,
        held_back: Callable[[Download], bool] | None = None,
    ) -> None:
        """`held_back`: whether a download keeps to part of its flows now
        (`DownloadTable.held_back`; default: never)."""
        self._store = store
        self._held_back = held_back or _never
        self._upstreams = upstreams
        self._download_limit = download_limit or RateLimiter(None)
        self.streams = 0  # answers arriving from the upstream now (peer/swarm/inflow.py)
        # Blob -> its fetches from the upstream now (the swarm yields to them: fetch.py).
        self._digests: collections.Counter[str] = collections.Counter()
        self.bytes_from_upstream = 0
        # Blobs whose registry was still busy when an owner's fetch gave up: (namespace,
        # digest) -> until when later fetches of it ask once (peer/fetch/busy_registry.py).
        self._busy_until: dict[tuple[str | None, str], float] = {}
        self._chance = random.Random()
        self.busy_retries = 0  # a busy registry asked again, as a blob's owner
        self._range_slots: weakref.WeakKeyDictionary[Download, trio.CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    def blobs(self) -> int:
        """The blobs this node fetches from an upstream now (one whose registry answered
        busy counts while it waits to ask again: fetch.py's limit on peers errs that way)."""
        return len(self._digests)

    def digests(self) -> list[str]:
        """The blobs this node fetches from an upstream now (as `blobs` counts them)."""
        return list(self._digests)

    def fetching(self, digest: str) -> bool:
        """Is this node fetching `digest` from an upstream now?"""
        return self._digests[digest] > 0

    @contextlib.contextmanager
    def _counted(self, digest: str) -> Iterator[None]:
        self._digests[digest] += 1
        try:
            yield
        finally:
            self._digests[digest] -= 1
            if not self._digests[digest]:
                del self._digests[digest]

    async def fetch(
        self, download: Download, headers: dict[str, str], *, for_the_cluster: bool = False
    ) -> None:
        """Fill `download` from its upstream. `for_the_cluster`: this node fetches the blob as
        its owner, other nodes wait on the download: a busy registry is asked again
        (peer/fetch/busy_registry.py), the blob counted as fetched here all the while.

        Raises:
            UpstreamError: the upstream failed (what arrived stays).
        """
        with self._counted(download.digest):
            failures = 0
            while True:
                asked_at = trio.current_time()
                try:
                    await self._fetch_upstream(download, headers)
                    return
                except UpstreamError as exc:
                    failures += 1
                    if not for_the_cluster:
                        raise
                    wait = self._busy_wait(download, exc, failures, asked_at)
                    if wait is None:
                        raise
                    log.info("%s: %s: asking again in %.1f s", download.digest, exc, wait)
                    self.busy_retries += 1
                    await trio.sleep(wait)

    def _busy_wait(
        self, download: Download, exc: UpstreamError, failures: int, asked_at: float
    ) -> float | None:
        now = trio.current_time()
        # Per registry: another may serve the same digest.
        key = (download.namespace, download.digest)
        if still_busy(self._busy_until.get(key), now):
            return None
        wait = busy_retry_wait(
            exc.status,
            failures,
            started=download.ready.is_set(),
            elapsed=now - download.started,
            answer_took=now - asked_at,
            chance=self._chance.random(),
        )
        if wait is None and exc.status in BUSY_STATUSES:
            self._busy_until = {k: t for k, t in self._busy_until.items() if still_busy(t, now)}
            self._busy_until[key] = now + BUSY_MEMORY
        return wait

    async def fetch_runs(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob,
        runs: list[tuple[int, int]],
    ) -> None:
        """Fetch these runs [start, end) of `partial` while others fill the rest of it (a new
        owner takes from its peers what they hold meanwhile). An answer only the one-at-a-time
        path of `fetch` may act on (a refusal, a blob that would start over) ends it early:
        `fetch` asks again for whatever is still missing, and acts on it.

        Raises:
            UpstreamError: the upstream failed (what arrived stays).
        """
        with self._counted(download.digest):
            try:
                await self._fetch_runs(download, headers, partial, runs)
            except _NotBesideOthers as exc:
                log.info("%s: left to the fetch that follows: %s", download.digest, exc)

    async def _fetch_upstream(self, download: Download, headers: dict[str, str]) -> None:
        """Fetch what is missing from the upstream: the whole blob, or (resuming, or taking
        over from the swarm) each run of missing pieces with a Range request."""
        digest = download.digest
        partial: PartialBlob | None = None
        size_on_disk = self._store.partial_size_on_disk(digest)
        if size_on_disk is not None:
            try:
                origins = self._origins(download)
                partial = await self._store.open_partial(
                    digest, size_on_disk, origins=origins, repository=self._repository(download)
                )
                # Ours to release from now on, whatever happens before the upstream answers
                # (a partial left registered would be handed, with its origins, to the next
                # opener). Readers still wait for `ready`.
                download.adopted(partial)
            except SizeRefused as exc:
                # Left by a fetch whose size a manifest of this repository now contradicts:
                # ask afresh.
                log.info("%s: not resuming the partial on disk: %s", digest, exc)
        if partial is None:
            # The whole blob: in chunks when it is large and a manifest gave its size (else
            # the first answer tells it, and the blob comes in that one answer).
            expiring = may_expire(headers.get("authorization"))
            first_end = self._first_chunk_end(digest, self._repository(download), expiring)
            partial = await self._fetch_range(
                download, headers, None, 0, first_end, rest_beside=first_end is not None
            )
        elif not (runs := partial.missing_runs()):
            # Every piece on disk (a crash between verify and commit): ask for the last byte
            # only, so the upstream still checks this client's credentials.
            size = partial.layout.size
            partial = await self._fetch_range(download, headers, partial, size - 1, size)
        else:
            missing = sum(end - start for start, end in runs)
            log.info("%s: fetching %d missing bytes in %d ranges", digest, missing, len(runs))
        one_at_a_time = False
        restarted = False
        while partial is not None and (runs := partial.missing_runs()):
            previous, before = partial, partial.bytes_present
            if len(runs) > 1 and not one_at_a_time:
                try:
                    await self._fetch_runs(download, headers, partial, runs)
                except _NotBesideOthers as exc:
                    # The bytes the others brought stay; the rest goes one run at a time,
                    # where a refusal is reported and a restart is safe.
                    log.info("%s: one range at a time from here: %s", digest, exc)
                    one_at_a_time = True
                    continue
                asked = f"{len(runs)} ranges"
            else:
                start, end = runs[0]
                partial = await self._fetch_range(download, headers, partial, start, end)
                asked = f"bytes {start}-{end - 1}"
            if partial is previous and partial.bytes_present == before:
                raise UpstreamError(digest, f"answered {asked} with nothing new")
            if partial is not None and partial is not previous:
                if restarted:  # a blob does not change twice: a registry that says it does
                    raise UpstreamError(digest, "started over a second time")
                restarted = True
        if partial is None:
            return  # refused: the refusal is on the download
        async with partial.write_lock:
            await trio.to_thread.run_sync(partial.verify_sync)
            partial.notify()  # readers get the last byte now, before the fsync
            await trio.to_thread.run_sync(self._store.commit_sync, partial)
        log.info(
            "stored %s (%d bytes, %.2fs)",
            digest,
            partial.layout.size,
            trio.current_time() - download.started,
        )

    async def _fetch_runs(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob,
        runs: list[tuple[int, int]],
        chunks: Chunks | None = None,
        flows: int = RANGES_AT_ONCE,
        first_flow: int = 0,
    ) -> None:
        """Fetch every run [start, end) into `partial`, RANGES_AT_ONCE requests in flight, the
        longest run first (it takes longest; the short ones go beside it); then, with `flows`
        requests in flight, the `chunks` of a blob fetched whole, in order. These flows are
        the blob's flows number `first_flow` on, and each asks first when `chunks` opens it
        (`Chunks.opens_after`: one at a time, so that the first pieces come soon).

        Raises:
            _NotBesideOthers: an answer only the one-at-a-time path may act on; the other
                requests were stopped, what they wrote stays.
            UpstreamError: as `_fetch_range` (the first error; the others were stopped).
        """
        todo = sorted(runs, key=lambda run: run[1] - run[0], reverse=True)
        failure: Exception | None = None
        # Shared by every call for this download (a takeover hands runs over more than once):
        # RANGES_AT_ONCE requests in flight for the blob, not per call (a large blob's chunks:
        # its flows), and the receive buffers shared among them.
        in_flight = max(RANGES_AT_ONCE, chunks.flows) if chunks else RANGES_AT_ONCE
        slots = self._range_slots.setdefault(download, trio.CapacityLimiter(in_flight))
        buffers = max(1, BUFFER_COUNT // int(slots.total_tokens))

        async def fetch_next(cancel_scope: trio.CancelScope, flow: int) -> None:
            nonlocal failure
            if chunks is not None and not todo:
                # Until enough of the blob is in and, past its `unread_flows`, the download
                # is not held back (`DownloadTable.held_back`: its client's asking wakes us,
                # `Download.client_reads`; the end of another blob's reading, the next bytes
                # of this one); or no chunk is left to ask for: the flows that did open may
                # take them all, or the chunks be closed (a registry that stopped honouring
                # Range; `_pump_beside_chunks` then wakes us), with no byte more to come.
                piece_size = partial.layout.piece_size
                while (
                    not chunks.may_open(
                        flow, partial.bytes_present // piece_size, not self._held_back(download)
                    )
                    and not chunks.exhausted
                    and partial.error is None
                ):
                    await partial.wait_change()
            while True:
                async with slots:
                    if failure is not None:
                        return
                    run = todo.pop(0) if todo else _chunk_bytes(partial, chunks)
                    if run is None:
                        return
                    start, end = run
                    try:
                        await self._fetch_range(
                            download,
                            headers,
                            partial,
                            start,
                            end,
                            beside_others=True,
                            buffers=buffers,
                        )
                    except Exception as exc:  # raised below, outside the nursery
                        if failure is None or isinstance(failure, _NotBesideOthers):
                            failure = exc  # a real error over one left to the next round
                        cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for index in range(flows if chunks else min(RANGES_AT_ONCE, len(todo))):
                nursery.start_soon(fetch_next, nursery.cancel_scope, first_flow + index)
        if failure is not None:
            raise failure

    async def _fetch_range(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob | None,
        offset: int,
        end: int | None,
        *,
        beside_others: bool = False,
        buffers: int = BUFFER_COUNT,
        rest_beside: bool = False,
    ) -> PartialBlob | None:
        """Fetch bytes [offset, end) (to the end of the blob when `end` is None) into the
        partial, opening it on the first answer; None when the upstream refused the client.

        `beside_others`: other requests fill other runs of `partial` meanwhile (`buffers`: this
        one's share of the receive buffers). An answer that would refuse the client or start
        the blob over raises `_NotBesideOthers` instead, and a 5xx too (it may be the
        concurrency itself).

        `rest_beside` (the first chunk of a blob fetched whole in chunks): once the answer is a
        good 206, the other chunks are asked for beside it (`_pump_beside_chunks`)."""
        digest = download.digest
        request_headers = dict(headers)
        if end is not None and partial is not None and end == partial.layout.size:
            end = None  # open-ended: the form every registry supports
        if offset or end is not None:
            last = "" if end is None else str(end - 1)
            request_headers["range"] = f"bytes={offset}-{last}"
        base = self._registry_url(download)
        url = base + f"/v2/{download.name}/blobs/{digest}"
        config = self._upstreams.config
        asked_at = trio.current_time()
        body = await open_blob(
            url,
            request_headers,
            connect_timeout=config.connect_timeout,
            stall_timeout=config.stall_timeout,
            named_by_client=self._upstreams.named_by_client(download.namespace),
        )
        try:
            if beside_others and body.status not in (200, 206):
                # A refusal is the client's answer, a 5xx may be this very concurrency:
                # either way, one range at a time decides.
                raise _NotBesideOthers(f"answered {body.status}")
            if 400 <= body.status < 500 and body.status != 416:
                if download.ready.is_set():
                    # Clients stream this blob already (their 200 went out): the refusal
                    # cannot reach them. The download fails, and their streams with it.
                    raise UpstreamError(base, f"refused the rest of the blob ({body.status})")
                error_body = await body.read_all(ERROR_BODY_LIMIT)
                download.refused(
                    UpstreamRefusal(
                        body.status, pick_headers(body.headers, FORWARDED_ERROR_HEADERS), error_body
                    )
                )
                if partial is not None:
                    self._store.release_partial(partial)
                return None
            start, length, size = _body_extent(body, base)
            if body.status == 206 and start != offset:
                # Not what was asked: written where it claims, it would leave (and ask for)
                # another gap, answered the same way, forever.
                raise UpstreamError(base, f"answered from byte {start}, not {offset}")
            ranged = "range" in request_headers
            abandoned: PartialBlob | None = None
            if partial is not None and (
                restart := _restart_reason(partial, body.status, ranged, size)
            ):
                if beside_others:
                    raise _NotBesideOthers(restart)
                log.info("%s: starting over: %s", digest, restart)
                abandoned, partial = partial, None
                async with abandoned.write_lock:
                    abandoned.discard_sync()
                self._store.release_partial(abandoned)
            if partial is None:
                # Fetched with credentials, the bytes are private to this registry before any
                # other client can see them (a joining client must pass its access check).
                origins = self._origins(download)
                partial = await self._store.open_partial(
                    digest, size, origins=origins, repository=self._repository(download)
                )
            else:  # continuing (after the swarm, say): these bytes come from here too
                partial.add_origins(self._origins(download))
            download.opened(partial)
            if abandoned is not None:
                # Its readers may hold bytes the new start will not match: they cannot go on.
                # Told only now, so that those still waiting for the whole blob (Range
                # requests) find the new partial.
                abandoned.fail(UpstreamError(base, "the download started over"))
            if start and not beside_others:
                end_byte = start + length - 1
                log.info("resuming %s at byte %d (to %d of %d)", digest, start, end_byte, size)
            # Not a byte of a range past what was asked: beside other requests those bytes
            # are another gap's, which its own request is filling. (A 200 that starts the
            # blob over is taken whole.)
            stop = start + length
            if end is not None and body.status == 206:
                stop = min(stop, end)
            rest = None
            if rest_beside and body.status == 206:
                # The registry's clock is the one a token's expiry is held to.
                registry_now = _http_date(body.headers.get("date")) or time.time()
                elapsed = trio.current_time() - download.started
                window = chunk_window(headers.get("authorization"), registry_now, elapsed)
                rest = _chunks_after(partial, stop, download.started, window, asked_at)
            if rest is not None:
                await self._pump_beside_chunks(download, headers, body, partial, start, stop, rest)
            else:
                await self._pump(download, body, partial, start, stop, buffers)
        finally:
            await body.aclose()
        return partial

    def _first_chunk_end(self, digest: str, repository: Repository, expiring: bool) -> int | None:
        """Where the first chunk of a blob fetched whole ends (a piece boundary), when a
        manifest `repository` served gives the blob's size and it is large enough for chunks;
        else None."""
        size = self._store.descriptor_sizes.size_of(repository, digest)
        if size is None:
            return None
        layout = PieceLayout(size, self._store.piece_size_for(size))
        if not chunked(layout.count, layout.size):
            return None
        least, flows = least_pieces(layout.piece_size), whole_flows(layout.size)
        _, end = first_chunk(layout.count, least, expiring, flows)
        return end * layout.piece_size

    async def _pump_beside_chunks(
        self,
        download: Download,
        headers: dict[str, str],
        body: BlobStream,
        partial: PartialBlob,
        start: int,
        stop: int,
        rest: Chunks,
    ) -> None:
        """Receive the first chunk's `body` while up to `rest.flows` - 1 Range requests fetch
        the `rest` of the blob, chunk after chunk in order (they open one at a time:
        `Chunks.opens_after`); once the first is in, its flow takes the next chunks too. A chunk
        answered in a way only the one-at-a-time path may act on is left to the fetch's next
        round (`_fetch_upstream` asks for whatever is missing); any other failure ends every
        request and is raised."""
        failure: Exception | None = None

        async def fetch_rest(cancel_scope: trio.CancelScope, flows: int, first: int) -> None:
            nonlocal failure
            try:
                await self._fetch_runs(download, headers, partial, [], rest, flows, first)
            except _NotBesideOthers as exc:
                rest.close()  # no flow takes another chunk: the next round asks for the rest
                partial.notify()  # and flows not open yet stop waiting for bytes to open
                log.info("%s: the other chunks left to the next round: %s", partial.digest, exc)
            except Exception as exc:  # raised below, outside the nursery: no exception group
                failure = failure or exc
                cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            # The others open one at a time (`Chunks.opens_after`), from flow 1 on.
            nursery.start_soon(fetch_rest, nursery.cancel_scope, rest.flows - 1, 1)
            try:
                await self._pump(download, body, partial, start, stop, BUFFER_COUNT // rest.flows)
                await body.aclose()  # read to its end: what else it sends is the others'
            except Exception as exc:  # raised below, outside the nursery: no exception group
                failure = failure or exc
                nursery.cancel_scope.cancel()
            else:
                # On to the next chunk: flow 0, open from the start.
                nursery.start_soon(fetch_rest, nursery.cancel_scope, 1, 0)
        if failure is not None:
            raise failure

    def _registry_url(self, download: Download) -> str:
        """The registry (base URL) this download asks: its bytes and told sizes come from
        there, and bytes fetched with credentials are private to it."""
        return self._upstreams.base_url(download.namespace)

    def _repository(self, download: Download) -> Repository:
        """The repository this download asks, at its registry: only the sizes its own
        manifests give check the sizes told (pieces/descriptors.py)."""
        return Repository(self._registry_url(download), download.name)

    def _origins(self, download: Download) -> list[str]:
        """The registries this download's bytes are private to (none when fetched without
        credentials: public)."""
        if download.auth_key is None:
            return []
        return [self._registry_url(download)]

    async def _pump(
        self,
        download: Download,
        body: BlobStream,
        partial: PartialBlob,
        start: int,
        end: int,
        buffers: int = BUFFER_COUNT,
    ) -> None:
        """Receive the body in one task and write it from a worker thread, so the two overlap,
        through at most `buffers` receive buffers (those of concurrent ranges add up).

        When the upstream breaks off, what was received is still written first, so a resume
        starts as late as possible.
        """
        pipe = _BufferPipe(buffers, BUFFER_SIZE)
        broke_off: UpstreamError | None = None
        write_error: Exception | None = None

        async def receive() -> None:
            nonlocal broke_off
            received = start
            try:
                while received < end:
                    buffer = await pipe.get_free()
                    view = memoryview(buffer)[: min(len(buffer), end - received)]
                    filled = 0
                    while filled < len(view):
                        count = await body.readinto(view[filled:])
                        if count == 0:
                            break
                        filled += count
                        if pipe.writer_waiting and filled >= EARLY_HANDOFF:
                            break
                    await self._download_limit.consume(filled)
                    pipe.put_full(buffer, filled)
                    received += filled
                    if filled < len(view) and count == 0:
                        break
            except UpstreamError as exc:
                broke_off = exc
            finally:
                pipe.close()

        offset = start
        # Counted while its bytes arrive (peer/swarm/inflow.py): a first chunk's flow that
        # goes on to the next chunks does so inside the first request's call.
        self.streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                try:
                    while (full := await pipe.take_full()) is not None:
                        views = [memoryview(buffer)[:length] for buffer, length in full]
                        self._store.ensure_room(partial, sum(length for _, length in full))
                        async with partial.write_lock:
                            completed = await trio.to_thread.run_sync(
                                partial.write_sync, offset, views
                            )
                        written = sum(length for _, length in full)
                        offset += written
                        download.received_from_upstream(written)
                        self.bytes_from_upstream += written
                        pipe.give_back([buffer for buffer, _ in full])
                        partial.announce(completed)
                except Exception as exc:  # raised below, outside the nursery: no exception group
                    write_error = exc
                    nursery.cancel_scope.cancel()
        finally:
            self.streams -= 1
        if write_error is not None:
            raise write_error
        if broke_off is not None:
            raise broke_off
        if offset != end:
            message = f"closed the connection at byte {offset} of {start}-{end}"
            raise UpstreamError(body.url, message)


def _never(_download: Download) -> bool:
    return False


def _chunks_after(
    partial: PartialBlob, stop: int, started: float, window: float | None, asked_at: float
) -> Chunks | None:
    """The chunks of `partial`'s blob from byte `stop` on (the first chunk's end, asked for
    at `asked_at`), asked for within `window` of `started` (chunks.chunk_window); None when
    there are none, or when it holds bytes already (another download's partial: the fetch's
    next round asks for what it lacks)."""
    layout = partial.layout
    if partial.bytes_present or stop >= layout.size or stop % layout.piece_size:
        return None
    least = least_pieces(layout.piece_size)
    cursor = stop // layout.piece_size
    flows = whole_flows(layout.size)
    return Chunks(
        layout.count, cursor, least, started, window=window, flows=flows, measured_from=asked_at
    )


def _http_date(value: str | None) -> float | None:
    """An HTTP Date header as seconds from the epoch; None when absent or not a date."""
    if not value or len(value) > 64:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": HTTP dates are in GMT
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _chunk_bytes(partial: PartialBlob, chunks: Chunks | None) -> tuple[int, int] | None:
    """The next chunk's bytes [start, end), or None."""
    if chunks is None:
        return None
    taken = chunks.take(trio.current_time(), partial.bytes_present // partial.layout.piece_size)
    if taken is None:
        return None
    return partial.layout.start(taken[0]), partial.layout.end(taken[1] - 1)


def _restart_reason(partial: PartialBlob, status: int, ranged: bool, size: int) -> str | None:
    """Why an answer (`status`, for a blob of `size`) cannot continue `partial`; None when it
    can."""
    if partial.layout.size != size:
        return f"its size changed from {partial.layout.size} to {size}"
    if status == 200 and ranged:
        # The whole blob where we asked for a part. Written over the pieces kept from before,
        # it would skip their bytes in this stream, and if those pieces were wrong (left by a
        # lying upstream) the blob would fail its sha256 and this pull with it. These bytes
        # come anyway: take them all, from byte 0.
        return "the upstream ignored the Range request"
    return None


def _body_extent(resp: BlobStream, base: str) -> tuple[int, int, int]:
    """(offset of the first body byte, body length, total blob size) of a 200 or 206 answer."""
    if resp.status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", ""))
        if match is None:
            raise UpstreamError(base, "answered 206 without a valid Content-Range")
        first, last, size = (int(g) for g in match.groups())
        if not first <= last < size:
            raise UpstreamError(base, f"answered 206 with a bad Content-Range {match.group(0)}")
        return first, last + 1 - first, size
    if resp.status != 200:
        raise UpstreamError(base, f"answered {resp.status} {resp.reason}", resp.status)
    length = resp.headers.get("content-length")
    if length is None or not length.isdigit():
        raise UpstreamError(base, "sent a blob without Content-Length")
    return 0, int(length), int(length)
