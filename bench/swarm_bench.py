"""`pollen bench swarm`: N hosts on shaped links fetch one image at once, through each contender
in turn (direct from the registry, pollen, a BitTorrent swarm), compared with the lower bound."""

from __future__ import annotations

import collections
import contextlib
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from bench.bound import payload_bound, t_min
from bench.link_timeline import timeline_table
from bench.oci_image import Image, LayerSpec, jib_specs, sized_specs, write_layers
from bench.rate_options import (
    downlink_rate,
    join_events,
    kill_events,
    mbit_text,
    rate_option,
    size_list,
    slow_hosts,
)
from bench.rollout import CLIENTS, Origin, Outcome, Rollout, RolloutError
from bench.swarm_report import blob_owners, summary, table, write_chart, write_json
from bench.testbed import Testbed, TestbedError, leftover_namespaces, remove_namespaces
from peer.sizes import format_size, parse_size
from peer.swarm import congestion

CONTENDERS = ("direct", "pollen", "bittorrent")


def _contenders(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    chosen = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CONTENDERS]
    if unknown or not chosen:
        raise click.BadParameter(f"choose from {', '.join(CONTENDERS)} (comma-separated)")
    return chosen


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the testbed is removed either way."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _progress(enabled: bool) -> Any:
    last = [0.0]

    def show(line: str) -> None:
        now = time.monotonic()
        if enabled and now - last[0] > 0.5:
            last[0] = now
            sys.stderr.write(f"\r\033[K{line}")
            sys.stderr.flush()

    return show


