"""Which request and answer headers pass between a client and its upstream registry."""

from __future__ import annotations

import re
from collections.abc import Mapping

# Request headers a client sends that the upstream must see. Authorization is passed through for
# the registry's own auth (never logged, never stored); Accept picks the manifest format.
FORWARDED_REQUEST_HEADERS = ("authorization", "accept", "user-agent")
# Response headers of an upstream refusal that the client needs (the token flow starts from
# WWW-Authenticate; a rate limit's Retry-After says when to come back).
FORWARDED_ERROR_HEADERS = (
    "www-authenticate",
    "content-type",
    "docker-distribution-api-version",
    "retry-after",  # with a 429: when the registry takes requests again
)

# What h11 (ours and httpx's) sends: a token as the name; a value of printable ASCII with blanks
# only inside. A client may send more (obs-text bytes >= 0x80, control characters), which h11
# parses but neither encodes again.
_HEADER_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?")


class UnforwardableHeader(ValueError):
    """A request header HTTP/1.1 cannot carry to the upstream as it is; the message names the
    header, never its value (it may be a credential)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the {name[:50]!r} header cannot be forwarded: only printable ASCII can")
        self.name = name


def check_forwardable(headers: Mapping[str, str]) -> None:
    """Check that every header can be sent upstream as it is.

    Raises:
        UnforwardableHeader: for the first one that cannot.
    """
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise UnforwardableHeader(name)


def pick_headers(headers: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    """The subset of `headers` (case-insensitive) named in `names`."""
    lowered = {k.lower(): v for k, v in headers.items()}
    return {name: lowered[name] for name in names if name in lowered}
