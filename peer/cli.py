"""The `pollen` command line.

Every option of `pollen run` can also be set in the TOML file given by `--config` (keys are the
long option names, with `-` or `_`) and in the environment as POLLEN_<NAME> (e.g.
POLLEN_CACHE_SIZE=20GiB). Precedence: flag > environment > config file > built-in default.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import trio

from peer.config import (
    DEFAULT_ADMIN,
    DEFAULT_HTTP,
    DEFAULT_PEER,
    DEFAULT_UPSTREAM,
    NodeConfig,
    default_data_dir,
    parse_address,
    parse_registry_url,
    parse_upstream,
)
from peer.front.admin import ADMIN_TOKEN_FILE
from peer.front.connection_limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_ADDRESS
from peer.listening import CannotListen
from peer.sizes import format_size, parse_duration, parse_rate, parse_share, parse_size
from peer.swarm import congestion
from pieces.layout import (
    DEFAULT_PIECE_SIZE,
    LEAST_PIECE_SIZE,
    MAX_PIECE_SIZE,
    MOST_PIECES_PER_BLOB,
    PIECES_PER_BLOB,
)

DEFAULT_DISK_GAP = 0.15  # --disk-low, when not given: this far below --disk-high


def _load_config_file(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """Turn the TOML file into click's default_map, so flags and env vars still win over it."""
    if value is None:
        return
    try:
        with open(value, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}") from exc
    known = {p.name for p in ctx.command.params if p.name}
    defaults: dict[str, Any] = {}
    for key, item in data.items():
        name = key.replace("-", "_")
        if name not in known or name == "config":
            raise click.BadParameter(f"{value}: unknown setting {key!r}")
        if name == "upstream" and isinstance(item, dict):
            item = [f"{ns}={url}" for ns, url in item.items()]
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def _convert(parser: Any, what: str) -> Any:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            if isinstance(value, tuple | list):
                return tuple(parser(str(v)) for v in value)
            return parser(str(value))
        except ValueError as exc:
            raise click.BadParameter(f"{exc}") from exc

    callback.__doc__ = what
    return callback


def _rate_or_zero(text: str) -> int:
    """A rate that may be 0 (`0`, `0KiB/s`: off); a rate that rounds to 0 bytes/s otherwise
    (`1bit`) is refused rather than taken as off."""
    if _ZERO_RATE.fullmatch(text):
        return 0
    rate = parse_rate(text)
    if rate == 0:
        raise ValueError(f"{text} is under 1 byte/s (give 0 to turn it off)")
    return rate


def _piece_size(text: str) -> int:
    """A --piece-size: a size a peer can carry in one frame and small enough pieces cannot
    outnumber what a node keeps state for."""
    size = parse_size(text)
    if not LEAST_PIECE_SIZE <= size <= MAX_PIECE_SIZE:
        raise ValueError(
            f"{text} is outside {format_size(LEAST_PIECE_SIZE)} to {format_size(MAX_PIECE_SIZE)} "
            "(a piece travels to a peer in one frame of at most "
            f"{format_size(MAX_PIECE_SIZE)}; smaller pieces would be too many for large blobs)"
        )
    return size


_ZERO_RATE = re.compile(r"\s*0+(?:\.0*)?\s*(?:[a-zA-Z]+(?:/s)?)?\s*")
_ARGV = "pollen.argv"


