"""How many client connections one front (the registry port, the admin API, Harbor's) holds
at once: in all, and from one address. A pure policy: the caller admits each connection it
accepts, releases it when it closes.

Why: a connection costs a file descriptor and ~110 KiB (h11's buffers, the task). Without a
bound, one client holding idle connections (each kept for the idle time-out, 60 s) took every
descriptor the process had: the registry port, the admin API and the peer port all stopped
accepting, and trio logged an EMFILE traceback ten times a second. Over the bound a connection
is answered 503 and closed at once, so a client sees why; the other ports keep their
descriptors, and the per-address bound keeps one host from taking all the front's slots.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from peer.sources import source_of

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_ADDRESS = 256
# The fronts beside the registry port (admin API, Harbor's preheat API) see few clients.
SIDE_MAX_CONNECTIONS = 64
SIDE_MAX_PER_ADDRESS = 32
# Descriptors the node needs beside its client connections: peer links (up to 32 per
# address, many addresses), upstream connections, the store's files, listeners.
OTHER_DESCRIPTORS = 1024


def client_key(host: str) -> str:
    """Whom a connection from `host` counts against for the per-address bound: its IPv4
    address (an IPv4-mapped IPv6 one too), or its IPv6 /64 (one host is given a whole /64,
    and would otherwise count as 2**64 addresses)."""
    source, _loopback = source_of(host)
    if ":" not in source:
        return source  # IPv4
    try:
        return str(ipaddress.IPv6Network((source, 64), strict=False))
    except ValueError:
        return source  # not an address (getpeername gives none such)


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with a connection just accepted: serve it as `ticket` (None: refuse it with
    a 503), after closing the connection `evict` (one that waited longest for a request)."""

    ticket: int | None
    evict: int | None = None


class ConnectionLimits:
    """Open connections by ticket. A connection that waits for a request (an idle keep-alive
    one, or one whose request head is still coming) may be closed to make room for a new one;
    one whose request is being answered may not. So a client that holds idle or slow
    connections cannot keep others out (a liveness probe of the admin API among them): each
    new connection takes the place of the one that waited longest, from the same address when
    that address is at its bound. Only requests being answered fill the limits for good."""

    def __init__(self, total: int, per_address: int) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_address = per_address
        self._address: dict[int, str] = {}  # ticket -> address, every open connection
        self._by_address: dict[str, set[int]] = {}
        self._waiting: dict[int, float] = {}  # ticket -> since when it waits for a request
        self._next_ticket = 0

    @property
    def open(self) -> int:
        return len(self._address)

    def held_by(self, address: str) -> int:
        return len(self._by_address.get(address, ()))

    def admit(self, address: str, now: float) -> Admission:
        """A connection from `address` was accepted at `now`; it waits for its first request."""
        evict = None
        if self.held_by(address) >= self.per_address:
            evict = self._longest_waiting(self._by_address[address])
            if evict is None:
                return Admission(None)
        elif self.open >= self.total:
            evict = self._longest_waiting(self._address)
            if evict is None:
                return Admission(None)
        if evict is not None:
            self.release(evict)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._address[ticket] = address
        self._by_address.setdefault(address, set()).add(ticket)
        self._waiting[ticket] = now
        return Admission(ticket, evict)

    def answering(self, ticket: int) -> None:
        """The connection's request is being answered: it stays until it is done."""
        self._waiting.pop(ticket, None)

    def waiting(self, ticket: int, now: float) -> None:
        """The connection waits for its next request (it may be closed for a new one)."""
        if ticket in self._address:
            self._waiting[ticket] = now

    def release(self, ticket: int) -> None:
        """The connection closed (or was evicted: releasing it again does nothing)."""
        address = self._address.pop(ticket, None)
        if address is None:
            return
        self._waiting.pop(ticket, None)
        tickets = self._by_address[address]
        tickets.discard(ticket)
        if not tickets:
            del self._by_address[address]  # the table holds only addresses with connections

    def _longest_waiting(self, tickets: Iterable[int]) -> int | None:
        waiting = [(self._waiting[t], t) for t in tickets if t in self._waiting]
        return min(waiting)[1] if waiting else None


def descriptor_shortfall(max_connections: int, open_file_limit: int) -> str | None:
    """Why `max_connections` client connections (and the side fronts') may not fit in
    `open_file_limit` descriptors with what the node needs besides; None when they fit."""
    needed = max_connections + 2 * SIDE_MAX_CONNECTIONS + OTHER_DESCRIPTORS
    if needed <= open_file_limit:
        return None
    return (
        f"the open-file limit is {open_file_limit}: {max_connections} client connections "
        f"(--max-connections) and what the node needs beside them take about {needed}; "
        "raise LimitNOFILE (ulimit -n) or lower --max-connections"
    )
