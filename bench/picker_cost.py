"""What the piece picker costs per piece: one blob's download driven through `PiecePicker` alone.

    python -m bench.picker_cost [--pieces 256,1024] [--peers 16] [--repeat 3]

Per piece the node's fetch calls the picker as here: `received` and `stored` for the piece,
`schedule` for the request slot it freed, and for every Have a peer sends `have` and
`could_ask` (a `schedule` when it could). Peers start with a random tenth of the pieces and
announce one more each round; one request per peer is answered each round, in the order asked.
The time is the process's CPU time of those calls only (the driver's bookkeeping outside),
in microseconds per piece stored; the best of `--repeat` runs, the same seed each time.
Why: each piece costs a node ~1 ms of CPU on loopback (`bench.swarm_loopback`), the picker's
schedules 13 % of the nodes' samples there at 128 KiB pieces (py-spy), and its work per call
grows with the pieces a blob has, so smaller pieces cost more than their count.
"""

from __future__ import annotations

import random
import time
from collections import deque

import click

from peer.swarm.actions import Send
from peer.swarm.picker import PiecePicker
from pieces.layout import PieceLayout
from wire.events import Request

PIECE = 128 * 1024


def run_once(pieces: int, peers: int, seed: int) -> tuple[float, int]:
    """CPU seconds spent in the picker for one whole download, and the schedule calls."""
    rng = random.Random(seed)
    picker = PiecePicker("sha256:" + "0" * 64, PieceLayout(pieces * PIECE, PIECE), rng)
    ids = [bytes([i]) * 8 for i in range(peers)]
    held = {p: set(rng.sample(range(pieces), pieces // 10)) for p in ids}
    lacking = {p: [i for i in range(pieces) if i not in held[p]] for p in ids}
    for p in ids:
        rng.shuffle(lacking[p])
    queues: dict[bytes, deque[int]] = {p: deque() for p in ids}
    spent = 0.0
    schedules = 0
    now = 0.0

    def take(sends: list[Send]) -> None:
        for send in sends:
            if isinstance(send.event, Request):
                queues[send.peer].append(send.event.index)

    clock = time.process_time
    start = clock()
    picker.hashes(range(pieces))
    for peer in ids:
        picker.bitfield(peer, held[peer])
    take(picker.schedule(now))
    schedules += 1
    spent += clock() - start
    rounds = 0
    while not picker.done and rounds < 100 * pieces:
        rounds += 1
        now += 0.01
        for peer in ids:
            if lacking[peer]:
                index = lacking[peer].pop()
                held[peer].add(index)
                start = clock()
                picker.have(peer, index)
                if picker.could_ask(peer, index):
                    take(picker.schedule(now))
                    schedules += 1
                spent += clock() - start
        for peer in ids:
            if not queues[peer]:
                continue
            index = queues[peer].popleft()
            start = clock()
            if picker.received(peer, index, now):
                picker.stored(index)
            take(picker.schedule(now))
            schedules += 1
            spent += clock() - start
    if not picker.done:
        raise RuntimeError(f"the download did not finish in {rounds} rounds")
    return spent, schedules


@click.command()
@click.option("--pieces", default="256,1024", show_default=True, help="Pieces per blob to run.")
@click.option("--peers", default=16, show_default=True, help="Peers the blob is taken from.")
@click.option("--repeat", default=3, show_default=True, help="Runs of each; the best is shown.")
def main(pieces: str, peers: int, repeat: int) -> None:
    """The piece picker's CPU per piece stored, for blobs of several piece counts."""
    print(f"{'pieces':>7} {'us per piece':>13} {'schedules':>10}")
    for count in (int(n) for n in pieces.split(",")):
        best = min(run_once(count, peers, seed=1)[0] for _ in range(repeat))
        schedules = run_once(count, peers, seed=1)[1]
        print(f"{count:>7} {best / count * 1e6:>13.1f} {schedules:>10}")


if __name__ == "__main__":
    main()
