"""What the piece picker costs per piece: one blob's download driven through `PiecePicker` alone.

    python -m bench.picker_cost [--pieces 256,1024] [--peers 16] [--repeat 3]

Per piece the node's fetch calls the picker as here: `received` and `stored` for the piece,
`schedule` for the request slot it freed, and for every Have a peer sends `have` and
`could_ask` (a `schedule` when it could). Peers start with a random tenth of the pieces and
announce one more each round; each peer answers one request per round (ROUND seconds), in the
order asked: 128 KiB pieces at 1.3 MB/s, a 100 Mbit/s uplink's share for one of 8 upload
slots, so the queues the picker keeps are as deep as in such a swarm (about 6 requests).
The time is the process's CPU time of the picker's calls only (the first schedule included;
the hashes and Bitfields before it and the driver's bookkeeping not), in microseconds per
piece stored; the best of `--repeat` runs, the same seed each time.
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
ROUND = 0.1  # seconds between a peer's answers: 128 KiB per 0.1 s is 1.3 MB/s


def run_once(pieces: int, peers: int, seed: int) -> tuple[float, int]:
    """CPU seconds spent in the picker for one whole download, and the schedule calls."""
    rng = random.Random(seed)
    picker = PiecePicker("sha256:" + "0" * 64, PieceLayout(pieces * PIECE, PIECE), rng)
    ids = [bytes([i]) * 8 for i in range(peers)]
    lacking: dict[bytes, list[int]] = {}
    picker.hashes(range(pieces))
    for peer in ids:
        held = set(rng.sample(range(pieces), pieces // 10))
        picker.bitfield(peer, held)
        lacking[peer] = [i for i in range(pieces) if i not in held]
        rng.shuffle(lacking[peer])
    queues: dict[bytes, deque[int]] = {p: deque() for p in ids}

    def take(sends: list[Send]) -> None:
        for send in sends:
            if isinstance(send.event, Request):
                queues[send.peer].append(send.event.index)

    clock = time.process_time
    now = 0.0
    start = clock()
    sends = picker.schedule(now)
    spent = clock() - start
    take(sends)
    schedules = 1
    rounds = 0
    while not picker.done and rounds < 100 * pieces:
        rounds += 1
        now += ROUND
        for peer in ids:
            if lacking[peer]:
                index = lacking[peer].pop()
                start = clock()
                picker.have(peer, index)
                asked = picker.could_ask(peer, index)
                sends = picker.schedule(now) if asked else []
                spent += clock() - start
                schedules += int(asked)
                take(sends)
        for peer in ids:
            if not queues[peer]:
                continue
            index = queues[peer].popleft()
            start = clock()
            if picker.received(peer, index, now):
                picker.stored(index)
            sends = picker.schedule(now)
            spent += clock() - start
            schedules += 1
            take(sends)
    if not picker.done:
        raise RuntimeError(f"the download did not finish in {rounds} rounds")
    return spent, schedules


def _counts(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(n) for n in value.split(",")]
    except ValueError:
        raise click.BadParameter("comma-separated whole numbers, e.g. 256,1024") from None
    if any(n < 1 for n in counts):
        raise click.BadParameter("a blob has at least one piece")
    return counts


@click.command()
@click.option(
    "--pieces",
    default="256,1024",
    show_default=True,
    callback=_counts,
    help="Pieces per blob to run, comma-separated.",
)
@click.option(
    "--peers",
    default=16,
    show_default=True,
    type=click.IntRange(1, 255),
    help="Peers the blob is taken from.",
)
@click.option(
    "--repeat",
    default=3,
    show_default=True,
    type=click.IntRange(min=1),
    help="Runs of each; the best is shown.",
)
def main(pieces: list[int], peers: int, repeat: int) -> None:
    """The piece picker's CPU per piece stored, for blobs of several piece counts."""
    print(f"{'pieces':>7} {'us per piece':>13} {'schedules':>10}")
    for count in pieces:
        runs = [run_once(count, peers, seed=1) for _ in range(repeat)]
        best = min(spent for spent, _ in runs)
        print(f"{count:>7} {best / count * 1e6:>13.1f} {runs[0][1]:>10}")


if __name__ == "__main__":
    main()
