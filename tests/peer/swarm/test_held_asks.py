"""An owner's held-only asks (`SwarmFetch._held_next`), driven with a fake swarm: whatever
a node asked answers (a refusal of any kind, silence, a redirect), the owner ends up either
with a node that has the blob or fetching it itself, soon, and never fails its client's pull
for another node's refusal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio
import trio.testing

from peer.fetch.download import Download
from peer.swarm.bans import BanList
from peer.swarm.digest_state import DigestState
from peer.swarm.fetch import SwarmFetch
from peer.swarm.held_probe import HELD_PROBE_TIMEOUT
from peer.swarm.held_probe import not_held as not_held_answer
from wire.events import Event, Refused, Want

DIGEST = "sha256:" + "a" * 64
US = b"U" * 16
X, Y, Z = b"X" * 16, b"Y" * 16, b"Z" * 16
Answer = Callable[[Want], Event | None]  # None: silence


@dataclass(eq=False)
class FakeLink:
    peer_id: bytes
    swarm: FakeSwarm
    closed: bool = False

    async def send(self, event: Event) -> None:
        assert isinstance(event, Want) and event.held_only
        self.swarm.asked.append(self.peer_id)
        answer = self.swarm.answers[self.peer_id](event)
        if answer is not None:
            fetch = self.swarm.fetch
            assert fetch is not None
            await fetch.on_event(self, answer)  # type: ignore[arg-type]


@dataclass(eq=False)
class FakeSwarm:
    answers: dict[bytes, Answer]
    node_id: bytes = US
    bans: BanList = field(default_factory=BanList)
    asked: list[bytes] = field(default_factory=list)
    fetch: SwarmFetch | None = None

    async def link_to(self, peer_id: bytes) -> FakeLink:
        return FakeLink(peer_id, self)


def refused(status: int, headers: dict[str, str] | None = None) -> Answer:
    return lambda want: Refused(want.digest, status, headers or {}, b"no")


def not_held(source: bytes | None = None) -> Answer:
    return lambda want: not_held_answer(want.digest, source)


def silent(want: Want) -> None:
    return None


async def held_next(answers: dict[bytes, Answer], later: list[bytes]) -> tuple[bool, FakeSwarm]:
    swarm = FakeSwarm(answers)
    fetch = SwarmFetch(
        swarm,  # type: ignore[arg-type]
        DigestState(DIGEST),
        Download(DIGEST, None, "org/app", None),
        {},
    )
    swarm.fetch = fetch
    found = await fetch._held_next(later)
    if not found:
        assert fetch.owner is None and fetch.state.wanted_from is None
    return found, swarm


async def test_a_refusal_of_any_kind_is_not_the_clients_answer() -> None:
    # A 502 (its own registry fetch failed), a 401 (held, not for our client): we go on.
    answers = {X: refused(502), Y: refused(401), Z: not_held()}
    found, swarm = await held_next(answers, [X, Y, Z])
    assert not found and swarm.asked == [X, Y, Z]


async def test_a_named_source_is_asked_next() -> None:
    answers = {X: not_held(Z), Y: not_held(), Z: refused(502)}
    found, swarm = await held_next(answers, [X, Y])
    assert not found and swarm.asked == [X, Z, Y]


async def test_silent_nodes_hold_the_owner_back_for_the_probe_time_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    answers: dict[bytes, Answer] = {X: silent, Y: silent, Z: silent}
    start = trio.current_time()
    found, swarm = await held_next(answers, [X, Y, Z])
    assert not found
    assert trio.current_time() - start <= HELD_PROBE_TIMEOUT + 0.01
    assert swarm.asked[:2] == [X, Y]  # each silent one is left for the next
