"""Which source a connection counts against in per-address limits: its IP address, an IPv4
address seen through a dual-stack socket (::ffff:a.b.c.d) being that IPv4 address. Shared by
the peer port's guard (peer/swarm/link_guard.py) and the HTTP fronts' limits
(peer/front/connection_limits.py)."""

from __future__ import annotations

import ipaddress


def source_of(address: str) -> tuple[str, bool]:
    """The source `address` counts against, and whether it is loopback.

    An address that does not parse (none should: it comes from getpeername) is its own source.
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])  # without an IPv6 zone
    except ValueError:
        return address, False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), ip.is_loopback
