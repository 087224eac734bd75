"""The swarm's side of Inflow (peer/swarm/swarm.py): what it counts as coming in and whom it
tells, with stand-in links and a stand-in fetch, under a mock clock."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import trio

from peer.cluster.membership import Membership
from peer.swarm.digest_state import DigestState
from peer.swarm.inflow import COALESCE
from peer.swarm.swarm import Swarm
from pieces.store import Store
from wire.events import Event, Inflow
from wire.identity import NodeIdentity

DIGEST = "sha256:" + "c" * 64
SENDING, WAITING, IDLE = (NodeIdentity.generate().node_id for _ in range(3))


@dataclass(eq=False)
class Link:
    """A PeerLink stand-in: the receiving state the swarm reads, what it posts."""

    peer_id: bytes
    receiving_piece: bool = False
    piece_done_at: float = -math.inf
    closed: bool = False
    posted: list[Event] = field(default_factory=list)

    def post(self, event: Event) -> None:
        self.posted.append(event)


class Upstream:
    """The fetch side: `streams` answers arriving from the registry now."""

    def __init__(self, streams: int) -> None:
        self.streams_now = streams

    def blobs(self) -> int:
        return 1 if self.streams_now > 0 else 0

    def blobs_wanted_now(self) -> int:
        return self.blobs()

    def streams(self) -> int:
        return self.streams_now


def swarm_with(tmp_path: Path, links: list[Link], asking: set[bytes], streams: int) -> Swarm:
    me = NodeIdentity.generate()
    swarm = Swarm(
        me,
        Membership(me.node_id, ("127.0.0.1", 1)),
        Store(tmp_path),
        None,  # type: ignore[arg-type]  # no access checks on these paths
        b"token",
        upstream=Upstream(streams),  # type: ignore[arg-type]
    )
    for link in links:
        swarm.links[link.peer_id] = link  # type: ignore[assignment]
        swarm._open_links[link.peer_id] = {link}  # type: ignore[arg-type]
    state = swarm.state(DIGEST)
    state.fetch = SimpleNamespace(  # type: ignore[assignment]
        asking=lambda: set(asking), link_lost=lambda peer, last: None
    )
    assert isinstance(state, DigestState)
    return swarm


async def test_a_change_is_told_to_the_peers_where_requests_wait_counting_registry_answers(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    sending, waiting, idle = Link(SENDING, receiving_piece=True), Link(WAITING), Link(IDLE)
    swarm = swarm_with(tmp_path, [sending, waiting, idle], {SENDING, WAITING}, streams=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(swarm._inflow_loop)
        swarm._inflow_changed()
        await trio.sleep(COALESCE / 2)
        assert waiting.posted == []  # not yet: a change is told COALESCE later
        await trio.sleep(COALESCE)
        # One link receiving and two registry answers; told only where requests wait and
        # nothing comes from (not the peer sending to us, not the one we ask nothing of).
        assert waiting.posted == [Inflow(3)]
        assert sending.posted == idle.posted == []
        # Its piece ends just before the change is told, the next one on its way: still
        # counted, the same number, no news.
        swarm._inflow_changed()
        await trio.sleep(COALESCE * 0.75)
        sending.receiving_piece = False
        sending.piece_done_at = trio.current_time()
        swarm._inflow_changed()  # a flush is due already
        await trio.sleep(COALESCE * 0.3)  # the flush is past; the gap is not over
        assert waiting.posted == [Inflow(3)]
        assert sending.posted == []
        sending.receiving_piece = True  # the next piece, within the gap
        await trio.sleep(2 * COALESCE)  # counted again once the gap is over: no news
        assert waiting.posted == [Inflow(3)]
        assert sending.posted == []
        # The sender's piece ends and no other follows: it counts no more once the change
        # is told, and it holds requests of ours: it hears the number too.
        sending.receiving_piece = False
        sending.piece_done_at = trio.current_time()
        swarm._inflow_changed()
        await trio.sleep(2 * COALESCE)
        assert waiting.posted == [Inflow(3), Inflow(2)]
        assert sending.posted == [Inflow(2)]
        nursery.cancel_scope.cancel()


async def test_a_piece_that_ends_just_before_a_flush_with_none_after_it_is_told_later(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The flush counts a link whose piece ended just now as receiving (the next piece may
    be on its way); when none comes, nothing else would say so: it is counted again."""
    sending, waiting = Link(SENDING, receiving_piece=True), Link(WAITING)
    swarm = swarm_with(tmp_path, [sending, waiting], {WAITING}, streams=0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(swarm._inflow_loop)
        swarm._inflow_changed()
        await trio.sleep(COALESCE * 0.9)
        sending.receiving_piece = False
        sending.piece_done_at = trio.current_time()
        swarm._inflow_changed()  # a flush is due already
        await trio.sleep(COALESCE * 0.2)
        assert waiting.posted == [Inflow(1)]  # counted: it may continue
        await trio.sleep(10)
        assert waiting.posted == [Inflow(1), Inflow(0)]  # it did not
        nursery.cancel_scope.cancel()


async def test_requests_go_after_the_number_once_and_a_peer_gone_is_forgotten(
    tmp_path: Path,
) -> None:
    waiting = Link(WAITING)
    swarm = swarm_with(tmp_path, [waiting], {WAITING}, streams=1)
    assert swarm.inflow_before_requests(WAITING) == Inflow(1)
    assert swarm.inflow_before_requests(WAITING) is None  # told already
    swarm.uploads.lanes.report(WAITING, 4)  # what the peer told us of its own downlink
    waiting.closed = True
    swarm._link_closed(waiting)  # type: ignore[arg-type]
    assert swarm.uploads.lanes.inflows_of(WAITING) is None
    assert swarm.inflow_before_requests(WAITING) == Inflow(1)  # a new link hears it again


async def test_a_peer_sending_us_a_piece_hears_the_number_once_it_stops(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Requests to a peer that sends us a piece now go without the number (it ranks our link
    only once it waits: on a small cluster every link has a slot, and the Inflows before
    requests were most of them); when its piece ends and none follows, it is told."""
    sending = Link(SENDING, receiving_piece=True)
    swarm = swarm_with(tmp_path, [sending], {SENDING}, streams=0)
    assert swarm.inflow_before_requests(SENDING) is None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(swarm._inflow_loop)
        sending.receiving_piece = False
        sending.piece_done_at = trio.current_time()
        swarm._inflow_changed()
        await trio.sleep(10)
        assert sending.posted == [Inflow(0)]
        nursery.cancel_scope.cancel()
    assert swarm.inflow_before_requests(SENDING) is None  # told it already
