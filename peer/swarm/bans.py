"""Peers this node will not talk to for a while: banned liars and unreachable addresses.

Pure: every question takes `now`. A ban is for a peer that sent a piece failing its hash (or
otherwise lied); "unreachable" is a short note that a dial failed, so that the next owner
candidate is tried at once instead of waiting on the same dead address again.
"""

from __future__ import annotations

BAN_SECONDS = 600.0
UNREACHABLE_SECONDS = 5.0


class BanList:
    def __init__(
        self, ban_seconds: float = BAN_SECONDS, unreachable_seconds: float = UNREACHABLE_SECONDS
    ) -> None:
        self.ban_seconds = ban_seconds
        self.unreachable_seconds = unreachable_seconds
        self._banned: dict[bytes, float] = {}  # peer -> until
        self._unreachable: dict[bytes, float] = {}  # peer -> until

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

    def expire(self, now: float) -> None:
        """Forget bans and notes that ran out (the tables must not grow forever)."""
        for table in (self._banned, self._unreachable):
            for peer in [p for p, until in table.items() if until <= now]:
                del table[peer]

    def next_deadline(self) -> float | None:
        """When the next ban or note runs out (then call `expire`)."""
        ends = [*self._banned.values(), *self._unreachable.values()]
        return min(ends) if ends else None
