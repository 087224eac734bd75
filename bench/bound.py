"""The lower bound on the time to give a file to N hosts (Kumar & Ross, 2006).

    T_min = max(F / u_s,  F / d_min,  N * F / (u_s + sum(u_i)))

F: file size; u_s: the origin's upload rate; d_min: the slowest host's download rate; u_i:
the hosts' upload rates. The origin must send every byte at least once, the slowest host
must receive every byte, and the N * F bytes delivered in all can leave no faster than all
uplinks together send. No schedule beats it; a good swarm gets close.

On a shaped link the rates are the wire's, and TCP's payload gets only part of them: every full
segment carries MTU - 52 bytes of payload (IPv4 20, TCP 20, the timestamps option 12) in
MTU + 14 bytes the shaper counts (Ethernet's header). At the testbed's MTU of 1500 that is 1448
of every 1514 bytes, 0.9564: one TCP flow through a 25 Mbit/s `tbf` moves 23.91 Mbit/s of
payload. `payload_bound` is T_min at those rates: what any transfer over TCP on these links
can reach (ACKs and retransmissions would cost more; they are left out, so it stays a lower
bound).
"""

from __future__ import annotations

import math

ETHERNET_HEADER = 14
IP_AND_TCP_HEADERS = 40  # IPv4 20, TCP 20 (no IP options)
TCP_TIMESTAMPS_OPTION = 12  # 10 bytes and 2 of padding, in every segment when on


def t_min(size: int, origin_up: int, uplinks: list[int], downlinks: list[int | None]) -> float:
    """Seconds; sizes in bytes, rates in bytes per second (None: an unshaped downlink)."""
    if size < 0 or origin_up <= 0 or not uplinks or any(u <= 0 for u in uplinks):
        raise ValueError("size >= 0, and positive origin and host upload rates, are needed")
    shaped = [d for d in downlinks if d is not None]
    slowest = min(shaped) if shaped else math.inf
    return max(
        size / origin_up,
        size / slowest,
        len(uplinks) * size / (origin_up + sum(uplinks)),
    )


def payload_share(mtu: int, timestamps: bool) -> float:
    """The share of a shaped link's rate that a full TCP segment's payload is."""
    payload = mtu - IP_AND_TCP_HEADERS - (TCP_TIMESTAMPS_OPTION if timestamps else 0)
    if payload <= 0:
        raise ValueError(f"an MTU of {mtu} leaves no room for TCP payload")
    return payload / (mtu + ETHERNET_HEADER)


def payload_bound(bound: float, share: float) -> float:
    """T_min at the rates TCP's payload gets (`share` of each link's, `payload_share`)."""
    if not 0 < share <= 1:
        raise ValueError(f"a payload share of {share} is not in (0, 1]")
    return bound / share
