"""At most one log line per period for an event anyone can cause at will (a stranger's refused
handshake, say): the first of a period is told in full, the others are counted and their
number told with the next line. A flood must not flood the log (and the disk under it).

Pure: the caller gives the time.
"""

from __future__ import annotations


class LogThrottle:
    def __init__(self, period: float) -> None:
        self.period = period
        self._told_at: float | None = None
        self._untold = 0

    def event(self, now: float) -> int | None:
        """An event at `now`: None to leave it out of the log, else the number of events left
        out since the last one told (tell them with this one)."""
        if self._told_at is not None and now - self._told_at < self.period:
            self._untold += 1
            return None
        untold, self._untold = self._untold, 0
        self._told_at = now
        return untold
