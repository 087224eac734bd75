"""Human sizes, rates, durations and shares on the command line: `4MiB`, `20GiB`, `50MiB/s`,
`100mbit`, `7d`, `85%`."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in `text` (`4MiB`, `20GiB`, `1.5GB`, `4096`).

    Raises:
        ValueError: with the accepted forms in the message.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 4096, 512KiB, 4MiB, 20GiB, 1.5GB)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def parse_rate(text: str) -> int:
    """Bytes per second in `text` (`50MiB/s`, `10MB/s`, `100mbit`, `1gbit`)."""
    lowered = text.strip().lower()
    if lowered.endswith("bit") or lowered.endswith("bit/s"):
        number = lowered.removesuffix("/s").removesuffix("bit")
        return parse_size(number) // 8
    return parse_size(lowered.removesuffix("/s"))


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def parse_duration(text: str) -> float:
    """Seconds in `text` (`90s`, `30m`, `12h`, `7d`, `2w`, `3600`).

    Raises:
        ValueError: with the accepted forms in the message.
    """
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w)")
    value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if value <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return value


def parse_share(text: str) -> float:
    """A share of something as a fraction: `85%` (or `85`) -> 0.85.

    Raises:
        ValueError: not a number of per cent from 1 to 100.
    """
    number = text.strip().removesuffix("%").strip()
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a percentage: {text!r} (use e.g. 85%)") from None
    if not 1 <= value <= 100:
        raise ValueError(f"a percentage from 1% to 100%, not {text!r}")
    return value / 100


def format_size(value: float) -> str:
    """`1536` -> `1.5 KiB`: for logs and status output."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
