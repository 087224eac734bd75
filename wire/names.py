"""Host, registry and repository names that other parties hand us, checked where they enter.

A member's address goes straight to the resolver and the socket calls (`sendto`, connect),
and a registry name (a client's `?ns=`, a peer's Want) becomes the authority of a URL
(`https://<ns>`). Those raise ValueError or UnicodeError, not OSError, on an embedded NUL, a
surrogate, an overlong label, a bad IPv6 literal or a port out of range, and userinfo, a path
or a query would let the sender steer the URL: one bad value would end a task of every node
it reaches.
"""

from __future__ import annotations

import ipaddress
import re

MAX_HOST = 253  # the longest DNS name
# Repository names per the OCI distribution spec; several path components are allowed. A
# repository goes into URL paths (`/v2/<name>/blobs/...`): anything else could end the path
# early (`?`, `#`) or climb out of it.
REPOSITORY = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
_REPOSITORY = re.compile(REPOSITORY, re.ASCII)
MAX_REPOSITORY = 255
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
# A registry as image references name it (the distribution reference grammar): a DNS name
# (an IPv4 address is one too) or an IPv6 literal in brackets, then an optional port.
_REGISTRY = re.compile(
    rf"(?P<host>{_LABEL}(?:\.{_LABEL})*|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{{1,5}}))?",
    re.ASCII,
)


def is_valid_host(host: object) -> bool:
    """True for an IPv4 or IPv6 literal (no brackets) or a DNS name of letters, digits and
    inner hyphens, at most 253 characters."""
    if type(host) is not str or not host or len(host) > MAX_HOST:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _DNS_NAME.fullmatch(host) is not None


def is_valid_port(port: object) -> bool:
    return type(port) is int and 0 < port < 65536


def registry_host(name: str) -> str:
    """The host of a registry `host[:port]` (an IPv6 literal without its brackets); the name
    itself when it is no such registry name."""
    match = _REGISTRY.fullmatch(name)
    if match is None:
        return name
    return match["ipv6"] or match["host"]


def is_valid_registry(name: object) -> bool:
    """True for a registry `host[:port]` as in an image reference (`[v6]:port` for IPv6)."""
    if type(name) is not str:
        return False
    match = _REGISTRY.fullmatch(name)
    if match is None or len(match["host"]) > MAX_HOST:
        return False
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return False
    return match["port"] is None or 0 < int(match["port"]) < 65536


MAX_REGISTRY_URL = 2048
# A URL's host may also have underscores, which image references do not allow (a Compose
# service such as http://my_registry:5000 is reached by such a name).
_URL_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_URL_HOST = re.compile(rf"{_URL_LABEL}(?:\.{_URL_LABEL})*(?::[0-9]{{1,5}})?", re.ASCII)
# What follows the host in a registry's base URL (a mirror's path prefix): printable ASCII,
# no spaces, no query or fragment.
_URL_PATH = re.compile(r"(?:/[\x21-\x22\x24-\x3e\x40-\x7e]*)?", re.ASCII)


def is_registry_url(url: object) -> bool:
    """True for a registry's base URL as nodes name a blob's origins: `http(s)://` and a
    registry `host[:port]`, then a path at most (what `--upstream` and `?ns=` give)."""
    if type(url) is not str or len(url) > MAX_REGISTRY_URL:
        return False
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    slash = rest.find("/")
    host, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    valid_host = is_valid_registry(host) or _URL_HOST.fullmatch(host) is not None
    return valid_host and _URL_PATH.fullmatch(path) is not None


# A header value as HTTP carries it (RFC 9110's field-vchar, SP and HTAB; obs-text included).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


# The longest Authorization a node passes on to other nodes (a registry's bearer tokens are a
# few KiB at most); a client's longer one is used by its own node alone.
MAX_AUTHORIZATION = 16 * 1024


def is_authorization(value: object) -> bool:
    """True for an Authorization a node may pass on: what an HTTP header value may hold (it
    goes into a request to a registry, and is hashed as latin-1, HTTP's bytes), at most
    MAX_AUTHORIZATION characters."""
    return (
        type(value) is str
        and len(value) <= MAX_AUTHORIZATION
        and _HEADER_VALUE.fullmatch(value) is not None
    )


def is_valid_repository(name: object) -> bool:
    """True for an OCI repository name such as `library/alpine` (at most 255 characters)."""
    return (
        type(name) is str
        and len(name) <= MAX_REPOSITORY
        and _REPOSITORY.fullmatch(name) is not None
    )


def address_text(host: str, port: int) -> str:
    """`host:port` as a Hello names the address dialled (`[host]:port` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
