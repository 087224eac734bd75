"""The swarm: links to other nodes, the owner's side of a blob, and the piece exchange.

Who does what for one blob:
- The *owner* (first in rendezvous order among live members) alone fetches it from the
  upstream. Other nodes send it a `Want` (with the client's Authorization, used for that fetch
  only); it answers with `PieceMeta` (size, piece size, hashes of the pieces it has) and sends
  more `PieceMeta` as pieces arrive, so the swarm starts before the owner has the whole blob.
  It offers its pieces with `Have`, a few per peer, each piece once before any goes out twice
  (`seeding.py`), so the owner's uplink carries first copies and the peers trade the rest.
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

import collections
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from peer.access.auth_gate import DEFAULT_TTL
from peer.access.policy import AccessPolicy
from peer.cluster import sync
from peer.cluster.gossip import update_out
from peer.cluster.membership import Membership, Status, Update
from peer.cluster.rendezvous import cluster_uplink, owner_order
from peer.fetch.download import Download
from peer.log_throttle import LogThrottle
from peer.rate_limit import RateLimiter
from peer.sources import source_of
from peer.swarm import congestion
from peer.swarm.actions import Send
from peer.swarm.bans import BanList
from peer.swarm.bits import bits_of, indices_of
from peer.swarm.blame import author_of_failure, liar
from peer.swarm.choker import Choker
from peer.swarm.digest_state import DigestState
from peer.swarm.errors import OwnerUnavailable
from peer.swarm.fetch import SwarmFetch
from peer.swarm.grants import Grants
from peer.swarm.inflow import RECEIVING_GAP, InflowReports
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.link_guard import LinkGuard
from peer.swarm.owner import OwnerSide, PeerUpstream
from peer.swarm.pacing import upload_pace
from peer.swarm.recent_pieces import RecentPieces
from peer.swarm.seeding import first_copies_pending
from peer.swarm.uploads import Uploads
from peer.swarm.warming import Warming
from pieces.layout import PieceLayout
from pieces.partial import DigestMismatch, PartialBlob, piece_hash
from pieces.store import Store
from wire.events import (
    Access,
    Bitfield,
    Cancel,
    Choke,
    Event,
    FileRange,
    Have,
    Inflow,
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
    Warm,
    Warmed,
)
from wire.identity import NodeIdentity
from wire.names import MAX_AUTHORIZATION, address_text, is_authorization
from wire.protocol import Role

log = logging.getLogger("pollen.swarm")

ACCESS_REFRESH = DEFAULT_TTL * 0.75  # re-send Access before the peer's grant runs out
CONNECT_TIMEOUT = 5.0
REFUSALS_LOG_PERIOD = 10.0  # at most one line a period about refused incoming handshakes
FORGET_PERIOD = 30.0  # sweep per-digest state of blobs neither held nor fetched
# Wants of one member answered at once (each a task, a digest's state and perhaps a registry
# download): past this, a Want is refused with 503 and the asker fetches the blob itself. An
# honest node asks one owner for the blobs it fetches at once, a few images' layers at most;
# a member's 5,000 Wants for random digests started 5,000 tasks and 2,000 registry GETs.
WANTS_PER_PEER = 256
JOIN_POLL = 0.1  # how often a joining node looks for its first member to sync with
JOIN_SYNC_RETRY = 1.0  # ... and asks another when the one asked did not answer


@dataclass
class SwarmCounters:
    bytes_from_peers: int = 0
    bytes_to_peers: int = 0
    pieces_from_peers: int = 0
    pieces_to_peers: int = 0
    pieces_pushed: int = 0  # of those, first copies this owner sent unasked (invited)
    bad_pieces: int = 0
    # Owners' piece hashes that the verified blob failed (blame.py: a lying owner, or one a
    # registry fed wrong bytes); blobs from peers that failed their sha256 (then taken from
    # the registry for a while). Nobody is banned for either: neither proves who lied.
    false_hashes: int = 0
    blobs_distrusted: int = 0
    bans: int = 0
    upstream_fallbacks: int = 0
    uploads_cancelled: int = 0  # queued pieces the requester cancelled before they went out
    wasted_bytes: int = 0  # piece bytes received that were not needed (duplicates, late)
    links_refused: int = 0


class Swarm:
    def __init__(
        self,
        identity: NodeIdentity,
        membership: Membership,
        store: Store,
        access: AccessPolicy,
        token: bytes | None,
        upload_rate: int | None = None,
        download_rate: int | None = None,
        download_limit: RateLimiter | None = None,  # shared with the upstream's downloads
        peer_encryption: bool = False,
        *,
        upstream: PeerUpstream,
        congestion_control: str = congestion.SYSTEM,  # the links' (congestion.py)
        rng: random.Random | None = None,
    ) -> None:
        self.identity = identity
        self.node_id = identity.node_id
        self.membership = membership
        self.store = store
        self.access = access
        self.token = token
        self.peer_encryption = peer_encryption  # seal every frame of every link
        # The congestion control the links' sockets are given (congestion.py).
        self.applied_congestion_control = congestion_control
        self._congestion_told = LogThrottle(REFUSALS_LOG_PERIOD)
        self.link_guard = LinkGuard()  # bounds what strangers can open on the peer port
        # The live members' addresses (as sources), for the guard's share of handshakes that
        # strangers cannot take: refreshed every timer tick (`_timers`), not per connection,
        # which a flood of them would make cost a walk of the members each.
        self._member_sources: frozenset[str] = frozenset()
        self._refusals_told = LogThrottle(REFUSALS_LOG_PERIOD)
        self.upstream = upstream
        self.rng = rng if rng is not None else random.Random()
        self.access_refresh = ACCESS_REFRESH
        self.links: dict[bytes, PeerLink] = {}
        self._open_links: dict[bytes, set[PeerLink]] = {}  # every running link, per peer
        self.digests: dict[str, DigestState] = {}
        self._wants_answering: collections.Counter[bytes] = collections.Counter()  # per peer
        # (peer, digest, kind) -> the newest such message waiting for the peer's Access check
        self._after_grant: dict[tuple[bytes, str, type], tuple[PeerLink, PeersRequest | Bitfield]]
        self._after_grant = {}
        self.bans = BanList()
        self.choker = Choker(self.rng, trio.current_time())
        self.counters = SwarmCounters()
        self._connecting: dict[bytes, trio.Event] = {}
        self._nursery: trio.Nursery | None = None
        # Set by the first full membership sync (at once on a node with nobody to join):
        # fetches wait for it, a little (`view_settled`).
        self.view_ready = trio.Event()
        self._started_at = trio.current_time()
        # --upload-rate; without it a slow host paces its uploads (pacing.py, `_cut_for_cluster`).
        self._upload_rate = upload_rate
        self.upload_limit = RateLimiter(upload_rate)
        self.download_limit = download_limit or RateLimiter(download_rate)
        self.grants = Grants(store, access)
        self.recent_pieces = RecentPieces()
        # Telling the peers where our requests wait how many transfers come in (inflow.py).
        self.inflow = InflowReports()
        self._inflow_wake = trio.Event()
        self._inflow_due = 0.0
        self.owner = OwnerSide(
            store,
            access,
            upstream,
            self.grants,
            self.links,
            membership,
            self.rng,
            self._piece_size_of,
            self.recent_pieces,
            self.fetch_from_holders,
            self._push,
            lambda peer, digest, index: self.uploads.pushing(peer, digest, index),
        )
        self.warming = Warming()  # preheat: Warm requests both ways
        self.uploads = Uploads(
            store,
            self.choker,
            self.grants,
            self.counters,
            self.upload_limit,
            self._piece_size_of,
            self._seeding,
            self.recent_pieces.stored_at,
            self._holds_piece,
            self._piece_sent,
        )

    def _piece_sent(self, peer: bytes, digest: str, index: int) -> None:
        """A piece went out whole to `peer`: for the seeding of a blob this node owns, the
        peer holds it from now on, as its Have would say. Its Have comes behind whatever the
        peer is sending us on that link, and an owner whose downlink the registry fills takes
        seconds per piece from a peer: on the testbed (8 hosts, one owning two of the three
        layers) its offers waited for those Haves and its uplink ran at 3-35 % while the last
        35 MB of the registry's bytes came in, and every other host waited (seeding.py)."""
        state = self.digests.get(digest)
        if state is not None and state.seeder is not None:
            self.owner.peer_has(state, peer, (index,))

    def _push(self, peer: bytes, digest: str, index: int, meta: PieceMeta | None) -> bool:
        """Send `index` of `digest` to `peer` unasked, on a link where it invited that (the
        owner's first copies, owner.py); False: no link to it has room for it.

        The peer invites on the link its Want went on, which need not be the one this node's
        PieceMeta updates take (two nodes that dial each other at once keep both links): on
        another, `meta` (the piece's hash) goes first, or the piece would come before the
        hash and be thrown away."""
        uploads = self.uploads
        for link in self._open_links.get(peer, ()):
            if uploads.claim_push(link, digest, index):
                assert self._nursery is not None
                try:
                    self._nursery.start_soon(self._guarded_push, link, digest, index)
                except RuntimeError:
                    # The node is stopping: its nursery takes no new task (a piece stored by
                    # a download that outlives it brought this offer).
                    uploads.unclaim_push(link, digest, index)
                    return False
                if meta is not None and link is not self.links.get(peer):
                    link.post(meta)
                return True
        return False

    async def _guarded_push(self, link: PeerLink, digest: str, index: int) -> None:
        try:
            await self.uploads.push(link, digest, index)
        except Exception:
            log.exception("error pushing a piece to %s", link.peer_id.hex()[:12])
            await link.close()

    def _seeding(self, digest: str) -> bool:
        """Does this node still hand out the first copies of `digest` (its owner, seeding)?"""
        state = self.digests.get(digest)
        return state is not None and first_copies_pending(state.seeder)

    # ---- running -------------------------------------------------------------------------

    async def run(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None]
    ) -> None:
        self._started_at = trio.current_time()
        if not sync.joins_others(self.membership):
            self.view_ready.set()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(trio.serve_listeners, self._accept, listeners)
            nursery.start_soon(self._sync_loop)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._inflow_loop)
            task_status.started()

    async def _accept(self, stream: trio.SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:  # already gone
            await stream.aclose()
            return
        member = source_of(address)[0] in self._member_sources
        if not self.link_guard.admit(address, member):
            # Over the per-address or handshake limit: closed before a byte is read. Not
            # logged one by one: a flood would flood the log too.
            self.counters.links_refused += 1
            await stream.aclose()
            return
        try:
            self._set_congestion_control(stream, self.applied_congestion_control)
            try:
                link = PeerLink(
                    stream,
                    self.identity,
                    self.token,
                    role=Role.RESPONDER,
                    address=address_text(*self.membership.address),
                    encrypt=self.peer_encryption,
                )
                link.protocol.piece_length = self.piece_length
                await link.handshake()
            except LinkClosed as exc:
                self.counters.links_refused += 1
                untold = self._refusals_told.event(trio.current_time())
                if untold is not None:  # a stranger can make these at will: one a period
                    more = f" ({untold} more refused since the last such line)" if untold else ""
                    log.warning("refused an incoming peer from %s: %s%s", address, exc, more)
                return
            finally:
                self.link_guard.handshake_over(address, member)
            if self.is_banned(link.peer_id):
                await link.close()
                return
            self._track(link)
            await self._adopt(link)
        finally:
            self.link_guard.release(address)

    def use_congestion_control(self, name: str) -> None:
        """Give the open links (and the next ones) the congestion control `name`."""
        if name == self.applied_congestion_control:
            return
        self.applied_congestion_control = name
        try:
            for_open_links = congestion.for_open_links(name)
        except OSError as exc:
            log.warning("the open peer links keep their congestion control: %s", exc)
            return
        for links in self._open_links.values():
            for link in links:
                if isinstance(link.stream, trio.SocketStream):
                    self._set_congestion_control(link.stream, for_open_links)

    def _set_congestion_control(self, stream: trio.SocketStream, name: str) -> None:
        try:
            congestion.set_on(stream.socket, name)
        except OSError as exc:  # it was checked at start-up: the host's settings changed
            untold = self._congestion_told.event(trio.current_time())
            if untold is not None:
                more = f" ({untold} more links since the last such line)" if untold else ""
                log.warning(
                    "a peer link keeps its congestion control: %s refused (%s)%s",
                    name,
                    exc,
                    more,
                )

    def _track(self, link: PeerLink) -> None:
        # Two nodes may connect to each other at the same moment: both links stay usable
        # (answers come back on the link a request went out on); new requests use the newest.
        self.links[link.peer_id] = link
        self._open_links.setdefault(link.peer_id, set()).add(link)
        link.on_receiving = self._inflow_changed

    async def _adopt(self, link: PeerLink) -> None:
        """Run a tracked link until it ends, then forget it."""
        try:
            await link.run(self._on_event)
        except Exception:
            # A bug in handling one peer must not take the node down: drop that link.
            log.exception("error on the link to %s; closing it", link.peer_id.hex()[:12])
            await link.close()
        finally:
            self._link_closed(link)

    def _link_closed(self, link: PeerLink) -> None:
        peer = link.peer_id
        open_links = self._open_links.get(peer, set())
        open_links.discard(link)
        if not open_links:
            self._open_links.pop(peer, None)
        if self.links.get(peer) is link:
            if open_links:  # another link to the peer runs: new requests go there
                self.links[peer] = next(iter(open_links))
            else:
                del self.links[peer]
        self.warming.link_closed(link)
        if _arriving(link, trio.current_time()):
            self._inflow_changed()  # counted as receiving: one transfer fewer
        # Told again on the next link (the peer may forget what it heard with this one).
        self.inflow.forget(peer)
        last = peer not in self.links  # its last link: the peer is gone for now
        for state in self.digests.values():
            if state.fetch is not None:
                state.fetch.link_lost(peer, last)
        if not last:
            return
        self.choker.lost(peer)
        self.uploads.lanes.report(peer, None)
        for state in self.digests.values():
            self.owner.peer_lost(state, peer)
            state.bitfield_sent.discard(peer)
        self.grants.forget_peer(peer)

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
        # Read once: gossip rewrites a member's address in place, and the Hello must name the
        # address this connection went to (else a lie that lands while it connects, or is
        # refuted meanwhile, makes the Hello name another).
        address = member.address
        stream: trio.SocketStream | None = None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(*address)
            self._set_congestion_control(stream, self.applied_congestion_control)
            # As the initiator we name the node we mean to reach: the handshake refuses any
            # other node that answers at that address, before we prove anything to it.
            link = PeerLink(
                stream,
                self.identity,
                self.token,
                role=Role.INITIATOR,
                address=address_text(*address),
                peer_id=peer_id,
                encrypt=self.peer_encryption,
            )
            link.protocol.piece_length = self.piece_length
            await link.handshake()
        except (OSError, ValueError, trio.TooSlowError) as exc:  # ValueError: a bad host
            self.bans.unreachable(peer_id, trio.current_time())
            raise LinkClosed(f"cannot reach {address}: {exc}") from exc
        except LinkClosed:
            # Reached, but no handshake (it timed out, or the member refused): noted as for
            # a dial that failed, so that the next owner's answer does not dial it again at
            # once (a review's find: only a failed connect was noted).
            self.bans.unreachable(peer_id, trio.current_time())
            raise
        except BaseException:
            # Cancelled while it connected or shook hands (the node stops, a caller gave up):
            # the socket is closed now, not when the garbage collector comes to it (its
            # ResourceWarning failed 3 runs of 6 of a test that stops its nodes as they link,
            # tests/peer/swarm/test_pacing.py's reload test).
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
        finally:
            del self._connecting[peer_id]
            done.set()
        if self.is_banned(peer_id):
            # Banned while the handshake ran: the ban closed every link it knew, not this one.
            await link.close()
            raise LinkClosed("peer is banned")
        assert self._nursery is not None
        # Tracked before this returns, not when the task starts: what applies to every open
        # link meanwhile (a congestion control switch) must reach this one too.
        self._track(link)
        self._nursery.start_soon(self._adopt, link)
        await trio.lowlevel.checkpoint()
        self.links[peer_id] = link
        link.post_many(sync.full_state(self.membership, reply=False))
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
        """Push-pull full membership state with one random member: at join, then
        periodically."""
        with trio.move_on_after(sync.SYNC_PERIOD):
            await self._join_sync()
        while True:
            await trio.sleep(sync.SYNC_PERIOD * self.rng.uniform(0.8, 1.2))
            await self._push_state([m.node_id for m in self.membership.alive()])

    async def _join_sync(self) -> None:
        """Sync with a member as soon as gossip knows one, again each JOIN_SYNC_RETRY until
        one answers (`view_ready`)."""
        while not self.view_ready.is_set():
            if not sync.joins_others(self.membership):
                # The --join names resolved to this node alone: the first pod of a DaemonSet.
                self.view_ready.set()
            elif await self._push_state(sync.join_sync_peers(self.membership)):
                with trio.move_on_after(JOIN_SYNC_RETRY):
                    await self.view_ready.wait()
            else:
                await trio.sleep(JOIN_POLL)

    async def _push_state(self, members: list[bytes]) -> bool:
        """Our full membership state to one of `members` at random (its answer is its own);
        False when there is nobody to send it to."""
        if not members:
            return False
        peer = self.rng.choice(members)
        try:
            link = self.links.get(peer)
            if link is not None and not link.closed:
                link.post_many(sync.full_state(self.membership, reply=False))
            else:
                await self.link_to(peer)  # a new link starts with our state
        except LinkClosed as exc:
            log.debug("membership sync failed: %s", exc)
        return True

    async def view_settled(self) -> None:
        """Wait for the first full membership sync, until JOIN_VIEW_WAIT after the start at
        most (a fetch that began at once would see the seed alone)."""
        left = self._started_at + sync.JOIN_VIEW_WAIT - trio.current_time()
        if left > 0 and not self.view_ready.is_set():
            with trio.move_on_after(left):
                await self.view_ready.wait()

    def _cut_for_cluster(self) -> None:
        """Blobs this node cuts (as owner, or fetching from the registry alone) are cut for
        the cluster's uplink, as every member sees it (peer/cluster/rendezvous.py), which also
        says whether this host paces its uploads (pacing.py); and the live members' addresses,
        for the link guard."""
        self.store.uplink = cluster_uplink(self.membership.declared_uplinks())
        self._pace_uploads()
        self._member_sources = frozenset(
            source_of(m.address[0])[0] for m in self.membership.alive()
        )

    def set_upload_rate(self, rate: int | None) -> None:
        """A new --upload-rate (a reload; None: no cap of the operator's), judged with what
        this node declares now (a reload may change its --uplink too)."""
        self._upload_rate = rate
        self._cut_for_cluster()

    def _pace_uploads(self) -> None:
        """The cap on piece uploads: --upload-rate, or the pace of a slow host (pacing.py)
        for what this node declares and the cluster's uplink as last seen."""
        cap = upload_pace(self._upload_rate, self.membership.capacity, self.store.uplink)
        if cap == self.upload_limit.rate:
            return  # a new bucket would start with a full second's burst
        if self._upload_rate is None and cap is not None:
            log.info(
                "piece uploads paced at %d bytes/s: the declared uplink (%d) is slow beside "
                "the cluster's (%d)",
                cap,
                self.membership.capacity,
                self.store.uplink,
            )
        elif self._upload_rate is None:
            log.info("piece uploads no longer paced")
        self.upload_limit.set_rate(cap)

    async def _timers(self) -> None:
        """The node-level deadlines of the pure parts: rechoke, ban expiry, the idle sweep,
        the cluster's uplink for cutting blobs."""
        self._cut_for_cluster()
        next_forget = trio.current_time() + FORGET_PERIOD
        while True:
            deadlines = [self.choker.next_deadline(), next_forget]
            if (ban_end := self.bans.next_deadline()) is not None:
                deadlines.append(ban_end)
            await trio.sleep_until(min(deadlines))
            now = trio.current_time()
            if now >= self.choker.next_deadline():
                sends = self.choker.rechoke(now, self._owners_fetched_from())
                self._post_all(sends)
                self.owner.choked(self.digests.values(), sends)
            self.owner.tick(self.digests.values())
            self.bans.expire(now)
            self._cut_for_cluster()
            if now >= next_forget:
                self.forget_idle_digests()
                next_forget = now + FORGET_PERIOD

    def _owners_fetched_from(self) -> set[bytes]:
        """The owners whose swarms this node's fetches take pieces from (the choker's first)."""
        owners = (s.fetch.fetching_from for s in self.digests.values() if s.fetch is not None)
        return {owner for owner in owners if owner is not None}

    # ---- how many transfers come in (inflow.py) ----------------------------------------------

    def inflows(self) -> int:
        """Transfers coming into this node's downlink now: links receiving a piece, and
        answers arriving from the upstream."""
        now = trio.current_time()
        receiving = sum(
            _receiving(link, now) for links in self._open_links.values() for link in links
        )
        return receiving + self.upstream.streams()

    def _inflow_changed(self) -> None:
        due = self.inflow.changed(trio.current_time())
        if due is not None:
            self._inflow_due = due
            self._inflow_wake.set()

    async def _inflow_loop(self) -> None:
        while True:
            await self._inflow_wake.wait()
            self._inflow_wake = trio.Event()
            await trio.sleep_until(self._inflow_due)
            inflows = self.inflows()
            for peer in self.inflow.flush(inflows, self._requests_waiting_at()):
                self.links[peer].post(Inflow(inflows))
            # A link whose piece ended just now counted as receiving: if no piece follows,
            # nothing else will say so. Counted again once that is known.
            now = trio.current_time()
            settled = [
                link.piece_done_at + RECEIVING_GAP
                for links in self._open_links.values()
                for link in links
                if _receiving(link, now) and not link.receiving_piece
            ]
            if settled and (due := self.inflow.recount_at(max(settled))) is not None:
                self._inflow_due = due
                self._inflow_wake.set()

    def _requests_waiting_at(self) -> list[bytes]:
        """The peers holding requests of ours that send us no piece now (over an open link:
        one told on a closing link would be taken as told)."""
        asked: set[bytes] = set()
        for state in self.digests.values():
            if state.fetch is not None:
                asked |= state.fetch.asking()
        now = trio.current_time()
        return [
            peer
            for peer in asked
            if (link := self.links.get(peer)) is not None
            and not link.closed
            and not self._sending_to_us(peer, now)
        ]

    def _sending_to_us(self, peer: bytes, now: float) -> bool:
        """Is a piece from `peer` arriving on one of its open links (`_receiving`)?"""
        return any(_receiving(link, now) for link in self._open_links.get(peer, ()))

    def inflow_before_requests(self, peer: bytes) -> Inflow | None:
        """What `peer` must hear before the Requests about to go to it (None: nothing). A
        peer sending us a piece now needs no number yet: it ranks our link only once it
        waits, and a link that stops receiving is a change, told to it then (flush)."""
        if self._sending_to_us(peer, trio.current_time()):
            return None
        inflows = self.inflows()
        return Inflow(inflows) if self.inflow.before_requests(peer, inflows) else None

    def _post_all(self, sends: list[Send]) -> None:
        for send in sends:
            if (link := self.links.get(send.peer)) is not None:
                link.post(send.event)

    # ---- routing -------------------------------------------------------------------------

    def piece_length(self, digest: str, index: int) -> int | None:
        """The length piece `index` of `digest` must have, by the layout of the fetch that
        asks for it (None: no such fetch or piece here; the wire protocol then refuses the
        piece as unrequested, or bounds it by its frame limit alone)."""
        state = self.digests.get(digest)
        partial = None if state is None or state.fetch is None else state.fetch.partial
        if partial is None or not 0 <= index < partial.layout.count:
            return None
        return partial.layout.length(index)

    def heard_at(self, peer_id: bytes) -> float | None:
        """When `peer_id` last sent us anything on any open link (None: no open link). Two
        nodes that connect at once keep both links, and answers come on either."""
        heard = [link.heard_at for link in self._open_links.get(peer_id, ()) if not link.closed]
        return max(heard) if heard else None

    def links_heard(self) -> list[tuple[bytes, float]]:
        """Each linked peer and when it last sent us anything: for gossip, proof it lives."""
        heard = ((peer, self.heard_at(peer)) for peer in list(self._open_links))
        return [(peer, at) for peer, at in heard if at is not None]

    def tell_links(self, update: Update) -> None:
        """Send our own membership update (a refutation) to every linked peer, where gossip's
        datagrams may be lost."""
        event = _membership_word(update)
        for link in list(self.links.values()):
            link.post(event)

    def tell_member(self, update: Update) -> None:
        """Send a membership update (a suspicion) to the member it is about, if linked."""
        link = self.links.get(update.node_id)
        if link is not None:
            link.post(_membership_word(update))

    def owner_candidates(self, digest: str) -> list[bytes]:
        """Live, unbanned members in rendezvous order for `digest` (this node included).

        A banned owner is skipped for good (until its ban ends): otherwise every fetch would
        keep returning to it as the first choice."""
        ids = [n for n in self.membership.alive_ids() if not self.is_banned(n)]
        return owner_order(digest, ids, self.membership.capacities())

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
            state = self.digests.get(event.digest)
            if state is not None and link.peer_id in state.answering:
                return  # answered already (a repeat before its answer was done)
            if self._wants_answering[link.peer_id] >= WANTS_PER_PEER:
                link.post_answer(Refused(event.digest, 503, {}, b"too many Wants at once"))
                return
            self._wants_answering[link.peer_id] += 1
            self._nursery.start_soon(self._guarded, self._serve_want, link, event)
        elif isinstance(event, Request):
            self._nursery.start_soon(self._guarded, self.uploads.serve, link, event)
        elif isinstance(event, Access):
            # Kept (never logged) until the peer's next Request for the blob is checked; only
            # for a blob this node holds, so strangers' digests cost nothing.
            if self.store.has_blob(event.digest) or self.store.partial(event.digest):
                self.grants.remember(link.peer_id, event)
        elif isinstance(event, Warm):
            await self.warming.received(link, event)
        elif isinstance(event, Warmed):
            self.warming.answered(link, event)
        elif isinstance(event, PeersRequest):
            if self.grants.may_know_of(link.peer_id, event.digest):
                self._answer_peers(link, event)
            elif self.grants.has_pending(link.peer_id, event.digest):
                # Its Access came first: checked aside (a registry request), answered then.
                self._once_granted(link, event)
            else:
                # A private blob and no grant: the answer for a blob nobody fetches (who
                # pulls which private image is not a member's to learn).
                link.post_answer(Peers(event.digest, []))
        elif isinstance(event, Members):
            answer = sync.merge(self.membership, event, trio.current_time())
            if answer is not None and not link.backlog:
                # (While something waits for the peer to read, a push gets no answer: the
                # whole table per tiny push, to a member that never reads, grew our memory
                # without bound. An honest peer pushes again within a sync period.)
                link.post_many(answer)
            elif sync.is_full_state(event):
                self.view_ready.set()
        elif isinstance(event, Bitfield):
            await self._on_bitfield(link, event)
        elif isinstance(event, Inflow):
            self.uploads.lanes.report(link.peer_id, event.inflows)
        elif isinstance(event, Choke | Unchoke):
            for state in self.digests.values():
                if state.fetch is not None:
                    state.fetch.on_choke(link.peer_id, isinstance(event, Choke))
        elif isinstance(event, PieceMeta | Refused | Have | Piece | Reject | Peers):
            blob = self.digests.get(event.digest)
            if isinstance(event, Have) and not self._may_offer(blob, link.peer_id):
                return
            if isinstance(event, Have) and blob is not None and blob.seeder is not None:
                self.owner.peer_has(blob, link.peer_id, (event.index,))
            if blob is not None and blob.fetch is not None:
                await blob.fetch.on_event(link, event)
            elif (
                isinstance(event, Have)
                and blob is not None
                and blob.wanted_from == link.peer_id
                and self._holds_piece(event.digest, event.index)
            ):
                # The owner we asked offers a piece of a blob we are done with (or no longer
                # fetch from the swarm): say we hold it, or its offer holds a slot until it
                # goes stale. (Only the owner's: two nodes that both hold a piece must not
                # answer each other's Haves for ever.) An answer: bounded while unread.
                link.post_answer(Have(event.digest, event.index))
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
            state = self.state(want.digest)
            if link.peer_id in state.answering:
                return  # repeated before its answer was done (raced past _on_event's check)
            # Kept in the table while the answer waits (for the registry, say): forgotten
            # meanwhile, the answer's seeder would live outside it, where the peer's Haves,
            # the offers' time-outs and the choker never reach it, and the peer would wait.
            state.answering.add(link.peer_id)
            try:
                await self.owner.answer_want(link, want, state)
            finally:
                state.answering.discard(link.peer_id)
                self._forget_if_idle(want.digest)
        finally:
            self._wants_answering[link.peer_id] -= 1
            if self._wants_answering[link.peer_id] <= 0:
                del self._wants_answering[link.peer_id]

    def listen(self, state: DigestState, partial: PartialBlob) -> None:
        self.owner.listen(state, partial)

    def _piece_size_of(self, digest: str, size: int | None = None) -> int:
        """The piece size `digest` is cut to here: its download's (the owner's layout, or a
        partial resumed with its own), else the one the complete blob was cut to (its
        swarm's owner's, recorded at commit; the rule for its size where none was: `size`,
        when the caller has it already). Hashes, Bitfields and served pieces all follow this
        one answer, as `_held` counts them: the partial open now, not the one this node last
        announced (evicted, its digest fetched again by a client: a review's find)."""
        partial = self.store.partial(digest)
        if partial is not None:
            return partial.layout.piece_size
        if size is None:
            size = self.store.blob_size(digest) or 0
        return self.store.complete_piece_size(digest, size)

    async def _on_bitfield(self, link: PeerLink, event: Bitfield) -> None:
        ours = self._held(event.digest)
        if not self.grants.may_know_of(link.peer_id, event.digest):
            # A private blob, and the peer has no grant: no Bitfield of ours, as for a blob
            # neither held nor fetched (it told any member which private blobs this node's
            # clients pulled). What it holds is taken if our fetch takes its word (our owner:
            # once its seeding is over it answers a Want with a Bitfield; a peer it listed).
            # Its Access, if one came first, is checked aside (a registry request: not on
            # this link's reading task), and the Bitfield answered then.
            state = self.digests.get(event.digest)
            if (
                state is not None
                and state.fetch is not None
                and self._may_offer(state, link.peer_id)
                and (theirs := self._bitfield_indices(event, ours)) is not None
            ):
                state.fetch.on_bitfield(link.peer_id, theirs)
            if self.grants.has_pending(link.peer_id, event.digest):
                self._once_granted(link, event)
            return
        state = self.digests.get(event.digest)
        if state is None:
            if ours is None:
                return  # neither held nor fetched: nothing to say, nothing to keep
            state = self.state(event.digest)  # a blob we hold: the peer may take pieces of it
        if state.fetch is not None or state.seeder is not None:
            theirs = self._bitfield_indices(event, ours)  # decoded once, for picker and seeder
            if theirs is None:
                return  # not this blob's pieces (another cut, or a lie): nothing to answer
            if state.fetch is not None:
                state.fetch.on_bitfield(link.peer_id, theirs)
            if state.seeder is not None:
                self.owner.peer_has(state, link.peer_id, theirs)
        peer = link.peer_id
        if ours is not None and peer not in state.bitfield_sent and peer not in state.interested:
            # (A peer that wants the blob from us as its owner hears what we hold from our
            # seeder's offers, not from a Bitfield.)
            state.bitfield_sent.add(peer)
            link.post(Bitfield(event.digest, bits_of(*ours)))

    def _bitfield_indices(
        self, event: Bitfield, held: tuple[Collection[int], int] | None
    ) -> set[int] | None:
        """The pieces `event` says its sender holds, or None when its length is not that of
        the blob as this node cuts it: as held here (`held`, from `_held`), else as its fetch
        has it (the owner's answer while it waits for one). A member chooses the length: a
        Bitfield of the frame's 60 KB is 480,000 indices to decode and walk on this link's
        read loop, where the blob's own takes a few hundred."""
        if held is not None:
            count: int | None = held[1]
        else:
            state = self.digests.get(event.digest)
            fetch = state.fetch if state is not None else None
            count = fetch.piece_count() if fetch is not None else None
        if count is None or len(event.bits) != (count + 7) // 8:
            return None
        return {i for i in indices_of(event.bits) if i < count}

    def _may_offer(self, blob: DigestState | None, peer: bytes) -> bool:
        """Is `peer`'s word that it has pieces of `blob` taken? For a private blob this node
        fetches, only from the owner, from peers the fetch took in already (those the owner
        listed, those whose Bitfield came with credentials) and from peers with a grant: any
        other member that announced pieces got our Requests and, before them, our client's
        credentials (an Access), for any private blob it named."""
        fetch = blob.fetch if blob is not None else None
        if fetch is None or peer == fetch.owner or fetch.takes_from(peer):
            return True
        return self.grants.may_know_of(peer, fetch.digest)

    def _answer_peers(self, link: PeerLink, event: PeersRequest) -> None:
        peers = self.owner.peers_for(self.digests.get(event.digest), link.peer_id)
        link.post_answer(Peers(event.digest, peers))

    def _once_granted(self, link: PeerLink, event: PeersRequest | Bitfield) -> None:
        """Answer `event` once the peer's Access for its blob is checked. One task per peer,
        blob and kind of message: what comes meanwhile replaces what waits (the newest
        Bitfield says all; one Peers answers every PeersRequest). A task per message let a
        member that sent an Access grow the node's tasks with every message until its
        registry answered."""
        key = (link.peer_id, event.digest, type(event))
        waiting = key in self._after_grant
        self._after_grant[key] = (link, event)
        if not waiting:
            assert self._nursery is not None
            self._nursery.start_soon(self._guarded, self._answer_once_granted, link, event)

    async def _answer_once_granted(self, link: PeerLink, event: PeersRequest | Bitfield) -> None:
        key = (link.peer_id, event.digest, type(event))
        try:
            granted = await self.grants.may_have_pieces(link.peer_id, event.digest)
        finally:
            link, event = self._after_grant.pop(key)  # the newest of its kind
        if link.closed:
            return
        if isinstance(event, PeersRequest):
            if granted:
                self._answer_peers(link, event)
            else:
                link.post_answer(Peers(event.digest, []))
        elif granted:
            await self._on_bitfield(link, event)

    def _holds_piece(self, digest: str, index: int) -> bool:
        held = self._held(digest)
        return held is not None and index in held[0]

    def _held(self, digest: str) -> tuple[Collection[int], int] | None:
        """The pieces of `digest` this node holds, and how many it has: None when it holds
        none (neither a partial nor the blob)."""
        partial = self.store.partial(digest)
        if partial is not None:
            return partial.piece_hashes.keys(), partial.layout.count
        size = self.store.blob_size(digest)
        if size is None:
            return None
        count = PieceLayout(size, self._piece_size_of(digest, size)).count
        return range(count), count

    # ---- bans ----------------------------------------------------------------------------

    def is_banned(self, peer_id: bytes) -> bool:
        return self.bans.is_banned(peer_id, trio.current_time())

    async def ban(self, peer_id: bytes, reason: str) -> None:
        self.bans.ban(peer_id, trio.current_time())
        self.counters.bans += 1
        log.warning(
            "banned peer %s for %.0fs: %s", peer_id.hex()[:12], self.bans.ban_seconds, reason
        )
        # Every link to it: two nodes may hold two (each dialled the other), and one left
        # open went on being read and served.
        for link in list(self._open_links.get(peer_id, ())):
            await link.close()
        self.links.pop(peer_id, None)

    # ---- fetching ------------------------------------------------------------------------

    async def fetch(self, download: Download, headers: Mapping[str, str]) -> None:
        """Fill `download` from the swarm.

        Raises:
            OwnerUnavailable: this node is (now) the owner, or no owner can be reached, or
                the swarm's last copy of the blob failed its sha256 with nobody to blame: the
                caller continues from the upstream with whatever the swarm delivered.
        """
        self._may_ask_peers(download, headers)
        await self._run_fetch(
            SwarmFetch(self, self.state(download.digest), download, dict(headers))
        )

    async def fetch_from_holders(self, download: Download, headers: Mapping[str, str]) -> None:
        """Fill `download` (for peers' Wants that found nothing here) from a node that holds
        the blob or fetches it from the upstream.

        Raises:
            OwnerUnavailable: no node does (or it went away): the caller continues from the
                upstream with whatever arrived.
        """
        self._may_ask_peers(download, headers)
        state = self.state(download.digest)
        await self._run_fetch(SwarmFetch(self, state, download, dict(headers), from_holders=True))

    def _may_ask_peers(self, download: Download, headers: Mapping[str, str]) -> None:
        """Raises OwnerUnavailable (the upstream it is) where the swarm must not be asked."""
        if self.bans.is_distrusted(download.digest, trio.current_time()):
            raise OwnerUnavailable("the swarm's last copy of it failed its sha256")
        authorization = headers.get("authorization")
        if authorization is not None and not is_authorization(authorization):
            # The other nodes refuse what they could not pass to a registry (and close the
            # link that carried it): this client's login is used here alone.
            raise OwnerUnavailable(
                f"the client's Authorization is over {MAX_AUTHORIZATION} characters"
            )

    async def _run_fetch(self, fetch: SwarmFetch) -> None:
        state = fetch.state
        state.fetch = fetch
        try:
            await fetch.run()
        finally:
            state.fetch = None
            self._forget_if_idle(fetch.digest)
            if fetch.took_from_peers or fetch.suspects:
                self._judge_later(fetch)

    def _judge_later(self, fetch: SwarmFetch) -> None:
        """Judge what `fetch` took from peers once its download ends (the upstream may
        finish it): blame.py."""
        if self._nursery is None:
            return
        with contextlib.suppress(RuntimeError):  # the node is stopping: no new task
            self._nursery.start_soon(self._judge, fetch)

    async def _judge(self, fetch: SwarmFetch) -> None:
        download = fetch.download
        await download.done.wait()
        try:
            await self._verdict(fetch)
        except Exception:  # a disk error reading a piece back, say: never the node
            log.exception("judging the peers of %s failed", download.digest)

    async def _verdict(self, fetch: SwarmFetch) -> None:
        download = fetch.download
        partial, digest = download.partial, download.digest
        if isinstance(download.error, DigestMismatch):
            count = partial.layout.count if partial is not None else 0
            author = author_of_failure(fetch.sole_voucher, fetch.pieces_stored, count)
            if author is not None and author != self.node_id:
                await self.ban(author, f"{digest}: all its pieces, 'verified', failed its sha256")
            elif fetch.took_from_peers:
                self.counters.blobs_distrusted += 1
                self.bans.distrust(digest, trio.current_time())
                log.warning(
                    "%s from peers failed its sha256: its next downloads come from the "
                    "upstream for %.0fs",
                    digest,
                    self.bans.ban_seconds,
                )
            return
        if download.error is not None or partial is None or not partial.verified:
            return
        for peer, suspect in fetch.suspects.items():
            true_hash = await trio.to_thread.run_sync(
                self._true_piece_hash, digest, suspect.index, suspect.piece_size
            )
            if true_hash is None:
                continue  # evicted meanwhile: no witness
            culprit, how = liar(peer, suspect, true_hash)
            if culprit is None:
                self.counters.false_hashes += 1
                log.warning("%s: %s; the peer whose piece failed it is cleared", digest, how)
            elif culprit != self.node_id and not self.is_banned(culprit):
                await self.ban(culprit, f"{digest}: {how}")

    def _true_piece_hash(self, digest: str, index: int, piece_size: int) -> bytes | None:
        """The hash of piece `index` of the verified blob `digest` as stored (None: gone)."""
        source = self.store.open_piece_sync(digest, index, piece_size)
        if source is None:
            return None
        fd, offset, length = source
        try:
            return piece_hash(os.pread(fd, length, offset))
        finally:
            os.close(fd)

    def _forget_if_idle(self, digest: str) -> None:
        """Drop what this node keeps about `digest` once it neither holds nor fetches it:
        clients and members can name any digest, and the table must not grow with them."""
        state = self.digests.get(digest)
        if state is None or state.fetch is not None or state.answering:
            return
        if self.store.has_blob(digest) or self.store.partial(digest) is not None:
            return
        del self.digests[digest]
        self.grants.forget_digest(digest)

    def forget_idle_digests(self) -> None:
        """Sweep the table (blobs are evicted without the swarm hearing of it)."""
        for digest in list(self.digests):
            self._forget_if_idle(digest)


def _membership_word(update: Update) -> Members:
    """One membership update on a link, as an answer (`reply`), so that none answers it with
    its whole view."""
    return Members([update_out(update)], reply=True)


def _receiving(link: PeerLink, now: float) -> bool:
    """Does `link` count as receiving: open, and a piece arriving on it?"""
    return not link.closed and _arriving(link, now)


def _arriving(link: PeerLink, now: float) -> bool:
    """Is a piece arriving on `link` (or did one end just now, the next on its way)?"""
    return link.receiving_piece or now - link.piece_done_at < RECEIVING_GAP
