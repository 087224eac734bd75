"""Telling systemd how the node is doing (sd_notify(3)): READY=1 once it serves, RELOADING=1
and READY=1 around a reload, STOPPING=1 when it shuts down, WATCHDOG=1 while the event loop
runs, and a STATUS= line for `systemctl status`.

The protocol is a few lines of text in one datagram to the unix socket named by
$NOTIFY_SOCKET (a path, or `@name` for the abstract namespace): less code than a dependency.
Outside systemd (no $NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Mapping

log = logging.getLogger("pollen.notify")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # the abstract namespace
        elif address.startswith("/"):
            self.address = address
        self.watchdog_interval = _watchdog_interval(env)
        self._socket: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd 253+ (Type=notify-reload) match this to its request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self.address is None:
            return
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                self._socket = socket.socket(socket.AF_UNIX, kind)
            # Never blocks the event loop: with systemd's queue full, this message is lost
            # (an error, logged) rather than the node stalled.
            self._socket.sendto(message.encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            # systemd gone (or a bad $NOTIFY_SOCKET): the node serves on. Said once, not at
            # every watchdog ping.
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd: %s", exc)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WatchdogSec (systemd's advice), or None.

    $WATCHDOG_PID, when set, names the process the watchdog is for: a child that inherited
    the environment must not ping for its parent. One exception: the one-file binary runs
    the node in a child of its bootloader (PyInstaller), and systemd's main process is that
    bootloader, which only waits for the node: the node pings for it.
    """
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    ours = {os.getpid(), os.getppid()} if getattr(sys, "frozen", False) else {os.getpid()}
    if pid and (not pid.isdigit() or int(pid) not in ours):
        return None
    return int(usec) / 1e6 / 2
