"""Listing and discovery routes of the registry API, always asked of the upstream with the
client's own credentials (the registry decides who sees what; nothing here is cached):

- `GET /v2/<name>/tags/list?n=&last=`: a page of tags (tags move). The registry's `Link` to
  the next page is made relative to this node, keeping the client's `?ns=`.
- `GET /v2/<name>/referrers/<digest>?artifactType=`: an image index of what refers to a
  manifest (signatures, SBOMs). A registry without the referrers API (404: docker-registry
  2.8, say) is asked for the index its clients keep under the spec's fallback tag
  (`<alg>-<hex>`, as cosign and oras write it); no such tag is an empty index, as the spec
  wants ("a registry MUST NOT return 404 to a referrers request" for a repository it has).
  `artifactType` is filtered here when the registry did not, and `OCI-Filters-Applied`
  says so. The answer lists content by digest: it is never cached (new referrers appear any
  time); the manifests it lists are cached when clients fetch them, by their digests.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from peer.front.routes import ReferrersRoute, TagsRoute
from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from peer.upstream.headers import FORWARDED_ERROR_HEADERS, pick_headers

LIST_LIMIT = 4 * 1024 * 1024  # bytes of a tag list or an index read from the upstream
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
FILTERS_APPLIED = "oci-filters-applied"

Refuse = Callable[[UpstreamRefusal], Awaitable[None]]
Answer = Callable[[int, list[tuple[str, str]], bytes], Awaitable[None]]


async def serve_tags(
    upstreams: Upstreams,
    route: TagsRoute,
    namespace: str | None,
    headers: Mapping[str, str],
    answer: Answer,
    refuse: Refuse,
) -> None:
    """A page of tags from the upstream, its Link made ours.

    Raises:
        UpstreamError: unreachable, another status, or not a tag list.
    """
    query = {k: v for k, v in (("n", route.n), ("last", route.last)) if v is not None}
    path = f"/v2/{route.name}/tags/list"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    async with upstreams.open("GET", namespace, path, headers) as resp:
        base = upstreams.base_url(namespace)
        if 400 <= resp.status_code < 500:
            body = await upstreams.read_body(resp, 64 * 1024)
            kept = pick_headers(resp.headers, FORWARDED_ERROR_HEADERS)
            await refuse(UpstreamRefusal(resp.status_code, kept, body))
            return
        if resp.status_code != 200:
            raise UpstreamError(base, f"answered {resp.status_code} for the tags of {route.name}")
        body = await upstreams.read_body(resp, LIST_LIMIT)
        link = resp.headers.get("link")
    document = _json_object(body, base, "tag list")
    if not isinstance(document.get("tags"), list | None):
        raise UpstreamError(base, "sent a tag list without a list of tags")
    out = [("content-type", "application/json")]
    next_page = _local_link(link, route.name, namespace)
    if next_page is not None:
        out.append(("link", next_page))
    await answer(200, out, body)


def _local_link(link: str | None, name: str, namespace: str | None) -> str | None:
    """The registry's `Link: <url>; rel="next"` as a path on this node (with `ns`), or None
    when it is absent or points anywhere but the next page of this repository's tags."""
    if link is None:
        return None
    target, _, params = link.partition(";")
    if 'rel="next"' not in params.replace(" ", "") or not target.strip().startswith("<"):
        return None
    url = urllib.parse.urlsplit(target.strip().strip("<>"))
    if url.path != f"/v2/{name}/tags/list":
        return None
    query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query) if k in ("n", "last")]
    if namespace is not None:
        query.append(("ns", namespace))
    return f'<{url.path}?{urllib.parse.urlencode(query)}>; rel="next"'


