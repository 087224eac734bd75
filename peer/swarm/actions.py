"""What the swarm's pure core asks its driver to do: send one wire event to one peer."""

from __future__ import annotations

from dataclasses import dataclass

from wire.events import Event


@dataclass(frozen=True, slots=True)
class Send:
    """Send `event` (a Request, Cancel, Have, Choke, Unchoke or Reject) to `peer`."""

    peer: bytes
    event: Event
