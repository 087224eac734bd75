"""How many client connections one front (the registry port, the admin API, Harbor's) holds
at once: in all, and from one address. A pure policy: the caller admits each connection it
accepts, releases it when it closes, and asks when to report the ones refused.

Why: a connection costs a file descriptor and ~110 KiB (h11's buffers, the task). Without a
bound, one client holding idle connections (each kept for the idle time-out, 60 s) took every
descriptor the process had: the registry port, the admin API and the peer port all stopped
accepting, and trio logged an EMFILE traceback ten times a second. Over the bound a connection
is answered 503 and closed at once, so a client sees why; the other ports keep their
descriptors, and the per-address bound keeps one host from taking all the front's slots.
"""

from __future__ import annotations

DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PER_ADDRESS = 256
# The fronts beside the registry port (admin API, Harbor's preheat API) see few clients.
SIDE_MAX_CONNECTIONS = 64
REPORT_PERIOD = 10.0  # seconds between log lines about refused connections
# Descriptors the node needs beside its client connections: peer links (up to 32 per
# address, many addresses), upstream connections, the store's files, listeners.
OTHER_DESCRIPTORS = 1024


class ConnectionLimits:
    def __init__(self, total: int, per_address: int) -> None:
        if total < 1 or per_address < 1:
            raise ValueError("connection limits must be at least 1")
        self.total = total
        self.per_address = per_address
        self.open = 0
        self._by_address: dict[str, int] = {}
        self._refused = 0  # since the last report
        self._reported_at: float | None = None

    def admit(self, address: str) -> bool:
        """A connection from `address` was accepted: True if it may be served (then release it
        when it closes), False if it is over a limit (refuse it)."""
        held = self._by_address.get(address, 0)
        if self.open >= self.total or held >= self.per_address:
            self._refused += 1
            return False
        self.open += 1
        self._by_address[address] = held + 1
        return True

    def release(self, address: str) -> None:
        """An admitted connection from `address` closed."""
        held = self._by_address.get(address, 0)
        if held <= 0:
            raise ValueError(f"release of a connection from {address} that was not admitted")
        self.open -= 1
        if held == 1:
            del self._by_address[address]  # the table holds only addresses with connections
        else:
            self._by_address[address] = held - 1

    def report_due(self, now: float) -> int | None:
        """Connections refused since the last report, if a report is due now (at most one per
        REPORT_PERIOD: a flood must not flood the log); else None."""
        if not self._refused:
            return None
        if self._reported_at is not None and now - self._reported_at < REPORT_PERIOD:
            return None
        refused, self._refused = self._refused, 0
        self._reported_at = now
        return refused

    def held_by(self, address: str) -> int:
        return self._by_address.get(address, 0)


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
