"""The TCP congestion control of the peer links (`--peer-congestion-control`).

Why the node chooses it: a node's pieces arrive from up to eight peers at once through one
downlink, and it sends to as many at once through one uplink, so its links always share the
queues of two bottlenecks with several of their own kind. BBR (version 1, the default of some
kernels, this test machine's among them) paces at the rate it measured and keeps sending
through losses; with several such flows in a queue of a few dozen milliseconds they overrun
it. On the namespace testbed (8 hosts, 25 Mbit/s, the kernel's default BBR) 8.6 % of the
swarm's segments were retransmitted and the hosts' uplinks carried 7-8 % more than their
downlinks delivered; with CUBIC on the peer links only, 1.3-1.4 % and 1.7-1.9 %, and the
last host done sooner (README, *The peer links' congestion control*). CUBIC, Linux's own
default, backs off on loss, and is open to every process (no privilege needed).

Only the peer links: the registry's connections and the clients' are left to the system.
"""

from __future__ import annotations

import re
import socket

import trio

DEFAULT = "cubic"
SYSTEM = "system"  # the host's default: the node sets nothing
# What the kernel calls its algorithms (TCP_CA_NAME_MAX is 16 with the closing NUL); it would
# read a name only up to a NUL, so "cubic\0x" would pass for cubic.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")


class CongestionControlUnavailable(ValueError):
    """The kernel refuses the congestion control asked for; the message says what to do."""


def check(name: str) -> None:
    """Refuse `name` at start-up unless this kernel lets this process set it on a socket.

    Raises:
        CongestionControlUnavailable: no such algorithm here, or not allowed to this process.
    """
    if name == SYSTEM:
        return
    if not _NAME.fullmatch(name):
        raise CongestionControlUnavailable(
            f"--peer-congestion-control {name[:40]!r} is not an algorithm's name (letters, "
            f"digits, _ or -, at most 15). This process may use: {_allowed()}, or `{SYSTEM}`."
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            set_on(probe, name)
        except OSError as exc:
            raise CongestionControlUnavailable(
                f"--peer-congestion-control {name}: the kernel refuses it ({exc.strerror}). "
                f"This process may use: {_allowed()}. Name one of them, or "
                f"`--peer-congestion-control {SYSTEM}` to keep the host's default."
            ) from None


def set_on(sock: socket.socket | trio.socket.SocketType, name: str) -> None:
    """Make `sock`'s connection use the congestion control `name` (SYSTEM: leave it).

    Raises:
        OSError: the kernel refused (unknown or restricted algorithm, socket gone).
    """
    if name == SYSTEM:
        return
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:  # not Linux
        raise OSError(0, "this system has no TCP_CONGESTION socket option")
    sock.setsockopt(socket.IPPROTO_TCP, option, name.encode("ascii", "replace"))


def _allowed() -> str:
    try:
        with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as allowed:
            return allowed.read().strip() or "(none listed)"
    except OSError:
        return "(unknown: /proc/sys/net/ipv4/tcp_allowed_congestion_control is unreadable)"
