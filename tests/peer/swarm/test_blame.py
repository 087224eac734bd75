"""The verdict once a blob's sha256 has spoken (blame.py), and the note that keeps a blob's
downloads off the swarm meanwhile (bans.py): pure, no sockets."""

from __future__ import annotations

from peer.swarm.bans import MAX_DISTRUSTED, BanList
from peer.swarm.blame import Suspect, sent_wrong_bytes

TRUE, FALSE = b"t" * 16, b"f" * 16


def test_a_sender_whose_bytes_failed_the_true_hash_sent_wrong_bytes() -> None:
    assert sent_wrong_bytes(Suspect(3, 65536, expected=TRUE), TRUE)


def test_a_hash_the_true_piece_fails_clears_the_sender() -> None:
    # And blames nobody: the owner may have hashed what a lying registry sent it.
    assert not sent_wrong_bytes(Suspect(3, 65536, expected=FALSE), TRUE)


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
