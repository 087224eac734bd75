"""Listing and discovery routes of the registry API, always asked of the upstream with the
client's own credentials (the registry decides who sees what; nothing here is cached):

- `GET /v2/<name>/tags/list?n=&last=`: a page of tags (tags move), the client's query passed
  on as it is and the body as the registry wrote it. The registry's `Link` to the next page
  (RFC 8288) is made a path on this node with the registry's own query (Quay pages with
  `next_page`), keeping the client's `?ns=`.
- `GET /v2/<name>/referrers/<digest>?artifactType=`: an image index of what refers to a
  manifest (signatures, SBOMs). A registry without the referrers API (404: docker-registry
  2.8, say) is asked for the index its clients keep under the spec's fallback tag
  (`<alg>-<hex>`, as cosign and oras write it); no such tag is an empty index, as the spec
  wants ("a registry MUST NOT return 404 to a referrers request" for a repository it has); an
  answer that is not an image index is taken for no referrers API (the fallback), and a
  fallback tag that holds no index for no referrers. Paged answers keep their `Link`.
  `artifactType` is filtered here when the registry did not, and `OCI-Filters-Applied`
  says so. The answer lists content by digest: it is never cached (new referrers appear any
  time); the manifests it lists are cached when clients fetch them, by their digests.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

from peer.body_parser import BodyParser
from peer.fetch.manifests import OCI_INDEX
from peer.front.routes import ReferrersRoute, TagsRoute
from peer.upstream.body_budget import BodyHold
from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal

LIST_LIMIT = 4 * 1024 * 1024  # bytes of a tag list read from the upstream (passed on unparsed)
# Bytes of a referrers index read and parsed (its JSON costs ~25 x its size in memory while
# parsed: a client can name any registry); more refers to one image than real clients push.
INDEX_LIMIT = 1024 * 1024
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
        BudgetSpent: the node holds as many tag lists as it may (try again).
    """
    path = f"/v2/{route.name}/tags/list"
    if route.query:
        path += "?" + urllib.parse.urlencode(route.query)
    # The list is held (counted in the lists' budget) until its client has read it all.
    with upstreams.hold(upstreams.list_bodies, namespace) as hold:
        async with upstreams.open("GET", namespace, path, headers) as resp:
            base = upstreams.base_url(namespace)
            if 400 <= resp.status_code < 500:
                await refuse(await upstreams.refusal(resp))
                return
            if resp.status_code != 200:
                raise UpstreamError(
                    base, f"answered {resp.status_code} for the tags of {route.name}"
                )
            body = await upstreams.read_body(resp, LIST_LIMIT, hold)
            link = resp.headers.get("link")
        out = [("content-type", "application/json")]
        next_page = _local_link(link, f"/v2/{route.name}/tags/list", namespace)
        if next_page is not None:
            out.append(("link", next_page))
        await answer(200, out, body)


def _local_link(link: str | None, path: str, namespace: str | None) -> str | None:
    """The registry's `Link` to the next page (`rel="next"` among the link-values of RFC
    8288) as a path on this node, with the registry's query and `ns`; None when there is
    none, or when it leads anywhere but the next page of `path`."""
    target = _next_target(link or "")
    if target is None:
        return None
    url = urllib.parse.urlsplit(target)
    at = url.path.find("/v2/")  # a registry behind a path prefix writes it in its links
    if at < 0 or url.path[at:] != path:
        return None
    query = [(k, v) for k, v in urllib.parse.parse_qsl(url.query, keep_blank_values=True)]
    query = [(k, v) for k, v in query if k != "ns"]
    if namespace is not None:
        query.append(("ns", namespace))
    return f'<{path}?{urllib.parse.urlencode(query)}>; rel="next"'


def _next_target(header: str) -> str | None:
    """The URI of the link-value whose relation types include `next`."""
    for value in _link_values(header[:8192]):
        target, _, params = value.partition(">")
        for param in params.split(";"):
            key, _, rel = param.strip().partition("=")
            if key.strip().lower() == "rel" and "next" in rel.strip().strip('"').lower().split():
                return target.strip().lstrip("<")
    return None


def _link_values(header: str) -> list[str]:
    """The comma-separated link-values of a Link header (commas inside <...> kept)."""
    values: list[str] = []
    current: list[str] = []
    inside = False
    for char in header:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
        if char == "," and not inside:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    values.append("".join(current).strip())
    return [v for v in values if v.startswith("<")]


