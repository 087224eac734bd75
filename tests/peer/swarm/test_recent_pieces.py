"""When pieces were stored here (peer/swarm/recent_pieces.py): bounded, newest kept."""

from __future__ import annotations

from peer.swarm.recent_pieces import RecentPieces


def test_the_last_pieces_stored_are_remembered_and_no_more() -> None:
    recent = RecentPieces(limit=3)
    recent.stored("sha256:a", [0, 1], 1.0)
    recent.stored("sha256:b", [0], 2.0)
    assert recent.stored_at("sha256:a", 1) == 1.0 and recent.stored_at("sha256:b", 0) == 2.0
    recent.stored("sha256:a", [0], 3.0)  # stored again (a blob fetched again): newest now
    recent.stored("sha256:b", [1], 4.0)  # one too many: the oldest entry goes
    assert recent.stored_at("sha256:a", 1) is None
    assert recent.stored_at("sha256:a", 0) == 3.0
    assert recent.stored_at("sha256:b", 1) == 4.0
    assert recent.stored_at("sha256:c", 0) is None  # never stored
