"""A node's uploads, as in the real node (peer/swarm/uploads.py), with the same
`UploadLanes` deciding whose turn it is: UPLOAD_SLOTS links served at once, one piece at a
time per link, the owner's first copies first.

A Request for a piece not here, then one from a choked peer, is answered with a Reject at
once (and so is one whose peer was choked while it waited for its turn). A request whose turn
comes is queued on its link, which the network sends (a flow); when it has been sent, the
lanes give the next turn. A Cancel that arrives before the piece starts turns it into a
Reject("cancelled"); one that arrives later is too late. A push (the owner's first copy to a
peer that invited it) takes turns the same way; nobody asked for it, so one that cannot go is
dropped without a Reject.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from peer.swarm.seeding import first_copies_pending
from peer.swarm.upload_lanes import UPLOAD_SLOTS, UploadLanes
from wire.events import Reject

if TYPE_CHECKING:
    from bench.simulate.network import Flow
    from bench.simulate.node import SimNode


class UploadRequest:
    __slots__ = ("cancelled", "digest", "gone", "index", "peer", "pushed", "sending")

    def __init__(self, peer: bytes, digest: str, index: int, pushed: bool = False) -> None:
        self.peer = peer
        self.digest = digest
        self.index = index
        self.pushed = pushed  # sent unasked: never cancelled, never answered with a Reject
        self.cancelled = False  # a Cancel came before it went out
        self.gone = False  # the link to the requester went away (or it was dropped)
        self.sending = False  # its bytes are on the wire: a Cancel is too late


class PeerSender:
    """The link from this node to one peer, as the network's feeder: the piece whose turn it
    is (the lanes give a link one turn at a time)."""

    def __init__(self, uploader: Uploader, peer: bytes) -> None:
        self.uploader = uploader
        self.peer = peer
        self.queue: deque[UploadRequest] = deque()
        self.feeding = False  # inside next_transfer: a turn must not wake the flow again
        self.flow: Flow | None = None
        self.started = 0.0  # when the transfer under way began (its rate is measured)

    def next_transfer(self, now: float) -> int | None:
        self.feeding = True
        try:
            while self.queue:
                request = self.queue[0]
                if request.cancelled:
                    self.queue.popleft()
                    self.uploader.refuse(request, "cancelled")
                    self.uploader.finished(request)
                    continue
                request.sending = True
                self.started = now
                return self.uploader.node.world.layouts[request.digest].length(request.index)
            return None
        finally:
            self.feeding = False

    def transfer_done(self, now: float, nbytes: int) -> None:
        request = self.queue.popleft()
        self.uploader.delivered(request, nbytes)
        # As the node measures it: the piece's bytes over the time it took to go out.
        self.uploader.finished(request, nbytes / max(now - self.started, 1e-9))


class Uploader:
    def __init__(self, node: SimNode, slots: int = UPLOAD_SLOTS) -> None:
        self.node = node
        self.lanes = UploadLanes(slots)
        self.senders: dict[bytes, PeerSender] = {}
        # peer -> (digest, index) -> its open request (for Cancel)
        self.open: dict[bytes, dict[tuple[str, int], UploadRequest]] = {}
        self.pushes: dict[bytes, dict[tuple[str, int], UploadRequest]] = {}  # not yet sent

    def sending_to(self, peer: bytes) -> bool:
        """Is a piece on its way to `peer` now (its connection's flow active)?"""
        sender = self.senders.get(peer)
        return sender is not None and sender.flow is not None and sender.flow.active

    def request(self, peer: bytes, digest: str, index: int) -> None:
        node = self.node
        state = node.blobs.get(digest)
        if state is None or index not in state.have:
            # As the node: refused before the choker hears of it (a request that cannot be
            # served must not count as asking).
            node.world.stats.rejects_missing += 1
            node.send(peer, Reject(digest, index, "missing"))
            return
        if not node.choker.request(peer, node.world.queue.now):
            node.world.stats.rejects_choked += 1
            node.send(peer, Reject(digest, index, "choked"))
            return
        request = UploadRequest(peer, digest, index)
        self.open.setdefault(peer, {})[(digest, index)] = request
        urgent = first_copies_pending(state.seeder)
        stored = node.recent_pieces.stored_at(digest, index)
        self._turns(self.lanes.add(peer, request, urgent, stored))

    def pushing(self, peer: bytes, digest: str, index: int) -> bool:
        return (digest, index) in self.pushes.get(peer, {})

    def push(self, peer: bytes, digest: str, index: int) -> None:
        """Send a piece unasked (the peer invited it): in its turn, as a request would go."""
        node = self.node
        request = UploadRequest(peer, digest, index, pushed=True)
        self.pushes.setdefault(peer, {})[(digest, index)] = request
        state = node.blobs.get(digest)
        urgent = state is not None and first_copies_pending(state.seeder)
        stored = node.recent_pieces.stored_at(digest, index)
        self._turns(self.lanes.add(peer, request, urgent, stored))

    def cancel(self, peer: bytes, digest: str, index: int) -> None:
        request = self.open.get(peer, {}).get((digest, index))
        if request is not None and not request.sending:
            request.cancelled = True

    def finished(self, request: UploadRequest, rate: float | None = None) -> None:
        """The request whose turn it was is done (sent at `rate` bytes/s, or refused): the
        next turns."""
        self._turns(self.lanes.finished(request.peer, request, rate))

    def _turns(self, requests: list[object]) -> None:
        """Start the requests whose turn came; a refused one gives its turn on at once (a
        worklist, not recursion: a choked peer may have many requests queued)."""
        todo = list(requests)
        while todo:
            request = todo.pop()
            assert isinstance(request, UploadRequest)
            if not self._start(request):
                todo += self.lanes.finished(request.peer, request)

    def _start(self, request: UploadRequest) -> bool:
        """Its turn came: True when it is now queued on its link (False: refused)."""
        if request.gone:
            return False
        if request.cancelled:
            self.refuse(request, "cancelled")
            return False
        if request.peer in self.node.choker.choked:
            # As the node (peer/swarm/uploads.py): choked while it waited for its turn.
            self.refuse(request, "choked")
            return False
        state = self.node.blobs.get(request.digest)
        if state is None or request.index not in state.have:
            self.refuse(request, "missing")
            return False
        sender = self.senders.get(request.peer)
        if sender is None:
            sender = self.senders[request.peer] = PeerSender(self, request.peer)
            world = self.node.world
            sender.flow = world.network.open(self.node.host, world.by_id[request.peer].host, sender)
        sender.queue.append(request)
        if not sender.feeding:
            assert sender.flow is not None
            self.node.world.network.wake(sender.flow)
        return True

    def refuse(self, request: UploadRequest, reason: str) -> None:
        self._close(request)
        if request.pushed:
            return  # nobody asked: nothing to answer
        stats = self.node.world.stats
        if reason == "cancelled":
            stats.uploads_cancelled += 1
        elif reason == "choked":
            stats.rejects_choked += 1
        else:
            stats.rejects_missing += 1
        self.node.send(request.peer, Reject(request.digest, request.index, reason))

    def delivered(self, request: UploadRequest, nbytes: int) -> None:
        self._close(request)
        if request.pushed:
            self.node.world.stats.pieces_pushed += 1
        self.node.piece_sent(request.peer, request.digest, request.index)
        self.node.choker.served(request.peer, nbytes)
        self.node.world.deliver_piece(
            self.node, request.peer, request.digest, request.index, nbytes
        )

    def _close(self, request: UploadRequest) -> None:
        requests = (self.pushes if request.pushed else self.open).get(request.peer)
        key = (request.digest, request.index)
        if requests is not None and requests.get(key) is request:
            del requests[key]

    def link_lost(self, peer: bytes) -> None:
        """The link to `peer` is gone: what it asked for is dropped, its slot moves on."""
        for requests in (self.open.pop(peer, {}), self.pushes.pop(peer, {})):
            for request in requests.values():
                request.gone = True
        sender = self.senders.pop(peer, None)
        if sender is not None:
            assert sender.flow is not None
            self.node.world.network.close(sender.flow)
            sender.queue.clear()
        self._turns(self.lanes.drop(peer))

    def close_all(self) -> None:
        """This node died: every upload stops."""
        for sender in self.senders.values():
            assert sender.flow is not None
            self.node.world.network.close(sender.flow)
        self.senders.clear()
        self.lanes = UploadLanes(self.lanes.slots)
        self.open.clear()
        self.pushes.clear()
