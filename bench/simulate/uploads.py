"""A node's uploads: UPLOAD_SLOTS pieces served at once, one piece at a time per link.

As in the real node: a Request from a choked peer is answered with a Reject at once (and so is
one whose peer was choked while it waited for a slot); the others wait for one of the node's
upload slots (first come, first served, like trio's semaphore), then
for their link, which sends one piece after the other in the order they got their slot (the
link's send lock). A slot is held from when it is granted until the piece has been sent, also
while the piece waits behind others on its link. A Cancel that arrives before the piece starts
turns it into a Reject("cancelled"); one that arrives later is too late.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from peer.swarm.choker import UPLOAD_SLOTS
from wire.events import Reject

if TYPE_CHECKING:
    from bench.simulate.network import Flow
    from bench.simulate.node import SimNode


class UploadRequest:
    __slots__ = ("cancelled", "digest", "gone", "granted", "index", "peer", "sending")

    def __init__(self, peer: bytes, digest: str, index: int) -> None:
        self.peer = peer
        self.digest = digest
        self.index = index
        self.cancelled = False  # a Cancel came before it went out
        self.gone = False  # the link to the requester went away (or it was dropped)
        self.granted = False  # holds an upload slot
        self.sending = False  # its bytes are on the wire: a Cancel is too late


class PeerSender:
    """The link from this node to one peer, as the network's feeder: its queued pieces."""

    def __init__(self, uploader: Uploader, peer: bytes) -> None:
        self.uploader = uploader
        self.peer = peer
        self.queue: deque[UploadRequest] = deque()
        self.feeding = False  # inside next_transfer: a grant must not wake the flow again
        self.flow: Flow | None = None

    def next_transfer(self, now: float) -> int | None:
        self.feeding = True
        try:
            while self.queue:
                request = self.queue[0]
                if request.cancelled:
                    self.queue.popleft()
                    self.uploader.refuse(request, "cancelled")
                    self.uploader.release()
                    continue
                request.sending = True
                return self.uploader.node.world.layouts[request.digest].length(request.index)
            return None
        finally:
            self.feeding = False

    def transfer_done(self, now: float, nbytes: int) -> None:
        request = self.queue.popleft()
        self.uploader.delivered(request, nbytes)
        self.uploader.release()


class Uploader:
    def __init__(self, node: SimNode, slots: int = UPLOAD_SLOTS) -> None:
        self.node = node
        self.slots_free = slots
        self.waiting: deque[UploadRequest] = deque()
        self.senders: dict[bytes, PeerSender] = {}
        # peer -> (digest, index) -> its open request (for Cancel)
        self.open: dict[bytes, dict[tuple[str, int], UploadRequest]] = {}

    def request(self, peer: bytes, digest: str, index: int) -> None:
        node = self.node
        if not node.choker.request(peer, node.world.queue.now):
            node.world.stats.rejects_choked += 1
            node.send(peer, Reject(digest, index, "choked"))
            return
        request = UploadRequest(peer, digest, index)
        self.open.setdefault(peer, {})[(digest, index)] = request
        if self.slots_free and not self.waiting:
            if self._start(request):
                self.slots_free -= 1
        else:
            self.waiting.append(request)

    def cancel(self, peer: bytes, digest: str, index: int) -> None:
        request = self.open.get(peer, {}).get((digest, index))
        if request is not None and not request.sending:
            request.cancelled = True

    def release(self) -> None:
        """A slot is free again: the longest waiting request gets it."""
        self.slots_free += 1
        while self.slots_free and self.waiting:
            if self._start(self.waiting.popleft()):
                self.slots_free -= 1

    def _start(self, request: UploadRequest) -> bool:
        """Give `request` a slot: True when it now holds it (queued on its link)."""
        if request.gone:
            return False
        if request.cancelled:
            self.refuse(request, "cancelled")
            return False
        if request.peer in self.node.choker.choked:
            # As the node (peer/swarm/uploads.py): choked while it waited for a slot.
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
        request.granted = True
        sender.queue.append(request)
        if not sender.feeding:
            assert sender.flow is not None
            self.node.world.network.wake(sender.flow)
        return True

    def refuse(self, request: UploadRequest, reason: str) -> None:
        self._close(request)
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
        self.node.choker.served(request.peer, nbytes)
        self.node.world.deliver_piece(
            self.node, request.peer, request.digest, request.index, nbytes
        )

    def _close(self, request: UploadRequest) -> None:
        requests = self.open.get(request.peer)
        key = (request.digest, request.index)
        if requests is not None and requests.get(key) is request:
            del requests[key]

    def link_lost(self, peer: bytes) -> None:
        """The link to `peer` is gone: what it asked for is dropped, slots are freed."""
        for request in self.open.pop(peer, {}).values():
            request.gone = True
        sender = self.senders.pop(peer, None)
        if sender is None:
            return
        assert sender.flow is not None
        self.node.world.network.close(sender.flow)
        held = len(sender.queue)
        sender.queue.clear()
        for _ in range(held):
            self.release()

    def close_all(self) -> None:
        """This node died: every upload stops."""
        for sender in self.senders.values():
            assert sender.flow is not None
            self.node.world.network.close(sender.flow)
        self.senders.clear()
        self.waiting.clear()
        self.open.clear()
