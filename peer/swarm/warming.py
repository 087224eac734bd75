"""Preheat across the cluster, the swarm's part: asking a member to fetch and keep a blob
(Warm) and waiting for its answer (Warmed); queueing the Warms members send us for the
preheater (peer/preheat/) to carry out.

Only members (links that proved the cluster token) can send a Warm, and what it makes this
node do is what a client's GET of the blob would: the same owner, swarm and access rules, with
the credentials it carries. Bounded: at most QUEUE_LIMIT Warms wait here; more are answered
503 at once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import trio

from peer.swarm.link import LinkClosed, PeerLink
from wire.errors import LocalProtocolError
from wire.events import Warm, Warmed

log = logging.getLogger("pollen.swarm")

QUEUE_LIMIT = 256


@dataclass(eq=False)
class _Waiting:
    done: trio.Event = field(default_factory=trio.Event)
    answer: Warmed | None = None


class Warming:
    def __init__(self, queue_limit: int = QUEUE_LIMIT) -> None:
        self._send, self.incoming = trio.open_memory_channel[tuple[PeerLink, Warm]](queue_limit)
        self._waiting: dict[tuple[bytes, str], list[_Waiting]] = {}

    # ---- a member asks us --------------------------------------------------------------

    def received(self, link: PeerLink, warm: Warm) -> None:
        """Queue a member's Warm for the preheater; a full queue answers 503 at once."""
        try:
            self._send.send_nowait((link, warm))
        except trio.WouldBlock:
            link.post(Warmed(warm.digest, 503, "busy: too many blobs to warm queued here"))

    @staticmethod
    async def answer(link: PeerLink, answer: Warmed) -> None:
        """Send the answer to a Warm on the link it came by (gone: the asker hears so)."""
        with contextlib.suppress(LinkClosed, LocalProtocolError):
            await link.send(answer)

    # ---- we ask a member ---------------------------------------------------------------

    async def ask(self, link: PeerLink, warm: Warm) -> Warmed:
        """Send `warm` and wait for the member's answer (a 502 one if the link goes)."""
        waiting = _Waiting()
        key = (link.peer_id, warm.digest)
        self._waiting.setdefault(key, []).append(waiting)
        try:
            try:
                await link.send(warm)
            except (LinkClosed, LocalProtocolError) as exc:
                return Warmed(warm.digest, 502, f"cannot ask the member: {exc}")
            await waiting.done.wait()
            assert waiting.answer is not None
            return waiting.answer
        finally:
            waiters = self._waiting.get(key, [])
            if waiting in waiters:
                waiters.remove(waiting)
            if not waiters:
                self._waiting.pop(key, None)

    def answered(self, peer: bytes, answer: Warmed) -> None:
        """A member's Warmed: wakes whoever asked it for that blob (nobody: ignored)."""
        for waiting in self._waiting.pop((peer, answer.digest), []):
            waiting.answer = answer
            waiting.done.set()

    def link_lost(self, peer: bytes) -> None:
        """The peer's last link went: its unanswered Warms fail."""
        for key in [k for k in self._waiting if k[0] == peer]:
            for waiting in self._waiting.pop(key):
                waiting.answer = Warmed(key[1], 502, "the link to the member was lost")
                waiting.done.set()
