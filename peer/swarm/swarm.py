"""The swarm: links to other nodes, the owner's side of a blob, and the piece exchange.

Who does what for one blob:
- The *owner* (first in rendezvous order among live members) alone fetches it from the
  upstream. Other nodes send it a `Want` (with the client's Authorization, used for that fetch
  only); it answers with `PieceMeta` (size, piece size, hashes of the pieces it has) and sends
  more `PieceMeta` as pieces arrive, so the swarm starts before the owner has the whole blob.
  The owner is also the blob's tracker: it answers `PeersRequest` with the nodes that want it.
- Every fetching node requests pieces from the owner and from those peers (pipelined, a few
  per peer), verifies each against its xxh3-128 before storing or serving it, announces it
  with `Have`, and serves its verified pieces to others. The sha256 of the whole blob is still
  checked at the end on every node.
- A peer whose piece fails its hash is disconnected and banned for a while. When the owner
  dies, the next node in rendezvous order becomes owner; when that is this node, or no owner
  can be reached, the download continues from the upstream (the latter is logged and counted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from peer.access.auth_gate import DEFAULT_TTL, credentials_key
from peer.access.policy import CACHED_ELSEWHERE_HEADER, AccessPolicy
from peer.cluster.membership import Membership, Status, Update
from peer.cluster.rendezvous import owner_order
from peer.front.routes import InvalidNamespace
from peer.rate_limit import RateLimiter
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.link_guard import LinkGuard
from peer.upstream.client import UpstreamError, UpstreamRefusal
from pieces.partial import PartialBlob, StoreError, piece_hash
from pieces.store import Store
from wire.errors import LocalProtocolError
from wire.events import (
    Access,
    Bitfield,
    Cancel,
    Choke,
    Event,
    FileRange,
    Have,
    Members,
    Peers,
    PeersRequest,
    Piece,
    PieceMeta,
    Refused,
    Reject,
    Request,
    Unchoke,
    Want,
)
from wire.protocol import Role

if TYPE_CHECKING:
    from peer.fetch.downloads import Download, Downloads

log = logging.getLogger("pollen.swarm")

# Pieces in flight per peer: enough for QUEUE_SECONDS of that peer's measured rate, bounded.
QUEUE_SECONDS = 3.0
MIN_REQUESTS, START_REQUESTS, MAX_REQUESTS = 2, 4, 16
RANDOM_FIRST = 4  # the first pieces are picked at random, so peers start out different
ENDGAME_AFTER = 2.0  # at least this long outstanding before a second peer is asked
WINDOW = 16  # pieces ahead of the first missing one that are fetched first (in-order clients)
MAX_PEERS = 8  # peers a fetch links to besides the owner
PEERS_WHILE_OWNING = 2  # peers a fetch takes pieces from while this node fetches upstream
BAN_SECONDS = 600.0
ACCESS_REFRESH = DEFAULT_TTL * 0.75  # re-send Access before the peer's grant runs out
META_TIMEOUT = 30.0
DRAIN_STALL = 5.0  # a new owner stops taking pieces from peers after this long without one
CONNECT_TIMEOUT = 5.0
SYNC_PERIOD = 30.0
UPLOAD_SLOTS = 8  # peers unchoked at once: the best contributors, plus one optimistic
RECHOKE_PERIOD = 10.0
OPTIMISTIC_PERIOD = 30.0


class OwnerUnavailable(Exception):
    """No owner could be reached; the caller fetches from the upstream itself."""


@dataclass(eq=False)
class DigestState:
    """What this node knows about one blob's swarm."""

    digest: str
    interested: set[bytes] = field(default_factory=set)  # peers that sent Want (we own it)
    bitfield_sent: set[bytes] = field(default_factory=set)
    fetch: SwarmFetch | None = None
    listening: PartialBlob | None = None
    # A private blob's pieces go only to peers whose credentials a registry it came from
    # accepted (through their Want or Access), exactly as for clients of the HTTP front.
    # peer -> (until, the origins its credentials were checked against): a grant covers only
    # content private to those registries, and only for a while.
    granted: dict[bytes, tuple[float, frozenset[str]]] = field(default_factory=dict)
    access: dict[bytes, Access] = field(default_factory=dict)  # kept only until checked


@dataclass
class SwarmCounters:
    bytes_from_peers: int = 0
    bytes_to_peers: int = 0
    pieces_from_peers: int = 0
    pieces_to_peers: int = 0
    bad_pieces: int = 0
    bans: int = 0
    upstream_fallbacks: int = 0
    uploads_cancelled: int = 0  # queued pieces the requester cancelled before they went out
    wasted_bytes: int = 0  # piece bytes received that were not needed (duplicates, late)
    links_refused: int = 0


