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

# A member's Accesses kept at once, its newest: one per private blob it fetches from this node
# now (a fetch passes its client's credentials on again every 45 s). Unbounded, thirty links
# sending one Access with 16 KiB of credentials for each of 200 held blobs, and no Request,
# grew a node by 102 MiB until the links closed (a helper's probe, 2026-12-07).
# Still a bound per member id, and ids cost an insider nothing: 32 links from one address
# can hold 64 MiB of credentials for up to a minute.
MAX_PENDING_ACCESS = 128  # as many as the downloads a node runs at once (its honest most)


class Grants:
    def __init__(self, store: Store, access: AccessPolicy) -> None:
        self._store = store
        self._access = access
        # digest -> peer -> (until, the origins its credentials were checked against)
        self._granted: dict[str, dict[bytes, tuple[float, frozenset[str]]]] = {}
        # digest -> peer -> its Access, kept (never logged) until its next Request is checked,
        # for DEFAULT_TTL at most (no longer than the grant it could give)
        self._pending: dict[str, dict[bytes, Access]] = {}
        # peer -> digest -> when its Access came, oldest first: what bounds a member's share
        self._pending_of: dict[bytes, dict[str, float]] = {}
        # (digest, peer) -> set when the check of its Access under way ends: whoever asks
        # meanwhile (its Bitfield's answer, its Requests) waits for that one check.
        self._checking: dict[tuple[str, bytes], trio.Event] = {}

    def remember(self, peer: bytes, access: Access) -> None:
        """Keep `peer`'s Access for its next Request, in place of one it sent before for the
        blob; its Accesses older than DEFAULT_TTL, and past its newest MAX_PENDING_ACCESS, go."""
        now = trio.current_time()
        mine = self._pending_of.setdefault(peer, {})
        mine.pop(access.digest, None)  # the newest goes last
        mine[access.digest] = now
        self._pending.setdefault(access.digest, {})[peer] = access
        for digest, came in list(mine.items()):
            if came > now - DEFAULT_TTL and len(mine) <= MAX_PENDING_ACCESS:
                break
            self._drop_pending(digest, peer)

    def _drop_pending(self, digest: str, peer: bytes) -> Access | None:
        """Take `peer`'s Access for `digest` out of both indexes; what was there."""
        self._pending_of.get(peer, {}).pop(digest, None)
        if not self._pending_of.get(peer, True):
            del self._pending_of[peer]
        pending = self._pending.get(digest, {})
        access = pending.pop(peer, None)
        if not pending:
            self._pending.pop(digest, None)
        return access

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
        came = self._pending_of.get(peer, {}).get(digest)
        access = self._drop_pending(digest, peer)
        if access is None or came is None or came <= trio.current_time() - DEFAULT_TTL:
            return False  # none, or too old to be used (the peer sends another)
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
        for digest in list(self._pending_of.get(peer, {})):
            self._drop_pending(digest, peer)

    def forget_digest(self, digest: str) -> None:
        self._granted.pop(digest, None)
        for peer in list(self._pending.get(digest, {})):
            self._drop_pending(digest, peer)

    def tracks(self, digest: str) -> bool:
        return bool(self._granted.get(digest) or self._pending.get(digest))
