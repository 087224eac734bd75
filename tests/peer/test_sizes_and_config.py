from __future__ import annotations

import pytest

from peer.config import Address, NodeConfig, parse_address, parse_registry_url, parse_upstream
from peer.sizes import parse_duration, parse_rate, parse_share, parse_size


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("4MiB", 4 << 20),
        ("20GiB", 20 << 30),
        ("1.5GB", 1_500_000_000),
        ("512k", 512_000),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MiB", "-1", "0", "4 parsecs", "1e9"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_parse_rate() -> None:
    assert parse_rate("50MiB/s") == 50 << 20
    assert parse_rate("100mbit") == 12_500_000


def test_addresses() -> None:
    assert parse_address("127.0.0.1:65001") == Address("127.0.0.1", 65001)
    assert parse_address("[::1]:80") == Address("::1", 80)
    assert parse_address(":80") == Address("0.0.0.0", 80)
    for bad in ("localhost", "1.2.3.4:99999", "x:y"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_upstreams() -> None:
    assert parse_upstream("docker.io=https://registry-1.docker.io/") == (
        "docker.io",
        "https://registry-1.docker.io",
    )
    with pytest.raises(ValueError):
        parse_upstream("docker.io=ftp://x")


@pytest.mark.parametrize(
    "url", ["https://user:pw@r.example", "https://r.example?x=1", "https://r .example", "r.example"]
)
def test_a_registry_url_other_nodes_would_refuse_as_an_origin_is_refused(url: str) -> None:
    # A private blob's origins go to the other nodes (PieceMeta), which take registry base
    # URLs only (wire/names.py, is_registry_url): one they refuse would close every link
    # that carried it.
    with pytest.raises(ValueError, match="URL"):
        parse_upstream(f"docker.io={url}")
    with pytest.raises(ValueError, match="registry URL"):
        NodeConfig(default_upstream=url).check()
    assert parse_registry_url(" https://r.example:5000/mirror/ ") == "https://r.example:5000/mirror"
    # What upstream URLs took before the check: a Compose service's name, a scheme in capitals.
    assert parse_upstream("reg.test=http://my_registry:5000") == (
        "reg.test",
        "http://my_registry:5000",
    )
    assert parse_registry_url("HTTPS://R.example") == "https://R.example"


@pytest.mark.parametrize("text", ["a\x00b:1", "h\u00e9te:1", "a..b:1", "x y:1"])
def test_an_address_with_a_host_no_resolver_takes_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a host name"):
        parse_address(text)


def test_an_upstream_mapping_clients_could_never_name_is_refused() -> None:
    with pytest.raises(ValueError, match="registry host"):
        parse_upstream("my_registry=http://10.0.0.1:5000")
    assert parse_upstream("reg.test:5000=http://10.0.0.1:5000/") == (
        "reg.test:5000",
        "http://10.0.0.1:5000",
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("3600", 3600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "0s", "-1h", "7 days", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_parse_share() -> None:
    assert parse_share("85%") == 0.85 and parse_share("70") == 0.7
    for bad in ("0%", "101%", "85%%", "high", ""):
        with pytest.raises(ValueError, match="percentage"):
            parse_share(bad)


def test_watermarks_must_run_from_high_down_to_low() -> None:
    with pytest.raises(ValueError, match="must be below --disk-high"):
        NodeConfig(disk_high=0.7, disk_low=0.8).check()
    with pytest.raises(ValueError, match="--disk-low needs --disk-high"):
        NodeConfig(disk_low=0.5).check()
    NodeConfig(disk_high=0.85, disk_low=0.7).check()
