"""Warm and Warmed between members, the swarm's part (no sockets): an answer reaches only the
Warm it answers; a wait ends when its link closes, when the member leaves, or at its time
limit; a member flooding us with Warms is answered 503 and then cut off."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing

from peer.swarm.warming import BUSY_LIMIT, Warming
from wire.events import Event, Warm, Warmed

DIGEST = "sha256:" + "a" * 64


@dataclass(eq=False)
class Link:
    """A PeerLink stand-in (hence the ignores where it is passed)."""

    peer_id: bytes = b"M" * 16
    sent: list[Event] = field(default_factory=list)
    posted: list[Event] = field(default_factory=list)
    closed: bool = False

    async def send(self, event: Event) -> bool:
        self.sent.append(event)
        return True

    def post_answer(self, event: Event) -> None:
        self.posted.append(event)

    async def close(self) -> None:
        self.closed = True


async def _ask(warming: Warming, link: Link, out: list[Warmed], **kwargs: object) -> None:
    answer = await warming.ask(
        link,  # type: ignore[arg-type]
        DIGEST,
        None,
        "team/app",
        kwargs.pop("authorization", None),  # type: ignore[arg-type]
        alive=kwargs.pop("alive", lambda: True),  # type: ignore[arg-type]
        timeout=kwargs.pop("timeout", 3600.0),  # type: ignore[arg-type]
    )
    out.append(answer)


async def test_each_answer_wakes_only_the_warm_it_answers() -> None:
    warming, link = Warming(), Link()
    first: list[Warmed] = []
    second: list[Warmed] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ask, warming, link, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(_ask, warming, link, second)
        await trio.testing.wait_all_tasks_blocked()
        one, two = link.sent
        assert isinstance(one, Warm) and isinstance(two, Warm) and one.request != two.request
        # Two jobs warm the same blob on the same member with different credentials: the
        # member refuses one and accepts the other.
        warming.answered(link, Warmed(two.request, DIGEST, 401, "refused"))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert first == [] and [a.status for a in second] == [401]
        other = Link()
        warming.answered(other, Warmed(one.request, DIGEST, 200, ""))  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        assert first == []  # an answer on another link is not the member's answer
        warming.answered(link, Warmed(one.request, DIGEST, 200, ""))  # type: ignore[arg-type]
    assert [a.status for a in first] == [200]


async def test_a_wait_ends_when_its_link_closes() -> None:
    warming, link = Warming(), Link()
    out: list[Warmed] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ask, warming, link, out)
        await trio.testing.wait_all_tasks_blocked()
        warming.link_closed(link)  # type: ignore[arg-type]
    assert out[0].status == 502 and "lost" in out[0].message


async def test_a_wait_ends_when_the_member_leaves(autojump_clock: trio.testing.MockClock) -> None:
    warming, link = Warming(), Link()
    alive = [True]
    out: list[Warmed] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _ask(warming, link, out, alive=lambda: alive[0]))
        await trio.sleep(60)
        assert out == []  # still alive: still waiting
        alive[0] = False
    assert out[0].status == 502 and "left the cluster" in out[0].message


async def test_a_wait_ends_at_its_time_limit(autojump_clock: trio.testing.MockClock) -> None:
    warming, link = Warming(), Link()
    out: list[Warmed] = []
    await _ask(warming, link, out, timeout=120.0)
    assert out[0].status == 504


async def test_a_member_that_floods_us_is_answered_busy_then_cut_off() -> None:
    warming, link = Warming(queue_limit=1), Link()
    for number in range(BUSY_LIMIT + 2):
        await warming.received(link, Warm(number, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
        if link.closed:
            break
    assert link.closed
    assert len(link.posted) == BUSY_LIMIT  # 503s, bounded
    assert all(isinstance(e, Warmed) and e.status == 503 for e in link.posted)


async def test_busy_answers_now_and_then_do_not_cut_a_member_off() -> None:
    warming, link = Warming(queue_limit=1), Link()
    for number in range(3 * BUSY_LIMIT):
        await warming.received(link, Warm(number, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
        if number % 10 == 9:  # the preheater carries one out now and then: room again
            taken, warm = warming.take_nowait()
            warming.answer(taken, Warmed(warm.request, warm.digest, 200, ""))
    assert not link.closed


async def test_one_member_takes_a_quarter_of_the_queue_at_most() -> None:
    """A member that fills the queue had every other member's preheat answered 503: its share
    is a quarter, queued or being carried out, and room again once one is answered."""
    warming, greedy, other = Warming(queue_limit=8), Link(b"G" * 16), Link(b"O" * 16)
    for number in range(10):
        await warming.received(greedy, Warm(number, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    assert [e.status for e in greedy.posted if isinstance(e, Warmed)] == [503] * 8
    await warming.received(other, Warm(1, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    assert other.posted == []  # queued
    taken, warm = warming.take_nowait()
    assert taken is greedy  # type: ignore[comparison-overlap]
    warming.answer(taken, Warmed(warm.request, warm.digest, 200, ""))
    await warming.received(greedy, Warm(10, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    busy = [e for e in greedy.posted if isinstance(e, Warmed) and e.status == 503]
    assert len(busy) == 8  # room again: queued, not refused


async def test_an_answer_never_waits_for_the_member_to_read() -> None:
    """A member that does not read held the preheater's worker with the send of its answer
    for SEND_TIMEOUT: the answer is posted (and bounded while unread), never awaited."""

    @dataclass(eq=False)
    class Unread(Link):
        async def send(self, event: Event) -> bool:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    warming, link = Warming(), Unread()
    await warming.received(link, Warm(1, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    taken, warm = warming.take_nowait()
    warming.answer(taken, Warmed(warm.request, warm.digest, 200, ""))  # returns at once
    assert link.posted == [Warmed(1, DIGEST, 200, "")]
    assert link.sent == []


async def test_members_are_served_in_turn() -> None:
    """One member's Warms at a slow registry held every other member's back until all of them
    were carried out (first come, first served): now the members take turns, each member's
    Warms in the order it sent them."""
    warming, busy, other = Warming(queue_limit=64), Link(b"B" * 16), Link(b"O" * 16)
    for number in range(5):
        await warming.received(busy, Warm(number, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    await warming.received(other, Warm(100, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    await warming.received(other, Warm(101, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    order = []
    for _ in range(7):
        link, warm = warming.take_nowait()
        order.append((link.peer_id[:1], warm.request))
    assert order == [
        (b"B", 0),
        (b"O", 100),
        (b"B", 1),
        (b"O", 101),
        (b"B", 2),
        (b"B", 3),
        (b"B", 4),
    ]
    try:
        warming.take_nowait()
    except trio.WouldBlock:
        pass
    else:
        raise AssertionError("a Warm was taken from an empty queue")


async def test_a_worker_waits_for_the_next_warm() -> None:
    warming, link = Warming(), Link()
    taken: list[int] = []

    async def worker() -> None:
        _, warm = await warming.take()
        taken.append(warm.request)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        assert taken == []
        await warming.received(link, Warm(7, DIGEST, None, "team/app", None))  # type: ignore[arg-type]
    assert taken == [7]