class _Commands(click.Group):
    """The node's commands, and `pollen bench` and `pollen configure`, whose code (and its
    imports) is loaded only when they run: a node starts without them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Kept for `pollen run`'s reload: SIGHUP parses the same command line again (with
        # the config file re-read).
        ctx.meta[_ARGV] = list(args)
        return super().parse_args(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), "bench", "configure"])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "bench":
            try:
                from bench.cli import bench
            except ImportError as exc:
                # The one-file binary is the node: the harness (and matplotlib) stay out.
                raise click.UsageError(
                    "`pollen bench` is not in this build: run it from a source checkout "
                    f"(make test sets one up) [{exc}]"
                ) from exc
            return bench
        if cmd_name == "configure":
            from peer.configure.command import configure

            return configure
        return super().get_command(ctx, cmd_name)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from peer.version import VERSION, commit

    click.echo(f"pollen {VERSION} (commit {commit()})")
    ctx.exit()


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version",
    is_flag=True,
    is_eager=True,
    expose_value=False,
    callback=_print_version,
    help="Print the version and the commit it was built from, and exit.",
)
def main() -> None:
    """pollen: a peer-to-peer registry mirror for pulling container images.

    Run one `pollen run` per node and point containerd (hosts.toml), skopeo or podman at its
    HTTP address as a registry mirror.
    """


@main.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config_file,
    envvar="POLLEN_CONFIG",
    help="TOML file with any of the options below (keys are the long option names).",
)
@click.option(
    "--http",
    default=DEFAULT_HTTP,
    show_default=True,
    envvar="POLLEN_HTTP",
    callback=_convert(parse_address, "address"),
    help="ADDR:PORT of the registry front and the admin API (/healthz, /_pollen/status, /metrics).",
)
@click.option(
    "--peer",
    default=DEFAULT_PEER,
    show_default=True,
    envvar="POLLEN_PEER",
    callback=_convert(parse_address, "address"),
    help="ADDR:PORT for the peer protocol (TCP pieces) and gossip (UDP), same port.",
)
@click.option(
    "--advertise",
    default=None,
    envvar="POLLEN_ADVERTISE",
    callback=_convert(parse_address, "address"),
    help="ADDR:PORT other nodes use to reach this one [default: --peer, or this host's "
    "address when --peer is 0.0.0.0].",
)
@click.option(
    "--join",
    multiple=True,
    envvar="POLLEN_JOIN",
    callback=_convert(parse_address, "address"),
    help="HOST:PORT (peer port) of any live member to join through; repeatable; retried "
    "with back-off. A DNS name joins every address it resolves to, resolved again while "
    "joining and every 30 s (a Kubernetes headless Service) [default: none, the first node "
    "of a cluster].",
)
@click.option(
    "--cluster-token",
    default=None,
    envvar="POLLEN_CLUSTER_TOKEN",
    help="Shared secret every node must prove (never sent) [default: none, an open cluster].",
)
@click.option(
    "--cluster-token-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    envvar="POLLEN_CLUSTER_TOKEN_FILE",
    help="Read --cluster-token from this file (keeps it out of the process list).",
)
@click.option(
    "--peer-encryption/--no-peer-encryption",
    default=False,
    show_default=True,
    envvar="POLLEN_PEER_ENCRYPTION",
    help="Encrypt and authenticate every frame between nodes (AES-256-GCM with keys from the "
    "handshake). Every node of the cluster must use the same setting: a node refuses a peer "
    "with the other one. Costs CPU per byte, and uploads no longer use sendfile. Without "
    "--cluster-token it stops passive listening only, not a man in the middle.",
)
@click.option(
    "--peer-congestion-control",
    default=None,
    show_default=f"{congestion.PREFERRED} where this process may set it; else the host's",
    envvar="POLLEN_PEER_CONGESTION_CONTROL",
    metavar="NAME",
    help="TCP congestion control of the links to other nodes: a name the kernel offers "
    "(without CAP_NET_ADMIN, one of /proc/sys/net/ipv4/tcp_allowed_congestion_control), used "
    f"on every link, or '{congestion.SYSTEM}' for the host's default. A name the kernel "
    "refuses stops the start. A node's links share its uplink and its downlink: CUBIC backs "
    "off when they overfill a queue, where BBR (version 1) keeps sending and loses more.",
)
@click.option(
    "--insecure-open-cluster",
    is_flag=True,
    default=False,
    envvar="POLLEN_INSECURE_OPEN_CLUSTER",
    help="Allow a cluster without a token on a peer address other hosts can reach (anyone "
    "who reaches it can join and read cached blobs). Without a token the node refuses to "
    "start unless --peer is a loopback address.",
)
@click.option(
    "--admin",
    default=DEFAULT_ADMIN,
    show_default=True,
    envvar="POLLEN_ADMIN",
    callback=_convert(parse_address, "address"),
    help="ADDR:PORT of the admin API: /_pollen/status and DELETE /_pollen/cache (with the "
    "admin token), /metrics and /healthz (without).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="POLLEN_ADMIN_TOKEN_FILE",
    help="File holding the admin API's bearer token, created with a random token (readable "
    "by the node's user only) if missing [default: <data-dir>/admin.token].",
)
@click.option(
    "--uplink",
    default=None,
    envvar="POLLEN_UPLINK",
    callback=_convert(parse_rate, "rate"),
    help="This host's upload capacity (e.g. 1gbit, 25mbit), told to the other nodes: a blob's "
    "owner sends the first copy of every piece, so hosts that declare less are chosen as "
    "owners less often (a quarter of the fastest: about a sixty-fourth as often). It also sizes "
    "pieces: blobs are cut for the median of what the cluster's members declare, a piece at "
    "most 0.05 s of it (25mbit: 128KiB, 20mbit: 64KiB, 100mbit: 512KiB at most, smaller than "
    "--pieces-per-blob 32 gives large layers), since on slow links small pieces spread sooner; "
    "a blob already stored keeps its pieces. Declare it on hosts with a slower link than the "
    "rest, and on every host of a cluster on links of tens of Mbit/s [default: --upload-rate "
    "if set, else not declared: counted as the fastest]. A host that declares half the "
    "cluster's uplink or less also paces its piece uploads (see --upload-rate).",
)
@click.option(
    "--upload-rate",
    default=None,
    envvar="POLLEN_UPLOAD_RATE",
    callback=_convert(parse_rate, "rate"),
    help="Cap on piece bytes sent to peers, e.g. 50MiB/s or 400mbit [default: none, but on a "
    "host whose --uplink is half the cluster's or less (the median its members declare; one that "
    "declares nothing counts as the fastest): 0.88 "
    "of that uplink, so that the host's requests and the ACKs of what it downloads, which leave "
    "through the same uplink, do not queue behind its pieces].",
)
@click.option(
    "--download-rate",
    default=None,
    envvar="POLLEN_DOWNLOAD_RATE",
    callback=_convert(parse_rate, "rate"),
    help="Cap on blob bytes received from peers and the upstream together [default: none].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_data_dir,
    envvar="POLLEN_DATA_DIR",
    show_default="~/.cache/pollen",
    help="Directory of the piece store.",
)
@click.option(
    "--upstream",
    multiple=True,
    envvar="POLLEN_UPSTREAM",
    callback=_convert(parse_upstream, "NS=URL"),
    help="NS=URL: the registry for requests with ?ns=NS (repeatable), e.g. "
    "docker.io=https://registry-1.docker.io. Without a mapping, ?ns=HOST goes to https://HOST.",
)
@click.option(
    "--client-registries/--no-client-registries",
    default=True,
    show_default=True,
    envvar="POLLEN_CLIENT_REGISTRIES",
    help="Whether a client's ?ns=HOST (containerd names the registry it pulls from), or a "
    "member's, may send this node to a registry no --upstream maps, at https://HOST. Off: only "
    "the default upstream, docker.io and the --upstream mappings; any other ?ns= gets 400 "
    "before anything is asked of anyone. Re-read on SIGHUP.",
)
@click.option(
    "--default-upstream",
    default=DEFAULT_UPSTREAM,
    show_default=True,
    envvar="POLLEN_DEFAULT_UPSTREAM",
    callback=_convert(parse_registry_url, "URL"),
    help="Registry URL for requests without ?ns= (http:// or https://, host[:port], a path "
    "at most).",
)
@click.option(
    "--cache-size",
    default=None,
    envvar="POLLEN_CACHE_SIZE",
    callback=_convert(parse_size, "size"),
    help="Store quota, e.g. 20GiB; least recently used blobs not in use are evicted "
    "[default: no quota, bounded by the disk].",
)
@click.option(
    "--cache-ttl",
    default=None,
    metavar="DURATION",
    envvar="POLLEN_CACHE_TTL",
    callback=_convert(parse_duration, "duration"),
    help="Evict a blob nobody has read (or served to a peer) for this long, e.g. 7d, 12h "
    "[default: none, blobs stay until room is needed].",
)
@click.option(
    "--disk-high",
    default=None,
    metavar="PERCENT",
    envvar="POLLEN_DISK_HIGH",
    callback=_convert(parse_share, "percentage"),
    help="Disk use of the data directory's file system (all of it, not only the store's "
    "files) above which the store evicts least recently used blobs down to --disk-low, "
    "checked every minute and before each write, e.g. 85% [default: none].",
)
@click.option(
    "--disk-low",
    default=None,
    metavar="PERCENT",
    envvar="POLLEN_DISK_LOW",
    callback=_convert(parse_share, "percentage"),
    help="Where eviction for --disk-high stops, e.g. 70% [default: 15 points below it].",
)
@click.option(
    "--preheat-listen",
    default=None,
    envvar="POLLEN_PREHEAT_LISTEN",
    callback=_convert(parse_address, "address"),
    help="ADDR:PORT where Harbor's P2P preheat reaches the node, as a Dragonfly or a Kraken "
    "provider instance (nothing else is served there) [default: off].",
)
@click.option(
    "--preheat-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="POLLEN_PREHEAT_TOKEN_FILE",
    help="The bearer token Harbor's provider instance sends (auth mode OAuth), created with "
    "a random token (mode 0600) if missing [default: <data-dir>/preheat.token].",
)
@click.option(
    "--auth-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    envvar="POLLEN_AUTH_FILE",
    help="The node's own registry logins, in docker's config.json / containers' auth.json "
    "format (what `docker login` or `podman login --authfile` writes; a Kubernetes "
    "dockerconfigjson secret): used by preheat jobs, and for client requests that bring no "
    "credentials where --auth-for-clients says so. Never logged. [default: none]",
)
@click.option(
    "--auth-for-clients",
    multiple=True,
    metavar="REGISTRY",
    envvar="POLLEN_AUTH_FOR_CLIENTS",
    help="Also log in with the --auth-file login of REGISTRY (host[:port], as in image "
    "names) for client requests that bring no credentials (repeatable). Content fetched "
    "that way is private: other nodes' clients still need a login the registry accepts.",
)
@click.option(
    "--piece-size",
    default=str(DEFAULT_PIECE_SIZE),
    envvar="POLLEN_PIECE_SIZE",
    callback=_convert(_piece_size, "size"),
    show_default="4MiB",
    help="The largest piece blobs are split into (and hashed by), 64KiB to 16MiB: a blob gets "
    "at least 256 pieces, halving this size down to 256KiB (a small blob spreads faster in "
    "small pieces), and smaller still where the cluster declares slow uplinks (--uplink). "
    "Smaller pieces spread "
    "faster through many nodes and cost more CPU per byte (each piece ~1 ms): on links of "
    "tens of Mbit/s, smaller pieces (25mbit: 128KiB) end a rollout 2-5% sooner, which "
    "--uplink gives; on fast links the default costs less CPU. A blob is cut by its owner and "
    "every node takes its pieces (and keeps them for a blob it holds: a new setting cuts new "
    "blobs), so nodes set otherwise still trade; but a node that takes over a blob nobody "
    "holds cuts by its own setting, and downloads in progress then fetch the rest from the "
    "registry: set the same value on every node.",
)
@click.option(
    "--pieces-per-blob",
    type=click.IntRange(1, MOST_PIECES_PER_BLOB),
    default=PIECES_PER_BLOB,
    show_default=True,
    envvar="POLLEN_PIECES_PER_BLOB",
    help="The least pieces a blob is cut into: the piece size halves from --piece-size, down "
    "to 256KiB, until a blob has this many. Each piece costs a node CPU (~1.7 ms on a 2-core "
    "VM, whatever its size): where links are fast and the CPU is what binds, fewer, larger "
    "pieces move more bytes per CPU-second (32: 4MiB pieces for a 128MiB layer); on slow links "
    "they spread slower through the swarm. Set the same value on every node (as --piece-size).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    envvar="POLLEN_IDLE_TIMEOUT",
    help="Seconds an idle client connection is kept open.",
)
@click.option(
    "--min-read-rate",
    default="16KiB/s",
    show_default=True,
    envvar="POLLEN_MIN_READ_RATE",
    callback=_convert(_rate_or_zero, "rate"),
    help="A client that takes an answer slower than this, over each minute it keeps the node "
    "waiting, is disconnected (0: never): a connection being answered is never closed to "
    "make room, so slow readers could otherwise hold every --max-connections slot.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    envvar="POLLEN_MAX_CONNECTIONS",
    help="Client connections the registry port holds at once; over it a new connection is "
    "answered 503 and closed (each costs a file descriptor: the peer port and the admin API "
    "keep theirs). Keep it well under the open-file limit (LimitNOFILE).",
)
@click.option(
    "--max-connections-per-address",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PER_ADDRESS,
    show_default=True,
    envvar="POLLEN_MAX_CONNECTIONS_PER_ADDRESS",
    help="Of --max-connections, how many one client address may hold (one host cannot take "
    "them all).",
)
@click.option(
    "--upstream-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    envvar="POLLEN_UPSTREAM_TIMEOUT",
    help="Seconds without a byte from the upstream before its download is failed; also how "
    "long an upstream has to answer a request (its response head, whatever comes before it).",
)
@click.option(
    "--prefetch/--no-prefetch",
    default=True,
    show_default=True,
    envvar="POLLEN_PREFETCH",
    help="When a client GETs an image manifest, start fetching its config and layers at once "
    "(from the swarm or the registry, as that client: same registry, repository and "
    "credentials), so a client that downloads blobs one at a time finds the later ones "
    "already here. Costs fetching blobs a client may already hold (it asks for the manifest "
    "all the same); --no-prefetch fetches a blob only when a client asks for it.",
)
@click.option(
    "--prefetch-downloads",
    type=click.IntRange(min=1, max=64),
    default=4,
    show_default=True,
    envvar="POLLEN_PREFETCH_DOWNLOADS",
    help="Prefetch downloads run at once by the node; the rest wait their turn in manifest "
    "order (up to 1024 blobs; beyond, they are left to the clients).",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    envvar="POLLEN_SHUTDOWN_GRACE",
    help="Seconds the client responses in flight get to finish after SIGTERM (the node "
    "stops accepting at once, and tells the cluster it leaves).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    envvar="POLLEN_LOG_LEVEL",
)
def run(**options: Any) -> None:
    """Run one node: a caching registry mirror on --http that shares pieces with its peers.

    Under systemd (Type=notify) it says READY=1 once it serves and has joined, pings the
    watchdog (WatchdogSec), re-reads its settings on SIGHUP (upstreams, rates, cache size;
    transfers go on), and on SIGTERM leaves the cluster, stops accepting and lets the client
    responses in flight finish (--shutdown-grace).
    """
    logging.basicConfig(
        level=options["log_level"].upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx logs every request at INFO; our own log lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    config = _node_config(options)
    from peer.node import Node  # late: keeps `pollen --help` fast

    try:
        node = Node(config, _rereader(click.get_current_context()))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot open the store in {config.data_dir}: {exc}") from exc
    try:
        trio.run(node.run)
    except* CannotListen as group:
        # trio's nurseries wrap the error (in groups within groups): the first one is the news.
        raise click.ClickException(str(_first_leaf(group))) from None


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaf: BaseException = group
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf


def _rereader(ctx: click.Context) -> Callable[[], NodeConfig]:
    """The settings as they are now: the same command line parsed again, so the config file
    (and the token file) are read again, with the same precedence."""
    argv = ctx.find_root().meta.get(_ARGV, [])
    args = argv[argv.index(ctx.info_name) + 1 :] if ctx.info_name in argv else []
    command = ctx.command

    def reread() -> NodeConfig:
        with command.make_context(ctx.info_name, list(args), parent=ctx.parent) as again:
            return _node_config(dict(again.params))

    return reread


def _node_config(options: dict[str, Any]) -> NodeConfig:
    """NodeConfig from `pollen run`'s parsed options (checked).

    Raises:
        click.UsageError, click.BadParameter: the settings are refused (the message says why).
    """
    token_file = options["cluster_token_file"]
    token = options["cluster_token"]
    if token_file is not None:
        token = Path(token_file).read_text().strip()
        if not token:
            raise click.BadParameter(f"{token_file} is empty", param_hint="--cluster-token-file")
    high, low = options["disk_high"], options["disk_low"]
    if high is not None and low is None:
        low = max(0.0, high - DEFAULT_DISK_GAP)
    config = NodeConfig(
        http=options["http"],
        data_dir=Path(options["data_dir"]).expanduser(),
        upstreams=dict(options["upstream"] or ()),
        client_registries=options["client_registries"],
        default_upstream=options["default_upstream"],
        cache_size=options["cache_size"],
        cache_ttl=options["cache_ttl"],
        auth_file=options["auth_file"],
        preheat_listen=options["preheat_listen"],
        preheat_token_file=options["preheat_token_file"],
        auth_for_clients=tuple(options["auth_for_clients"] or ()),
        disk_high=high,
        disk_low=low,
        piece_size=options["piece_size"],
        pieces_per_blob=options["pieces_per_blob"],
        idle_timeout=options["idle_timeout"],
        min_read_rate=options["min_read_rate"],
        max_connections=options["max_connections"],
        max_connections_per_address=options["max_connections_per_address"],
        upstream_timeout=options["upstream_timeout"],
        peer=options["peer"],
        advertise=options["advertise"],
        join=tuple(options["join"] or ()),
        cluster_token=token.encode() if token else None,
        peer_encryption=options["peer_encryption"],
        peer_congestion_control=options["peer_congestion_control"],
        upload_rate=options["upload_rate"],
        uplink=options["uplink"],
        download_rate=options["download_rate"],
        admin=options["admin"],
        admin_token_file=options["admin_token_file"],
        insecure_open_cluster=options["insecure_open_cluster"],
        prefetch=options["prefetch"],
        prefetch_downloads=options["prefetch_downloads"],
        shutdown_grace=options["shutdown_grace"],
    )
    try:
        config.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    return config


def _admin_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that find a running node's admin API and its token."""
    for option in reversed(
        [
            click.option(
                "--admin",
                default=DEFAULT_ADMIN,
                show_default=True,
                envvar="POLLEN_ADMIN",
                help="The node's admin address (its --admin).",
            ),
            click.option(
                "--admin-token-file",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                envvar="POLLEN_ADMIN_TOKEN_FILE",
                help="The node's admin token [default: <data-dir>/admin.token].",
            ),
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=default_data_dir,
                envvar="POLLEN_DATA_DIR",
                show_default="~/.cache/pollen",
                help="The node's --data-dir, where it keeps admin.token.",
            ),
        ]
    ):
        command = option(command)
    return command


