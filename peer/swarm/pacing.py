"""How fast this node sends pieces when the operator set no --upload-rate: as fast as the link
takes them, except on a host whose declared uplink is slow beside the cluster's, which paces its
piece uploads a little under that uplink. A pure rule: what is declared in, a cap out.

Why: a host's requests, and the ACKs of every byte it downloads, leave through its own uplink,
behind the pieces it sends. Sent as fast as the socket takes them, pieces wait in the uplink's
queue (and a request to a peer also waits for the rest of the piece on that peer's link), and
on a slow uplink the same bytes queued are several times the delay: the host downloads slower
than the others while its uplink is full, and ends last. Paced under the link (the operator's
`--upload-rate` at PACE_SHARE of the uplink: peer/rate_limit.py), a piece waits for its tokens
in this process before it takes its link, where a request overtakes it, and the uplink's queue
drains between pieces. Under a cap the upload lanes measure no rates (peer/swarm/uploads.py):
a paced host's lanes do not yield to faster ones (upload_lanes.py, YIELD_BELOW).
The testbed (16 hosts, 224 MiB at 25 Mbit/s, 4 of them at 6.25; `docs/issue10/s51/`): unpaced,
the four slow hosts ended last in 11 runs of 11, 3-12 s after the last fast one, the last host
at 1.22-1.31 x T_min; paced at 0.92 of the uplink, 1.18-1.20 (seeds 2-5), a slow host still
last but 0.1-2.6 s after the last fast one, for ~7 % more node CPU. In pieces half as large
(pieces/layout.py's PIECE_HOP, `docs/issue10/s52/`) a slow host sends twice the requests and
Haves for the same bytes, and 0.92 left it too little room: PACE_SHARE below. Pacing every
host (at 0.92) lost what it won (1.26, 1.27): a fast host's queue costs it little, and 4 % of
every fast uplink is 4 % of the swarm. The simulator models no queues at the links and cannot show
either. Only a quarter of the cluster's uplink was measured; half is where the rule starts,
and the CPU it costs on links of a Gbit/s (where a node's CPU binds) was not measured.

What the members declare comes from the cluster's gossip, which only holders of the cluster
token speak: such a member that makes up members, or declares falsely, can move the cluster's
uplink (as it can the piece sizes, `cluster_uplink`) and so make this host pace (12 % of its
upload) or not. Members that declare nothing count as the fastest: where only the slow hosts
declare (as `--uplink`'s help advises), they are the ones that pace.
"""

from __future__ import annotations

from peer.cluster.rendezvous import UNDECLARED

# Piece bytes per second, as a share of the declared uplink (which counts the link's frames):
# TCP's payload is ~0.956 of what a link carries in full segments, so this keeps ~8 % of the
# link for what else leaves it: the ACKs of everything the host downloads (on a slow host, at
# several times its uplink), and its requests and Haves, one each per piece (twice as many for
# the same bytes in pieces half as large). The testbed (16 hosts, 224 MiB at 25 Mbit/s, 4
# of them at 6.25, in 128 KiB pieces, node identities from seeds 2 and 3; docs/issue10/s52/):
# at 0.92 the slow hosts took in 2.0-2.7 MB/s against the others' 2.7 and ended last, 1.26,
# 1.19 x T_min; at 0.85 they took in 2.7-2.9 against 2.5 and fast hosts ended last, 1.18,
# 1.16; at 0.88 2.7-2.8 against 2.55, 1.15, 1.17.
PACE_SHARE = 0.88
# A host is slow at this share of the cluster's uplink or less.
SLOW_SHARE = 0.5


def upload_pace(operator_cap: int | None, declared: int, cluster: int) -> int | None:
    """The cap on piece bytes/s sent to peers (None: none).

    `operator_cap`: --upload-rate, which always wins; `declared`: this host's --uplink (0: not
    declared); `cluster`: the cluster's uplink (`cluster_uplink`, 0 where its members' median
    is undeclared: as fast as any)."""
    if operator_cap is not None:
        return operator_cap
    if declared <= 0:
        return None
    reference = cluster if cluster > 0 else UNDECLARED
    if declared > SLOW_SHARE * reference:
        return None
    return max(1, int(declared * PACE_SHARE))
