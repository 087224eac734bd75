"""What this node keeps about one blob's swarm (forgotten once it neither holds nor fetches
the blob: clients and members can name any digest, and the table must not grow with them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peer.swarm.seeding import Seeder
from pieces.partial import PartialBlob

if TYPE_CHECKING:
    from peer.swarm.fetch import SwarmFetch


@dataclass(eq=False)
class DigestState:
    digest: str
    interested: set[bytes] = field(default_factory=set)  # peers that sent Want (we own it)
    bitfield_sent: set[bytes] = field(default_factory=set)
    fetch: SwarmFetch | None = None
    listening: PartialBlob | None = None  # the partial whose pieces we announce
    seeder: Seeder | None = None  # we own it: which pieces we offer to whom
    wanted_from: bytes | None = None  # the owner our fetch last sent a Want (it offers us)
    # Peers whose Want is being answered: the state stays meanwhile, and a Want a peer
    # repeats before its answer is done costs nothing (the answer in progress covers it).
    answering: set[bytes] = field(default_factory=set)
