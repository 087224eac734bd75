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

The decisions are pure and live beside this module: which piece to ask of whom
(`picker.py`, driven per blob by `fetch.py`), who may ask us (`choker.py`), whom we no longer
talk to (`bans.py`). This module carries them: links, the owner's answers, uploads, timers.
One clock: trio's (`trio.current_time()`), as membership's; one seeded `random.Random`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from peer.access.auth_gate import DEFAULT_TTL, credentials_key
from peer.access.policy import AccessPolicy
from peer.cluster import sync
from peer.cluster.membership import Membership, Status
from peer.cluster.rendezvous import owner_order
from peer.fetch.download import Download
from peer.front.routes import InvalidNamespace
from peer.rate_limit import RateLimiter
from peer.swarm.actions import Send
from peer.swarm.bans import BanList
from peer.swarm.bits import bits_of
from peer.swarm.choker import UPLOAD_SLOTS, Choker
from peer.swarm.fetch import SwarmFetch
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.link_guard import LinkGuard
from peer.upstream.client import UpstreamError, UpstreamRefusal
from pieces.partial import PartialBlob
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

log = logging.getLogger("pollen.swarm")

ACCESS_REFRESH = DEFAULT_TTL * 0.75  # re-send Access before the peer's grant runs out
CONNECT_TIMEOUT = 5.0
FORGET_PERIOD = 30.0  # sweep per-digest state of blobs neither held nor fetched


