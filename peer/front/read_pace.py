"""Whether a client reads an answer too slowly to keep its connection. Pure: the caller says
how long the client kept it waiting (a socket that took no more bytes) and how many bytes it
took.

Why: a connection being answered is never closed to make room (connection_limits.py), and a
client that reads a few bytes a second stays inside the send time-out: a helper filled the
registry port's 1,024 connections from four addresses at ~1 KB/s in all. Each WINDOW seconds
the client has kept us waiting must carry at least `min_rate` bytes a second; a client on any
link a container image could be pulled over reads far faster than the default.
"""

from __future__ import annotations

DEFAULT_MIN_RATE = 16 * 1024  # bytes a second, over a window of waiting
WINDOW = 60.0  # seconds of waiting for the client, summed, per judgement


class ReadPace:
    def __init__(self, min_rate: float = DEFAULT_MIN_RATE, window: float = WINDOW) -> None:
        self.min_rate = min_rate  # 0: never too slow
        self.window = window
        self._waited = 0.0
        self._sent = 0

    def sent(self, nbytes: int) -> None:
        """The client took `nbytes` more."""
        self._sent += nbytes

    def waited(self, seconds: float) -> bool:
        """The client kept us waiting `seconds` more: True when a window of waiting is full and
        it took under `min_rate` bytes a second over it (close the connection)."""
        self._waited += seconds
        if self._waited < self.window:
            return False
        too_slow = self._sent < self.min_rate * self._waited
        self._waited, self._sent = 0.0, 0
        return too_slow
