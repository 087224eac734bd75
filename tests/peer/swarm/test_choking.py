"""The upload side's choking decisions and the ban list, on fake time (no links)."""

from __future__ import annotations

import random

from peer.swarm.bans import BanList
from peer.swarm.choker import OPTIMISTIC_PERIOD, RECHOKE_PERIOD, UNCHOKED, Choker
from wire.events import Choke, Unchoke

PEERS = [bytes([i]) * 16 for i in range(3 * UNCHOKED)]
MORE = UNCHOKED + UNCHOKED // 2  # more askers than slots


def test_least_served_stay_unchoked_plus_one_optimistic() -> None:
    """A cooperating cluster: the peers we sent least to lately get the slots."""
    choker = Choker(random.Random(1), 0.0)
    peers = PEERS[:MORE]
    now = 1000.0
    for rank, peer in enumerate(peers):
        assert choker.request(peer, now)  # nobody is choked before the first rechoke
        choker.served(peer, 1000 * rank)  # peers[0] was served least
    sends = choker.rechoke(now)
    unchoked = set(peers) - choker.choked
    assert len(unchoked) == UNCHOKED
    assert set(peers[: UNCHOKED - 1]) <= unchoked  # the least served
    optimistic = choker.optimistic
    assert optimistic in unchoked and optimistic not in peers[: UNCHOKED - 1]
    assert {s.peer for s in sends if isinstance(s.event, Choke)} == choker.choked
    assert not any(isinstance(s.event, Unchoke) for s in sends)
    for peer in choker.choked:
        assert not choker.request(peer, now + 1)  # refused while choked


def test_slots_rotate_to_the_peers_served_least() -> None:
    """Serving the unchoked peers makes them the most served: the next rechoke hands their
    slots to the waiting ones (what we sent long ago counts less and less)."""
    choker = Choker(random.Random(4), 0.0)
    peers = PEERS[: 2 * UNCHOKED]
    now = 0.0
    for peer in peers:
        choker.request(peer, now)
    choker.rechoke(now)
    first = set(peers) - choker.choked - {choker.optimistic}
    for peer in first:
        choker.request(peer, now + 1)
        choker.served(peer, 4 << 20)
    now += RECHOKE_PERIOD
    sends = choker.rechoke(now)
    assert first <= choker.choked | {choker.optimistic}
    assert {s.peer for s in sends if isinstance(s.event, Choke)} >= first - {choker.optimistic}


def test_the_owners_we_fetch_from_stay_unchoked_however_much_they_are_served() -> None:
    """An owner takes its other blobs from a few peers, so each of them serves it the most:
    ranked by service alone it is choked at every rechoke, and finishes last (simulator)."""
    peers = PEERS[:MORE]
    owners = set(peers[-2:])  # the most served
    for favoured in (frozenset(), frozenset(owners)):
        choker = Choker(random.Random(5), 0.0)
        for _ in range(4):  # several periods: never choked while favoured
            now = choker.next_deadline()
            for rank, peer in enumerate(peers):
                choker.request(peer, now)
                choker.served(peer, 1000 * rank)
            choker.rechoke(now, favoured=favoured)
            kept = set(peers) - choker.choked
            assert len(kept) == UNCHOKED
            if favoured:
                assert owners <= kept
            else:
                assert owners & choker.choked
    # At most UNCHOKED - 1 favoured peers take slots: one stays for the optimistic pick.
    choker = Choker(random.Random(6), 0.0)
    for peer in PEERS[: 2 * UNCHOKED]:
        choker.request(peer, 0.0)
    choker.rechoke(0.0, favoured=frozenset(PEERS[: 2 * UNCHOKED]))
    assert len(set(PEERS[: 2 * UNCHOKED]) - choker.choked) == UNCHOKED


def test_a_choked_peer_that_stops_asking_still_gets_unchoked() -> None:
    """A choked peer does not ask (it would be refused); it must not stay choked for that."""
    choker = Choker(random.Random(2), 0.0)
    now = 0.0
    for peer in PEERS[:MORE]:
        choker.request(peer, now)
    choker.rechoke(now)
    waiting = set(choker.choked)
    assert waiting
    unchoked: set[bytes] = set()
    for _ in range(40):  # only the unchoked keep asking
        now += RECHOKE_PERIOD
        for peer in set(PEERS[:MORE]) - choker.choked:
            choker.request(peer, now)
        unchoked |= {s.peer for s in choker.rechoke(now) if isinstance(s.event, Unchoke)}
    assert waiting <= unchoked


def test_optimistic_slot_rotates() -> None:
    choker = Choker(random.Random(3), 0.0)
    picks = set()
    now = 0.0
    for _ in range(20):
        for peer in PEERS:
            choker.request(peer, now)
        choker.rechoke(now)
        picks.add(choker.optimistic)
        now += OPTIMISTIC_PERIOD
    assert len(picks) > 3


def test_peers_that_stopped_asking_are_not_candidates() -> None:
    choker = Choker(random.Random(5), 0.0)
    for peer in PEERS[:MORE]:
        choker.request(peer, 0.0)
    choker.rechoke(2 * RECHOKE_PERIOD + 0.1)  # nobody asked for two periods
    assert not choker.choked


def test_rechoke_deadline_and_lost_peers() -> None:
    choker = Choker(random.Random(4), 5.0)
    assert choker.next_deadline() == 5.0 + RECHOKE_PERIOD
    for peer in PEERS[:MORE]:
        choker.request(peer, 15.0 - RECHOKE_PERIOD)  # asked within the last two periods
    choker.rechoke(15.0)
    assert choker.next_deadline() == 15.0 + RECHOKE_PERIOD
    gone = next(iter(choker.choked))
    choker.lost(gone)
    assert gone not in choker.choked and choker.request(gone, 15.0 + RECHOKE_PERIOD)


def test_bans_run_out() -> None:
    bans = BanList(ban_seconds=100.0, unreachable_seconds=5.0)
    liar, dead = PEERS[0], PEERS[1]
    bans.ban(liar, 10.0)
    bans.unreachable(dead, 10.0)
    assert bans.is_banned(liar, 109.0) and not bans.is_banned(dead, 11.0)
    assert bans.is_unreachable(dead, 14.0) and not bans.is_unreachable(dead, 15.0)
    assert bans.banned(50.0) == [liar]
    assert bans.next_deadline() == 15.0
    bans.expire(15.0)
    assert bans.next_deadline() == 110.0
    bans.expire(110.0)
    assert not bans.is_banned(liar, 110.0) and bans.next_deadline() is None
