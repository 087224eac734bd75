"""`pollen bench ...`: the benchmarks users run (image generator, timed pulls, swarm testbed)."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import click

from bench.oci_image import (
    CONTENTS,
    Image,
    PushError,
    jib_specs,
    plain_specs,
    push,
    write_layers,
)
from bench.pull_bench import pull
from bench.simulate.cli import simulate
from bench.swarm_bench import swarm
from peer.sizes import format_size, parse_size


@click.group()
def bench() -> None:
    """Benchmarks: make test images, time real pulls, compare swarms on shaped links."""


def registry_ref(url: str, tag: str) -> tuple[str, bool]:
    """`http://host:port/repo` and a tag -> (`host:port/repo:tag`, whether TLS is used).

    Raises:
        click.BadParameter: not an http(s) URL with a repository path.
    """
    parts = urlsplit(url)
    repo = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not repo:
        raise click.BadParameter(
            f"{url!r}: give the registry and repository as http(s)://HOST[:PORT]/REPO"
        )
    return f"{parts.netloc}/{repo}:{tag}", parts.scheme == "https"


def push_layout(layout: Path, tag: str, url: str) -> str:
    """skopeo-copy the image `tag` of an OCI layout to `url` (http(s)://HOST/REPO)."""
    ref, tls = registry_ref(url, tag)
    try:
        push(layout, tag, ref, tls)
    except PushError as exc:
        raise click.ClickException(str(exc)) from exc
    return ref


@bench.command()
@click.argument("layout", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--profile",
    type=click.Choice(["plain", "jib"]),
    default="plain",
    show_default=True,
    help="plain: --layers equal layers of --layer-size. jib: a layered Java app "
    "(JDK ~80 MB, dependencies ~200 MB, resources ~300 MB, classes ~1 MB) times --scale.",
)
@click.option("--layers", default=4, show_default=True, help="plain: number of layers.")
@click.option("--layer-size", default="128MiB", show_default=True, help="plain: bytes per layer.")
@click.option("--scale", default=1.0, show_default=True, help="jib: multiply every layer size.")
@click.option(
    "--release",
    default=1,
    show_default=True,
    help="jib: release K differs from release K-1 in the classes layer only.",
)
@click.option(
    "--content",
    type=click.Choice(CONTENTS),
    default="random",
    show_default=True,
    help="random: incompressible bytes. text: gzip shrinks it to about half.",
)
@click.option("--gzip", "gzip_layers", is_flag=True, help="gzip-compress the layers (tar+gzip).")
@click.option("--seed", default=0, show_default=True, help="plain: other seeds, other layers.")
@click.option("--tag", help="Image tag [default: r<release> for jib, latest for plain].")
@click.option(
    "--push",
    "push_url",
    metavar="URL",
    help="Also push it (skopeo copy) to http(s)://HOST[:PORT]/REPO; http means no TLS.",
)
def image(
    layout: Path,
    profile: str,
    layers: int,
    layer_size: str,
    scale: float,
    release: int,
    content: str,
    gzip_layers: bool,
    seed: int,
    tag: str | None,
    push_url: str | None,
) -> None:
    """Write a test image into the OCI layout directory LAYOUT (created, or added to).

    \b
    Examples:
      pollen bench image /tmp/img --layers 4 --layer-size 128MiB
      pollen bench image /tmp/jib --profile jib --release 2 --gzip --content text \\
          --push http://127.0.0.1:5000/bench/app
    """
    if layers < 1 or scale <= 0 or release < 0:
        raise click.BadParameter("--layers must be >= 1, --scale > 0, --release >= 0")
    if profile == "jib":
        specs = jib_specs(scale, release, content, gzip_layers)
        tag = tag or f"r{release}"
    else:
        specs = plain_specs(layers, parse_size(layer_size), seed, content, gzip_layers)
        tag = tag or "latest"
    if push_url is not None:
        registry_ref(push_url, tag)  # a bad URL fails before minutes of writing
    started = time.monotonic()
    written = write_layers(layout, specs, tag)
    click.echo(describe(written, time.monotonic() - started))
    if push_url is not None:
        ref = push_layout(layout, tag, push_url)
        click.echo(f"pushed {ref}")


def describe(image: Image, seconds: float) -> str:
    lines = [f"{image.layout}:{image.tag}  manifest {image.manifest.digest}"]
    for layer in image.layers:
        lines.append(f"  {layer.digest}  {format_size(layer.size):>10}  {layer.media_type}")
    lines.append(f"  total {format_size(image.total_size)}, written in {seconds:.1f}s")
    return "\n".join(lines)


bench.add_command(swarm)
bench.add_command(pull)
bench.add_command(simulate)
