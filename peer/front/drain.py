"""Draining a listener's connections at shutdown: requests being answered finish, idle
keep-alive connections close at once, and none takes a new request.

serve_connection marks each request busy while its handler runs and waits for the next
request inside `idle()`; `start()` cancels every idle wait, and `wait()` returns once no
request is being answered (the caller bounds it with its grace period).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.busy = 0  # requests being answered now
        self._idle: set[trio.CancelScope] = set()
        self._quiet = trio.Event()
        self._quiet.set()

    @contextmanager
    def idle(self) -> Iterator[None]:
        """Around the wait for a connection's next request: ended by `start`."""
        scope = trio.CancelScope()
        if self.draining:
            scope.cancel()
        self._idle.add(scope)
        try:
            with scope:
                yield
        finally:
            self._idle.discard(scope)

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Around a request's handler: `wait` waits for it."""
        self.busy += 1
        self._quiet = trio.Event() if self.busy == 1 else self._quiet
        try:
            yield
        finally:
            self.busy -= 1
            if self.busy == 0:
                self._quiet.set()

    def start(self) -> None:
        self.draining = True
        for scope in list(self._idle):
            scope.cancel()

    async def wait(self) -> None:
        """Until no request is being answered."""
        while self.busy:
            await self._quiet.wait()
