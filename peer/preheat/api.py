"""The preheat API's documents: a job request read from JSON (every field checked and
bounded: the request comes over the network), and what a job looks like to callers.

POST /_pollen/preheat {"images": ["registry/repo:tag", ...], "platforms": ["linux/amd64"] or
["all"], "scope": "owners" | "all", "authorization": "Bearer ..." (optional)}
"""

from __future__ import annotations

import json

from peer.preheat.refs import BadReference, parse_image_ref
from peer.preheat.resolve import Platform, parse_platform, this_platform
from peer.preheat.runner import SCOPES, PreheatRequest
from wire.names import MAX_AUTHORIZATION, is_authorization

MAX_IMAGES = 64
MAX_PLATFORMS = 16
BODY_LIMIT = 64 * 1024


class BadRequest(ValueError):
    """A request the API refuses (the message says why)."""


def parse_request(body: bytes) -> PreheatRequest:
    """A job request from the body of POST /_pollen/preheat.

    Raises:
        BadRequest: not JSON, a field missing or of the wrong kind, a bad reference.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body is not a JSON object")
    images = document.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise BadRequest('"images" must be a non-empty list of image references')
    if len(images) > MAX_IMAGES:
        raise BadRequest(f"at most {MAX_IMAGES} images per job")
    scope = document.get("scope", "owners")
    if scope not in SCOPES:
        raise BadRequest(f'"scope" must be one of {", ".join(SCOPES)}')
    authorization = document.get("authorization")
    if authorization is not None and not is_authorization(authorization):
        raise BadRequest(
            '"authorization" must be an Authorization header value (tab, printable ASCII '
            f"and latin-1, at most {MAX_AUTHORIZATION} characters)"
        )
    try:
        refs = [parse_image_ref(image) for image in images]
        platforms = parse_platforms(document.get("platforms"))
    except (BadReference, ValueError) as exc:
        raise BadRequest(str(exc)) from None
    return PreheatRequest(refs, platforms, scope, authorization)


def parse_platforms(given: object) -> list[Platform] | None:
    """`["linux/amd64", ...]`; `["all"]`: every platform (None); missing: this node's.

    Raises:
        ValueError: not a list of os/arch[/variant] strings.
    """
    if given is None:
        return [this_platform()]
    if not isinstance(given, list) or not all(isinstance(p, str) for p in given) or not given:
        raise ValueError('"platforms" must be a list like ["linux/amd64"] or ["all"]')
    if len(given) > MAX_PLATFORMS:
        raise ValueError(f"at most {MAX_PLATFORMS} platforms")
    if "all" in given:
        return None
    return [parse_platform(p) for p in given]
