"""Preheat across the cluster, the swarm's part: asking a member to fetch and keep a blob
(Warm) and waiting for its answer (Warmed); queueing the Warms members send us for the
preheater (peer/preheat/) to carry out.

Only members (links that proved the cluster token) can send a Warm, and what it makes this
node do is what a client's GET of the blob would: the same owner, swarm and access rules, with
the credentials it carries. Bounded: at most QUEUE_LIMIT Warms wait here, a quarter of them one
member's; more are answered 503 (a link that keeps sending them through BUSY_LIMIT such
answers in a row is closed). The preheater takes them from the members in turn, each member's
in the order sent: one member's Warms at a slow registry once held every other member's back
until all of them were carried out (first come, first served). An
asker's wait ends with the answer to its own Warm (matched by its request number), when the
link it went on closes, when the member leaves the cluster, or after `ask`'s time limit.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from peer.swarm.link import LinkClosed, PeerLink
from wire.errors import LocalProtocolError
from wire.events import Warm, Warmed

log = logging.getLogger("pollen.swarm")

QUEUE_LIMIT = 256
# A quarter of the queue for one member's Warms, queued or being carried out: one member
# filling all of it had every other member's preheat answered 503.
MEMBER_SHARE = 4
BUSY_LIMIT = 1024  # 503 answers one link may cost us before it is closed
CHECK_EVERY = 5.0  # seconds between checks that a member we wait for is still alive


@dataclass(eq=False)
class _Waiting:
    link: PeerLink
    done: trio.Event = field(default_factory=trio.Event)
    answer: Warmed | None = None


class Warming:
    def __init__(self, queue_limit: int = QUEUE_LIMIT) -> None:
        self._queue_limit = queue_limit
        # Each member's Warms waiting, in the order sent; the members in the order of their
        # turns (the one served last goes to the back).
        self._queued: dict[bytes, collections.deque[tuple[PeerLink, Warm]]] = {}
        self._queued_count = 0
        self._ready = trio.Semaphore(0)  # one token per Warm waiting
        self._member_limit = max(1, queue_limit // MEMBER_SHARE)
        self._taken: collections.Counter[bytes] = collections.Counter()  # per member, unanswered
        self._waiting: dict[int, _Waiting] = {}
        self._numbers = itertools.count(1)
        self._busy: dict[PeerLink, int] = {}

    # ---- a member asks us --------------------------------------------------------------

    async def received(self, link: PeerLink, warm: Warm) -> None:
        """Queue a member's Warm for the preheater; a full queue, or the member's share of it
        taken, answers 503 at once."""
        if (
            self._taken[link.peer_id] < self._member_limit
            and self._queued_count < self._queue_limit
        ):
            self._queued.setdefault(link.peer_id, collections.deque()).append((link, warm))
            self._queued_count += 1
            self._taken[link.peer_id] += 1
            self._ready.release()
            self._busy.pop(link, None)  # only a run of refusals counts as a flood
        else:
            busy = self._busy[link] = self._busy.get(link, 0) + 1
            if busy > BUSY_LIMIT:
                log.warning(
                    "closing the link to %s: it floods us with Warms", link.peer_id.hex()[:12]
                )
                await link.close()
                return
            link.post_answer(
                Warmed(warm.request, warm.digest, 503, "busy: too many blobs to warm queued here")
            )

    async def take(self) -> tuple[PeerLink, Warm]:
        """The next Warm to carry out (waits for one): the next member's in turn."""
        await self._ready.acquire()
        return self._next()

    def take_nowait(self) -> tuple[PeerLink, Warm]:
        """`take`, or trio.WouldBlock when no Warm waits."""
        self._ready.acquire_nowait()
        return self._next()

    def _next(self) -> tuple[PeerLink, Warm]:
        member, queue = next(iter(self._queued.items()))
        taken = queue.popleft()
        del self._queued[member]
        if queue:
            self._queued[member] = queue  # its next one after every other member's
        self._queued_count -= 1
        return taken

    def answer(self, link: PeerLink, answer: Warmed) -> None:
        """Post the answer to a Warm taken (`take`) on the link it came by (gone: the
        asker hears so); the member's share has room for another. Posted, not sent: a
        member that does not read held the preheater's worker for SEND_TIMEOUT with a send,
        and its answers are bounded while unread (`PeerLink.post_answer`)."""
        self._taken[link.peer_id] -= 1
        if self._taken[link.peer_id] <= 0:
            del self._taken[link.peer_id]
        link.post_answer(answer)

    # ---- we ask a member ---------------------------------------------------------------

    async def ask(
        self,
        link: PeerLink,
        digest: str,
        namespace: str | None,
        repository: str,
        authorization: str | None,
        *,
        alive: Callable[[], bool],
        timeout: float,
    ) -> Warmed:
        """Ask the member at the other end of `link` to warm `digest`; its answer, or a 502
        (the link closed, the member left: `alive()` turned False) or 504 (no answer within
        `timeout` seconds) of our own."""
        number = next(self._numbers)
        waiting = self._waiting[number] = _Waiting(link)
        try:
            try:
                await link.send(Warm(number, digest, namespace, repository, authorization))
            except (LinkClosed, LocalProtocolError) as exc:
                return Warmed(number, digest, 502, f"cannot ask the member: {exc}")
            with trio.move_on_after(timeout):
                while not waiting.done.is_set():
                    with trio.move_on_after(CHECK_EVERY):
                        await waiting.done.wait()
                    if not waiting.done.is_set() and not alive():
                        return Warmed(number, digest, 502, "the member left the cluster")
            if waiting.answer is None:
                return Warmed(number, digest, 504, f"no answer within {timeout:.0f}s")
            return waiting.answer
        finally:
            del self._waiting[number]

    def answered(self, link: PeerLink, answer: Warmed) -> None:
        """A member's Warmed: wakes the Warm it answers, if it went on this link."""
        waiting = self._waiting.get(answer.request)
        if waiting is not None and waiting.link is link:
            waiting.answer = answer
            waiting.done.set()

    def link_closed(self, link: PeerLink) -> None:
        """A link closed: the Warms that went on it will not be answered."""
        self._busy.pop(link, None)
        for number, waiting in self._waiting.items():
            if waiting.link is link and not waiting.done.is_set():
                waiting.answer = Warmed(number, "", 502, "the link to the member was lost")
                waiting.done.set()
