"""Who may have private content: the one place that decides, for clients and for peers.

Content fetched with credentials is private to the registries that served it (the store's
`origins_of`: a verified blob's marker, or the origins of a partial being written). A reader
gets it when it names one of those registries (its `?ns=`, or the namespace in a peer's Want
or Access) and that registry accepts the reader's own credentials for it (a HEAD, remembered
a short while by the AuthGate). Two rules make the decision rest only on facts the reader
cannot choose:

- the registries that vouch are those the bytes came from, never one the reader names;
- a reader's credentials go only to the registry it named. A reader that names another
  registry gets `CachedElsewhere`: the front then fetches the blob from the registry the
  reader named (the verified bytes prove access, and a fetch without credentials proves the
  blob public), the swarm tells the fetching node to do so. Sending the token to a registry
  that merely holds the same bytes would hand that registry the token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from peer.access.auth_gate import AuthGate
from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamRefusal
from pieces.store import Store

_UNKNOWN_CODE = {"blobs": "BLOB_UNKNOWN", "manifests": "MANIFEST_UNKNOWN"}
# On a peer's Refused, says "fetch it from your registry yourself" (see SwarmFetch._want).
CACHED_ELSEWHERE_HEADER = "x-pollen-cached-elsewhere"


class CachedElsewhere(UpstreamRefusal):
    """The content is cached from other registries than the one the reader names: not a
    refusal of the reader, a miss. Passed on as a 404 where nothing better can be done."""


class AccessPolicy:
    def __init__(self, store: Store, upstreams: Upstreams, gate: AuthGate) -> None:
        self._store = store
        self._upstreams = upstreams
        self._gate = gate

    def check_namespace(self, namespace: str | None) -> None:
        """See Upstreams.check_namespace (a peer's Want names a registry too).

        Raises:
            InvalidNamespace: it names this host or a link-local address, unmapped.
        """
        self._upstreams.check_namespace(namespace)

    def registry_of(self, namespace: str | None) -> str:
        """The registry (base URL) a reader names with `namespace`."""
        return self._upstreams.base_url(namespace)

    async def refusal(
        self,
        namespace: str | None,
        name: str,
        kind: str,
        reference: str,
        headers: Mapping[str, str],
    ) -> UpstreamRefusal | None:
        """None when the reader may have `reference` (a blob or manifest digest): it is
        public, or the registry the reader names is one it came from and accepts the reader's
        credentials for `name`; else the answer to give the reader.

        Raises:
            UpstreamError: that registry could not be asked (nothing is served unchecked).
        """
        origins = self._store.origins_of(reference)
        if not origins:
            return None
        named = self.registry_of(namespace)
        if named not in origins:
            return _miss(kind, reference, named)
        return await self._gate.check(named, name, kind, reference, headers)


def _miss(kind: str, reference: str, registry: str) -> CachedElsewhere:
    message = (
        f"{reference} is cached from another registry than {registry}: "
        "fetch it from that registry directly"
    )
    body = json.dumps(
        {"errors": [{"code": _UNKNOWN_CODE.get(kind, "NOT_FOUND"), "message": message}]}
    ).encode()
    headers = {"content-type": "application/json", CACHED_ELSEWHERE_HEADER: "1"}
    return CachedElsewhere(404, headers, body)
