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
_TAGS = re.compile(rf"/v2/(?P<name>{_NAME})/tags/list")
_REFERRERS = re.compile(rf"/v2/(?P<name>{_NAME})/referrers/(?P<digest>[^/]+)")
# Any repository-shaped API path: a name that fails the grammar gets NAME_INVALID, not a 404.
_ANY_NAME = re.compile(
    r"/v2/(?P<name>.+)/(?:manifests/[^/]+|blobs/[^/]+|tags/list|referrers/[^/]+)"
)
MAX_PAGE = 10_000  # tags asked for at most per page (`n`); more is the registry's to refuse


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
class TagsRoute:
    """`/v2/<name>/tags/list?n=<count>&last=<tag>`: a page of the repository's tags."""

    name: str
    n: int | None
    last: str | None


@dataclass(frozen=True, slots=True)
class ReferrersRoute:
    """`/v2/<name>/referrers/<digest>?artifactType=<type>`: what refers to a manifest."""

    name: str
    digest: str  # not yet validated, as for blobs
    artifact_type: str | None


@dataclass(frozen=True, slots=True)
class BadRoute:
    """A registry API path with a parameter out of the grammar: 400 with this code."""

    code: str  # NAME_INVALID, or UNSUPPORTED for a bad query parameter
    message: str


@dataclass(frozen=True, slots=True)
class AdminRoute:
    which: str  # "healthz", "status" or "metrics"


@dataclass(frozen=True, slots=True)
class NotFound:
    path: str


Route = (
    ApiRoot
    | ManifestRoute
    | BlobRoute
    | TagsRoute
    | ReferrersRoute
    | BadRoute
    | AdminRoute
    | NotFound
)

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
    elif m := _TAGS.fullmatch(path):
        route = _tags(m.group("name"), params)
    elif m := _REFERRERS.fullmatch(path):
        kind = params.get("artifactType", [None])[0] or None
        route = ReferrersRoute(m.group("name"), m.group("digest"), kind)
    elif m := _ANY_NAME.fullmatch(path):
        route = BadRoute("NAME_INVALID", f"not a repository name: {m.group('name')[:200]!r}")
    else:
        route = NotFound(path)
    return Target(route, namespace)


def _tags(name: str, params: dict[str, list[str]]) -> TagsRoute | BadRoute:
    n = params.get("n", [None])[0]
    last = params.get("last", [None])[0]
    if n is not None and (not n.isdigit() or len(n) > 6 or int(n) > MAX_PAGE):
        return BadRoute("UNSUPPORTED", f"n must be a count of tags up to {MAX_PAGE}")
    if last is not None and re.fullmatch(_TAG, last) is None:
        return BadRoute("UNSUPPORTED", f"last must be a tag: {last[:150]!r}")
    return TagsRoute(name, int(n) if n is not None else None, last)


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
