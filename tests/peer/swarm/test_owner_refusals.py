"""What a fetch does with an owner's refusal of its Want: the owner is a member, perhaps a
liar, so no status, header or body of its refusal reaches the client; the node asks its own
upstream, whose answer the client gets (headers filtered as for any upstream answer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from peer.fetch.download import Download
from peer.swarm.bans import BanList
from peer.swarm.digest_state import DigestState
from peer.swarm.errors import OwnerUnavailable
from peer.swarm.fetch import SwarmFetch
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

    def owner_candidates(self, digest: str) -> list[bytes]:
        return [OWNER, US]

    async def link_to(self, peer_id: bytes) -> RefusingOwner:
        assert peer_id == OWNER
        return RefusingOwner(self, self.answer)


@pytest.mark.parametrize("status", [401, 403, 404, 429, 500, 502])
async def test_an_owners_refusal_is_never_the_clients_answer(status: int) -> None:
    swarm = OwnerFirstSwarm(Refused(DIGEST, status, dict(EVIL), b"from the owner"))
    download = Download(DIGEST, None, "org/app", None)
    fetch = SwarmFetch(swarm, DigestState(DIGEST), download, {})  # type: ignore[arg-type]
    swarm.fetch = fetch
    with pytest.raises(OwnerUnavailable):
        await fetch._find_owner()
    assert download.refusal is None
