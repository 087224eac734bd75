"""What `bench swarm` and `bench simulate` read from the command line alike (link rates,
host kills and joins, layer sizes): parsed and shown the same way in both, so a testbed run and
its simulation take the same words."""

from __future__ import annotations

import re

import click

from peer.sizes import parse_rate, parse_size


def rate_option(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A click callback: bytes per second, or None for `none` (unshaped) or no value."""
    if value is None or value == "none":
        return None
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc


def size_list(_ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    """A click callback for --layer-sizes: positive sizes, comma-separated (None: not given)."""
    if value is None:
        return None
    try:
        sizes = [parse_size(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param=param) from exc
    if not sizes:
        raise click.BadParameter("give at least one size, e.g. 80MB,200MB,1MB", param=param)
    return sizes


def downlink_rate(value: str | None, uplink: int) -> int | None:
    """--downlink: the uplink when not given, None (unshaped) for `none`, else a rate."""
    if value is None:
        return uplink
    if value == "none":
        return None
    try:
        return parse_rate(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--downlink") from exc


def mbit_text(rate: int) -> str:
    return f"{rate * 8 / 1e6:g} Mbit/s"


EVENT = re.compile(r"(\d+|owner)@(\d+(?:\.\d+)?)")  # COUNT@SECONDS or owner@SECONDS


def _events(
    param: click.Parameter, values: tuple[str, ...], owner: bool
) -> list[tuple[str, float]]:
    """(COUNT, or "owner" where `owner` allows it; seconds) of each COUNT@SECONDS."""
    events = []
    for value in values:
        match = EVENT.fullmatch(value.strip())
        if match is None or match.group(1) == "0" or (match.group(1) == "owner" and not owner):
            usage = "COUNT@SECONDS or owner@SECONDS" if owner else "COUNT@SECONDS"
            raise click.BadParameter(f"{value!r}: use {usage}", param=param)
        events.append((match.group(1), float(match.group(2))))
    return events


def kill_events(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, float]]:
    """A click callback for --kill: (COUNT or "owner", seconds) each; COUNT at least 1."""
    return _events(param, values, owner=True)


def join_events(
    _ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[int, float]]:
    """A click callback for --join: (COUNT, seconds) each; COUNT at least 1."""
    return [(int(count), at) for count, at in _events(param, values, owner=False)]


def slow_hosts(_ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int]:
    """A click callback for --slow COUNT@RATE: (COUNT, bytes per second); (0, 0) when not
    given."""
    if value is None:
        return (0, 0)
    count, _, rate = value.partition("@")
    try:
        slow = (int(count), parse_rate(rate))
    except ValueError as exc:
        raise click.BadParameter(f"{value!r}: use COUNT@RATE, e.g. 4@25mbit", param=param) from exc
    if slow[0] < 0:
        raise click.BadParameter(f"{value!r}: COUNT must be >= 0", param=param)
    return slow
