"""`pollen bench simulate`: the click command."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from bench.rate_options import (
    downlink_rate,
    join_events,
    kill_events,
    mbit_text,
    rate_option,
    size_list,
    slow_hosts,
)
from bench.simulate.clients import SKOPEO_PARALLEL
from bench.simulate.image import plain_layer_sizes
from bench.simulate.network import DEFAULT_RATE_STEP
from bench.simulate.report import summarize, table, write_outputs
from bench.simulate.timeline import Timeline, timeline_table
from bench.simulate.world import Join, Kill, SimConfig, Simulation
from peer.sizes import format_size, parse_size
from pieces.layout import MOST_PIECES_PER_BLOB, PIECES_PER_BLOB


def _size(_ctx: click.Context, param: click.Parameter, value: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def _kills(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Kill]:
    return [
        Kill(at, 1, owner=True) if what == "owner" else Kill(at, int(what))
        for what, at in kill_events(_ctx, param, values)
    ]


def _joins(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[Join]:
    return [Join(at, count) for count, at in join_events(_ctx, param, values)]


def _progress(quiet: bool) -> Callable[[str], None] | None:
    """On a terminal, one line rewritten in place; elsewhere (a log), a line every ~10 s."""
    if quiet:
        return None
    tty = sys.stderr.isatty()
    calls = [0]

    def show(line: str) -> None:
        calls[0] += 1
        final = line.endswith("\n")
        if tty:
            sys.stderr.write("\r\033[K" + line)
        elif final or calls[0] % 20 == 1:
            sys.stderr.write(line.rstrip("\n") + "\n")
        sys.stderr.flush()

    return show


@click.command()
@click.option("--nodes", default=8, show_default=True, help="Hosts, each running a node.")
@click.option(
    "--uplink",
    default="100mbit",
    show_default=True,
    callback=rate_option,
    help="Each host's upload rate, e.g. 100mbit, 1gbit, 20MB/s.",
)
@click.option(
    "--downlink",
    default=None,
    help="Each host's download rate [default: the uplink; `none`: unshaped].",
)
@click.option(
    "--slow",
    callback=slow_hosts,
    metavar="COUNT@RATE",
    help="COUNT of the hosts upload at RATE instead (uneven links), e.g. 4@25mbit.",
)
@click.option(
    "--origin-up",
    default=None,
    callback=rate_option,
    help="The origin's (the registry's host) upload rate [default: the uplink].",
)
@click.option(
    "--latency",
    default=0.0,
    show_default=True,
    type=float,
    help="One-way latency between any two hosts, in milliseconds.",
)
@click.option(
    "--size",
    default="224MiB",
    show_default=True,
    callback=_size,
    help="The image size, split over --layers (tar framing added, as `bench image` does).",
)
@click.option("--layers", default=3, show_default=True, help="Number of equal layers.")
@click.option(
    "--layer-sizes",
    callback=size_list,
    metavar="SIZES",
    help="Explicit layer blob sizes, comma-separated (e.g. 80MB,200MB,300MB,1MB); "
    "overrides --size and --layers.",
)
@click.option(
    "--piece-size",
    default="4MiB",
    show_default=True,
    callback=_size,
    help="The largest piece (each blob gets at least --pieces-per-blob, down to 256KiB, and "
    "pieces of at most 0.05 s of the median uplink the hosts declare, as the node does).",
)
@click.option(
    "--pieces-per-blob",
    type=click.IntRange(1, MOST_PIECES_PER_BLOB),
    default=PIECES_PER_BLOB,
    show_default=True,
    help="The least pieces a blob is cut into, as the node's option.",
)
@click.option(
    "--parallel",
    default=SKOPEO_PARALLEL,
    show_default=True,
    help="Blobs each client fetches at once (skopeo, the testbed's client: 6; containerd: 3).",
)
@click.option(
    "--client-read",
    callback=rate_option,
    metavar="RATE",
    help="Each client reads its blobs in order as the node's pieces arrive, at most RATE "
    "(e.g. 32MB/s) shared by the blobs it reads at once; a blob counts when read, the run "
    "when every client has read the image. The testbed's clients copy, hash and write on a "
    "busy machine [default: unlimited: a blob counts as soon as the node holds it].",
)
@click.option(
    "--prefetch/--no-prefetch",
    default=True,
    show_default=True,
    help="A node that serves the manifest fetches all of its blobs (the node's default).",
)
@click.option(
    "--pushes/--no-pushes",
    default=True,
    show_default=True,
    help="Fetching nodes invite the owner to push its first copies unasked (the node's "
    "behaviour); --no-pushes: the owner offers each with a Have and waits for the Request.",
)
@click.option("--seed", default=0, show_default=True, help="Same seed, same run.")
@click.option(
    "--rate-step",
    default=DEFAULT_RATE_STEP,
    show_default=True,
    type=float,
    help="Seconds of simulated time between recomputations of the flows' fair shares.",
)
@click.option(
    "--kill",
    "kills",
    multiple=True,
    callback=_kills,
    metavar="COUNT@S|owner@S",
    help="Kill COUNT random nodes (or the owner of the largest blob) at S seconds. Repeatable.",
)
@click.option(
    "--join",
    "joins",
    multiple=True,
    callback=_joins,
    metavar="COUNT@S",
    help="COUNT new nodes start at S seconds (joining through the first) and pull. Repeatable.",
)
@click.option(
    "--max-time",
    type=float,
    help="Stop after this many simulated seconds [default: 100 x T_min + 600].",
)
@click.option(
    "--max-wall",
    type=float,
    help="Stop after this many seconds of wall time, reporting how far the run got.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results as JSON here (the same run gives the same file).",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG chart of completion times against T_min here.",
)
@click.option(
    "--timeline",
    "timeline_period",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Every SECONDS of simulated time, print how far the hosts not done are behind the "
    "registry (stored bytes; in seconds of a downlink) and how busy their downlinks were: "
    "where the last host's lag was taken. Also in the JSON.",
)
@click.option(
    "--tokens",
    is_flag=True,
    help="The clients' credentials are opaque bearer tokens, which may expire: an owner asks "
    "the registry for no chunk of a blob later than 45 s after its download began, as the "
    "node does with such a token (a JWT's window ends by its own expiry, not modelled) "
    "[default: no credentials, as on the testbed].",
)
@click.option("--quiet", is_flag=True, help="No progress line on stderr.")
def simulate(
    nodes: int,
    uplink: int | None,
    slow: tuple[int, int],
    downlink: str | None,
    origin_up: int | None,
    latency: float,
    size: int,
    layers: int,
    layer_sizes: list[int] | None,
    piece_size: int,
    pieces_per_blob: int,
    parallel: int,
    client_read: int | None,
    prefetch: bool,
    pushes: bool,
    seed: int,
    rate_step: float,
    kills: list[Kill],
    joins: list[Join],
    max_time: float | None,
    max_wall: float | None,
    json_path: Path | None,
    chart_path: Path | None,
    timeline_period: float | None,
    tokens: bool,
    quiet: bool,
) -> None:
    """Simulate N hosts pulling one image through pollen, on a modelled network.

    The real membership, rendezvous, piece picker and choker run in every simulated node;
    links are shared max-min fairly, every message takes the latency. The defaults are the
    testbed of `pollen bench swarm --nodes 8 --size 224MiB --layers 3`. Reported as `bench
    swarm` does: first / median / p99 / last host done, last against T_min, origin bytes.

    \b
    Examples:
      pollen bench simulate
      pollen bench simulate --nodes 1000 --size 1GiB --json r.json --chart r.png
      pollen bench simulate --nodes 100 --kill owner@20 --join 10@30 --latency 5
    """
    if uplink is None:
        raise click.BadParameter("the uplink must be a rate", param_hint="--uplink")
    if nodes < 1 or layers < 1 or parallel < 1 or rate_step <= 0 or latency < 0:
        raise click.BadParameter(
            "--nodes, --layers, --parallel >= 1; --rate-step > 0; --latency >= 0"
        )
    down = downlink_rate(downlink, uplink)
    sizes = layer_sizes if layer_sizes else plain_layer_sizes(size, layers)
    config = SimConfig(
        nodes=nodes,
        uplink=uplink,
        slow_hosts=slow[0],
        slow_uplink=slow[1] if slow[0] else None,
        downlink=down,
        origin_up=origin_up or uplink,
        latency=latency / 1000,
        layer_sizes=tuple(sizes),
        piece_size=piece_size,
        pieces_per_blob=pieces_per_blob,
        parallel=parallel,
        client_read=client_read,
        prefetch=prefetch,
        pushes=pushes,
        seed=seed,
        rate_step=rate_step,
        max_time=max_time,
        max_wall=max_wall,
        kills=tuple(kills),
        joins=tuple(joins),
        tokens=tokens,
    )
    bound = config.bound()
    click.echo(
        f"{nodes} hosts, uplink {mbit_text(uplink)}"
        + (f" ({slow[0]} at {mbit_text(slow[1])})" if slow[0] else "")
        + ", downlink "
        f"{mbit_text(down) if down else 'unshaped'}, origin {mbit_text(config.origin_up)}, "
        f"latency {latency:g} ms"
        + (f", clients read {client_read / 1e6:g} MB/s" if client_read else "")
        + f"; image {format_size(config.image_bytes())} in "
        f"{len(sizes)} layers + config; T_min {bound:.3g}s"
    )
    simulation = Simulation(config, _progress(quiet))
    timeline = Timeline(simulation, timeline_period) if timeline_period else None
    result = simulation.run()
    s = summarize(result)
    if timeline is not None:
        click.echo(timeline_table(timeline.samples, config.downlink))
    click.echo(table(s, bound))
    click.echo(
        f"stopped: {result.stop} at {result.simulated_s:.1f}s simulated, "
        f"{result.wall_s:.1f}s wall, {result.events:,} events"
        + (f"; killed {len(result.killed)}" if result.killed else "")
        + (f"; joined {len(result.joined)}" if result.joined else "")
    )
    write_outputs(
        result, s, json_path, chart_path, timeline.samples if timeline is not None else None
    )
