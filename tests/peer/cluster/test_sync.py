"""The push-pull membership sync takes a member's whole table from a peer: every entry is
checked like a gossip datagram's, and a bad one changes nothing."""

from __future__ import annotations

import pytest

from peer.cluster import sync
from peer.cluster.gossip import BadDatagram
from peer.cluster.membership import Membership, Status
from wire.events import Members

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


def test_a_full_state_round_trip_merges_and_answers_once() -> None:
    ours = Membership(A, ("127.0.0.1", 1))
    theirs = Membership(B, ("127.0.0.2", 1))
    answer = sync.merge(ours, sync.full_state(theirs, reply=False), 0.0)
    assert ours.members[B].status is Status.ALIVE
    assert answer is not None and answer.reply
    assert sync.merge(theirs, answer, 0.0) is None  # an answer is not answered
    assert theirs.members[A].address == ("127.0.0.1", 1)


@pytest.mark.parametrize(
    "entry",
    [
        (C, "127.0.0.3", 1, 0, 7, 0),  # no such status
        (C, "bad\x00host", 1, 0, 0, 0),  # a NUL in the host (it once ended the gossip task)
        (C, "127.0.0.3", 70000, 0, 0, 0),  # no such port
        (b"short", "127.0.0.3", 1, 0, 0, 0),  # not a node id
        (C, "127.0.0.3", 1, 0, 0, -1),  # no such capacity
        (C, "127.0.0.3", 1, 0, 0, 2**60),  # nor this
        (C, "127.0.0.3", 1, 0, 0),  # a version 3 entry: no capacity
    ],
)
def test_a_bad_entry_is_refused_and_nothing_is_merged(entry: tuple[object, ...]) -> None:
    ours = Membership(A, ("127.0.0.1", 1))
    good = (B, "127.0.0.2", 1, 0, 0, 12_500_000)
    sync.merge(ours, Members([good], reply=False), 0.0)  # a good entry alone is taken
    assert ours.members[B].capacity == 12_500_000
    ours = Membership(A, ("127.0.0.1", 1))
    with pytest.raises(BadDatagram):
        sync.merge(ours, Members([good, entry], reply=False), 0.0)  # type: ignore[list-item]
    assert not ours.members
