"""How many connections the peer port takes in before they are authenticated.

A host without the cluster token must get no more than a small, bounded share of a node:
each connection it opens costs a task, a socket and a handshake buffer (a few KiB: frames
before the handshake are limited to wire.protocol.HANDSHAKE_MAX_FRAME). The accepting side
asks `admit` before reading a byte and closes the connection at once when it says no:

- at most `max_per_address` connections from one source address, authenticated or not
  (nodes of a cluster have their own addresses, and each holds one or two links to us;
  loopback test clusters all come from 127.0.0.1, hence the room);
- at most `max_handshakes` handshakes in progress in all (each ends within the handshake
  time-out, so a flood from many addresses delays new links, it does not hold memory).

A pure object: the driver calls `admit`, then `handshake_over` once the handshake has ended
(either way), then `release` when the connection is closed.
"""

from __future__ import annotations

DEFAULT_MAX_PER_ADDRESS = 32
DEFAULT_MAX_HANDSHAKES = 64


class LinkGuard:
    def __init__(
        self,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    ) -> None:
        if max_per_address < 1 or max_handshakes < 1:
            raise ValueError("limits must be at least 1")
        self.max_per_address = max_per_address
        self.max_handshakes = max_handshakes
        self.handshakes = 0
        self._connections: dict[str, int] = {}

    def connections(self, address: str) -> int:
        """Connections from `address` admitted and not yet released."""
        return self._connections.get(address, 0)

    def admit(self, address: str) -> bool:
        """True: take the new connection from `address` (its handshake starts now);
        False: over a limit, close it without reading from it."""
        if self.handshakes >= self.max_handshakes:
            return False
        if self.connections(address) >= self.max_per_address:
            return False
        self.handshakes += 1
        self._connections[address] = self.connections(address) + 1
        return True

    def handshake_over(self) -> None:
        """An admitted connection's handshake has ended, succeeded or failed."""
        assert self.handshakes > 0, "handshake_over without admit"
        self.handshakes -= 1

    def release(self, address: str) -> None:
        """An admitted connection from `address` is closed."""
        count = self.connections(address)
        assert count > 0, "release without admit"
        if count == 1:
            del self._connections[address]  # no entry is kept for a host that left
        else:
            self._connections[address] = count - 1
