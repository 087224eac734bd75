"""Peers this node will not talk to for a while: banned liars and unreachable addresses;
and blobs the swarm is not asked for a while.

Pure: every question takes `now`. A ban is for a peer that sent a piece failing its hash (or
otherwise lied); "unreachable" is a short note that a dial failed, so that the next owner
candidate is tried at once instead of waiting on the same dead address again. A blob is
distrusted when what the swarm gave failed its sha256 and no one member can be blamed
(blame.py): its next downloads come from the registry until the note runs out.
"""

from __future__ import annotations

from typing import TypeVar

Key = TypeVar("Key")

BAN_SECONDS = 600.0
UNREACHABLE_SECONDS = 5.0
# Distrusted blobs kept at once: each comes from a download that failed its sha256, but a
# member (or a registry) can make many fail; past this the note that ends first goes.
MAX_DISTRUSTED = 1024


class BanList:
    def __init__(
        self, ban_seconds: float = BAN_SECONDS, unreachable_seconds: float = UNREACHABLE_SECONDS
    ) -> None:
        self.ban_seconds = ban_seconds
        self.unreachable_seconds = unreachable_seconds
        self._banned: dict[bytes, float] = {}  # peer -> until
        self._unreachable: dict[bytes, float] = {}  # peer -> until
        self._distrusted: dict[str, float] = {}  # blob digest -> until

    def ban(self, peer: bytes, now: float) -> None:
        self._banned[peer] = now + self.ban_seconds

    def is_banned(self, peer: bytes, now: float) -> bool:
        until = self._banned.get(peer)
        return until is not None and until > now

    def banned(self, now: float) -> list[bytes]:
        return [peer for peer, until in self._banned.items() if until > now]

    def unreachable(self, peer: bytes, now: float) -> None:
        self._unreachable[peer] = now + self.unreachable_seconds

    def is_unreachable(self, peer: bytes, now: float) -> bool:
        until = self._unreachable.get(peer)
        return until is not None and until > now

    def distrust(self, digest: str, now: float) -> None:
        """The swarm's copy of `digest` failed its sha256 with nobody to blame: not from the
        swarm for `ban_seconds`."""
        # Re-added last: every note lasts as long, so the first in the table ends first.
        self._distrusted.pop(digest, None)
        self._distrusted[digest] = now + self.ban_seconds
        if len(self._distrusted) > MAX_DISTRUSTED:
            del self._distrusted[next(iter(self._distrusted))]

    def is_distrusted(self, digest: str, now: float) -> bool:
        until = self._distrusted.get(digest)
        return until is not None and until > now

    def expire(self, now: float) -> None:
        """Forget bans and notes that ran out (the tables must not grow forever)."""
        _drop_ended(self._banned, now)
        _drop_ended(self._unreachable, now)
        _drop_ended(self._distrusted, now)

    def next_deadline(self) -> float | None:
        """When the next ban or note runs out (then call `expire`)."""
        ends = [*self._banned.values(), *self._unreachable.values(), *self._distrusted.values()]
        return min(ends) if ends else None


def _drop_ended(table: dict[Key, float], now: float) -> None:
    for key in [k for k, until in table.items() if until <= now]:
        del table[key]
