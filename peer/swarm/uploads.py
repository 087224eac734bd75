"""Serving other nodes' Requests: the access check, the choker's gate, an upload slot, sendfile.

A request waits for its turn (`upload_lanes.py`: a slot per link, one piece at a time on a
link, the owner's first copies first) and the upload rate cap; a request the peer cancelled
meanwhile, or whose peer was choked meanwhile, goes out as a Reject instead of megabytes
nobody wants any more.

Pushes: an owner sends a first copy unasked to a peer that invited it (wire/protocol.py,
Invite). It takes the same turns and checks as a request; one that can no longer go (the
peer choked or gone, the credit forgotten, access lost) is dropped without a word, since
nobody asked (its offer goes stale and is made again, peer/swarm/seeding.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import trio

from peer.rate_limit import RateLimiter
from peer.swarm.choker import Choker
from peer.swarm.grants import Grants
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.upload_lanes import UPLOAD_SLOTS, UploadLanes
from pieces.store import Store
from wire.errors import LocalProtocolError
from wire.events import FileRange, Piece, Reject, Request

# The Reject for a piece this node will not send: not here, or a private blob's piece the peer
# has not shown credentials for (the two must look alike).
MISSING = "missing"


class UploadCounters(Protocol):
    bytes_to_peers: int
    pieces_to_peers: int
    pieces_pushed: int
    uploads_cancelled: int


class Uploads:
    def __init__(
        self,
        store: Store,
        choker: Choker,
        grants: Grants,
        counters: UploadCounters,
        upload_limit: RateLimiter,
        piece_size_of: Callable[[str], int],
        urgent: Callable[[str], bool],
        stored_at: Callable[[str, int], float | None],
        holds: Callable[[str, int], bool],
        sent: Callable[[bytes, str, int], None],
        slots: int = UPLOAD_SLOTS,
    ) -> None:
        self._store = store
        self._choker = choker
        self._grants = grants
        self._counters = counters
        self._limit = upload_limit
        self._piece_size_of = piece_size_of  # the piece size a blob is cut to here
        self._urgent = urgent  # pieces of this blob go first (the owner's first copies)
        self._stored_at = stored_at  # when a piece was stored here: the newest go first
        self._holds = holds  # is the piece here (verified in a partial, or the blob)?
        self._sent = sent  # a piece went out whole to this peer (its owner's seeding counts it)
        self.lanes = UploadLanes(slots)
        self._turns: dict[object, trio.Event] = {}  # waiting ticket -> set when its turn comes
        # Pushes claimed and not yet sent or dropped: per link and digest (the credit they
        # hold), and each (peer, digest, index) once.
        self._push_claims: dict[tuple[PeerLink, str], int] = {}
        self._pushing: set[tuple[bytes, str, int]] = set()

    def pushing(self, peer: bytes, digest: str, index: int) -> bool:
        """Is `index` of `digest` on its way to `peer` unasked (claimed, not yet sent)?"""
        return (peer, digest, index) in self._pushing

    def claim_push(self, link: PeerLink, digest: str, index: int) -> bool:
        """May `index` of `digest` go to `link`'s peer unasked? True: the peer's credit on
        this link had room for it, now claimed (run `push` next). False: push nothing."""
        if (link.peer_id, digest, index) in self._pushing:
            return False
        claimed = self._push_claims.get((link, digest), 0)
        if link.closed or link.protocol.may_push.get(digest, 0) <= claimed:
            return False
        self._push_claims[(link, digest)] = claimed + 1
        self._pushing.add((link.peer_id, digest, index))
        return True

    async def push(self, link: PeerLink, digest: str, index: int) -> None:
        """Send a piece claimed with `claim_push`, in its turn; dropped if it can no longer go."""
        try:
            if not self._holds(digest, index):
                return
            async with self._turn(link.peer_id, digest, index) as turn:
                if link.closed or link.peer_id in self._choker.choked:
                    return
                await self._send_stored(link, digest, index, turn, pushed=True)
        finally:
            self.unclaim_push(link, digest, index)

    def unclaim_push(self, link: PeerLink, digest: str, index: int) -> None:
        """Give back a claim that `push` will not run for (`push` gives back its own)."""
        self._pushing.discard((link.peer_id, digest, index))
        left = self._push_claims.pop((link, digest)) - 1
        if left:
            self._push_claims[(link, digest)] = left

    async def serve(self, link: PeerLink, request: Request) -> None:
        digest, index = request.digest, request.index
        if not await self._grants.may_have_pieces(link.peer_id, digest) or not self._holds(
            digest, index
        ):
            # One answer, at once, for a piece not here and for a private blob's piece the
            # peer has shown no credentials for: "denied" told any member which private
            # blobs this node's clients pulled. Before the choker: such a request must not
            # count as asking, or peers that can never be served would hold the unchoked
            # places (never served, they rank first at every rechoke).
            await _reject(link, Reject(digest, index, MISSING))
            return
        if not self._choker.request(link.peer_id, trio.current_time()):
            await _reject(link, Reject(digest, index, "choked"))
            return
        async with self._turn(link.peer_id, digest, index) as turn:
            if link.closed:
                return  # its link's other requests get their turns, and end here too
            if link.peer_id in self._choker.choked:
                # Choked while it waited for a slot (BitTorrent's rule: a choke also refuses
                # what is queued). Served anyway, the queue of every peer that ever asked
                # would keep the slots, and choking would decide nothing: in the simulator
                # a rollout's last host took 9.6 x T_min at 100 nodes with queues served,
                # 3.3 x with them refused.
                await _reject(link, Reject(digest, index, "choked"))
                return
            if (digest, index) in link.cancelled:
                # Cancelled while waiting for an upload slot.
                await _reject(link, Reject(digest, index, "cancelled"))
                self._counters.uploads_cancelled += 1
                return
            if not await self._send_stored(link, digest, index, turn):
                await _reject(link, Reject(digest, index, MISSING))

    async def _send_stored(
        self, link: PeerLink, digest: str, index: int, turn: _Turn, *, pushed: bool = False
    ) -> bool:
        """Send the stored piece in `turn` (its rate set there); False: no longer stored."""
        # Opened here, not in a worker thread: an open and a stat of a file the store just
        # wrote or read cost microseconds, a thread hop per piece costs more (a wake-up of
        # another CPU, on a VM an exit to the host).
        source = self._store.open_piece_sync(digest, index, self._piece_size_of(digest))
        if source is None:
            return False
        fd, offset, length = source
        try:
            with self._store.holding(digest):  # not evicted while it goes out
                turn.rate = await self._send_piece(
                    link, digest, index, fd, offset, length, pushed=pushed
                )
        finally:
            os.close(fd)
        return True

    @contextlib.asynccontextmanager
    async def _turn(self, peer: bytes, digest: str, index: int) -> AsyncIterator[_Turn]:
        """Wait until this request's link holds an upload slot and it is this request's turn
        on the link; the next turn is given when the block ends (the lanes are told the rate
        the block set: a link far slower than the others gives its slot up)."""
        ticket = object()
        turns = self.lanes.add(peer, ticket, self._urgent(digest), self._stored_at(digest, index))
        event = None if ticket in turns else self._turns.setdefault(ticket, trio.Event())
        self._give(turns)
        if event is not None:
            try:
                await event.wait()
            except BaseException:
                self._turns.pop(ticket, None)
                self._give(self.lanes.withdraw(peer, ticket))
                raise
        turn = _Turn()
        try:
            yield turn
        finally:
            self._give(self.lanes.finished(peer, ticket, turn.rate))

    def _give(self, turns: list[object]) -> None:
        for ticket in turns:
            event = self._turns.pop(ticket, None)
            if event is not None:
                event.set()

    async def _send_piece(
        self,
        link: PeerLink,
        digest: str,
        index: int,
        fd: int,
        offset: int,
        length: int,
        *,
        pushed: bool = False,
    ) -> float | None:
        """Send one piece of an open file (the caller closes it), after the last checks; the
        rate it went out at (bytes/s, the rate cap's wait aside), None if it did not go."""
        try:
            # Checked again: the blob may have become private (a credentialed fetch of it
            # began) while this request waited for its upload slot.
            if not await self._grants.may_have_pieces(link.peer_id, digest):
                if not pushed:
                    await _reject(link, Reject(digest, index, MISSING))
                return None
            await self._limit.consume(length)
            started = trio.current_time()
            if await link.send(Piece(digest, index, FileRange(fd, offset, length), pushed)):
                self._sent(link.peer_id, digest, index)
                self._choker.served(link.peer_id, length)
                self._counters.bytes_to_peers += length
                self._counters.pieces_to_peers += 1
                self._counters.pieces_pushed += int(pushed)
                if self._limit.rate:
                    # Under an upload cap the pieces go out spaced, each into a drained
                    # socket buffer: their times say nothing of the link.
                    return None
                return length / max(trio.current_time() - started, 1e-6)
            self._counters.uploads_cancelled += 1
        except (LinkClosed, LocalProtocolError):
            pass
        return None


class _Turn:
    """A request's turn on its link: what it measured, for the lanes."""

    __slots__ = ("rate",)

    def __init__(self) -> None:
        self.rate: float | None = None  # bytes/s its piece went out at (None: not sent)


async def _reject(link: PeerLink, reject: Reject) -> None:
    with contextlib.suppress(LinkClosed, LocalProtocolError):
        await link.send(reject)
