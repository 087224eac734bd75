"""The client on each host: it pulls the image through its local node, K blobs at a time.

The testbed's client is `skopeo copy` (bench/rollout.py), which copies up to 6 blobs at once
(containers/image's maxParallelDownloads); containerd's default is 3 (`--parallel`). The client
first gets the manifest (a request through the node to the registry: two round trips to the
origin, no bandwidth modelled), then asks for the blobs in order, starting the next one as soon
as one completes. Serving the manifest makes the node prefetch its blobs (peer/fetch/prefetch.py:
DEFAULT_CONCURRENCY at a time, in the manifest's order) unless the run says --no-prefetch.

How a blob completes (docs/issue10/HISTORY.md, *The clients' reading*):
- `read_rate` None: when the node holds all of it (the client streams it while it arrives and
  its copy is free).
- `read_rate` R bytes/s: the client reads each blob from its start as the node's pieces arrive
  in order (the node serves a blob's bytes in order and waits at a missing piece), at R
  bytes/s shared equally by the blobs it reads at once that have bytes to read. On the
  testbed a client copies over loopback, hashes and writes to disk on a machine it shares
  with the nodes: its reading, not the swarm, may end the pull. A blob counts when read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.simulate.fetch import BlobState
    from bench.simulate.node import SimNode

SKOPEO_PARALLEL = 6
CAUGHT_UP = 1e-6  # bytes: a reading this close to what it can read has read it (float time)


class _Reading:
    """One blob the client reads: how far it has read, how far the node's pieces go in order."""

    def __init__(self, state: BlobState) -> None:
        self.state = state
        self.size = state.layout.size
        self.position = 0.0  # bytes read
        self._prefix = 0  # pieces held from the blob's start, without a gap

    def readable(self) -> int:
        """Bytes the node can serve from the start, in order."""
        layout, have = self.state.layout, self.state.have
        while self._prefix < layout.count and self._prefix in have:
            self._prefix += 1
        if self._prefix == layout.count:
            return self.size
        return self._prefix * layout.piece_size

    def waiting(self) -> bool:
        """Read all it can: it waits for the node's next piece in order (or is done)."""
        return self.position >= self.readable() - CAUGHT_UP

    def done(self) -> bool:
        return self.position >= self.size - CAUGHT_UP


class Client:
    def __init__(
        self,
        node: SimNode,
        digests: list[str],
        parallel: int,
        on_done: Callable[[Client], None],
        read_rate: float | None = None,
    ) -> None:
        if parallel < 1:
            raise ValueError("a client fetches at least one blob at a time")
        if read_rate is not None and read_rate <= 0:
            raise ValueError("a client reads at a positive rate")
        self.node = node
        self.digests = digests
        self.parallel = parallel
        self.on_done = on_done
        self.read_rate = read_rate
        self.started_at: float | None = None
        self.done_at: float | None = None
        self._next = 0
        self._left = len(digests)
        self._readings: list[_Reading] = []
        self._synced = 0.0  # when the readings' positions were last brought up to date
        self._wake_generation = 0  # a scheduled wake-up counts only if no newer one was set

    def start(self) -> None:
        queue = self.node.world.queue
        self.started_at = queue.now
        queue.at(queue.now + 4 * self.node.world.latency, self._manifest)

    def _manifest(self, _arg: object) -> None:
        if self.node.world.prefetch:
            self.node.prefetch(self.digests)  # as the node does on serving a manifest
        for _ in range(min(self.parallel, len(self.digests))):
            self._ask_next()

    def _ask_next(self) -> None:
        if not self.node.alive or self._next >= len(self.digests):
            return
        digest = self.digests[self._next]
        self._next += 1
        self.node.client_reads(digest)
        if self.read_rate is None:
            self.node.request_blob(digest, self._blob_done)
            return
        self._catch_up()
        state = self.node.state(digest)
        self._readings.append(_Reading(state))
        state.watchers.append(self._piece_arrived)
        self.node.request_blob(digest, _ignore)
        self._reschedule()

    def _blob_done(self, now: float) -> None:
        if not self.node.alive:
            return
        self._left -= 1
        if self._left == 0:
            self.done_at = now
            self.on_done(self)
        else:
            self._ask_next()

    # ---- reading at a rate -------------------------------------------------------------------

    def _piece_arrived(self) -> None:
        self._catch_up()
        self._reschedule()

    def _share(self) -> float:
        """Each reading's rate now: the client's rate over those that have bytes to read."""
        assert self.read_rate is not None
        reading = sum(1 for r in self._readings if not r.waiting())
        return self.read_rate / reading if reading else 0.0

    def _catch_up(self) -> None:
        """Bring every reading to now. Between two calls the set of readings that have bytes to
        read does not change (every change calls this first), so each read at the same share."""
        now = self.node.world.queue.now
        elapsed, self._synced = now - self._synced, now
        if elapsed <= 0:
            return
        share = self._share()
        for reading in self._readings:
            if not reading.waiting():
                reading.position = min(reading.position + share * elapsed, reading.readable())

    def _reschedule(self) -> None:
        """Finish the readings that are done; wake when the next one runs out of bytes."""
        finished = [r for r in self._readings if r.done()]
        for reading in finished:
            self._readings.remove(reading)
            self._stop_watching(reading)
        for _ in finished:
            self._blob_done(self.node.world.queue.now)  # may start a reading (and reschedule)
        if self.done_at is not None:
            return
        self._wake_generation += 1
        share = self._share()
        if not share:
            return  # every reading waits for a piece: `_piece_arrived` wakes us
        soonest = min(r.readable() - r.position for r in self._readings if not r.waiting())
        queue = self.node.world.queue
        queue.at(queue.now + soonest / share, self._wake, self._wake_generation)

    def _wake(self, generation: int) -> None:
        if generation != self._wake_generation or not self.node.alive:
            return
        self._catch_up()
        self._reschedule()

    def _stop_watching(self, reading: _Reading) -> None:
        watchers = reading.state.watchers
        if self._piece_arrived in watchers:
            watchers.remove(self._piece_arrived)


def _ignore(_now: float) -> None:
    """The node holds the blob: for a reading client that changes nothing by itself."""
