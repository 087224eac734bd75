"""A pollen node whose gossip goes deaf on SIGUSR1, while its peer links keep working.

From the signal on it answers no Ping or PingReq and refutes nothing said about it, so the
other members suspect it and declare it dead, though its TCP links to them carry pieces as
before: what the others see of a node whose gossip datagrams a firewall drops, or whose loop
is too starved to answer a probe in time (the 16-host testbed on 2 cores, where a live owner
was buried and its blob taken over and fetched from the registry a second time).

Run as `python -m tests.integration.deaf_node run ...` (the options of `pollen run`). It is
the real node with one change, made here and not in the node (production code carries no
test hooks). Until the signal it is the real node, unchanged.
"""

from __future__ import annotations

import signal
from types import FrameType

from peer import cli
from peer.cluster.membership import Address, Membership, Message, Ping, PingReq, Update

_deaf = False


def _go_deaf(signum: int, frame: FrameType | None) -> None:
    global _deaf
    _deaf = True


_honest_receive = Membership.receive
_honest_apply = Membership._apply


def _receive(self: Membership, message: Message, source: Address, now: float) -> None:
    if _deaf and isinstance(message, Ping | PingReq):
        return  # no Ack: the prober suspects us (Acks to our own probes still count)
    _honest_receive(self, message, source, now)


def _apply(self: Membership, update: Update, now: float, direct: bool = False) -> None:
    if _deaf and update.node_id == self.node_id:
        return  # no refutation: the suspicion ends in death
    _honest_apply(self, update, now, direct)


Membership.receive = _receive  # type: ignore[method-assign]
Membership._apply = _apply  # type: ignore[method-assign]
signal.signal(signal.SIGUSR1, _go_deaf)

if __name__ == "__main__":
    cli.main()
