"""The push-pull membership sync takes a member's whole table from a peer: every entry is
checked like a gossip datagram's, and a bad one changes nothing."""

from __future__ import annotations

import pytest

from peer.cluster import sync
from peer.cluster.gossip import BadDatagram
from peer.cluster.membership import Membership, Status, Update
from wire.events import Members
from wire.frames import encode

A, B, C = b"A" * 16, b"B" * 16, b"C" * 16


def test_a_full_state_round_trip_merges_and_answers_once() -> None:
    ours = Membership(A, ("127.0.0.1", 1))
    theirs = Membership(B, ("127.0.0.2", 1))
    (push,) = sync.full_state(theirs, reply=False)
    answer = sync.merge(ours, push, 0.0)
    assert ours.members[B].status is Status.ALIVE
    assert answer is not None and len(answer) == 1 and answer[0].reply
    assert sync.merge(theirs, answer[0], 0.0) is None  # an answer is not answered
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


def test_an_answer_to_a_push_is_a_full_state_and_a_link_word_is_not() -> None:
    ours = Membership(A, ("127.0.0.1", 1))
    theirs = Membership(B, ("127.0.0.2", 1))
    (push,) = sync.full_state(ours, reply=False)
    answer = sync.merge(theirs, push, 0.0)
    assert answer is not None and sync.is_full_state(answer[0])
    assert not sync.is_full_state(push)  # a push, not an answer
    word = Members([answer[0].members[0]], reply=True)  # as gossip's refutation on a link
    assert not sync.is_full_state(word)


def test_only_a_node_with_others_to_join_waits_for_a_sync() -> None:
    own = ("127.0.0.1", 1)
    assert not sync.joins_others(Membership(A, own))
    assert not sync.joins_others(Membership(A, own, seeds=(own,)))  # a DaemonSet's first pod
    assert sync.joins_others(Membership(A, own, seeds=(own, ("127.0.0.2", 1))))


def test_a_joining_node_syncs_with_its_seed_rather_than_another_newcomer() -> None:
    seed, newcomer = ("127.0.0.2", 1), ("127.0.0.3", 1)
    ours = Membership(A, ("127.0.0.1", 1), seeds=(seed,))
    ours.merge([Update(C, newcomer, 0, Status.ALIVE, 0), Update(B, seed, 0, Status.ALIVE, 0)], 0.0)
    assert sync.join_sync_peers(ours) == [B]
    ours.set_seeds([("127.0.0.9", 1)])  # the name now resolves elsewhere: anyone will do
    assert sorted(sync.join_sync_peers(ours)) == [B, C]


def _crowded(count: int) -> Membership:
    """A membership of `count` alive members with the longest names a member may have."""
    crowd = Membership(A, ("127.0.0.1", 1))
    host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    crowd.merge(
        [Update(i.to_bytes(16, "big"), (host, 65535), 2**61, Status.ALIVE, 2**47) for i in
         range(1, count)],
        0.0,
    )  # fmt: skip
    return crowd


def test_a_full_state_too_large_for_a_frame_goes_in_frames_that_fit() -> None:
    """The whole table as one Members once grew past a frame's header (a few hundred members
    with long names, ~1,300 with IPv4 addresses) and the link's writer closed the link: every
    sync, and every link the node opened, failed. It goes in frames that fit; only the last
    of a push asks for an answer, and the answer comes the same way."""
    crowd = _crowded(1000)
    frames = sync.full_state(crowd, reply=False)
    assert len(frames) > 1
    for frame in frames:
        encode(frame)  # raises LocalProtocolError when it does not fit
    assert [f.reply for f in frames] == [True] * (len(frames) - 1) + [False]
    ours = Membership(B, ("127.0.0.2", 1))
    answers = [sync.merge(ours, frame, 0.0) for frame in frames]
    assert answers[:-1] == [None] * (len(frames) - 1)
    answer = answers[-1]
    assert answer is not None and all(f.reply for f in answer)
    assert len(ours.members) == 1000  # A and its 999, not B itself
    for frame in answer:
        assert sync.merge(crowd, frame, 0.0) is None
    assert B in crowd.members


def test_only_an_answers_last_frame_says_the_view_is_whole() -> None:
    """A joiner's fetches wait for its view: a first frame of an answer of many must not end
    the wait (a joiner with 200 of 1,000 members misjudges owners), nor a middle frame of
    another member's push; the answer's last frame does, whatever the table's size."""
    for count in (1000, 1001, 1199, 2):
        crowd = _crowded(count)
        push = sync.full_state(crowd, reply=False)
        answer = sync.full_state(crowd, reply=True)
        assert [sync.is_full_state(f) for f in answer] == [False] * (len(answer) - 1) + [True]
        assert not any(sync.is_full_state(f) for f in push)
