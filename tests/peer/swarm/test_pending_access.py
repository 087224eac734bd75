"""What a member's Access messages can make a node keep (a helper's insider probe, 2026-12-07):
each is kept, with its 16 KiB of credentials, until the member's next Request for that blob is
checked, and nothing else ended it but the link. Thirty links, each sending one Access for every
one of 200 held blobs and never a Request, grew a node by 102 MiB (4,096 held blobs and 32 links
would be ~2 GiB). Now a member's pending Accesses are at most MAX_PENDING_ACCESS, its newest, and
one older than the grant it could give (DEFAULT_TTL) is neither kept nor checked."""

from __future__ import annotations

import trio
import trio.testing

from peer.access.auth_gate import DEFAULT_TTL
from peer.swarm.grants import MAX_PENDING_ACCESS, Grants
from wire.events import Access
from wire.names import MAX_AUTHORIZATION

PEER = b"p" * 16
CREDENTIALS = "Bearer " + "x" * (MAX_AUTHORIZATION - 7)


class PrivateStore:
    """Every blob is private to one registry."""

    def origins_of(self, digest: str) -> list[str]:
        return ["https://registry.test"]


class Vouching:
    """The registry accepts every credential; counts the checks."""

    def __init__(self) -> None:
        self.asked = 0

    async def refusal(self, *_args: object) -> None:
        self.asked += 1


def digest(number: int) -> str:
    return f"sha256:{number:064x}"


def access(number: int) -> Access:
    return Access(digest(number), "registry.test", "org/app", CREDENTIALS)


async def test_a_members_pending_accesses_are_its_newest_few() -> None:
    grants = Grants(PrivateStore(), Vouching())  # type: ignore[arg-type]
    for number in range(5 * MAX_PENDING_ACCESS):
        grants.remember(PEER, access(number))
    pending = [n for n in range(5 * MAX_PENDING_ACCESS) if grants.has_pending(PEER, digest(n))]
    assert pending == list(range(4 * MAX_PENDING_ACCESS, 5 * MAX_PENDING_ACCESS))
    grants.remember(b"q" * 16, access(0))  # another member's are its own
    assert grants.has_pending(b"q" * 16, digest(0))


async def test_an_access_older_than_a_grant_lasts_is_dropped_unchecked(
    mock_clock: trio.testing.MockClock,
) -> None:
    registry = Vouching()
    grants = Grants(PrivateStore(), registry)  # type: ignore[arg-type]
    grants.remember(PEER, access(1))
    grants.remember(PEER, access(2))
    mock_clock.jump(DEFAULT_TTL + 1)
    assert not await grants.may_have_pieces(PEER, digest(1))
    assert registry.asked == 0
    grants.remember(PEER, access(3))  # the member's old ones go as its new one comes
    assert not grants.has_pending(PEER, digest(2))
    assert await grants.may_have_pieces(PEER, digest(3))
    assert registry.asked == 1
