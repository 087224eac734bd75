"""systemd's end of the notify protocol, for tests: a unix datagram socket that collects what
a node says."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path


class NotifySocket:
    """systemd's end: a unix datagram socket that collects what the node says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, line: str, after: int = 0, timeout: float = 30) -> int:
        """The index of the first message from `after` on that has `line`; waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            for i in range(after, len(self.messages)):
                if line in self.messages[i].splitlines():
                    return i
            if time.monotonic() > deadline:
                raise AssertionError(f"no {line!r} after message {after}: {self.messages}")
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()