class PeerUpstream(Protocol):
    """The swarm's narrow view of the fetch side (peer/fetch/coordinator.py)."""

    async def join_for_peer(
        self,
        digest: str,
        namespace: str | None,
        name: str,
        headers: Mapping[str, str],
        auth_key: str | None,
    ) -> Download:
        """The upstream download of a blob this node owns, for a peer's Want."""
        ...

    def busy(self) -> bool:
        """Is this node fetching from an upstream now?"""
        ...


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
        download_limit: RateLimiter | None = None,  # shared with the upstream's downloads
        peer_encryption: bool = False,
        *,
        upstream: PeerUpstream,
        rng: random.Random | None = None,
    ) -> None:
        self.node_id = node_id
        self.membership = membership
        self.store = store
        self.access = access
        self.token = token
        self.peer_encryption = peer_encryption  # seal every frame of every link
        self.link_guard = LinkGuard()  # bounds what strangers can open on the peer port
        self.piece_size = piece_size
        self.upstream = upstream
        self.rng = rng if rng is not None else random.Random()
        self.access_refresh = ACCESS_REFRESH
        self.links: dict[bytes, PeerLink] = {}
        self.digests: dict[str, DigestState] = {}
        self.bans = BanList()
        self.choker = Choker(self.rng, trio.current_time())
        self.counters = SwarmCounters()
        self._connecting: dict[bytes, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        self._uploads = trio.Semaphore(UPLOAD_SLOTS)
        self.upload_limit = RateLimiter(upload_rate)
        self.download_limit = download_limit or RateLimiter(download_rate)

    # ---- running -------------------------------------------------------------------------

    async def run(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._timers)
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
            if self.is_banned(link.peer_id):
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
            if link.peer_id not in self.links:  # its last link: the peer is gone for now
                self.choker.lost(link.peer_id)
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
        if self.is_banned(peer_id):
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
            self.bans.unreachable(peer_id, trio.current_time())
            raise LinkClosed(f"cannot reach {member.address}: {exc}") from exc
        finally:
            del self._connecting[peer_id]
            done.set()
        assert self._nursery is not None
        self._nursery.start_soon(self._adopt, link)
        await trio.lowlevel.checkpoint()
        self.links[peer_id] = link
        link.post(sync.full_state(self.membership, reply=False))
        return link

    def start_soon(self, task: Callable[[Any], Awaitable[None]], arg: Any) -> None:
        """Run `task(arg)` in the swarm's nursery; a failure is logged, never ends the node."""
        assert self._nursery is not None

        async def guarded() -> None:
            try:
                await task(arg)
            except Exception:
                log.exception("swarm task %s failed", getattr(task, "__name__", task))

        self._nursery.start_soon(guarded)

    async def _sync_loop(self) -> None:
        """Push-pull full membership state with one random member, periodically."""
        while True:
            await trio.sleep(sync.SYNC_PERIOD * self.rng.uniform(0.8, 1.2))
            members = [m.node_id for m in self.membership.alive()]
            if not members:
                continue
            try:
                link = await self.link_to(self.rng.choice(members))
                link.post(sync.full_state(self.membership, reply=False))
            except LinkClosed as exc:
                log.debug("membership sync failed: %s", exc)

    async def _timers(self) -> None:
        """The node-level deadlines of the pure parts: rechoke, ban expiry, the idle sweep."""
        next_forget = trio.current_time() + FORGET_PERIOD
        while True:
            deadlines = [self.choker.next_deadline(), next_forget]
            if (ban_end := self.bans.next_deadline()) is not None:
                deadlines.append(ban_end)
            await trio.sleep_until(min(deadlines))
            now = trio.current_time()
            if now >= self.choker.next_deadline():
                self._post_all(self.choker.rechoke(now))
            self.bans.expire(now)
            if now >= next_forget:
                self.forget_idle_digests()
                next_forget = now + FORGET_PERIOD

    def _post_all(self, sends: list[Send]) -> None:
        for send in sends:
            if (link := self.links.get(send.peer)) is not None:
                link.post(send.event)

    # ---- routing -------------------------------------------------------------------------

    def owner_candidates(self, digest: str) -> list[bytes]:
        """Live, unbanned members in rendezvous order for `digest` (this node included).

        A banned owner is skipped for good (until its ban ends): otherwise every fetch would
        keep returning to it as the first choice."""
        ids = [n for n in self.membership.alive_ids() if not self.is_banned(n)]
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
            answer = sync.merge(self.membership, event, trio.current_time())
            if answer is not None:
                link.post(answer)
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
        download = await self.upstream.join_for_peer(
            digest, want.namespace, want.repository, headers, credentials_key(headers)
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
        self.listen(state, partial)
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
            state.granted[peer_id] = (trio.current_time() + DEFAULT_TTL, origins)

    def _granted(self, state: DigestState, peer_id: bytes, origins: list[str]) -> bool:
        """Does a grant of `peer_id` cover the blob as private to `origins` (its current
        origins, which the caller has read)?"""
        grant = state.granted.get(peer_id)
        if grant is None:
            return False
        until, granted_for = grant
        return until > trio.current_time() and not granted_for.isdisjoint(origins)

    def listen(self, state: DigestState, partial: PartialBlob) -> None:
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
            # (A fetching node's Have messages come from its picker, piece by piece.)

        partial.piece_listeners.append(on_pieces)

    def _peers_for(self, digest: str, asker: bytes) -> list[tuple[bytes, str, int]]:
        state = self.digests.get(digest)
        if state is None:
            return []
        out = []
        for peer_id in state.interested | (state.fetch.linked if state.fetch else set()):
            member = self.membership.members.get(peer_id)
            if peer_id != asker and member is not None and member.status is not Status.DEAD:
                out.append((peer_id, member.address[0], member.address[1]))
        self.rng.shuffle(out)
        return out[:32]

    # ---- uploads -------------------------------------------------------------------------

    async def _serve_request(self, link: PeerLink, request: Request) -> None:
        if not self.choker.request(link.peer_id, trio.current_time()):
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
            return bits_of(partial.piece_hashes, partial.layout.count)
        size = self.store.blob_size(digest)
        if size is None:
            return None
        count = -(-size // self.piece_size)
        return bits_of(range(count), count)

    # ---- bans ----------------------------------------------------------------------------

    def is_banned(self, peer_id: bytes) -> bool:
        return self.bans.is_banned(peer_id, trio.current_time())

    async def ban(self, peer_id: bytes, reason: str) -> None:
        self.bans.ban(peer_id, trio.current_time())
        self.counters.bans += 1
        log.warning(
            "banned peer %s for %.0fs: %s", peer_id.hex()[:12], self.bans.ban_seconds, reason
        )
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


def _refused(digest: str, refusal: UpstreamRefusal) -> Refused:
    return Refused(digest, refusal.status, dict(refusal.headers), refusal.body)