@click.command()
@click.option("--nodes", default=16, show_default=True, help="Node hosts (besides the origin).")
@click.option(
    "--uplink",
    default="100mbit",
    show_default=True,
    callback=rate_option,
    help="Each node host's upload rate (tc tbf), e.g. 100mbit, 1gbit, 20MB/s.",
)
@click.option(
    "--downlink", help="Each node host's download rate [default: the uplink; `none`: unshaped]."
)
@click.option(
    "--origin-uplink",
    default=None,
    callback=rate_option,
    help="The origin's upload rate [default: the uplink].",
)
@click.option("--rtt", type=float, help="Round-trip time in ms between hosts (needs netem).")
@click.option("--loss", type=float, help="Packet loss in percent on every uplink (needs netem).")
@click.option(
    "--scenario",
    type=click.Choice(["first", "release"]),
    default="first",
    show_default=True,
    help="first: every host starts empty (first rollout). release: every host holds "
    "release K of the jib image and pulls release K+1.",
)
@click.option(
    "--profile",
    type=click.Choice(["plain", "jib"]),
    default="plain",
    show_default=True,
    help="Image profile (release always uses jib).",
)
@click.option(
    "--size",
    default="512MiB",
    show_default=True,
    help="plain: the image size, split over --layers.",
)
@click.option("--layers", default=4, show_default=True, help="plain: number of layers.")
@click.option(
    "--layer-sizes",
    callback=size_list,
    metavar="SIZES",
    help="plain: explicit layer sizes, comma-separated (e.g. 112MiB,56MiB,800KiB); "
    "overrides --size and --layers.",
)
@click.option("--scale", default=1.0, show_default=True, help="jib: layer size factor.")
@click.option("--gzip", "gzip_layers", is_flag=True, help="gzip layers of half-text content.")
@click.option(
    "--client",
    type=click.Choice(list(CLIENTS)),
    default="oci",
    show_default=True,
    help="Each host's client (direct and pollen) and how it stores the image: "
    + "; ".join(f"{name}: {what}" for name, what in CLIENTS.items())
    + ". BitTorrent's aria2c is the same either way.",
)
@click.option(
    "--contenders",
    default=",".join(CONTENDERS),
    show_default=True,
    callback=_contenders,
    help="Which contenders to run, in this order.",
)
@click.option(
    "--timeout",
    type=float,
    help="Seconds a contender may take [default: twice what direct needs, + 60].",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A small run: 4 nodes, a 32 MiB image in 2 layers (under two minutes).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results as JSON here.",
)
@click.option(
    "--chart",
    "chart_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG chart of completion times against T_min here.",
)
@click.option(
    "--timeline",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Every SECONDS of each contender's pull, read what every host's link carried (the "
    "switch's counters) and print the origin's uplink, the hosts' downlinks and the downlink "
    "whose shaper dropped most over time: where a run lost its time. Also in the JSON, with "
    "every host's drops. (Each read is an `ip` and a `tc` call of a few ms, counted with the "
    "clients' CPU.)",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where images and stores go [default: a temporary directory, removed].",
)
@click.option(
    "--pollen-args",
    default="",
    metavar="ARGS",
    help="Extra options for every `pollen run`, e.g. '--piece-size 1MiB'.",
)
@click.option(
    "--slow",
    callback=slow_hosts,
    metavar="COUNT@RATE",
    help="COUNT of the node hosts upload at RATE instead of --uplink (uneven links), "
    "e.g. 4@25mbit; T_min is for those links.",
)
@click.option(
    "--kill",
    "kills",
    multiple=True,
    callback=kill_events,
    metavar="COUNT@S|owner@S",
    help="pollen only: SIGKILL COUNT random hosts' nodes (or the node owning the largest "
    "layer) S seconds into the pull; those hosts then no longer count. Repeatable.",
)
@click.option(
    "--join",
    "joins",
    multiple=True,
    callback=join_events,
    metavar="COUNT@S",
    help="pollen only: COUNT of the hosts (the last ones) start their node S seconds into the "
    "pull, joining through the first, and pull as soon as it serves; their times count from "
    "the start. Repeatable.",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="Only remove namespaces left by testbeds whose process died, and exit.",
)
def swarm(
    nodes: int,
    uplink: int | None,
    downlink: str | None,
    origin_uplink: int | None,
    rtt: float | None,
    loss: float | None,
    scenario: str,
    profile: str,
    size: str,
    layers: int,
    layer_sizes: list[int] | None,
    scale: float,
    gzip_layers: bool,
    client: str,
    contenders: list[str],
    timeout: float | None,
    quick: bool,
    json_path: Path | None,
    chart_path: Path | None,
    timeline: float | None,
    workdir: Path | None,
    pollen_args: str,
    slow: tuple[int, int],
    kills: list[tuple[str, float]],
    joins: list[tuple[int, float]],
    cleanup: bool,
) -> None:
    """Compare contenders on a testbed of network namespaces (needs root).

    One origin host runs docker-registry; every node host's uplink (and downlink) is shaped with
    tc. Each contender in turn starts from empty caches and all hosts fetch the image at the
    same moment: `direct` (skopeo from the registry), `pollen` (a node per host, skopeo
    through it), `bittorrent` (aria2c on every host, seeded from the origin, opentracker).
    Reported: first/median/last host done, the last against the lower bound T_min, and the
    bytes the origin served. Everything the testbed creates is removed on exit, Ctrl-C or error.

    \b
    Examples:
      pollen bench swarm --quick
      pollen bench swarm --nodes 16 --uplink 100mbit --size 512MiB --json r.json --chart r.png
      pollen bench swarm --scenario release --nodes 8 --scale 0.5
    """
    if cleanup:
        stale = leftover_namespaces()
        remove_namespaces(stale)
        click.echo(f"removed {len(stale)} leftover namespaces" + (f": {stale}" if stale else ""))
        return
    if quick:
        nodes, size, layers, profile, scale = 4, "32MiB", 2, profile, min(scale, 0.05)
        layer_sizes = None
    if uplink is None:
        raise click.BadParameter("the uplink must be shaped", param_hint="--uplink")
    if layer_sizes is not None and (profile != "plain" or scenario != "first"):
        raise click.BadParameter(
            "explicit layer sizes are for the plain image of a first rollout",
            param_hint="--layer-sizes",
        )
    if client == "dir" and scenario != "first":
        # A copy into dir: replaces what the directory held: release K would not stay.
        raise click.BadParameter(
            "dir holds one image only: use it with --scenario first", param_hint="--client"
        )
    if client == "ctr" and scenario != "first":
        # Each pull has a containerd of its own: release K would not stay for release K+1.
        raise click.BadParameter(
            "ctr starts each pull with an empty containerd: use it with --scenario first",
            param_hint="--client",
        )
    down = downlink_rate(downlink, uplink)
    origin_up = origin_uplink or uplink
    temporary = workdir is None
    root = Path(tempfile.mkdtemp(prefix="pollen-bench-swarm-")) if workdir is None else workdir
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _terminate_as_interrupt():
            document = _run(
                root,
                nodes,
                uplink,
                down,
                origin_up,
                rtt,
                loss,
                scenario,
                profile,
                layer_sizes or [max(1, parse_size(size) // layers)] * layers,
                scale,
                gzip_layers,
                client,
                contenders,
                timeout,
                pollen_args,
                kills,
                slow,
                joins,
                timeline,
            )
    except (TestbedError, RolloutError) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the testbed was removed", err=True)
        sys.exit(130)
    finally:
        if temporary:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
    if json_path is not None:
        write_json(json_path, document)
    if chart_path is not None:
        title = (
            f"{document['nodes']} hosts, {format_size(document['image_bytes'])}, "
            f"{document['scenario']} rollout"
        )
        write_chart(
            chart_path,
            document["results"],
            document["t_min_s"],
            document.get("payload_bound_s"),
            title,
        )


def _images(
    root: Path, scenario: str, profile: str, layer_sizes: list[int], scale: float, gz: bool
) -> list[Image]:
    layout = root / "image"
    content = "text" if gz else "random"
    if scenario == "release":
        return [
            write_layers(layout, jib_specs(scale, release, content, gz), f"r{release}")
            for release in (1, 2)
        ]
    specs: list[LayerSpec]
    if profile == "jib":
        specs = jib_specs(scale, 1, content, gz)
    else:
        specs = sized_specs(layer_sizes, 7, content, gz)
    return [write_layers(layout, specs, "bench")]


def _pollen_congestion_control(pollen_args: str) -> str:
    """What the nodes' peer links use: --peer-congestion-control in `pollen_args`, else what a
    node chooses here (the bench runs as root, as the nodes do)."""
    args = shlex.split(pollen_args)
    named = None
    for index, arg in enumerate(args):
        if arg == "--peer-congestion-control" and index + 1 < len(args):
            named = args[index + 1]
        elif arg.startswith("--peer-congestion-control="):
            named = arg.split("=", 1)[1]
    return congestion.choose(named)[0]


def _run(
    root: Path,
    nodes: int,
    uplink: int,
    downlink: int | None,
    origin_up: int,
    rtt: float | None,
    loss: float | None,
    scenario: str,
    profile: str,
    layer_sizes: list[int],
    scale: float,
    gz: bool,
    client: str,
    contenders: list[str],
    timeout: float | None,
    pollen_args: str = "",
    kills: list[tuple[str, float]] | None = None,
    slow: tuple[int, int] = (0, 0),
    joins: list[tuple[int, float]] | None = None,
    timeline: float | None = None,
) -> dict[str, Any]:
    images = _images(root, scenario, profile, layer_sizes, scale, gz)
    image = images[-1]
    # What must cross the origin's link: the blobs the hosts do not hold yet.
    held = {d for earlier in images[:-1] for d in earlier.blob_digests()}
    sizes = {image.config.digest: image.config.size} | {d.digest: d.size for d in image.layers}
    new_bytes = image.manifest.size + sum(s for d, s in sizes.items() if d not in held)
    slow_count = min(slow[0], nodes)
    uplinks = [uplink] * (nodes - slow_count) + [slow[1]] * slow_count
    bound = t_min(new_bytes, origin_up, uplinks, [downlink] * nodes)
    # Direct is the slow one: the origin sends N copies of the whole image (N * F / u_s), in
    # the timed rollout or in the release scenario's preparation; allow twice that.
    default_limit = max(10 * bound, 2 * nodes * image.total_size / origin_up) + 60
    limit = timeout if timeout is not None else default_limit
    click.echo(
        f"{nodes} hosts, uplink {mbit_text(uplink)}"
        + (f" ({slow_count} at {mbit_text(slow[1])})" if slow_count else "")
        + ", downlink "
        f"{mbit_text(downlink) if downlink else 'unshaped'}, origin {mbit_text(origin_up)}; "
        f"image {format_size(image.total_size)} in {len(image.layers)} layers, "
        f"{format_size(new_bytes)} new to the hosts; T_min {bound:.3g}s"
    )
    progress = _progress(sys.stderr.isatty())
    outcomes: list[Outcome] = []
    with Testbed(nodes, uplink, origin_up, downlink, rtt, loss, (slow_count, slow[1])) as testbed:
        hosts_congestion_control = testbed.congestion_control(testbed.nodes[0])
        share = testbed.payload_share(testbed.nodes[0])
        bound_for_payload = payload_bound(bound, share)
        click.echo(
            f"Payload bound {bound_for_payload:.4g}s: TCP's payload is {share:.4f} of what the "
            "shapers count (full segments, headers taken out)"
        )
        pollen_congestion = _pollen_congestion_control(pollen_args)
        click.echo(
            f"TCP congestion control: {hosts_congestion_control} on the hosts (BitTorrent's, "
            f"skopeo's, the registry's), {pollen_congestion} on pollen's peer links"
        )
        origin = Origin(testbed, root / "origin")
        for each in images:
            origin.push(each)
        rollout = Rollout(testbed, origin, root / "runs", limit, progress, client, timeline)
        tags = [i.tag for i in images]
        for contender in contenders:
            if contender == "direct":
                outcome = rollout.direct(tags)
            elif contender == "pollen":
                outcome = rollout.pollen(tags, shlex.split(pollen_args), kills, joins)
            else:
                outcome = rollout.bittorrent(images)
            outcomes.append(outcome)
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
            last = max(outcome.times) if outcome.complete else None
            click.echo(
                f"{contender}: {len(outcome.times)}/{nodes - len(outcome.killed)} hosts done"
                + (f" ({len(outcome.killed)} killed)" if outcome.killed else "")
                + (f" ({len(outcome.joined)} joined)" if outcome.joined else "")
                + (
                    f", last at {last:.1f}s ({last / bound:.2f} x T_min, "
                    f"{last / bound_for_payload:.3f} x the payload bound)"
                    if last
                    else ""
                )
                + f", origin served {format_size(outcome.origin_payload)}"
                + f"; CPU: clients {outcome.client_cpu_s:.1f} s"
                + (f", nodes {outcome.daemon_cpu_s:.1f} s" if outcome.daemon_cpu_s else "")
            )
            for host, error in sorted(outcome.errors.items()):
                click.echo(f"  {host}: {error[:300]}", err=True)
            if outcome.losses is not None:
                click.echo(f"{contender}: {outcome.losses.describe()}")
            elif outcome.losses_error:
                click.echo(f"{contender}: no loss counters: {outcome.losses_error}", err=True)
            if outcome.timeline_error:
                click.echo(f"{contender}: no timeline: {outcome.timeline_error}", err=True)
            if outcome.timeline:
                click.echo(
                    f"{contender}: the links over time (the switch's counters, retransmissions "
                    "included; busy against the shaped rates, which a full link reads as 96-100 %: "
                    "frames' headers are counted once per GSO packet)\n"
                    + timeline_table(outcome.timeline, outcome.done, origin_up, downlink)
                )
    summaries = [summary(o, image.total_size, bound, bound_for_payload) for o in outcomes]
    for outcome, result in zip(outcomes, summaries, strict=True):
        if outcome.node_ids and len(outcome.node_ids) == nodes:
            # Which host fetched which blob from the origin: a host that owns several large
            # layers must seed them all from its own uplink (compare `bench simulate`).
            declared = {f"node{i + 1}": rate for i, rate in enumerate(uplinks)}  # --uplink
            owners = blob_owners([d.digest for d in image.layers], outcome.node_ids, declared)
            result["layer_owners"] = owners
            per_host = sorted(collections.Counter(owners.values()).values(), reverse=True)
            click.echo(f"{outcome.contender}: layers per owning host {per_host}")
    click.echo(table(summaries, bound, bound_for_payload))
    return {
        "command": " ".join(sys.argv),
        "pollen_args": pollen_args,
        "kills": [f"{what}@{at:g}" for what, at in kills or []],
        "joins": [f"{count}@{at:g}" for count, at in joins or []],
        "slow_hosts": slow_count,
        "slow_uplink_bytes_per_s": slow[1] if slow_count else None,
        "scenario": scenario,
        "client": client,
        "nodes": nodes,
        "uplink_bytes_per_s": uplink,
        "downlink_bytes_per_s": downlink,
        "origin_uplink_bytes_per_s": origin_up,
        "hosts_congestion_control": hosts_congestion_control,
        "pollen_peer_congestion_control": pollen_congestion,
        "image_bytes": image.total_size,
        "new_bytes": new_bytes,
        "layers": [d.size for d in image.layers],
        "t_min_s": round(bound, 3),
        "payload_share": round(share, 5),
        "payload_bound_s": round(bound_for_payload, 3),
        "results": summaries,
    }
