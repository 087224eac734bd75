"""The lower bound on the time to give a file to N hosts (Kumar & Ross, 2006).

    T_min = max(F / u_s,  F / d_min,  N * F / (u_s + sum(u_i)))

F: file size; u_s: the origin's upload rate; d_min: the slowest host's download rate; u_i:
the hosts' upload rates. The origin must send every byte at least once, the slowest host
must receive every byte, and the N * F bytes delivered in all can leave no faster than all
uplinks together send. No schedule beats it; a good swarm gets close.
"""

from __future__ import annotations

import math


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
