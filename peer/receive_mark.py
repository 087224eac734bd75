"""Waking a reader only once a mark's worth of bytes is there (SO_RCVLOWAT).

Bulk bytes (a piece's payload from a peer, a blob's body from the registry) are of use only in
large units, and on a shaped or shared link every wake-up otherwise brings a few segments, each
a pass through trio and our Python: on the testbed at 25 Mbit/s a node's CPU grew with the
run's length more than with its bytes (~0.2 ms of Python per wake-up).

The mark governs readiness only: a read takes whatever is queued, so the reader waits on
readiness and reads once woken. Kernels before ~5.8 may not wake a reader whose mark the
closing receive window (or the memory its small segments take) cannot reach; so after every
LOOK_EVERY without a wake-up the bytes below the mark are counted (FIONREAD). More than at the
last look is a slow sender, heard, and the wait goes on; none is a sender with nothing to say
(the mark is not why); the same number twice is the kernel's stall (or a sender paused
mid-unit, which we cannot tell from it): the mark goes for good on that socket, and what is
there is read.
"""

from __future__ import annotations

import fcntl
import logging
import math
import socket
import sys
import termios
from collections.abc import Callable

import trio

log = logging.getLogger("pollen.receive")

LOOK_EVERY = 1.0


class SenderQuiet(Exception):
    """No byte came for the `quiet` seconds a caller allows."""


class ReceiveMark:
    """One socket's mark: `receive_into` with a mark, `receive_any` without."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.gave_up = False  # the kernel stalled below the mark once: no mark any more
        self._lowat = 1  # the socket's SO_RCVLOWAT now (1 is the kernel's default)

    async def receive_into(
        self,
        view: memoryview,
        mark: int,
        heard: Callable[[], None] | None = None,
        quiet: float | None = None,
    ) -> int:
        """`recv_into(view)` once `mark` bytes are there (at most len(view)), or the stream
        ends; `heard` is called at each look that finds more bytes below the mark.

        Raises:
            SenderQuiet: `quiet` seconds passed with no new byte (counted below the mark at
                each look, and looked at when they run out: bytes that came are read).
            OSError, trio.ClosedResourceError: the socket failed or was closed.
        """
        mark = min(mark, len(view))
        if self.gave_up or mark <= 1:
            return await self._receive_any_within(view, quiet)
        self._set(mark)
        if bytes_waiting(self.sock) >= mark:  # there already: no pass through the event loop
            return await self.sock.recv_into(view)
        waiting = 0  # bytes below the mark at the last look
        quiet_until = math.inf if quiet is None else trio.current_time() + quiet
        while True:
            if self.sock.fileno() == -1:  # closed by another task (a wait on -1 is ValueError)
                raise trio.ClosedResourceError("socket closed")
            with trio.move_on_after(max(0.0, min(LOOK_EVERY, quiet_until - trio.current_time()))):
                await trio.lowlevel.wait_readable(self.sock)
                return await self.sock.recv_into(view)
            now_waiting = bytes_waiting(self.sock)
            if now_waiting > waiting:  # a slow sender: the mark stays
                if heard is not None:
                    heard()
                if quiet is not None:
                    quiet_until = trio.current_time() + quiet
            elif now_waiting:  # (no more than at the last look, which found them)
                self.gave_up = True
                log.debug("%d bytes stopped below the mark: no mark on this socket", now_waiting)
                return await self.receive_any(view)
            elif trio.current_time() >= quiet_until:
                raise SenderQuiet(f"nothing for {quiet:.0f}s")
            waiting = now_waiting

    async def _receive_any_within(self, view: memoryview, quiet: float | None) -> int:
        if quiet is None:
            return await self.receive_any(view)
        with trio.move_on_after(quiet):
            return await self.receive_any(view)
        raise SenderQuiet(f"nothing for {quiet:.0f}s")

    async def receive_any(self, view: memoryview) -> int:
        """`recv_into(view)` as soon as any byte is there."""
        self.clear()
        return await self.sock.recv_into(view)

    def clear(self) -> None:
        """Wake the socket's reader for any byte again (small messages come next)."""
        self._set(1)

    def _set(self, lowat: int) -> None:
        if lowat == self._lowat:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError as exc:  # the socket is closed: the next read says so
            log.debug("SO_RCVLOWAT: %s", exc)
        self._lowat = lowat


def bytes_waiting(sock: trio.socket.SocketType) -> int:
    """Bytes received on `sock` and not yet read (FIONREAD); 0 if the socket cannot say."""
    try:
        answer = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4)
    except (OSError, ValueError):  # closed meanwhile (fileno -1): the next read says so
        return 0
    return int.from_bytes(answer, sys.byteorder, signed=True)