async def serve_referrers(
    upstreams: Upstreams,
    route: ReferrersRoute,
    namespace: str | None,
    headers: Mapping[str, str],
    answer: Answer,
    refuse: Refuse,
) -> None:
    """The referrers of `route.digest` (valid: the caller checked it), from the referrers
    API or the fallback tag.

    Raises:
        UpstreamError: unreachable, another status, or not an image index.
    """
    path = f"/v2/{route.name}/referrers/{route.digest}"
    if route.artifact_type is not None:
        path += "?" + urllib.parse.urlencode({"artifactType": route.artifact_type})
    base = upstreams.base_url(namespace)
    async with upstreams.open("GET", namespace, path, headers) as resp:
        status = resp.status_code
        if status == 200:
            body = await upstreams.read_body(resp, LIST_LIMIT)
            applied = resp.headers.get(FILTERS_APPLIED, "")
        elif status == 404:
            body, applied = b"", ""  # no referrers API: the fallback tag below
        elif 400 <= status < 500:
            error = await upstreams.read_body(resp, 64 * 1024)
            kept = pick_headers(resp.headers, FORWARDED_ERROR_HEADERS)
            await refuse(UpstreamRefusal(status, kept, error))
            return
        else:
            raise UpstreamError(base, f"answered {status} for the referrers of {route.digest}")
    if status == 200:
        manifests = _index_manifests(body, base)
        filtered = "artifacttype" in applied.replace(" ", "").lower().split(",")
    else:
        fallback = await _fallback_index(upstreams, route, namespace, headers, refuse)
        if fallback is None:
            return  # refused: said
        manifests, filtered = fallback, False
    out = [("content-type", OCI_INDEX)]
    if route.artifact_type is not None:
        if not filtered:
            manifests = [m for m in manifests if _artifact_type(m) == route.artifact_type]
        out.append((FILTERS_APPLIED, "artifactType"))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    await answer(200, out, json.dumps(index).encode())


def fallback_tag(digest: str) -> str:
    """The spec's referrers tag schema: `<alg>-<ref>`, the algorithm cut to 32 characters and
    the hex to 64 (the tag grammar allows 128 in all)."""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm[:32]}-{hex_[:64]}"


async def _fallback_index(
    upstreams: Upstreams,
    route: ReferrersRoute,
    namespace: str | None,
    headers: Mapping[str, str],
    refuse: Refuse,
) -> list[dict[str, Any]] | None:
    """The manifests of the index under the fallback tag; [] when there is none; None when
    the registry refused (the refusal has been sent)."""
    asked = {**headers, "accept": OCI_INDEX}
    path = f"/v2/{route.name}/manifests/{fallback_tag(route.digest)}"
    base = upstreams.base_url(namespace)
    async with upstreams.open("GET", namespace, path, asked) as resp:
        status = resp.status_code
        if status == 200:
            body = await upstreams.read_body(resp, LIST_LIMIT)
            return _index_manifests(body, base)
        error = await upstreams.read_body(resp, 64 * 1024) if status < 500 else b""
        kept = pick_headers(resp.headers, FORWARDED_ERROR_HEADERS)
    if status == 404 and _error_code(error) != "NAME_UNKNOWN":
        return []  # no referrers yet: an empty index, not an error
    if 400 <= status < 500:
        await refuse(UpstreamRefusal(status, kept, error))
        return None
    raise UpstreamError(base, f"answered {status} for the referrers tag of {route.digest}")


def _index_manifests(body: bytes, base: str) -> list[dict[str, Any]]:
    manifests = _json_object(body, base, "image index").get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise UpstreamError(base, "sent an image index without a list of descriptors")
    return manifests


def _artifact_type(descriptor: dict[str, Any]) -> object:
    return descriptor.get("artifactType")


def _json_object(body: bytes, base: str, what: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise UpstreamError(base, f"sent a {what} that is not JSON") from None
    if not isinstance(document, dict):
        raise UpstreamError(base, f"sent a {what} that is not a JSON object")
    return document


def _error_code(body: bytes) -> str | None:
    """The first code of an OCI error body, if it is one."""
    try:
        errors = json.loads(body).get("errors")
        code = errors[0].get("code")
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError):
        return None
    return code if isinstance(code, str) else None
