"""What a fetch does with an owner's refusal of its Want: the owner is a member, perhaps a
liar, so no status, header or body of its refusal reaches the client; the node asks its own
upstream, whose answer the client gets (headers filtered as for any upstream answer). An owner
whose registry is busy (502, 503, 504) is asked again after a wait first, a few times."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
import trio

from peer.fetch.download import Download
from peer.swarm.bans import BanList
from peer.swarm.digest_state import DigestState
from peer.swarm.errors import OwnerUnavailable
from peer.swarm.fetch import SwarmFetch
from peer.swarm.owner_change import BUSY_STATUSES, BUSY_WAITS, wait_for_busy_owner
from wire.events import Event, Refused, Want

DIGEST = "sha256:" + "b" * 64
US, OWNER = b"U" * 16, b"O" * 16
# A forged challenge: a client that follows it sends its registry login to the realm's host.
EVIL = {"www-authenticate": 'Basic realm="https://evil.example/"', "set-cookie": "s=1"}


@dataclass(eq=False)
class RefusingOwner:
    swarm: OwnerFirstSwarm
    answer: Refused
    peer_id: bytes = OWNER
    closed: bool = False

    async def send(self, event: Event) -> None:
        assert isinstance(event, Want) and not event.held_only
        self.swarm.wants.append(trio.current_time())
        fetch = self.swarm.fetch
        assert fetch is not None
        await fetch.on_event(self, self.answer)  # type: ignore[arg-type]


@dataclass(eq=False)
class OwnerFirstSwarm:
    """The owner ranks first, then us; its link answers every Want with `answer`."""

    answer: Refused
    node_id: bytes = US
    bans: BanList = field(default_factory=BanList)
    fetch: SwarmFetch | None = None
    wants: list[float] = field(default_factory=list)  # when each Want reached the owner

    def owner_candidates(self, digest: str) -> list[bytes]:
        return [OWNER, US]

    async def link_to(self, peer_id: bytes) -> RefusingOwner:
        assert peer_id == OWNER
        return RefusingOwner(self, self.answer)


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 502, 503, 504])
async def test_an_owners_refusal_is_never_the_clients_answer(
    status: int, autojump_clock: trio.testing.MockClock
) -> None:
    swarm = OwnerFirstSwarm(Refused(DIGEST, status, dict(EVIL), b"from the owner"))
    download = Download(DIGEST, None, "org/app", None)
    fetch = SwarmFetch(swarm, DigestState(DIGEST), download, {})  # type: ignore[arg-type]
    swarm.fetch = fetch
    start = trio.current_time()
    with pytest.raises(OwnerUnavailable):
        await fetch._find_owner()
    assert download.refusal is None
    asked_at = [at - start for at in swarm.wants]
    if status in BUSY_STATUSES:
        # Asked again after each wait, then left: the waits are all a liar's 503 costs.
        waits = [b - a for a, b in itertools.pairwise(asked_at)]
        assert waits == pytest.approx(list(BUSY_WAITS))
    else:
        assert asked_at == [0.0]  # a refusal of another kind: our upstream at once


def test_the_waits_for_a_busy_owner_end() -> None:
    assert [wait_for_busy_owner(n) for n in range(1, len(BUSY_WAITS) + 2)] == [
        *BUSY_WAITS,
        None,
    ]
    with pytest.raises(ValueError):
        wait_for_busy_owner(0)