class Swarm:
    def __init__(
        self,
        node_id: bytes,
        membership: Membership,
        store: Store,
        access: AccessPolicy,
        token: bytes | None,
        piece_size: int,
        upload_rate: int | None = None,
        download_rate: int | None = None,
        peer_encryption: bool = False,
    ) -> None:
        self.node_id = node_id
        self.membership = membership
        self.store = store
        self.access = access
        self.token = token
        self.peer_encryption = peer_encryption  # seal every frame of every link
        self.link_guard = LinkGuard()  # bounds what strangers can open on the peer port
        self.piece_size = piece_size
        self.links: dict[bytes, PeerLink] = {}
        self.digests: dict[str, DigestState] = {}
        self.banned: dict[bytes, float] = {}
        self.unreachable: dict[bytes, float] = {}
        self.counters = SwarmCounters()
        self.downloads: Downloads | None = None
        self._connecting: dict[bytes, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._uploads = trio.Semaphore(UPLOAD_SLOTS)
        self.upload_limit = RateLimiter(upload_rate)
        self.download_limit = RateLimiter(download_rate)
        # Choking: peers that asked us for pieces recently, what they gave us, who may ask.
        self._requesters: dict[bytes, float] = {}
        self._contribution: dict[bytes, int] = {}
        self.choked: set[bytes] = set()
        self._optimistic: bytes | None = None
        self._optimistic_at = 0.0

    # ---- running -------------------------------------------------------------------------

    async def run(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._rechoke_loop)
            task_status.started()

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:  # already gone
            await stream.aclose()
            return
        if not self.link_guard.admit(address):
            # Over the per-address or handshake limit: closed before a byte is read. Not
            # logged one by one: a flood would flood the log too.
            self.counters.links_refused += 1
            await stream.aclose()
            return
        try:
            try:
                link = PeerLink(
                    stream,
                    self.node_id,
                    self.token,
                    role=Role.RESPONDER,
                    encrypt=self.peer_encryption,
                )
                await link.handshake()
            except LinkClosed as exc:
                self.counters.links_refused += 1
                log.warning("refused an incoming peer from %s: %s", address, exc)
                return
            finally:
                self.link_guard.handshake_over(address)
            if self._is_banned(link.peer_id):
                await link.close()
                return
            await self._adopt(link)
        finally:
            self.link_guard.release(address)

    async def _adopt(self, link: PeerLink) -> None:
        # Two nodes may connect to each other at the same moment: both links stay usable
        # (answers come back on the link a request went out on); new requests use the newest.
        self.links[link.peer_id] = link
        try:
            await link.run(self._on_event)
        except Exception:
            # A bug in handling one peer must not take the node down: drop that link.
            log.exception("error on the link to %s; closing it", link.peer_id.hex()[:12])
            await link.close()
        finally:
            if self.links.get(link.peer_id) is link:
                del self.links[link.peer_id]
            for state in self.digests.values():
                if state.fetch is not None:
                    state.fetch.link_lost(link.peer_id)
                state.bitfield_sent.discard(link.peer_id)
                state.granted.pop(link.peer_id, None)
                state.access.pop(link.peer_id, None)

    async def link_to(self, peer_id: bytes) -> PeerLink:
        """A link to `peer_id`, connecting (once, shared by concurrent callers) if needed.

        Raises:
            LinkClosed: unknown, banned or unreachable peer, or the handshake failed.
        """
        while True:
            link = self.links.get(peer_id)
            if link is not None and not link.closed:
                return link
            pending = self._connecting.get(peer_id)
            if pending is None:
                break
            await pending.wait()
        if self._is_banned(peer_id):
            raise LinkClosed("peer is banned")
        member = self.membership.members.get(peer_id)
        if member is None or member.status is Status.DEAD:
            raise LinkClosed("not a live member")
        done = self._connecting[peer_id] = trio.Event()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(*member.address)
            # As the initiator we name the node we mean to reach: the handshake refuses any
            # other node that answers at that address, before we prove anything to it.
            link = PeerLink(
                stream,
                self.node_id,
                self.token,
                role=Role.INITIATOR,
                peer_id=peer_id,
                encrypt=self.peer_encryption,
            )
            await link.handshake()
        except (OSError, ValueError, trio.TooSlowError) as exc:  # ValueError: a bad host
            self.unreachable[peer_id] = time.monotonic()
            raise LinkClosed(f"cannot reach {member.address}: {exc}") from exc
        finally:
            del self._connecting[peer_id]
            done.set()
        assert self._nursery is not None
        self._nursery.start_soon(self._adopt, link)
        await trio.lowlevel.checkpoint()
        self.links[peer_id] = link
        await self._send(link, Members(self._members_payload(), reply=False))
        return link

    async def _sync_loop(self) -> None:
        """Push-pull full membership state with one random member, periodically."""
        while True:
            await trio.sleep(SYNC_PERIOD * random.uniform(0.8, 1.2))
            self.forget_idle_digests()
            members = [m.node_id for m in self.membership.alive()]
            if not members:
                continue
            try:
                link = await self.link_to(random.choice(members))
                await self._send(link, Members(self._members_payload(), reply=False))
            except LinkClosed as exc:
                log.debug("membership sync failed: %s", exc)

    async def _rechoke_loop(self) -> None:
        while True:
            await trio.sleep(RECHOKE_PERIOD)
            await self.rechoke(time.monotonic())

    async def rechoke(self, now: float) -> None:
        """BitTorrent's choking: keep the peers that gave us the most in the last period
        unchoked, plus one optimistic pick that rotates, so newcomers get a start too."""
        recent = [p for p, at in self._requesters.items() if now - at < 2 * RECHOKE_PERIOD]
        ranked = sorted(recent, key=lambda p: self._contribution.get(p, 0), reverse=True)
        keep = set(ranked[: UPLOAD_SLOTS - 1])
        rest = [p for p in recent if p not in keep]
        if self._optimistic not in rest or now - self._optimistic_at >= OPTIMISTIC_PERIOD:
            self._optimistic = random.choice(rest) if rest else None
            self._optimistic_at = now
        if self._optimistic is not None:
            keep.add(self._optimistic)
        newly_choked = set(recent) - keep - self.choked
        newly_unchoked = self.choked & keep
        self.choked = (self.choked | newly_choked) - newly_unchoked
        for peer_id in newly_choked:
            if (link := self.links.get(peer_id)) is not None:
                await self._send(link, Choke())
        for peer_id in newly_unchoked:
            if (link := self.links.get(peer_id)) is not None:
                await self._send(link, Unchoke())
        self._contribution.clear()

    def _members_payload(self) -> list[tuple[bytes, str, int, int, int]]:
        return [
            (u.node_id, u.address[0], u.address[1], u.incarnation, int(u.status))
            for u in self.membership.full_state()
        ]

    # ---- routing -------------------------------------------------------------------------

    def owner_candidates(self, digest: str) -> list[bytes]:
        """Live, unbanned members in rendezvous order for `digest` (this node included).

        A banned owner is skipped for good (until its ban ends): otherwise every fetch would
        keep returning to it as the first choice."""
        ids = [n for n in self.membership.alive_ids() if not self._is_banned(n)]
        return owner_order(digest, ids)

    def is_owner(self, digest: str) -> bool:
        return self.owner_candidates(digest)[0] == self.node_id

    def state(self, digest: str) -> DigestState:
        state = self.digests.get(digest)
        if state is None:
            state = self.digests[digest] = DigestState(digest)
        return state

    async def _on_event(self, link: PeerLink, event: Event) -> None:
        assert self._nursery is not None
        if isinstance(event, Want):
            self._nursery.start_soon(self._guarded, self._serve_want, link, event)
        elif isinstance(event, Request):
            self._nursery.start_soon(self._guarded, self._serve_request, link, event)
        elif isinstance(event, Access):
            # Kept (never logged) until the peer's next Request for the blob is checked; only
            # for a blob this node holds, so strangers' digests cost nothing.
            if self.store.has_blob(event.digest) or self.store.partial(event.digest):
                self.state(event.digest).access[link.peer_id] = event
        elif isinstance(event, PeersRequest):
            link.post(Peers(event.digest, self._peers_for(event.digest, link.peer_id)))
        elif isinstance(event, Members):
            self.membership.merge(
                (Update(m[0], (m[1], m[2]), m[3], Status(m[4])) for m in event.members),
                trio.current_time(),
            )
            if not event.reply:
                link.post(Members(self._members_payload(), reply=True))
        elif isinstance(event, Bitfield):
            await self._on_bitfield(link, event)
        elif isinstance(event, Choke | Unchoke):
            for state in self.digests.values():
                if state.fetch is not None:
                    state.fetch.on_choke(link.peer_id, isinstance(event, Choke))
        elif isinstance(event, PieceMeta | Refused | Have | Piece | Reject | Peers):
            fetch = self.digests.get(event.digest)
            if fetch is not None and fetch.fetch is not None:
                await fetch.fetch.on_event(link, event)
            elif isinstance(event, Piece) and not isinstance(event.data, FileRange):
                # A late answer for a fetch that ended: received for nothing.
                self.counters.wasted_bytes += len(event.data)
        elif (
            isinstance(event, Cancel)
            and (event.digest, event.index) in link.protocol.their_requests
        ):
            # Still queued (upload slot, rate limit, or behind other pieces on the link): it
            # goes out as a Reject. Already answered: nothing to do (the protocol agrees).
            link.cancelled.add((event.digest, event.index))

    async def _send(self, link: PeerLink, event: Event) -> None:
        with contextlib.suppress(LinkClosed):
            await link.send(event)

    async def _guarded(
        self, handler: Callable[[PeerLink, Any], Awaitable[None]], link: PeerLink, event: Event
    ) -> None:
        """Run a per-request handler; a failure closes that link, never the node."""
        try:
            await handler(link, event)
        except Exception:
            log.exception(
                "error handling %s from %s", type(event).__name__, link.peer_id.hex()[:12]
            )
            await link.close()

    # ---- the owner's side -----------------------------------------------------------------

    async def _serve_want(self, link: PeerLink, want: Want) -> None:
        try:
            await self._answer_want(link, want)
        finally:
            self._forget_if_idle(want.digest)

    async def _answer_want(self, link: PeerLink, want: Want) -> None:
        digest = want.digest
        try:
            self.access.check_namespace(want.namespace)
        except InvalidNamespace as exc:
            await self._send(link, Refused(digest, 400, {}, str(exc).encode()[:4000]))
            return
        state = self.state(digest)
        headers = {"authorization": want.authorization} if want.authorization else {}
        access = Access(digest, want.namespace, want.repository, want.authorization)
        if self.store.has_blob(digest):
            if not await self._allowed_or_refused(link, access):
                return
            hashes = await trio.to_thread.run_sync(
                self.store.complete_piece_hashes_sync, digest, self.piece_size
            )
            size = self.store.blob_size(digest)
            if hashes is not None and size is not None:
                state.interested.add(link.peer_id)
                origins = self.store.origins_of(digest)
                await self._send(link, PieceMeta(digest, size, self.piece_size, hashes, origins))
                return
        assert self.downloads is not None
        download = await self.downloads.join(
            digest,
            want.namespace,
            want.repository,
            headers,
            credentials_key(headers),
            upstream=True,
        )
        await download.ready.wait()
        if download.refusal is not None:
            await self._send(link, _refused(digest, download.refusal))
            return
        partial = download.partial
        if partial is None:
            message = f"owner's upstream fetch failed: {download.error}"
            await self._send(link, Refused(digest, 502, {}, message.encode()[:4000]))
            return
        if download.auth_key is not None and download.auth_key == credentials_key(headers):
            # The upstream accepted these very credentials for this private download.
            self._grant(state, link.peer_id)
        elif download.auth_key != credentials_key(headers) and not await self._allowed_or_refused(
            link, access
        ):
            # Joined a download another client's credentials started, and failed the same
            # check as for serving it from disk (it has been sent the refusal).
            return
        state.interested.add(link.peer_id)  # only now: PieceMeta updates go to it
        self._listen(state, partial)
        meta = PieceMeta(
            digest,
            partial.layout.size,
            partial.layout.piece_size,
            dict(partial.piece_hashes),
            self.store.origins_of(digest),
        )
        await self._send(link, meta)

    async def _allowed_or_refused(self, link: PeerLink, access: Access) -> bool:
        """True when the peer may have the blob; else it has been sent a Refused."""
        try:
            refusal = await self._check_access(link.peer_id, access)
        except UpstreamError as exc:
            message = f"access check failed: {exc}"
            await self._send(link, Refused(access.digest, 502, {}, message.encode()[:4000]))
            return False
        if refusal is not None:
            await self._send(link, _refused(access.digest, refusal))
            return False
        return True

    async def _check_access(self, peer_id: bytes, access: Access) -> UpstreamRefusal | None:
        """None when `peer_id` may have the pieces of `access.digest` (see peer/access.py:
        public, or the registry the peer names vouches for the credentials it passed on);
        else the refusal. A success is remembered as long as the gate remembers one.

        Raises:
            UpstreamError: the registry could not be asked (nothing is served unchecked).
        """
        state = self.state(access.digest)
        if self._granted(state, peer_id, self.store.origins_of(access.digest)):
            return None
        headers = {"authorization": access.authorization} if access.authorization else {}
        refusal = await self.access.refusal(
            access.namespace, access.repository, "blobs", access.digest, headers
        )
        if refusal is None:
            self._grant(state, peer_id)
        return refusal

    def _grant(self, state: DigestState, peer_id: bytes) -> None:
        origins = frozenset(self.store.origins_of(state.digest))
        if origins:  # public content needs no grant, and must not leave one behind
            state.granted[peer_id] = (time.monotonic() + DEFAULT_TTL, origins)

    def _granted(self, state: DigestState, peer_id: bytes, origins: list[str]) -> bool:
        """Does a grant of `peer_id` cover the blob as private to `origins` (its current
        origins, which the caller has read)?"""
        grant = state.granted.get(peer_id)
        if grant is None:
            return False
        until, granted_for = grant
        return until > time.monotonic() and not granted_for.isdisjoint(origins)

    def _listen(self, state: DigestState, partial: PartialBlob) -> None:
        """Announce pieces of `partial` as they are recorded: hashes to those that want it
        from us (we own it), Have to the peers we exchange it with."""
        if state.listening is partial:
            return
        state.listening = partial

        origins = self.store.origins_of(state.digest)

        def on_pieces(indices: list[int]) -> None:
            hashes = {i: partial.piece_hashes[i] for i in indices}
            layout = partial.layout
            meta = PieceMeta(state.digest, layout.size, layout.piece_size, hashes, origins)
            for peer_id in list(state.interested):
                link = self.links.get(peer_id)
                if link is not None:
                    link.post(meta)
            fetch = state.fetch
            if fetch is not None:
                for peer_id in fetch.peers:
                    link = self.links.get(peer_id)
                    if link is not None and peer_id not in state.interested:
                        for index in indices:
                            link.post(Have(state.digest, index))

        partial.piece_listeners.append(on_pieces)

    def _peers_for(self, digest: str, asker: bytes) -> list[tuple[bytes, str, int]]:
        state = self.digests.get(digest)
        if state is None:
            return []
        out = []
        for peer_id in state.interested | (state.fetch.peers if state.fetch else set()):
            member = self.membership.members.get(peer_id)
            if peer_id != asker and member is not None and member.status is not Status.DEAD:
                out.append((peer_id, member.address[0], member.address[1]))
        random.shuffle(out)
        return out[:32]

    # ---- uploads -------------------------------------------------------------------------

    async def _serve_request(self, link: PeerLink, request: Request) -> None:
        self._requesters[link.peer_id] = time.monotonic()
        if link.peer_id in self.choked:
            await self._send(link, Reject(request.digest, request.index, "choked"))
            return
        if not await self._may_have_pieces(link.peer_id, request.digest):
            await self._send(link, Reject(request.digest, request.index, "denied"))
            return
        async with self._uploads:
            if (request.digest, request.index) in link.cancelled:
                # Cancelled while waiting for an upload slot.
                with contextlib.suppress(LinkClosed, LocalProtocolError):
                    await link.send(Reject(request.digest, request.index, "cancelled"))
                self.counters.uploads_cancelled += 1
                return
            state = self.digests.get(request.digest)
            piece_size = self.piece_size
            if state is not None and state.listening is not None:
                piece_size = state.listening.layout.piece_size
            source = await trio.to_thread.run_sync(
                self.store.open_piece_sync, request.digest, request.index, piece_size
            )
            if source is None:
                await self._send(link, Reject(request.digest, request.index, "missing"))
                return
            fd, offset, length = source
            try:
                # Checked again: the blob may have become private (a credentialed fetch of it
                # began) while this request waited for its upload slot.
                if not await self._may_have_pieces(link.peer_id, request.digest):
                    await self._send(link, Reject(request.digest, request.index, "denied"))
                    return
                payload = FileRange(fd, offset, length)
                await self.upload_limit.consume(length)
                if await link.send(Piece(request.digest, request.index, payload)):
                    self.counters.bytes_to_peers += length
                    self.counters.pieces_to_peers += 1
                else:
                    self.counters.uploads_cancelled += 1
            except (LinkClosed, LocalProtocolError):
                pass
            finally:
                os.close(fd)

    async def _may_have_pieces(self, peer_id: bytes, digest: str) -> bool:
        """Public blob, or the peer's credentials (Want or Access) passed the access check.
        An Access is used once: a refused peer must send another (no HEAD per Request)."""
        origins = self.store.origins_of(digest)
        if not origins:
            return True
        state = self.state(digest)
        if self._granted(state, peer_id, origins):
            return True
        access = state.access.pop(peer_id, None)
        if access is None:
            return False
        try:
            return await self._check_access(peer_id, access) is None
        except UpstreamError as exc:
            log.warning("access check for a peer's pieces of %s failed: %s", digest, exc)
            return False

    async def _on_bitfield(self, link: PeerLink, event: Bitfield) -> None:
        state = self.digests.get(event.digest)
        if state is None:
            bits = self._our_bits(event.digest)
            if bits is not None:  # a blob we hold: the peer may take pieces of it
                state = self.state(event.digest)
            else:
                return  # neither held nor fetched: nothing to say, nothing to keep
        if state.fetch is not None:
            state.fetch.on_bitfield(link.peer_id, event.bits)
        if link.peer_id not in state.bitfield_sent:
            bits = self._our_bits(event.digest)
            if bits is not None:
                state.bitfield_sent.add(link.peer_id)
                link.post(Bitfield(event.digest, bits))

    def _our_bits(self, digest: str) -> bytes | None:
        partial = self.store.partial(digest)
        if partial is not None:
            return _bits(set(partial.piece_hashes), partial.layout.count)
        size = self.store.blob_size(digest)
        if size is None:
            return None
        count = -(-size // self.piece_size)
        return _bits(set(range(count)), count)

    # ---- bans ----------------------------------------------------------------------------

    def _is_banned(self, peer_id: bytes) -> bool:
        until = self.banned.get(peer_id)
        return until is not None and until > time.monotonic()

    async def ban(self, peer_id: bytes, reason: str) -> None:
        self.banned[peer_id] = time.monotonic() + BAN_SECONDS
        self.counters.bans += 1
        log.warning("banned peer %s for %.0fs: %s", peer_id.hex()[:12], BAN_SECONDS, reason)
        link = self.links.pop(peer_id, None)
        if link is not None:
            await link.close()

    # ---- fetching ------------------------------------------------------------------------

    async def fetch(self, download: Download, headers: Mapping[str, str]) -> None:
        """Fill `download` from the swarm.

        Raises:
            OwnerUnavailable: this node is (now) the owner, or no owner can be reached: the
                caller continues from the upstream with whatever the swarm delivered.
        """
        state = self.state(download.digest)
        fetch = SwarmFetch(self, state, download, dict(headers))
        state.fetch = fetch
        try:
            await fetch.run()
        finally:
            state.fetch = None
            self._forget_if_idle(download.digest)

    def _forget_if_idle(self, digest: str) -> None:
        """Drop what this node keeps about `digest` once it neither holds nor fetches it:
        clients and members can name any digest, and the table must not grow with them."""
        state = self.digests.get(digest)
        if state is None or state.fetch is not None:
            return
        if self.store.has_blob(digest) or self.store.partial(digest) is not None:
            return
        del self.digests[digest]

    def forget_idle_digests(self) -> None:
        """Sweep the table (blobs are evicted without the swarm hearing of it)."""
        for digest in list(self.digests):
            self._forget_if_idle(digest)


@dataclass(eq=False)
class SwarmFetch:
    """One blob being filled from the swarm on a non-owner node."""

    swarm: Swarm
    state: DigestState
    download: Download
    headers: dict[str, str]
    peers: set[bytes] = field(default_factory=set)
    availability: dict[bytes, set[int]] = field(default_factory=dict)
    inflight: dict[int, set[bytes]] = field(default_factory=dict)
    hashes: dict[int, bytes] = field(default_factory=dict)
    owner: bytes | None = None
    partial: PartialBlob | None = None
    choked_by: set[bytes] = field(default_factory=set)
    rates: dict[bytes, float] = field(default_factory=dict)  # bytes/s per peer (EWMA)
    requested_at: dict[tuple[int, bytes], float] = field(default_factory=dict)
    # peer -> when our client's credentials (Access) last went to it
    access_sent: dict[bytes, float] = field(default_factory=dict)
    storing: set[int] = field(default_factory=set)  # pieces received, being written
    _meta: PieceMeta | Refused | None = None
    _changed: trio.Event = field(default_factory=trio.Event)
    _owner_lost: bool = False
    failure: Exception | None = None  # a store error while writing a piece: ends the fetch

    @property
    def digest(self) -> str:
        return self.download.digest

    async def run(self) -> None:
        while True:
            try:
                await self._find_owner()
            except OwnerUnavailable:
                if self.partial is not None and self.peers:
                    # We own it now (the owner died) or cannot reach one: take from the
                    # peers first what they hold, so the upstream only sends what is missing.
                    await self._drain_peers(self.partial)
                raise
            partial = self.partial
            assert partial is not None
            if self._exchange_done(partial):
                break
            await self._exchange(partial)
            self._raise_failure()
            if self._exchange_done(partial):
                break
            # The owner went away: pick the next one and go on.
        async with partial.write_lock:
            await trio.to_thread.run_sync(partial.verify_sync)
            partial.notify()
            await trio.to_thread.run_sync(self.swarm.store.commit_sync, partial)
        log.info(
            "stored %s from the swarm (%d bytes from %d peers, %.2fs)",
            self.digest,
            self.download.bytes_from_peers,
            len(self.peers),
            time.monotonic() - self.download.started,
        )

    def _exchange_done(self, partial: PartialBlob) -> bool:
        return len(partial.piece_hashes) == partial.layout.count

    async def _find_owner(self) -> None:
        swarm = self.swarm
        skipped = 0
        for candidate in swarm.owner_candidates(self.digest):
            if candidate == swarm.node_id:
                if not skipped:
                    raise OwnerUnavailable("this node is the owner")
                break
            if (
                candidate in swarm.unreachable
                and time.monotonic() - swarm.unreachable[candidate] < 5
            ):
                skipped += 1
                continue
            # Set before asking: PieceMeta updates may follow the first answer at once.
            self.owner = candidate
            try:
                link = await swarm.link_to(candidate)
                await self._want(link)
            except LinkClosed as exc:
                log.info("owner candidate %s unreachable: %s", candidate.hex()[:12], exc)
                skipped += 1
                continue
            self._owner_lost = False
            return
        # Every node ahead of us in rendezvous order failed: they are alive as far as gossip
        # knows, so this is a fallback (another node may be fetching the same blob).
        swarm.counters.upstream_fallbacks += 1
        log.warning(
            "no owner of %s reachable (%d tried): falling back to the upstream",
            self.digest,
            skipped,
        )
        raise OwnerUnavailable("no owner reachable")

    async def _drain_peers(self, partial: PartialBlob) -> None:
        """Fetch from the linked peers every missing piece one of them holds (and whose hash
        we know); stop when none is left to get or nothing arrives for DRAIN_STALL seconds."""
        last_progress, progress = time.monotonic(), len(partial.piece_hashes)
        while not self._exchange_done(partial):
            self._raise_failure()
            obtainable = any(
                i in self.hashes
                and i not in partial.piece_hashes
                and any(i in held for held in self.availability.values())
                for i in range(partial.layout.count)
            )
            if not obtainable and not self.inflight:
                break
            if len(partial.piece_hashes) != progress:
                last_progress, progress = time.monotonic(), len(partial.piece_hashes)
            elif time.monotonic() - last_progress > DRAIN_STALL:
                break
            await self._schedule(partial)
            await self._wait_change(1.0)
        log.info(
            "took %d of %d pieces of %s from peers before the upstream",
            len(partial.piece_hashes),
            partial.layout.count,
            self.digest,
        )

    async def _want(self, link: PeerLink) -> None:
        self._meta = None
        download = self.download
        auth = self.headers.get("authorization")
        await link.send(Want(self.digest, download.namespace, download.name, auth))
        with trio.move_on_after(META_TIMEOUT):
            while self._meta is None:
                if link.closed:
                    raise LinkClosed("owner closed the link")
                await self._wait_change(1.0)
        meta = self._meta
        if meta is None:
            raise LinkClosed("owner did not answer in time")
        if isinstance(meta, Refused):
            if meta.headers.get(CACHED_ELSEWHERE_HEADER):
                # The owner holds it from other registries than ours: our client's registry
                # must show the bytes itself (our upstream fetch, with our client's credentials).
                raise OwnerUnavailable("the owner holds it from another registry")
            if meta.status >= 500:
                owner = f"owner {link.peer_id.hex()[:12]}"
                raise UpstreamError(owner, meta.body.decode("utf-8", "replace"))
            download.refusal = UpstreamRefusal(meta.status, dict(meta.headers), meta.body)
            download.ready.set()
            raise ClientRefused(meta.status)
        self.hashes.update(meta.hashes)
        if self.partial is None:
            # Private before any client or peer can see a byte: to the registries the owner
            # got it from, and (a peer may add origins, never remove them) to the one our
            # client named with credentials.
            origins = list(meta.origins)
            if auth is not None:
                origins.append(self.swarm.access.registry_of(download.namespace))
            self.partial = await self.swarm.store.open_partial(
                self.digest, meta.size, meta.piece_size, origins=origins
            )
            download.partial = self.partial
            self.swarm._listen(self.state, self.partial)
            download.ready.set()
        elif self.partial.layout.size != meta.size:
            raise UpstreamError(f"owner {link.peer_id.hex()[:12]}", "owners disagree on the size")
        self._add_peer(link.peer_id)
        self.availability[link.peer_id] |= set(meta.hashes)

    def _add_peer(self, peer_id: bytes) -> None:
        if peer_id not in self.peers:
            self.peers.add(peer_id)
            self.availability.setdefault(peer_id, set())

    async def _exchange(self, partial: PartialBlob) -> None:
        swarm = self.swarm
        assert self.owner is not None
        owner_link = swarm.links.get(self.owner)
        if owner_link is not None:
            await swarm._send(owner_link, PeersRequest(self.digest))
        last_peers_request = time.monotonic()
        last_progress, progress = time.monotonic(), len(partial.piece_hashes)
        while not self._exchange_done(partial) and not self._owner_lost:
            self._raise_failure()
            await self._schedule(partial)
            await self._wait_change(1.0)
            if len(partial.piece_hashes) != progress:
                last_progress, progress = time.monotonic(), len(partial.piece_hashes)
            elif time.monotonic() - last_progress > 10:
                self._log_stall(partial)
                last_progress = time.monotonic()
            if time.monotonic() - last_peers_request > 2.0:
                owner_link = swarm.links.get(self.owner)
                if owner_link is None or owner_link.closed:
                    self._owner_lost = True
                    break
                if swarm.owner_candidates(self.digest)[0] != self.owner:
                    # Membership changed (a node joined or died): follow the new owner.
                    self._owner_lost = True
                    break
                await swarm._send(owner_link, PeersRequest(self.digest))
                if any(i not in self.hashes for i in range(partial.layout.count)):
                    # Ask again for a fresh PieceMeta: cheap, and it heals a lost update.
                    auth = self.headers.get("authorization")
                    download = self.download
                    want = Want(self.digest, download.namespace, download.name, auth)
                    await swarm._send(owner_link, want)
                last_peers_request = time.monotonic()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _log_stall(self, partial: PartialBlob) -> None:
        missing = [i for i in range(partial.layout.count) if i not in partial.piece_hashes]
        log.warning(
            "no progress on %s for 10s: %d pieces missing %s, hashes known %d, in flight %s, "
            "peers %s",
            self.digest,
            len(missing),
            missing[:8],
            len(self.hashes),
            {i: [p.hex()[:8] for p in s] for i, s in self.inflight.items()},
            {p.hex()[:8]: (len(a), p in self.swarm.links) for p, a in self.availability.items()},
        )

    async def _wait_change(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._changed.wait()
        self._changed = trio.Event()

    def _poke(self) -> None:
        self._changed.set()

    def _queue_depth(self, peer_id: bytes, piece_size: int) -> int:
        """Requests to keep in flight to a peer: QUEUE_SECONDS of its measured rate."""
        rate = self.rates.get(peer_id)
        if rate is None:
            return START_REQUESTS
        return max(MIN_REQUESTS, min(MAX_REQUESTS, int(rate * QUEUE_SECONDS / piece_size) + 1))

    async def _schedule(self, partial: PartialBlob) -> None:
        """Give every peer with free request slots its next pieces: random for the first few,
        then rarest first inside the window ahead of the reader, then rarest first anywhere.
        Endgame: when nothing unrequested is left, a piece outstanding for longer than
        ENDGAME_AFTER at one peer may also be asked of one other peer (then cancelled)."""
        have = set(partial.piece_hashes)
        missing = [
            i for i in range(partial.layout.count) if i not in have and i not in self.storing
        ]
        if not missing:
            return
        window = set(missing[:WINDOW])
        rarity = {i: sum(1 for a in self.availability.values() if i in a) for i in missing}
        random_first = len(have) < RANDOM_FIRST
        now = time.monotonic()
        # While this node fetches from the upstream (it owns a blob), it takes pieces from
        # few peers at a time: every TCP flow into its link gets a like share, and the
        # upstream flow is the one the whole swarm waits for.
        downloads = self.swarm.downloads
        yielding = downloads is not None and downloads.upstream_fetches > 0
        sources = {p for s in self.inflight.values() for p in s}
        await self._send_access()
        for peer_id in list(self.peers):
            link = self.swarm.links.get(peer_id)
            if link is None or link.closed or peer_id in self.choked_by:
                continue
            if yielding and peer_id not in sources and len(sources) >= PEERS_WHILE_OWNING:
                continue
            depth = self._queue_depth(peer_id, partial.layout.piece_size)
            slots = depth - self._requests_at(peer_id)
            if slots <= 0:
                continue
            available = self.availability.get(peer_id, set())
            fresh = [
                i for i in missing if i in available and i in self.hashes and i not in self.inflight
            ]
            if random_first:
                random.shuffle(fresh)
                fresh.sort(key=lambda i: i not in window)
            else:
                fresh.sort(key=lambda i: (i not in window, rarity[i], random.random()))
            picks = fresh[:slots]
            if not picks and all(i in self.inflight for i in missing):
                picks = [
                    i
                    for i in missing
                    if i in available
                    and len(self.inflight[i]) == 1
                    and peer_id not in self.inflight[i]
                    and all(self._overdue(i, p, now, partial) for p in self.inflight[i])
                ][:slots]
            if picks:
                sources.add(peer_id)
            for choice in picks:
                self.inflight.setdefault(choice, set()).add(peer_id)
                self.requested_at[(choice, peer_id)] = now
                try:
                    await link.send(Request(self.digest, choice))
                except (LinkClosed, LocalProtocolError):
                    self.inflight[choice].discard(peer_id)
                    if not self.inflight[choice]:
                        del self.inflight[choice]
                    break

    async def _send_access(self) -> None:
        """Before the first Request for a private blob's pieces to each peer, pass the
        client's credentials on, so the peer can check them, and again every ACCESS_REFRESH
        seconds: a peer's grant lasts DEFAULT_TTL, and a long transfer must not run into
        "denied". Done before any pick is made: the sends may suspend this task."""
        auth = self.headers.get("authorization")
        if auth is None or not self.swarm.store.is_private(self.digest):
            return
        download = self.download
        access = Access(self.digest, download.namespace, download.name, auth)
        now = time.monotonic()
        for peer_id in list(self.peers):
            link = self.swarm.links.get(peer_id)
            sent = self.access_sent.get(peer_id)
            if link is None or link.closed or (sent is not None and now - sent < ACCESS_REFRESH):
                continue
            with contextlib.suppress(LinkClosed, LocalProtocolError):
                await link.send(access)
                self.access_sent[peer_id] = now

    def _requests_at(self, peer_id: bytes) -> int:
        """How many of our requests `peer_id` has not answered yet."""
        return sum(1 for holders in self.inflight.values() if peer_id in holders)

    def _overdue(self, index: int, holder: bytes, now: float, partial: PartialBlob) -> bool:
        """Has the request for `index` at `holder` waited twice as long as that peer's queue
        should take? Only then is a second peer asked (endgame): asking sooner sends pieces
        twice over links that are merely busy (each uploader serves several peers at once)."""
        requested = self.requested_at.get((index, holder), now)
        rate = self.rates.get(holder)
        if rate is None:
            expected = QUEUE_SECONDS
        else:
            queued = self._requests_at(holder)
            expected = queued * partial.layout.piece_size / rate
        return now - requested > max(ENDGAME_AFTER, 2 * expected)

    # ---- events from links ------------------------------------------------------------------

    async def on_event(self, link: PeerLink, event: Event) -> None:
        if isinstance(event, PieceMeta | Refused):
            # From the owner only (it is set before the Want goes out): another member's
            # hashes or origins would let it poison pieces or strip a blob's privacy.
            if link.peer_id == self.owner:
                if isinstance(event, PieceMeta) and self._meta is not None:
                    self.hashes.update(event.hashes)
                    self._add_peer(link.peer_id)
                    self.availability[link.peer_id] |= set(event.hashes)
                else:
                    self._meta = event
        elif isinstance(event, Have):
            self._add_peer(link.peer_id)
            self.availability[link.peer_id].add(event.index)
        elif isinstance(event, Peers):
            # Connecting may take seconds: not in the read loop.
            assert self.swarm._nursery is not None
            self.swarm._nursery.start_soon(self._link_peers, event)
        elif isinstance(event, Piece):
            await self._on_piece(link, event)
        elif isinstance(event, Reject):
            self._settle(event.index, link.peer_id)
            self.availability.get(link.peer_id, set()).discard(event.index)
        self._poke()

    def on_bitfield(self, peer_id: bytes, bits: bytes) -> None:
        self._add_peer(peer_id)
        self.availability[peer_id] = _indices(bits)
        self._poke()

    def on_choke(self, peer_id: bytes, choked: bool) -> None:
        if choked:
            self.choked_by.add(peer_id)
        else:
            self.choked_by.discard(peer_id)
        self._poke()

    def link_lost(self, peer_id: bytes) -> None:
        self.peers.discard(peer_id)
        self.access_sent.pop(peer_id, None)  # a new link starts without our credentials
        self.availability.pop(peer_id, None)
        for index, holders in list(self.inflight.items()):
            holders.discard(peer_id)
            self.requested_at.pop((index, peer_id), None)
            if not holders:
                del self.inflight[index]  # an empty entry would read as "in flight" forever
        if peer_id == self.owner:
            self._owner_lost = True
        self._poke()

    async def _link_peers(self, event: Peers) -> None:
        try:
            await self._link_peers_now(event)
        except Exception:  # a task of the node's nursery: never let it take the node down
            log.exception("linking to the peers of %s failed", self.digest)

    async def _link_peers_now(self, event: Peers) -> None:
        swarm = self.swarm
        partial = self.partial
        if partial is None:
            return
        for peer_id, _host, _port in event.peers:
            if len(self.peers) >= MAX_PEERS + 1 or peer_id in self.peers:
                continue
            if peer_id == swarm.node_id or swarm._is_banned(peer_id):
                continue
            try:
                link = await swarm.link_to(peer_id)
            except LinkClosed:
                continue
            self._add_peer(peer_id)
            self.state.bitfield_sent.add(peer_id)
            bits = _bits(set(partial.piece_hashes), partial.layout.count)
            await swarm._send(link, Bitfield(self.digest, bits))

    async def _on_piece(self, link: PeerLink, piece: Piece) -> None:
        try:
            await self._store_piece(link, piece)
        finally:
            if isinstance(piece.data, bytearray):
                link.protocol.recycle(piece.data)  # written (or dropped): reuse the buffer

    async def _store_piece(self, link: PeerLink, piece: Piece) -> None:
        swarm = self.swarm
        partial = self.partial
        sent_at = self.requested_at.get((piece.index, link.peer_id))
        holders = self._settle(piece.index, link.peer_id)
        if isinstance(piece.data, FileRange):  # only ever sent, never decoded
            return
        if partial is None or piece.index in partial.piece_hashes:
            # A duplicate from the endgame, or a fetch that moved on.
            swarm.counters.wasted_bytes += len(piece.data)
            return
        data = memoryview(piece.data)
        expected = self.hashes.get(piece.index)
        if expected is None or len(data) != partial.layout.length(piece.index):
            return
        if sent_at is not None:
            # This request waited behind the others queued at that peer: scale by the queue.
            queued = 1 + self._requests_at(link.peer_id)
            sample = queued * len(data) / max(time.monotonic() - sent_at, 1e-3)
            old = self.rates.get(link.peer_id)
            self.rates[link.peer_id] = sample if old is None else 0.7 * old + 0.3 * sample
        if piece_hash(data) != expected:
            swarm.counters.bad_pieces += 1
            await swarm.ban(link.peer_id, f"piece {piece.index} of {self.digest} failed its hash")
            self.link_lost(link.peer_id)
            return
        # Settled but not yet recorded: without this mark the scheduler would see the piece
        # missing and not in flight, and ask another peer for it while it is being written.
        self.storing.add(piece.index)
        try:
            swarm.store.ensure_room(partial, len(data))
            async with partial.write_lock:
                if piece.index in partial.piece_hashes:  # the other copy of an endgame pair
                    swarm.counters.wasted_bytes += len(data)
                    return
                completed = await trio.to_thread.run_sync(
                    partial.write_sync, partial.layout.start(piece.index), [data]
                )
        except StoreError as exc:
            # The disk, not the peer: the fetch fails (its clients get 507 or 500), the link
            # stays. Raised from the exchange loop, which the read loop must not be.
            self.failure = exc
            self._poke()
            return
        finally:
            self.storing.discard(piece.index)
        swarm.counters.bytes_from_peers += len(data)
        swarm.counters.pieces_from_peers += 1
        swarm._contribution[link.peer_id] = swarm._contribution.get(link.peer_id, 0) + len(data)
        await swarm.download_limit.consume(len(data))
        self.download.bytes_from_peers += len(data)
        partial.announce(completed)
        for other in holders - {link.peer_id}:
            other_link = swarm.links.get(other)
            if other_link is not None:  # a no-op if that link has no such request open
                other_link.post(Cancel(self.digest, piece.index))

    def _settle(self, index: int, peer_id: bytes) -> set[bytes]:
        self.requested_at.pop((index, peer_id), None)
        holders = self.inflight.get(index, set())
        remaining = set(holders)
        holders.discard(peer_id)
        if not holders:
            self.inflight.pop(index, None)
        return remaining


class ClientRefused(Exception):
    """The upstream refused the client (the refusal is on the download for the client)."""


def _refused(digest: str, refusal: UpstreamRefusal) -> Refused:
    return Refused(digest, refusal.status, dict(refusal.headers), refusal.body)


def _bits(indices: set[int], count: int) -> bytes:
    out = bytearray((count + 7) // 8)
    for i in indices:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


def _indices(bits: bytes) -> set[int]:
    return {i * 8 + j for i, byte in enumerate(bits) for j in range(8) if byte & (0x80 >> j)}
