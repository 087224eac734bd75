"""Private content stays private: a cached blob or manifest fetched with credentials is served
only to a client whose own credentials the upstream accepts.

The check is a cheap `HEAD` upstream with the client's headers; a success is remembered for a
short while per (credentials, registry, repository, reference). Only a hash of the credentials
is kept, in memory; they are never logged or written to disk.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from peer.upstream.client import Upstreams
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from peer.upstream.headers import FORWARDED_ERROR_HEADERS, pick_headers

DEFAULT_TTL = 60.0
MAX_ENTRIES = 10_000


def credentials_key(headers: Mapping[str, str]) -> str | None:
    """A hash that tells two clients' credentials apart without keeping them."""
    auth = headers.get("authorization")
    if auth is None:
        return None
    return hashlib.sha256(auth.encode("latin-1")).hexdigest()


class AuthGate:
    def __init__(self, upstreams: Upstreams, ttl: float = DEFAULT_TTL) -> None:
        self._upstreams = upstreams
        self._ttl = ttl
        self._accepted: dict[tuple[str | None, str, str, str], float] = {}

    async def check(
        self,
        origin: str,
        name: str,
        kind: str,
        reference: str,
        headers: Mapping[str, str],
    ) -> UpstreamRefusal | None:
        """None when the registry at `origin` (a base URL the caller chose from the ones the
        content came from; see peer/access.py) accepts this client for the content, else its
        refusal.

        Raises:
            UpstreamError: the upstream could not be asked, or redirected the check where a
                redirect may not lead (see peer/upstream.py): the client gets a 502, not the
                content; serving private bytes unchecked is worse than failing.
        """
        key = (credentials_key(headers), origin, name, reference)
        now = time.monotonic()
        expiry = self._accepted.get(key)
        if expiry is not None and expiry > now:
            return None
        path = f"/v2/{name}/{kind}/{reference}"
        # An origin no --upstream configures is one a client named: checked as when it was,
        # and not at all where clients may not name registries (a member's Access, or an
        # owner's PieceMeta, may name any origin).
        named = not self._upstreams.configured(origin)
        if named and not self._upstreams.config.client_registries:
            raise UpstreamError(origin, "a registry no --upstream maps (--no-client-registries)")
        async with self._upstreams.open_at(
            "HEAD", origin, path, headers, named_by_client=named
        ) as resp:
            status = resp.status_code
            if 200 <= status < 300:
                if len(self._accepted) >= MAX_ENTRIES:
                    self._accepted = {k: v for k, v in self._accepted.items() if v > now}
                    if len(self._accepted) >= MAX_ENTRIES:
                        self._accepted.clear()  # bounded memory beats a warm cache
                self._accepted[key] = now + self._ttl
                return None
            if 400 <= status < 500:
                return UpstreamRefusal(
                    status, pick_headers(resp.headers, FORWARDED_ERROR_HEADERS), b""
                )
            raise UpstreamError(origin, f"answered {status} to an access check")
