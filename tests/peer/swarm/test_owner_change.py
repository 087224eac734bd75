"""When a fetch leaves its owner: the link's word counts, gossip's alone does not."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peer.swarm.owner_change import OWNER_SILENT, OWNER_STALLED, leaves_owner

OWNER, NEXT = b"O" * 16, b"N" * 16


def test_a_closed_link_is_left_whoever_gossip_ranks_first() -> None:
    assert leaves_owner(
        owner=OWNER, progress_at=1e6, first=OWNER, linked=False, heard_at=100.0, now=100.0
    )
    assert leaves_owner(
        owner=OWNER, progress_at=1e6, first=NEXT, linked=False, heard_at=100.0, now=100.0
    )


def test_an_owner_buried_by_gossip_that_still_talks_is_kept() -> None:
    now = 100.0
    assert not leaves_owner(
        owner=OWNER, progress_at=1e6, first=NEXT, linked=True, heard_at=now - 1, now=now
    )
    assert not leaves_owner(
        owner=OWNER, progress_at=1e6, first=NEXT, linked=True, heard_at=now - OWNER_SILENT, now=now
    )


def test_an_owner_buried_by_gossip_and_silent_on_its_link_is_left() -> None:
    now = 100.0
    heard_at = now - OWNER_SILENT - 0.5
    assert leaves_owner(
        owner=OWNER, progress_at=1e6, first=NEXT, linked=True, heard_at=heard_at, now=now
    )


def test_an_owner_still_first_is_kept_however_long_it_is_silent_while_pieces_come() -> None:
    # A slow owner (it waits for the registry) is not left: the stall report asks it again.
    assert not leaves_owner(
        owner=OWNER, progress_at=1e6, first=OWNER, linked=True, heard_at=0.0, now=1e6
    )


def test_an_owner_that_talks_but_no_piece_comes_is_left_whoever_it_is() -> None:
    """A liar answers every message (it is heard) and sends no piece: a pull must not wait for
    it for ever (a held-only Want's liar, or a member that ranks first)."""
    now = 1000.0
    for first in (OWNER, NEXT):
        stalled = now - OWNER_STALLED - 0.5
        assert leaves_owner(
            owner=OWNER, first=first, linked=True, heard_at=now, progress_at=stalled, now=now
        )
        assert not leaves_owner(
            owner=OWNER, first=first, linked=True, heard_at=now, progress_at=now - 1, now=now
        )


@given(
    first_is_owner=st.booleans(),
    linked=st.booleans(),
    silent=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    stalled=st.floats(min_value=0, max_value=1e6, allow_nan=False),
)
def test_the_owner_is_left_only_for_a_reason(
    first_is_owner: bool, linked: bool, silent: float, stalled: float
) -> None:
    now = 1e6
    first = OWNER if first_is_owner else NEXT
    left = leaves_owner(
        owner=OWNER,
        first=first,
        linked=linked,
        heard_at=now - silent,
        progress_at=now - stalled,
        now=now,
    )
    reason = not linked or stalled > OWNER_STALLED or (not first_is_owner and silent > OWNER_SILENT)
    assert left == reason
