"""Which handler a request path goes to: pure parsing of the OCI distribution API paths."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from wire.names import REPOSITORY, is_valid_registry, is_valid_repository

_NAME = REPOSITORY
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_DIGEST = r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
_MANIFEST = re.compile(rf"/v2/(?P<name>{_NAME})/manifests/(?P<ref>{_TAG}|{_DIGEST})")
_BLOB = re.compile(rf"/v2/(?P<name>{_NAME})/blobs/(?P<digest>[^/]+)")
_TAGS = re.compile(rf"/v2/(?P<name>{_NAME})/tags/list")
_REFERRERS = re.compile(rf"/v2/(?P<name>{_NAME})/referrers/(?P<digest>[^/]+)")
# Any repository-shaped API path: a name that fails the grammar gets NAME_INVALID, a manifest
# reference that is neither a tag nor a digest MANIFEST_UNKNOWN (no such thing can exist).
_ANY_NAME = re.compile(
    r"/v2/(?P<name>.+)/(?:(?P<manifest>manifests/[^/]+)|blobs/[^/]+|tags/list|referrers/[^/]+)"
)


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
    """`/v2/<name>/tags/list?n=<count>&last=<tag>`: a page of the repository's tags. The
    query (but `ns`) goes to the registry as the client sent it: registries page in their
    own ways (`last`, Quay's `next_page`), and clients follow their `Link` as given."""

    name: str
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ReferrersRoute:
    """`/v2/<name>/referrers/<digest>?artifactType=<type>`: what refers to a manifest."""

    name: str
    digest: str  # not yet validated, as for blobs
    artifact_type: str | None


@dataclass(frozen=True, slots=True)
class BadRoute:
    """A registry API path with a part out of the grammar: refused with this status and code."""

    status: int
    code: str  # NAME_INVALID, MANIFEST_UNKNOWN
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
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        route = TagsRoute(m.group("name"), tuple((k, v) for k, v in pairs if k != "ns"))
    elif m := _REFERRERS.fullmatch(path):
        kind = params.get("artifactType", [None])[0] or None
        route = ReferrersRoute(m.group("name"), m.group("digest"), kind)
    elif (m := _ANY_NAME.fullmatch(path)) and not is_valid_repository(m.group("name")):
        name = m.group("name")[:200]
        route = BadRoute(400, "NAME_INVALID", f"not a repository name: {name!r}")
    elif m and m.group("manifest"):
        reference = m.group("manifest").removeprefix("manifests/")[:200]
        route = BadRoute(404, "MANIFEST_UNKNOWN", f"not a tag or a digest: {reference!r}")
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
