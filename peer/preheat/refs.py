"""Image references as operators write them (`pollen preheat REF`) and as Harbor sends them (a
manifest URL), turned into what a node's client would ask: the registry (`?ns=`), the
repository and the tag or digest.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from peer.upstream.client import DOCKER_HUB
from pieces.digest import InvalidDigest, digest_hex
from wire.names import is_valid_registry, is_valid_repository

MAX_TAG = 128  # the distribution spec's tag grammar allows at most 128 characters
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class BadReference(ValueError):
    """Not an image reference (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    registry: str  # host[:port] as clients send it in ?ns= (docker.io for Docker Hub)
    repository: str
    reference: str  # a tag or a digest

    def __str__(self) -> str:
        sep = "@" if ":" in self.reference else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def parse_image_ref(text: str) -> ImageRef:
    """`registry.example.com:5000/team/app:1.2`, `app@sha256:...`, `nginx` (Docker Hub's
    `library/nginx:latest`), by Docker's rules: the first part is a registry when it has a
    `.` or a `:` or is `localhost`.

    Raises:
        BadReference: the message says which part is wrong.
    """
    rest, at, digest = text.strip().partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
        if "/" not in path:
            path = f"library/{path}"
    name, colon, tag = path.rpartition(":") if ":" in path.rpartition("/")[2] else (path, "", "")
    reference = digest if at else (tag if colon else "latest")
    return _checked(registry, name, reference, text)


def parse_manifest_url(url: str) -> ImageRef:
    """Harbor's form: `https://harbor.example.com/v2/library/nginx/manifests/1.0`.

    Raises:
        BadReference: not http(s), or not a /v2/<name>/manifests/<reference> path.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadReference(f"not an http(s) URL: {url[:200]!r}")
    path = urllib.parse.unquote(parts.path)
    name, sep, reference = path.removeprefix("/v2/").rpartition("/manifests/")
    if not path.startswith("/v2/") or not sep:
        raise BadReference(f"not a manifest URL (/v2/<name>/manifests/<tag>): {url[:200]!r}")
    host = parts.netloc.rpartition("@")[2]  # never a user:password@ part
    return _checked(host, name, reference, url)


def _checked(registry: str, name: str, reference: str, text: str) -> ImageRef:
    if not is_valid_registry(registry):
        raise BadReference(f"{registry[:100]!r} is not a registry host[:port] in {text[:200]!r}")
    if not is_valid_repository(name):
        raise BadReference(f"{name[:200]!r} is not a repository name in {text[:200]!r}")
    if ":" in reference:
        try:
            digest_hex(reference)
        except InvalidDigest as exc:
            raise BadReference(f"{reference[:100]!r} is not a digest we can check: {exc}") from None
    elif not (0 < len(reference) <= MAX_TAG and set(reference) <= _TAG_CHARS):
        raise BadReference(f"{reference[:150]!r} is not a tag in {text[:200]!r}")
    return ImageRef(registry, name, reference)
