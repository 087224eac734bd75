"""Who may have private content: the one place that decides, for clients and for peers.

Content fetched with credentials is private to the registries that served it (the store's
`origins_of`: a verified blob's marker, or the origins of a partial being written). A reader
gets it when it names one of those registries (its `?ns=`, or the namespace in a peer's Want
or Access) and that registry accepts the reader's own credentials for it (a HEAD, remembered
a short while by the AuthGate). Two rules make the decision rest only on facts the reader
cannot choose:

- the registries that vouch are those the bytes came from, never one the reader names;
- a reader's credentials go only to the registry it named: a reader that names another
  registry gets a miss (404), so its client falls back to that registry itself. Sending its
  token to a registry that merely holds the same bytes would hand that registry the token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from peer.auth_gate import AuthGate
from peer.upstream import UpstreamRefusal, Upstreams
from pieces.store import Store

_UNKNOWN_CODE = {"blobs": "BLOB_UNKNOWN", "manifests": "MANIFEST_UNKNOWN"}


class AccessPolicy:
    def __init__(self, store: Store, upstreams: Upstreams, gate: AuthGate) -> None:
        self._store = store
        self._upstreams = upstreams
        self._gate = gate

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


def _miss(kind: str, reference: str, registry: str) -> UpstreamRefusal:
    message = (
        f"{reference} is cached from another registry than {registry}: "
        "fetch it from that registry directly"
    )
    body = json.dumps(
        {"errors": [{"code": _UNKNOWN_CODE.get(kind, "NOT_FOUND"), "message": message}]}
    ).encode()
    return UpstreamRefusal(404, {"content-type": "application/json"}, body)