async def serve_referrers(
    upstreams: Upstreams,
    parser: BodyParser,
    route: ReferrersRoute,
    namespace: str | None,
    headers: Mapping[str, str],
    answer: Answer,
    refuse: Refuse,
) -> None:
    """The referrers of `route.digest` (valid: the caller checked it), from the referrers
    API or the fallback tag. An index is read by `referrer_entries` in `parser` (off the
    event loop when it is large: a registry's index may be built to parse slowly).

    Raises:
        UpstreamError: unreachable, another status, or not an image index.
        BudgetSpent: the node holds as many indexes as it may (try again).
        ParserFailed, ParserBusy: as `BodyParser.parse`.
    """
    here = f"/v2/{route.name}/referrers/{route.digest}"
    path = here
    if route.artifact_type is not None:
        path += "?" + urllib.parse.urlencode({"artifactType": route.artifact_type})
    base = upstreams.base_url(namespace)
    entries: bytes | None = None
    applied, link = "", None
    with upstreams.hold(upstreams.list_bodies, namespace) as hold:
        async with upstreams.open("GET", namespace, path, headers) as resp:
            status = resp.status_code
            if status == 200:
                body = await upstreams.read_body(resp, INDEX_LIMIT, hold)
                applied = resp.headers.get(FILTERS_APPLIED, "")
                link = resp.headers.get("link")
            elif 400 <= status < 500 and status != 404:
                await refuse(await upstreams.refusal(resp))
                return
            elif status != 404:
                raise UpstreamError(base, f"answered {status} for the referrers of {route.digest}")
        filtered = "artifacttype" in applied.replace(" ", "").lower().split(",")
        wanted = None if filtered else route.artifact_type  # filtered here when not there
        if status == 200:
            # None: not an index (an HTML page, say): taken for no referrers API.
            entries = await parser.parse(partial(referrer_entries, artifact_type=wanted), body)
            del body
        if entries is None:  # no referrers API: the fallback tag
            entries = await _fallback_entries(
                upstreams, parser, route, namespace, headers, refuse, hold
            )
            if entries is None:
                return  # refused: said
        out = [("content-type", OCI_INDEX)]
        if route.artifact_type is not None:
            out.append((FILTERS_APPLIED, "artifactType"))
        next_page = _local_link(link, here, namespace)
        if next_page is not None:
            out.append(("link", next_page))
        head = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX})[:-1].encode()
        index = head + b', "manifests": ' + entries + b"}"
        del entries
        hold.grow(len(index))  # held, as the bodies were, until its client has read it
        await answer(200, out, index)


def referrer_entries(body: bytes, artifact_type: str | None) -> bytes | None:
    """The `manifests` of an image index, as JSON (only those of `artifact_type`, when
    given); None when `body` is not an image index. Pure: runs in the parsing worker."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    manifests = document.get("manifests") if isinstance(document, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        return None
    if artifact_type is not None:
        manifests = [m for m in manifests if m.get("artifactType") == artifact_type]
    # As UTF-8, not \u escapes: escaped, a 1 MiB index came out as 3 MB (a helper's probe).
    return json.dumps(manifests, ensure_ascii=False).encode()


def fallback_tag(digest: str) -> str:
    """The spec's referrers tag schema: `<alg>-<ref>`, the algorithm cut to 32 characters and
    the hex to 64 (the tag grammar allows 128 in all)."""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm[:32]}-{hex_[:64]}"


async def _fallback_entries(
    upstreams: Upstreams,
    parser: BodyParser,
    route: ReferrersRoute,
    namespace: str | None,
    headers: Mapping[str, str],
    refuse: Refuse,
    hold: BodyHold,
) -> bytes | None:
    """The manifests of the index under the fallback tag, as JSON (those of the route's
    artifact type); b"[]" when there is none; None when the registry refused (the refusal
    has been sent). Its body is counted in `hold`."""
    asked = {**headers, "accept": OCI_INDEX}
    path = f"/v2/{route.name}/manifests/{fallback_tag(route.digest)}"
    base = upstreams.base_url(namespace)
    async with upstreams.open("GET", namespace, path, asked) as resp:
        status = resp.status_code
        if status == 200:
            body = await upstreams.read_body(resp, INDEX_LIMIT, hold)
        elif not 400 <= status < 500:
            raise UpstreamError(base, f"answered {status} for the referrers tag of {route.digest}")
        else:
            refusal = await upstreams.refusal(resp)
    if status == 200:
        # The tag holds something else than an index: the spec says to take that for no
        # referrers, not for an error.
        read = partial(referrer_entries, artifact_type=route.artifact_type)
        return await parser.parse(read, body) or b"[]"
    if status == 404 and _error_code(refusal.body) != "NAME_UNKNOWN":
        return b"[]"  # no referrers yet: an empty index, not an error
    await refuse(refusal)
    return None


def _error_code(body: bytes) -> str | None:
    """The first code of an OCI error body, if it is one."""
    try:
        errors = json.loads(body).get("errors")
        code = errors[0].get("code")
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError):
        return None
    return code if isinstance(code, str) else None
