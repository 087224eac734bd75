"""The TCP congestion control of the peer links (`--peer-congestion-control`).

Why the node chooses it: a node's pieces arrive from several peers at once through one
downlink, and it sends to up to eight at once through one uplink, so its links always share
the queues of two bottlenecks with several of their own kind. BBR (version 1, the default of
some kernels, this test machine's among them) paces at the rate it measured and keeps sending
through losses; several such flows in a queue of a few dozen milliseconds overrun it. On the
namespace testbed (8 hosts, 25 Mbit/s, the kernel's default BBR) 8.6 % of the swarm's segments
were retransmitted and the hosts' uplinks carried 7-8 % more than their downlinks delivered;
with CUBIC on the peer links only, 1.3-1.4 % and 1.7-1.9 %, and the last host done sooner
(docs/issue10/HISTORY.md, *The peer links' congestion control*). CUBIC, Linux's own default,
backs off on loss.

CUBIC throughout, also while the node fetches from a registry. Until 2026-12-03 the links switched
to BBR while it did: an owner's CUBIC uploads filled its uplink's FIFO queue and the ACKs of its
registry flow waited there (100 Mbit/s, one blob at a time: 1.60-1.71 x T_min with CUBIC throughout,
1.41-1.46 with the switch; docs/issue10/HISTORY.md, *What CUBIC costs*). That collapse did not come
back with today's code (why was not examined: the registry's flows are several per blob now, by its
size), and the switch cost more than it saved: owners fetch for most of a rollout, their BBR uploads
overran the uplinks' queues (4-11 % of the segments retransmitted), and one blob at a time at 25
Mbit/s took 88.9, 89.4 s against 86.9, 86.6 with CUBIC throughout; at 100 Mbit/s 26.9, 25.4 against
26.1, 26.3 (docs/issue10/HISTORY.md, *The peer links' congestion control, again*).

Only the peer links: the registry's connections and the clients' are left to the system.

Without the option the node prefers CUBIC and keeps the host's default, with a warning, where
this process may not set it (a process without CAP_NET_ADMIN may set only the algorithms in
tcp_allowed_congestion_control, which need not list CUBIC on a kernel that boots with BBR).
A name given on purpose that the kernel refuses stops the start.
"""

from __future__ import annotations

import errno
import re
import socket

import trio

PREFERRED = "cubic"
SYSTEM = "system"  # the host's default: the node sets nothing
# What the kernel calls its algorithms (TCP_CA_NAME_MAX is 16 with the closing NUL); it would
# read a name only up to a NUL, so "cubic\0x" would pass for cubic.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,15}")
_PROC = "/proc/sys/net/ipv4/"


class CongestionControlUnavailable(ValueError):
    """The kernel refuses the congestion control asked for; the message says what to do."""


def check(name: str) -> None:
    """Refuse `name` unless this kernel lets this process set it on a socket.

    Raises:
        CongestionControlUnavailable: not a name, no such algorithm here, or not allowed to
            this process (the message says which, and what may be named instead).
    """
    if name == SYSTEM:
        return
    if not _NAME.fullmatch(name):
        raise CongestionControlUnavailable(
            f"--peer-congestion-control {name[:40]!r} is not an algorithm's name (letters, "
            f"digits, _ or -, at most 15). {_what_may_be_named()}"
        )
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            set_on(probe, name)
    except OSError as exc:
        raise CongestionControlUnavailable(
            f"--peer-congestion-control {name}: {_why(exc, name)}. {_what_may_be_named()}"
        ) from None


def choose(named: str | None) -> tuple[str, str | None]:
    """The algorithm for the peer links, and a reason to log when the preferred one cannot be
    had. A name given (checked with the config) is used; none: PREFERRED where this process
    may set it, else SYSTEM."""
    if named is not None:
        return named, None
    try:
        check(PREFERRED)
    except CongestionControlUnavailable as exc:
        return SYSTEM, str(exc)
    return PREFERRED, None


def set_on(sock: socket.socket | trio.socket.SocketType, name: str) -> None:
    """Make `sock`'s connection use the congestion control `name` (SYSTEM: leave it).

    Raises:
        OSError: the kernel refused (unknown or restricted algorithm, socket gone), or the
            system has no such socket option.
    """
    if name == SYSTEM:
        return
    option = getattr(socket, "TCP_CONGESTION", None)
    if option is None:  # not Linux
        raise OSError(errno.ENOPROTOOPT, "this system has no TCP_CONGESTION socket option")
    sock.setsockopt(socket.IPPROTO_TCP, option, name.encode("ascii"))


def for_open_links(name: str) -> str:
    """What to set on links that are open already: `name`, or for SYSTEM the host's default
    (a new socket starts with it; an open one keeps what the node gave it until told).

    Raises:
        OSError: the host's default is unreadable.
    """
    return name if name != SYSTEM else _setting("tcp_congestion_control")


def _why(exc: OSError, name: str) -> str:
    if exc.errno == errno.ENOENT:
        available = _read("tcp_available_congestion_control")
        return f"this kernel has no such algorithm (it has {available}; is tcp_{name} a module?)"
    if exc.errno == errno.EPERM:
        return (
            "this process may not set it: without CAP_NET_ADMIN only the algorithms in "
            f"{_PROC}tcp_allowed_congestion_control may be set"
        )
    return f"the kernel refuses it ({exc.strerror or exc})"


def _what_may_be_named() -> str:
    return (
        f"Allowed to any process: {_read('tcp_allowed_congestion_control')}; or "
        f"`{SYSTEM}` for the host's default."
    )


def _read(name: str) -> str:
    """The setting `name` for a message: never fails."""
    try:
        return _setting(name) or "(none listed)"
    except OSError:
        return f"(unknown: {_PROC}{name} is unreadable)"


def _setting(name: str) -> str:
    """The kernel's setting `name` (of this network namespace).

    Raises:
        OSError: unreadable.
    """
    with open(_PROC + name) as setting:
        return setting.read().strip()