def _ask_admin(
    admin: str,
    token_file: Path | None,
    data_dir: Path,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON answer of the node's admin API.

    Raises:
        click.ClickException: no token, no node, or the node refused (its message).
    """
    url = f"http://{admin}{path}"
    token_file = token_file or data_dir.expanduser() / ADMIN_TOKEN_FILE
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise click.ClickException(
            f"cannot read the admin token {token_file}: {exc.strerror} "
            "(give --admin-token-file or the node's --data-dir)"
        ) from exc
    headers = {"Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            doc: dict[str, Any] = json.load(response)
            return doc
    except urllib.error.HTTPError as exc:
        answer = exc.read(2000).decode(errors="replace")
        raise click.ClickException(f"{url}: {exc.code} {answer}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the node at {url}: {exc}") from exc


@main.command()
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
def status(admin: str, admin_token_file: Path | None, data_dir: Path, as_json: bool) -> None:
    """Show a node's store use and the transfers in flight (through its admin API)."""
    doc = _ask_admin(admin, admin_token_file, data_dir, "GET", "/_pollen/status")
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    store = doc["store"]
    quota = format_size(store["cache_size"]) if store["cache_size"] else "none"
    print(f"node      {doc['node']['http']}  pid {doc['node']['pid']}")
    print(
        f"store     {format_size(store['bytes_used'])} used (quota {quota}), "
        f"{store['complete_blobs']} blobs, {store['partial_blobs']} partial, "
        f"{store['manifests']} manifests, {format_size(store['disk_free'])} disk free"
    )
    up = doc["upstream"]
    print(
        f"upstream  {format_size(up['bytes'])} received, {up['downloads_completed']} downloads "
        f"done, {up['downloads_failed']} failed"
    )
    for job in doc.get("preheat", []):
        print(
            f"preheat   job {job['id']} {job['state']}: {', '.join(job['images'])[:80]} "
            f"({job['blobs']} blobs, scope {job['scope']}, {len(job['errors'])} errors)"
        )
    for t in doc["transfers"]:
        size = format_size(t["size"]) if t["size"] is not None else "?"
        print(
            f"  {t['digest'][:19]}  {format_size(t['bytes_present'])}/{size}  "
            f"{t['clients']} clients  {t['seconds']}s  {t['repository']}"
        )


@main.command()
@_admin_options
@click.option(
    "--dry-run", is_flag=True, help="Only list what would be evicted now; remove nothing."
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON document.")
def gc(
    admin: str, admin_token_file: Path | None, data_dir: Path, dry_run: bool, as_json: bool
) -> None:
    """Run a node's cache check now: evict blobs past --cache-ttl, then least recently used
    ones while the store is over --cache-size or the disk above --disk-high (down to
    --disk-low). Blobs being read, written, uploaded or preheated stay. The node also does
    this by itself every minute."""
    path = "/_pollen/gc?dry_run=1" if dry_run else "/_pollen/gc"
    doc = _ask_admin(admin, admin_token_file, data_dir, "POST", path)
    if as_json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    verb = "would evict" if dry_run else "evicted"
    for e in doc["evicted"]:
        idle = max(0.0, time.time() - e["last_used"])
        kind = " (partial)" if e["partial"] else " (manifest)" if e["manifest"] else ""
        print(f"{e['digest']}{kind}  {format_size(e['size'])}  unused {idle:.0f}s  {e['reason']}")
    print(f"{verb} {len(doc['evicted'])} blobs, {format_size(doc['bytes'])}")


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Platforms to take from a multi-platform image (repeatable; `all` for every one) "
    "[default: the node's own].",
)
@click.option(
    "--scope",
    type=click.Choice(["owners", "all"]),
    default="owners",
    show_default=True,
    help="owners: each blob leaves the registry once, fetched by its owner (and the node "
    "running the job); all: every live node of the cluster also takes every blob, so the "
    "first pull anywhere is a local hit.",
)
@click.option("--wait", is_flag=True, help="Show progress until the job ends; fail if it fails.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=3600.0,
    show_default=True,
    help="With --wait: give up waiting after this many seconds (the job goes on).",
)
@_admin_options
@click.option("--json", "as_json", is_flag=True, help="Print the job's JSON document.")
def preheat(
    images: tuple[str, ...],
    platforms: tuple[str, ...],
    scope: str,
    wait: bool,
    timeout: float,
    admin: str,
    admin_token_file: Path | None,
    data_dir: Path,
    as_json: bool,
) -> None:
    """Warm the cache with IMAGES (e.g. registry.example.com/team/app:1.2, nginx:1.27) before
    anyone pulls them: the node resolves each tag, follows a multi-platform index to the
    manifests of the chosen platforms, and fetches every blob through the swarm. Uses the
    node's registry credentials (its --auth-file) for private repositories."""
    body: dict[str, Any] = {"images": list(images), "scope": scope}
    if platforms:
        body["platforms"] = list(platforms)
    job = _ask_admin(admin, admin_token_file, data_dir, "POST", "/_pollen/preheat", body)
    if not wait:
        print(json.dumps(job, indent=2) if as_json else f"preheat job {job['id']} started")
        return
    deadline = time.monotonic() + timeout
    path = f"/_pollen/preheat/{job['id']}"
    while job["state"] in ("pending", "running") and time.monotonic() < deadline:
        if not as_json:
            _show_progress(job, final=False)
        time.sleep(0.5)
        job = _ask_admin(admin, admin_token_file, data_dir, "GET", path)
    if as_json:
        print(json.dumps(job, indent=2))
    else:
        _show_progress(job, final=True)
        for error in job["errors"]:
            print(f"  {error}", file=sys.stderr)
    if job["state"] in ("pending", "running"):
        raise click.ClickException(f"job {job['id']} still runs after {timeout:.0f}s")
    if job["state"] != "succeeded":
        raise click.ClickException(f"preheat job {job['id']} failed")


def _show_progress(job: dict[str, Any], *, final: bool) -> None:
    """One line: blob copies and bytes warmed on all the job's nodes, and how many nodes
    have every blob."""
    blobs, total = job["blobs"], job["bytes"]
    nodes = job["nodes"].values()
    count = max(1, len(nodes))
    done_nodes = sum(1 for n in nodes if blobs and n["blobs_done"] == blobs)
    done = sum(n["blobs_done"] for n in nodes)
    size = sum(n["bytes_done"] for n in nodes)
    line = (
        f"job {job['id']} {job['state']}: {done}/{blobs * count} blobs, "
        f"{format_size(size)}/{format_size(total * count)}, {done_nodes}/{count} nodes done"
    )
    if sys.stdout.isatty() and not final:
        print("\r" + line, end="", flush=True)
    elif final:
        print(("\r" if sys.stdout.isatty() else "") + line)


if __name__ == "__main__":
    main()
