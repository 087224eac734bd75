"""Fetching a manifest from its registry: checked against its digest, stored, and marked
private when credentials fetched it. Shared by the registry front (a client's GET) and preheat
jobs, so both store exactly what they would serve.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from peer.access.auth_gate import credentials_key
from peer.fetch.manifest_reader import ManifestReader
from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from pieces.descriptors import Repository
from pieces.digest import digest_bytes, is_digest
from pieces.manifest_facts import ManifestFacts
from pieces.store import Store

MANIFEST_LIMIT = 4 * 1024 * 1024  # bytes of a manifest read; a larger one is refused

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
# What a node that asks for itself accepts (a client's own Accept is forwarded as it is).
ACCEPT_ALL = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))


@dataclass(frozen=True, slots=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes
    facts: ManifestFacts

    @property
    def is_index(self) -> bool:
        return self.media_type.partition(";")[0].strip().lower() in INDEX_TYPES


def stored_type(declared: str | None, stored: str | None, said: str, named: bool) -> str:
    """The media type a fetched manifest is stored and served with, for every client of
    every registry (one entry per digest): what its body declares (the digest covers it);
    for a body that declares none, what the registry said (`said`), unless the registry is
    one a client named (`named`) and a type is `stored` already. The last registry's word
    let a registry a client names retype a public manifest for everyone; the first's alone
    would keep a wrong type for good."""
    if declared is not None:
        return declared
    if stored is not None and named:
        return stored
    return said


async def fetch_manifest(
    upstreams: Upstreams,
    store: Store,
    reader: ManifestReader,
    namespace: str | None,
    name: str,
    reference: str,
    headers: Mapping[str, str],
) -> Manifest | UpstreamRefusal:
    """GET `name`'s manifest `reference` (a tag or a digest) from the registry of `namespace`
    with these (forwardable) headers, read its facts (`reader`) and store it.

    Returns:
        The manifest, or the registry's refusal (a 4xx: unknown, unauthorized, ...).

    Raises:
        UpstreamError: unreachable, another status, too large, or not the digest asked for.
        BudgetSpent: the node holds as many manifest bodies as it may (try again).
        ParserFailed, ParserBusy: as `BodyParser.parse`.
    """
    path = f"/v2/{name}/manifests/{reference}"
    # The body is counted in the manifests' budget from its first byte until it is parsed and
    # stored (peer/upstream/body_budget.py); the caller holds it past that at its own risk.
    with upstreams.hold(upstreams.manifest_bodies, namespace) as hold:
        async with upstreams.open("GET", namespace, path, headers) as resp:
            base = upstreams.base_url(namespace)
            if 400 <= resp.status_code < 500:
                return await upstreams.refusal(resp)
            if resp.status_code != 200:
                raise UpstreamError(base, f"answered {resp.status_code} for manifest {reference}")
            body = await upstreams.read_body(resp, MANIFEST_LIMIT, hold)
            media_type = resp.headers.get("content-type", "application/octet-stream")
            said = resp.headers.get("docker-content-digest", "")
        # By digest: checked in the algorithm it names (sha256 or sha512). By tag: sha256, or the
        # registry's own sha512 digest when it names one the body matches (clients that pin the
        # digest must get the one the registry knows the manifest by, as a HEAD would say).
        digest = digest_bytes(body, reference if is_digest(reference) else "sha256:")
        if (
            not is_digest(reference)
            and said.startswith("sha512:")
            and digest_bytes(body, said) == said
        ):
            digest = said
        if is_digest(reference) and digest != reference:
            raise UpstreamError(base, f"sent a manifest for {reference} that hashes to {digest}")
        facts = await reader.facts(digest, body)  # parsed once, off the event loop when large
        if credentials_key(headers) is not None:
            store.mark_private(digest, base)
        else:  # served without credentials: public, whatever others claimed of it
            store.mark_public(digest)
        named = upstreams.named_by_client(namespace)
        media_type = stored_type(
            facts.declared_type, store.manifest_type(digest), media_type, named
        )
        source = Repository(base, name)  # whose word its sizes are
        store.put_manifest(digest, media_type, body, source, facts.descriptors)
        return Manifest(digest, media_type, body, facts)
