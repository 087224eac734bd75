"""How many connections the peer port takes in before they are authenticated.

A host without the cluster token must get no more than a small, bounded share of a node:
each connection it opens costs a task, a socket and a handshake buffer (a few KiB: frames
before the handshake are limited to wire.protocol.HANDSHAKE_MAX_FRAME). The accepting side
asks `admit` before reading a byte and closes the connection at once when it says no:

- at most `max_per_address` connections from one source, authenticated or not (nodes of a
  cluster have their own addresses, and each holds one or two links to us; loopback test
  clusters all come from 127.0.0.1, hence the room);
- at most `max_handshakes_per_address` handshakes in progress from one source. Without it a
  source could hold `max_per_address` of the global handshakes: a handshake that says nothing
  lasts the handshake time-out, so two sources reconnecting that often would hold them all and
  no peer could link to us. With it, holding every handshake takes
  max_handshakes / max_handshakes_per_address sources (64 with the defaults). Loopback is not
  held to it: the nodes of a test cluster all dial from 127.0.0.1 and may all link at once,
  and a process on this host has easier ways to hurt the node;
- at most `max_handshakes` handshakes in progress in all (each ends within the handshake
  time-out, so a flood from many sources delays new links, it does not hold memory);
- and as many again for the addresses of live members (`member=True`: the driver looks the
  source up in the membership, which gossip's MAC vouches for; a stranger cannot put its
  address there). Without this share, 64 stranger addresses reconnecting every handshake
  time-out held every handshake, and no member could open a link to the node. A member with
  the token can gossip made-up members at addresses of its choosing: the share is bounded
  as the other is.

A source is one IP address (an IPv4 address seen through a dual-stack socket, ::ffff:a.b.c.d,
is that IPv4 address). Not an IPv6 /64, though an attacker can pick a new address from its
/64 for every connection: the nodes of a cluster often share one /64 (a cloud subnet), and a
/64 cap would refuse them when they link at once. What bounds an attacker with many addresses
is the global cap: memory stays a few KiB per handshake, and each ends within the time-out.

A pure object: the driver calls `admit`, then `handshake_over` once the handshake has ended
(either way), then `release` when the connection is closed, all with the peer's address.
"""

from __future__ import annotations

from peer.sources import source_of

DEFAULT_MAX_PER_ADDRESS = 32
DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 4
DEFAULT_MAX_HANDSHAKES = 256  # a few KiB each: 256 hold about a MiB


class LinkGuard:
    def __init__(
        self,
        max_per_address: int = DEFAULT_MAX_PER_ADDRESS,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        max_handshakes_per_address: int = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    ) -> None:
        if min(max_per_address, max_handshakes, max_handshakes_per_address) < 1:
            raise ValueError("limits must be at least 1")
        self.max_per_address = max_per_address
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self.handshakes = 0  # in progress from strangers
        self.member_handshakes = 0  # ... from live members' addresses
        # Per source, only while it has some: nothing is kept for a host that left.
        self._connections: dict[str, int] = {}
        self._handshakes: dict[str, int] = {}

    def connections(self, address: str) -> int:
        """Connections from the source of `address` admitted and not yet released."""
        return self._connections.get(source_of(address)[0], 0)

    def handshakes_from(self, address: str) -> int:
        """Handshakes in progress from the source of `address`."""
        return self._handshakes.get(source_of(address)[0], 0)

    def admit(self, address: str, member: bool = False) -> bool:
        """True: take the new connection from `address` (its handshake starts now);
        False: over a limit, close it without reading from it. `member`: `address` is a live
        member's (its handshakes have their own share); give the same to `handshake_over`."""
        source, loopback = source_of(address)
        in_progress = self.member_handshakes if member else self.handshakes
        if in_progress >= self.max_handshakes:
            return False
        connections = self._connections.get(source, 0)
        if connections >= self.max_per_address:
            return False
        handshakes = self._handshakes.get(source, 0)
        if handshakes >= self.max_handshakes_per_address and not loopback:
            return False
        if member:
            self.member_handshakes += 1
        else:
            self.handshakes += 1
        self._handshakes[source] = handshakes + 1
        self._connections[source] = connections + 1
        return True

    def handshake_over(self, address: str, member: bool = False) -> None:
        """The handshake of an admitted connection from `address` has ended, either way
        (`member` as it was admitted)."""
        if member:
            assert self.member_handshakes > 0, "handshake_over without admit"
            self.member_handshakes -= 1
        else:
            assert self.handshakes > 0, "handshake_over without admit"
            self.handshakes -= 1
        _decrement(self._handshakes, source_of(address)[0], "handshake_over without admit")

    def release(self, address: str) -> None:
        """An admitted connection from `address` is closed."""
        _decrement(self._connections, source_of(address)[0], "release without admit")


def _decrement(counts: dict[str, int], source: str, misuse: str) -> None:
    count = counts.get(source, 0)
    assert count > 0, misuse
    if count == 1:
        del counts[source]  # no entry is kept for a host that left
    else:
        counts[source] = count - 1
