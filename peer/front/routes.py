"""Which handler a request path goes to: pure parsing of the OCI distribution API paths."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from wire.names import REPOSITORY, is_valid_registry

_NAME = REPOSITORY
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
_MANIFEST = re.compile(rf"/v2/(?P<name>{_NAME})/manifests/(?P<ref>{_TAG}|{_DIGEST})")
_BLOB = re.compile(rf"/v2/(?P<name>{_NAME})/blobs/(?P<digest>[^/]+)")


class InvalidNamespace(ValueError):
    """The `ns` query parameter is not a registry `host[:port]`."""


@dataclass(frozen=True, slots=True)
class ApiRoot:
    """`/v2/`: the version check every client makes first."""


@dataclass(frozen=True, slots=True)
class ManifestRoute:
    name: str
    reference: str


@dataclass(frozen=True, slots=True)
class BlobRoute:
    name: str
    digest: str  # not yet validated: the handler answers DIGEST_INVALID for a bad one


@dataclass(frozen=True, slots=True)
class AdminRoute:
    which: str  # "healthz", "status" or "metrics"


@dataclass(frozen=True, slots=True)
class NotFound:
    path: str


Route = ApiRoot | ManifestRoute | BlobRoute | AdminRoute | NotFound

_ADMIN = {
    "/healthz": "healthz",
    "/_pollen/status": "status",
    "/metrics": "metrics",
    "/_pollen/cache": "cache",
}


@dataclass(frozen=True, slots=True)
class Target:
    """A request target split into its route and the `ns` query parameter."""

    route: Route
    namespace: str | None


def parse_target(target: bytes) -> Target:
    """Route a raw request target such as `/v2/library/alpine/blobs/sha256:..?ns=docker.io`.

    Raises:
        InvalidNamespace: `ns` is not a registry host[:port].
    """
    text = target.decode("ascii", "replace")
    path, _, query = text.partition("?")
    path = urllib.parse.unquote(path)
    params = urllib.parse.parse_qs(query)
    namespace = params.get("ns", [None])[0] or None
    if namespace is not None:
        check_namespace(namespace)
    route: Route
    if path in ("/v2", "/v2/"):
        route = ApiRoot()
    elif path in _ADMIN:
        route = AdminRoute(_ADMIN[path])
    elif m := _MANIFEST.fullmatch(path):
        route = ManifestRoute(m.group("name"), m.group("ref"))
    elif m := _BLOB.fullmatch(path):
        route = BlobRoute(m.group("name"), m.group("digest"))
    else:
        route = NotFound(path)
    return Target(route, namespace)


def check_namespace(namespace: str) -> None:
    """Check that `namespace` names a registry as `host[:port]`.

    It becomes the authority of a URL (`https://<ns>`): userinfo, a path, a query, control or
    non-ASCII characters would let a client steer that URL, and the URL parsers and the resolver
    raise on a bad IPv6 literal, a port out of range or an empty or overlong DNS label.

    Raises:
        InvalidNamespace: anything else; the message quotes at most 100 characters of it.
    """
    if not is_valid_registry(namespace):
        raise InvalidNamespace(f"ns is not a registry host[:port]: {namespace[:100]!r}")
