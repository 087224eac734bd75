"""The verdict once a blob's sha256 has spoken (blame.py), and the note that keeps a blob's
downloads off the swarm meanwhile (bans.py): pure, no sockets."""

from __future__ import annotations

import pytest

from peer.swarm.bans import MAX_DISTRUSTED, BanList
from peer.swarm.blame import Suspect, author_of_failure, liar

SENDER, OWNER = b"S" * 16, b"O" * 16
TRUE, FALSE = b"t" * 16, b"f" * 16


@pytest.mark.parametrize("vouched", [False, True])
def test_a_sender_whose_bytes_failed_the_true_hash_sent_other_bytes(vouched: bool) -> None:
    assert liar(SENDER, Suspect(3, 65536, TRUE, OWNER, vouched), TRUE)[0] == SENDER


def test_a_false_hash_clears_the_sender_and_blames_an_owner_only_if_it_said_verified() -> None:
    # Unverified, the owner may have hashed what a lying registry sent it.
    assert liar(SENDER, Suspect(3, 65536, FALSE, OWNER, False), TRUE)[0] is None
    culprit, how = liar(SENDER, Suspect(3, 65536, FALSE, OWNER, True), TRUE)
    assert culprit == OWNER and "verified" in how


def test_a_failed_blob_is_blamed_only_on_a_sole_voucher_of_every_piece() -> None:
    assert author_of_failure(OWNER, 16, 16) == OWNER
    assert author_of_failure(OWNER, 15, 16) is None  # a piece came from elsewhere
    assert author_of_failure(False, 16, 16) is None  # several, or unverified hashes
    assert author_of_failure(None, 0, 16) is None


def test_a_distrusted_blob_is_noted_until_the_ban_time_ends() -> None:
    bans = BanList(ban_seconds=10.0)
    bans.distrust("sha256:a", now=0.0)
    assert bans.is_distrusted("sha256:a", 9.9) and not bans.is_distrusted("sha256:b", 1.0)
    assert bans.next_deadline() == 10.0
    bans.expire(10.0)
    assert not bans.is_distrusted("sha256:a", 5.0)  # forgotten, whatever the time asked
    assert bans.next_deadline() is None


def test_the_distrusted_table_is_bounded_and_drops_the_note_that_ends_first() -> None:
    bans = BanList(ban_seconds=10.0)
    for i in range(MAX_DISTRUSTED + 5):
        bans.distrust(f"sha256:{i}", now=float(i) / 1000)
    bans.distrust("sha256:5", now=2.0)  # renewed: now the newest
    bans.distrust("sha256:new", now=2.0)
    assert not bans.is_distrusted("sha256:6", 2.0)
    assert bans.is_distrusted("sha256:5", 2.0) and bans.is_distrusted("sha256:new", 2.0)
    assert sum(bans.is_distrusted(f"sha256:{i}", 2.0) for i in range(MAX_DISTRUSTED + 5)) <= (
        MAX_DISTRUSTED
    )
