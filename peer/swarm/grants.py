"""Which peers may take a private blob's pieces from this node.

Exactly the rule of the HTTP front (peer/access/policy.py): a private blob's pieces go only to
a peer whose client's credentials a registry the blob came from accepted, passed on in its
Want (when it asks us, the owner) or its Access (before its Requests). A success is a grant,
bound to the origins it was checked against (content private to other registries is not
covered) and good for DEFAULT_TTL; an Access is used once.
"""

from __future__ import annotations

import logging

import trio

from peer.access.auth_gate import DEFAULT_TTL
from peer.access.policy import AccessPolicy
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from pieces.store import Store
from wire.events import Access

log = logging.getLogger("pollen.swarm")


class Grants:
    def __init__(self, store: Store, access: AccessPolicy) -> None:
        self._store = store
        self._access = access
        # digest -> peer -> (until, the origins its credentials were checked against)
        self._granted: dict[str, dict[bytes, tuple[float, frozenset[str]]]] = {}
        # digest -> peer -> its Access, kept (never logged) until its next Request is checked
        self._pending: dict[str, dict[bytes, Access]] = {}
        # (digest, peer) -> set when the check of its Access under way ends: whoever asks
        # meanwhile (its Bitfield's answer, its Requests) waits for that one check.
        self._checking: dict[tuple[str, bytes], trio.Event] = {}

    def remember(self, peer: bytes, access: Access) -> None:
        self._pending.setdefault(access.digest, {})[peer] = access

    def grant(self, digest: str, peer: bytes) -> None:
        """`peer`'s credentials were accepted for `digest` as it is private now."""
        origins = frozenset(self._store.origins_of(digest))
        if origins:  # public content needs no grant, and must not leave one behind
            until = trio.current_time() + DEFAULT_TTL
            self._granted.setdefault(digest, {})[peer] = (until, origins)

    def may_know_of(self, peer: bytes, digest: str) -> bool:
        """Public blob, or a grant of `peer` covers it now (no registry request: for what a
        peer may learn of our pieces, not for the pieces themselves)."""
        origins = self._store.origins_of(digest)
        return not origins or self._granted_now(digest, peer, origins)

    def has_pending(self, peer: bytes, digest: str) -> bool:
        """An Access of `peer` for `digest` waits to be checked."""
        return peer in self._pending.get(digest, {})

    def _granted_now(self, digest: str, peer: bytes, origins: list[str]) -> bool:
        """Does a grant of `peer` cover the blob as private to `origins` (its current
        origins, which the caller has read)?"""
        grant = self._granted.get(digest, {}).get(peer)
        if grant is None:
            return False
        until, granted_for = grant
        return until > trio.current_time() and not granted_for.isdisjoint(origins)

    async def check(self, peer: bytes, access: Access) -> UpstreamRefusal | None:
        """None when `peer` may have the pieces of `access.digest` (public, or the registry
        the peer names vouches for the credentials it passed on); else the refusal.

        Raises:
            UpstreamError: the registry could not be asked (nothing is served unchecked).
        """
        digest = access.digest
        if self._granted_now(digest, peer, self._store.origins_of(digest)):
            return None
        headers = {"authorization": access.authorization} if access.authorization else {}
        refusal = await self._access.refusal(
            access.namespace, access.repository, "blobs", digest, headers
        )
        if refusal is None:
            self.grant(digest, peer)
        return refusal

    async def may_have_pieces(self, peer: bytes, digest: str) -> bool:
        """Public blob, or the peer's credentials (Want or Access) passed the access check.
        An Access is used once: a refused peer must send another (no HEAD per Request)."""
        origins = self._store.origins_of(digest)
        if not origins:
            return True
        if self._granted_now(digest, peer, origins):
            return True
        running = self._checking.get((digest, peer))
        if running is not None:
            await running.wait()
            return self._granted_now(digest, peer, self._store.origins_of(digest))
        access = self._pending.get(digest, {}).pop(peer, None)
        if access is None:
            return False
        done = self._checking[(digest, peer)] = trio.Event()
        try:
            return await self.check(peer, access) is None
        except UpstreamError as exc:
            log.warning("access check for a peer's pieces of %s failed: %s", digest, exc)
            return False
        finally:
            del self._checking[(digest, peer)]
            done.set()

    def forget_peer(self, peer: bytes) -> None:
        """The link is gone: its grants and pending Access with it."""
        for granted in self._granted.values():
            granted.pop(peer, None)
        for pending in self._pending.values():
            pending.pop(peer, None)

    def forget_digest(self, digest: str) -> None:
        self._granted.pop(digest, None)
        self._pending.pop(digest, None)

    def tracks(self, digest: str) -> bool:
        return bool(self._granted.get(digest) or self._pending.get(digest))
