"""One blob filled from the swarm on a node that does not own it: the trio side of the picker.

Events from links (PieceMeta, Have, Bitfield, Choke, Reject, Piece, a link lost) go into the
blob's `PiecePicker` at once, from the link's read loop, without awaiting anything; the fetch's
own task wakes, asks the picker for Requests and posts them (posting never blocks, so no other
task can change the picker between a decision and its send), then sleeps until something
changes or the earliest deadline: the picker's endgame, the next PeersRequest, a stall report.
Pieces are verified (xxh3-128) and written here; the sha256 of the whole blob at the end.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from peer.access.policy import CACHED_ELSEWHERE_HEADER
from peer.fetch.download import Download
from peer.swarm.actions import Send
from peer.swarm.bits import bits_of
from peer.swarm.blame import Suspect
from peer.swarm.errors import OwnedHere, OwnerUnavailable
from peer.swarm.held_probe import (
    HELD_ASK_TIMEOUT,
    HELD_PROBE_TIMEOUT,
    HeldProbe,
    fetches_from,
)
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.owner_change import leaves_owner, stalled
from peer.swarm.picker import PiecePicker
from peer.upstream.errors import UpstreamError
from pieces.descriptors import Repository
from pieces.layout import DEFAULT_PIECE_SIZE, PieceLayout, least_piece_size
from pieces.partial import PartialBlob, SizeRefused, StoreError
from wire.events import (
    NOT_HELD_HEADER,
    Access,
    Bitfield,
    Event,
    FileRange,
    Have,
    Invite,
    Peers,
    PeersRequest,
    Piece,
    PieceMeta,
    Refused,
    Reject,
    Request,
    Want,
)

if TYPE_CHECKING:
    from peer.swarm.digest_state import DigestState
    from peer.swarm.swarm import Swarm

log = logging.getLogger("pollen.swarm")

# Peers a fetch links to besides the owner: half the live cluster, at least MIN_PEERS and at
# most MAX_PEERS (`peers_to_link`). Simulator, last host / T_min, mean of seeds 0-3: 16 hosts 1.16
# with 8 (1.20 with 6 or 12, 1.21 with 24); 50 hosts 1.26 with 8, 1.23 with 12, 1.21 with 24;
# 100 hosts 1.29 with 8, 1.27 with 16, 1.25 with 24 or 32, 1.26 with 48. More links carry more
# Haves per piece (CPU), so no more than that.
MIN_PEERS, MAX_PEERS = 8, 32
# Peers a fetch takes pieces from while this node fetches from the registry: every flow into
# the node's downlink gets a like share, and the registry's flows are the ones the swarm waits
# for; but an owner that takes its other blobs from too few peers finishes last. (Simulator,
# 16 hosts: the owners last at 1.25-1.36 x T_min with 2, the last host 1.17-1.19 x with 4;
# 8 hosts 1.10-1.16 with 4, 1.12-1.36 with 2; 100 hosts about even.) Since a large blob comes
# from the registry on several flows (peer/fetch/chunks.py, whole_flows), 8: with 4 the
# owners' other blobs lagged where the swarm's uplinks, not the registry, are the bound
# (uneven links, seeds 1-4: 1.29, 1.29, 1.29, 1.27 with 4, 1.19, 1.17, 1.18, 1.17 with 8).
PEERS_WHILE_OWNING = 8
# An owner of several blobs takes its other blobs from as many. From 2026-11-30 it took them
# from 2 peers per blob: under BBR, a peer's piece into its downlink crawled on the testbed
# with that peer's Requests for the owner's first copies queued behind it (docs/issue10/
# HISTORY.md, "An owner of several blobs"). Since the peer links run CUBIC (thirty-sixth
# session) the testbed shows no gain from the 2 (owners fixed, alternating, 2 against 8: an
# owner of two of 3 layers 1.073, 1.078 against 1.075, 1.074 x the payload bound; one blob at
# a time, an owner of 112 + 56 MiB 1.125, 1.113 against 1.106, 1.105; 16 hosts 1.116, 1.118
# against 1.116, 1.116), and in the simulator an owner of two of 4 layers starved with it (its
# downlink half idle for 70 s, pieces askable): 16 hosts mean 1.130 with 2 against 1.112,
# uneven links 1.185 against 1.174 (docs/issue10/s38/).


def _layout_of(meta: PieceMeta | Refused | None) -> PieceLayout | None:
    """The layout an owner's answer gives (None: no PieceMeta, or no piece size)."""
    if not isinstance(meta, PieceMeta) or meta.piece_size <= 0:
        return None
    return PieceLayout(meta.size, meta.piece_size)


def peers_while_owning(upstream_blobs: int) -> int | None:
    """The peers a fetch may take pieces from while this node fetches `upstream_blobs` blobs
    from the registry (None: as many as it links to)."""
    return PEERS_WHILE_OWNING if upstream_blobs > 0 else None


META_TIMEOUT = 30.0
DRAIN_STALL = 5.0  # a new owner stops taking pieces from peers after this long without one
# A new owner asks the upstream for the pieces no peer has announced this long after it took
# over (those whose hash is unknown at once): the survivors link to it and send Bitfields.
UNHELD_GRACE = 2.0
PEERS_PERIOD = 2.0  # ask the owner for peers (and fresh hashes) this often
LINK_DIALS_AT_ONCE = 4  # members of an owner's answer dialled at once
# Pieces up to this size (every piece the rule cuts) are hashed and written on the event loop:
# on this 2-core VM the hop to a worker thread and back costs about a millisecond of CPU,
# more than the work for a small piece (xxh3 and a page-cache copy, ~0.1 ms at 256 KiB), and a
# quarter of the work for a 4 MiB one (xxh3, the copy and the blob's sha256, ~3-4 ms: that long
# the event loop waits, where a host with cores to spare ran it beside the loop).
# `python -m bench.swarm_loopback --nodes 8` (512 KiB pieces): 6.93, 7.36 CPU-s per GiB
# delivered with a thread per piece, 5.47, 5.16 inline; last node 15.1, 16.0 s vs 12.8, 11.7.
# At 4 MiB pieces (`--pollen-args '--pieces-per-blob 32'`, 2026-12-03, alternating): 3.40,
# 3.11, 3.22, 3.35, 3.03, 3.04 inline against 3.39, 3.52, 3.62, 3.37, 3.66, 3.25 with a thread
# per piece; last node 8.0 s against 8.7 on average. Larger pieces (`--piece-size` up to
# 16 MiB) still go to a thread.
INLINE_WRITE = DEFAULT_PIECE_SIZE
STALL_REPORT = 10.0  # log what the fetch waits for after this long without a piece


class NotHeld(Exception):
    """The node asked with a held-only Want neither holds the blob nor fetches it from the
    upstream; it fetches it from `fetches_from` (if from anyone)."""

    def __init__(self, fetches_from: bytes | None) -> None:
        super().__init__("neither held nor fetched from the upstream there")
        self.fetches_from = fetches_from


def byte_runs(
    pieces: set[int], missing: list[tuple[int, int]], layout: PieceLayout
) -> list[tuple[int, int]]:
    """The parts of the `missing` byte runs [start, end) that lie in `pieces`, adjacent parts
    merged: what to ask the upstream for those pieces (a run may start inside a piece, where
    an earlier stream stopped)."""
    runs: list[tuple[int, int]] = []
    for start, end in missing:
        for index in range(layout.index_of(start), layout.index_of(end - 1) + 1):
            if index not in pieces:
                continue
            piece_start = layout.start(index)
            part = (max(start, piece_start), min(end, piece_start + layout.length(index)))
            if runs and runs[-1][1] == part[0]:
                runs[-1] = (runs[-1][0], part[1])
            else:
                runs.append(part)
    return runs


def peers_to_link(members: int) -> int:
    """Peers a fetch links to besides the owner, in a cluster of `members` live nodes."""
    return max(MIN_PEERS, min(MAX_PEERS, members // 2))


@dataclass(eq=False)
class SwarmFetch:
    """One blob being filled from the swarm on a non-owner node."""

    swarm: Swarm
    state: DigestState
    download: Download
    headers: dict[str, str]
    owner: bytes | None = None
    # For peers' Wants that found nothing here: only from a node that holds the blob or
    # fetches it from the upstream (held-only Wants), else the caller fetches it upstream.
    from_holders: bool = False
    partial: PartialBlob | None = None
    picker: PiecePicker | None = None
    # peer -> when our client's credentials (Access) last went to it
    access_sent: dict[bytes, float] = field(default_factory=dict)
    hashes: dict[int, bytes] = field(default_factory=dict)  # the owner's, per piece
    # Who gave each of `hashes`, and whether it said it held the verified blob (blame.py).
    hash_givers: dict[int, tuple[bytes, bool]] = field(default_factory=dict)
    failure: Exception | None = None  # a store error while writing a piece: ends the fetch
    # The peers whose piece failed its hash: left out of this fetch, judged once the blob's
    # sha256 has spoken (blame.py).
    suspects: dict[bytes, Suspect] = field(default_factory=dict)
    took_from_peers: bool = False  # a piece from a peer was stored (its sha256 judges them)
    # The one member every piece stored by this fetch came from, with a hash it gave saying
    # it held the verified blob (None: no piece yet; False: more than that).
    sole_voucher: bytes | bool | None = None
    pieces_stored: int = 0
    _meta: PieceMeta | Refused | None = None
    _owner_hashes: set[int] = field(default_factory=set)  # pieces the current owner hashed
    _hash_change_told: bool = False  # an owner's changed hash was logged (once per fetch)
    # The owner's Have/Bitfield offers that came before the picker (they follow its PieceMeta
    # at once, before `_want` has read it): given to the picker when it is made.
    _early: dict[bytes, set[int]] = field(default_factory=dict)
    _changed: trio.Event = field(default_factory=trio.Event)
    _owner_lost: bool = False
    _stalled: set[bytes] = field(default_factory=set)  # owners left for sending no piece
    _invited: set[PeerLink] = field(default_factory=set)  # links the owner may push on
    _exchanging: bool = False  # taking pieces from `owner`'s swarm (its PieceMeta is in)
    _scheduling: bool = False  # the exchange or the drain runs: peers' events schedule at once
    _asleep_until: float | None = None  # the fetch's task waits for a change until then
    _linking: bool = False  # a task links to the peers of an owner's Peers answer
    _linking_scope: trio.CancelScope | None = None  # ... to cancel when the owner changes
    _peers_next: tuple[bytes, Peers] | None = None  # the latest answer (and its sender) meanwhile

    @property
    def digest(self) -> str:
        return self.download.digest

    def takes_from(self, peer: bytes) -> bool:
        """Is `peer` among those this fetch exchanges pieces with (`linked`, without a copy:
        asked per Have)?"""
        return self.picker is not None and self.picker.has_peer(peer)

    @property
    def linked(self) -> set[bytes]:
        """The peers this fetch exchanges pieces with (the picker's: none before it exists)."""
        return set(self.picker.peers) if self.picker is not None else set()

    def asking(self) -> set[bytes]:
        """The peers holding requests of this fetch."""
        return self.picker.asking() if self.picker is not None else set()

    async def run(self) -> None:
        await self.swarm.view_settled()
        while True:
            try:
                await self._find_owner()
            except OwnerUnavailable:
                if self.partial is not None and self.linked:
                    # We own it now (the owner died) or cannot reach one: take from the
                    # peers first what they hold, so the upstream only sends what is missing.
                    await self._drain_peers(self.partial)
                raise
            partial = self.partial
            assert partial is not None
            if self._done(partial):
                break
            await self._exchange(partial)
            self._raise_failure()
            if self._done(partial):
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
            len(self.linked),
            trio.current_time() - self.download.started,
        )

    def _done(self, partial: PartialBlob) -> bool:
        return len(partial.piece_hashes) == partial.layout.count

    # ---- finding the owner ---------------------------------------------------------------

    @property
    def fetching_from(self) -> bytes | None:
        """The owner whose swarm this fetch takes pieces from now, if any."""
        return self.owner if self._exchanging else None

    async def _find_owner(self) -> None:
        swarm = self.swarm
        skipped = 0
        candidates = swarm.owner_candidates(self.digest)
        if self.from_holders:
            others = [c for c in candidates if c != swarm.node_id]
            if self.partial is None and await self._held_next(others):
                return
            raise OwnedHere("no other node holds it or fetches it from the upstream")
        for position, candidate in enumerate(candidates):
            if candidate == swarm.node_id:
                if not skipped:
                    if self.partial is None and await self._held_next(candidates[position + 1 :]):
                        return
                    raise OwnedHere("this node is the owner")
                break
            if swarm.bans.is_unreachable(candidate, trio.current_time()) or (
                candidate in self._stalled
            ):
                skipped += 1
                continue
            # Set before asking: PieceMeta updates may follow the first answer at once.
            self._set_owner(candidate)
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
        # knows, so this is a fallback (another node may be fetching the same blob); but we are
        # the first reachable, and the nodes that cannot reach them either ask us.
        swarm.counters.upstream_fallbacks += 1
        log.warning(
            "no owner of %s reachable (%d tried): falling back to the upstream",
            self.digest,
            skipped,
        )
        raise OwnedHere("no owner ahead of this node reachable")

    async def _held_next(self, later: list[bytes]) -> bool:
        """As the blob's owner, before fetching it from the upstream: ask the next nodes in
        rendezvous order whether they hold it or fetch it from the upstream now (a node that
        joined and ranks first would fetch it again). True when one does and is our owner."""
        swarm = self.swarm
        probe = HeldProbe(swarm.node_id, later)
        with trio.move_on_after(HELD_PROBE_TIMEOUT):
            while (candidate := probe.next()) is not None:
                if swarm.bans.is_unreachable(candidate, trio.current_time()):
                    continue
                self._set_owner(candidate)
                try:
                    with trio.fail_after(HELD_ASK_TIMEOUT):
                        link = await swarm.link_to(candidate)
                        await self._want(link, held_only=True)
                except (LinkClosed, trio.TooSlowError) as exc:
                    log.debug("%s: no answer from %s: %r", self.digest, candidate.hex()[:12], exc)
                    continue
                except NotHeld as exc:
                    probe.refused(exc.fetches_from)
                    continue
                self._owner_lost = False
                log.info("%s: held by %s", self.digest, candidate.hex()[:12])
                return True
        self._set_owner(None)
        return False

    async def _want(self, link: PeerLink, held_only: bool = False) -> None:
        self._meta = None
        self._owner_hashes = set()
        # The hashes of the owner asked before are its word, not this one's: only those of
        # pieces stored here stay (a lying owner's, kept past it, would fail every honest
        # peer's true bytes and get it banned, the next owner's included).
        stored = self.partial.piece_hashes if self.partial is not None else {}
        self.hashes = {i: h for i, h in self.hashes.items() if i in stored}
        self.hash_givers = {i: g for i, g in self.hash_givers.items() if i in stored}
        if self.picker is not None:
            self.picker.forget_hashes(self.hashes)
        download = self.download
        auth = self.headers.get("authorization")
        await link.send(Want(self.digest, download.namespace, download.name, auth, held_only))
        with trio.move_on_after(META_TIMEOUT):
            while self._meta is None:
                if link.closed:
                    raise LinkClosed("owner closed the link")
                await self._wait_change(trio.current_time() + 1.0)
        meta = self._meta
        if meta is None:
            raise LinkClosed("owner did not answer in time")
        if isinstance(meta, Refused):
            if held_only:
                # Whatever the refusal (not held; or held, but not for our client: its
                # registry decides), we fetch it ourselves; only "not held" names a source.
                raise NotHeld(fetches_from(meta.headers.get(NOT_HELD_HEADER, "")))
            if meta.headers.get(CACHED_ELSEWHERE_HEADER):
                # The owner holds it from other registries than ours: our client's registry
                # must show the bytes itself (our upstream fetch, with our client's credentials).
                raise OwnerUnavailable("the owner holds it from another registry")
            # Whatever the owner says its registry answered (401, 404, 502, ...), our client
            # gets our own upstream's answer: an owner is a member, perhaps a liar, and its
            # status, headers and body would reach the client as the registry's (a forged
            # WWW-Authenticate realm collects the client's registry login; a false 404 or 502
            # fails every pull of the blobs it owns). One more upstream request per refusal.
            raise OwnerUnavailable(f"the owner refused it ({meta.status}): asking the upstream")
        least = least_piece_size(self.swarm.store.piece_size)
        if meta.piece_size < least:
            # No node cuts pieces so small (a liar's choice): every piece is state kept here
            # and a Request to finish, a million for a 1 MiB blob in pieces of one byte.
            raise OwnerUnavailable(
                f"the owner cuts the blob into pieces of {meta.piece_size} bytes, under the "
                f"least any node uses ({least})"
            )
        if self.partial is None:
            # Private before any client or peer can see a byte: to the registries the owner
            # got it from, and (a peer may add origins, never remove them) to the one our
            # client named with credentials.
            origins = list(meta.origins)
            registry_url = self.swarm.access.registry_of(download.namespace)
            if auth is not None:
                origins.append(registry_url)
            # The owner's size is checked against what our client's repository's manifests
            # say (the owner's bytes stand for that repository's: the sha256 holds them to it),
            # not against a manifest of another repository or registry, perhaps one a client
            # named or pushed to.
            repository = Repository(registry_url, download.name)
            try:
                partial = await self.swarm.store.open_partial(
                    self.digest, meta.size, meta.piece_size, origins=origins, repository=repository
                )
            except SizeRefused as exc:
                # A liar, or an owner whose download in flight came from another repository
                # or registry: not our client's failure (a 502), the registry's bytes are there.
                log.info("%s: leaving owner %s: %s", self.digest, link.peer_id.hex()[:12], exc)
                raise OwnerUnavailable(
                    "the owner's size disagrees with the manifests of our client's repository"
                ) from exc
            self.partial = partial
            self.picker = PiecePicker(
                self.digest,
                partial.layout,
                random.Random(self.swarm.rng.getrandbits(64)),
                have=partial.piece_hashes,
            )
            for peer_id, indices in self._early.items():
                self.picker.bitfield(peer_id, indices)
            self._early.clear()
            download.opened(partial)
            self.swarm.listen(self.state, partial)
        elif self.partial.layout.size != meta.size:
            raise UpstreamError(f"owner {link.peer_id.hex()[:12]}", "owners disagree on the size")
        elif self.partial.layout.piece_size != meta.piece_size:
            # A new owner whose pieces are cut otherwise (another --piece-size, or a partial
            # resumed in an older layout): its hashes would fail every piece the peers send,
            # and we would ban them. The upstream it is, for what is missing.
            raise OwnerUnavailable("the new owner cuts the blob into other pieces")
        self._owner_meta(link.peer_id, self._owner_hashes)
        partial = self.partial
        if partial.piece_hashes:
            # What we hold already (resumed, or taken from peers before this owner): its
            # offers go to pieces we lack, not to ones we would never ask for.
            link.post(Bitfield(self.digest, bits_of(partial.piece_hashes, partial.layout.count)))
        lacking = partial.layout.count - len(partial.piece_hashes)
        if lacking and link not in self._invited:
            # Its first copies may come unasked (owner.py): our Requests would reach it
            # through its downlink, which the registry's flows fill while it fetches. Once
            # per link, for what we lack: all a lying owner can push us beyond our needs.
            self._invited.add(link)
            link.post(Invite(self.digest, lacking))

    def _take_owner_hashes(self, owner: bytes, meta: PieceMeta) -> list[int]:
        """Keep the owner's hashes of `meta` that are this blob's: of the layout in effect
        (the partial's, else the first answer's), for its pieces only, and never one that
        differs from a hash already given (the owner is a member, perhaps a liar: indices
        past the blob would grow the table with every update, and a changed hash would fail
        an honest peer's true bytes and get it banned). The indices kept, in order."""
        if self.partial is not None:
            layout: PieceLayout | None = self.partial.layout
        else:
            layout = _layout_of(self._meta if isinstance(self._meta, PieceMeta) else meta)
        if layout is None or (meta.size, meta.piece_size) != (layout.size, layout.piece_size):
            return []  # another layout: not ours (`_want` refuses such an owner)
        taken: list[int] = []
        changed = 0
        for index, value in meta.hashes.items():
            if not 0 <= index < layout.count:
                continue
            known = self.hashes.setdefault(index, value)
            if known != value:
                changed += 1
                continue
            self.hash_givers.setdefault(index, (owner, meta.verified))
            taken.append(index)
        self._owner_hashes.update(taken)
        if changed and not self._hash_change_told:
            self._hash_change_told = True  # once per fetch: the owner chooses how often
            log.warning(
                "%s: owner %s changed the hashes of %d pieces it had given: kept the first",
                self.digest,
                owner.hex()[:12],
                changed,
            )
        return taken

    def _owner_meta(self, owner: bytes, indices: Iterable[int]) -> None:
        """The owner's hashes: those pieces may be fetched (from whoever offers them; the
        owner offers its own with Have, a few at a time)."""
        picker = self.picker
        assert picker is not None
        picker.hashes(indices)
        self._add_peer(owner)

    def _add_peer(self, peer_id: bytes) -> None:
        if self.picker is not None and peer_id not in self.suspects:
            self.picker.add_peer(peer_id)

    # ---- exchanging pieces ---------------------------------------------------------------

    async def _exchange(self, partial: PartialBlob) -> None:
        self._scheduling = self._exchanging = True
        try:
            await self._exchange_loop(partial)
        finally:
            self._scheduling = self._exchanging = False

    async def _exchange_loop(self, partial: PartialBlob) -> None:
        swarm = self.swarm
        assert self.owner is not None
        owner_link = swarm.links.get(self.owner)
        if owner_link is not None:
            self._ask_peers(owner_link)
        now = trio.current_time()
        next_peers_request = now + PEERS_PERIOD
        last_progress, progress = now, len(partial.piece_hashes)
        stored_at = now  # a piece last stored (the stall report moves last_progress)
        while not self._done(partial) and not self._owner_lost:
            self._raise_failure()
            self._schedule()
            now = trio.current_time()
            if len(partial.piece_hashes) != progress:
                last_progress, progress = now, len(partial.piece_hashes)
                stored_at = now
            elif now - last_progress > STALL_REPORT:
                self._log_stall(partial)
                last_progress = now
                assert self.picker is not None
                owner_link = swarm.links.get(self.owner)
                if not self.picker.inflight and owner_link is not None:
                    # Nothing asked, nothing arriving: ask the owner again. It answers with
                    # the hashes and tells us again what it offers, so an offer lost on
                    # the way (whatever lost it) cannot stall a pull for good.
                    self._want_again(owner_link)
            if now >= next_peers_request:
                owner_link = swarm.links.get(self.owner)
                heard_at = swarm.heard_at(self.owner)
                if leaves_owner(
                    owner=self.owner,
                    first=swarm.owner_candidates(self.digest)[0],
                    linked=owner_link is not None and not owner_link.closed,
                    heard_at=heard_at if heard_at is not None else now,
                    progress_at=stored_at,
                    now=now,
                ):
                    # Gone, buried by gossip and silent, or no piece in a long time (a liar
                    # that talks, perhaps): the next owner, or the upstream.
                    if stalled(stored_at, now):
                        log.warning(
                            "%s: no piece for %.0fs with owner %s: leaving it",
                            self.digest,
                            now - stored_at,
                            self.owner.hex()[:12],
                        )
                        self._stalled.add(self.owner)
                    self._owner_lost = True
                    break
                assert owner_link is not None
                self._ask_peers(owner_link)
                assert self.picker is not None
                if self.picker.hashes_missing():
                    # Ask again for a fresh PieceMeta: cheap, and it heals a lost update.
                    self._want_again(owner_link)
                next_peers_request = now + PEERS_PERIOD
            await self._wait_change(
                self._deadline(min(next_peers_request, last_progress + STALL_REPORT), now)
            )

    def _ask_peers(self, owner_link: PeerLink) -> None:
        """Ask the owner for the blob's peers; for a private blob our client's credentials go
        first when due (the owner lists them only to a peer it has a grant for: the grant our
        Want made runs out while we take pieces from others)."""
        assert self.owner is not None
        self._send_access({self.owner})
        owner_link.post(PeersRequest(self.digest))

    def _want_again(self, owner_link: PeerLink) -> None:
        download = self.download
        auth = self.headers.get("authorization")
        owner_link.post(Want(self.digest, download.namespace, download.name, auth))

    async def _drain_peers(self, partial: PartialBlob) -> None:
        """Fetch from the linked peers every missing piece one of them holds (and whose hash
        we know); stop when none is left to get or nothing arrives for DRAIN_STALL seconds.

        Meanwhile the upstream sends what no peer can (`_fetch_unheld`): at once the pieces
        whose hash nobody gave us (the dead owner never had them), and UNHELD_GRACE later
        (or when the drain ends) every piece no peer has announced by then: the survivors
        that lost the dead owner link to this node and send their Bitfields within about a
        peers period, and a piece one of them holds is not fetched from the upstream twice.
        """
        picker = self.picker
        assert picker is not None
        handed: set[int] = set()
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:

            def hand_off(pieces: set[int]) -> None:
                taken = picker.elsewhere(pieces)
                if taken:
                    handed.update(taken)
                    runs = byte_runs(taken, partial.missing_runs(), partial.layout)
                    nursery.start_soon(self._fetch_unheld, partial, runs, nursery.cancel_scope)

            hand_off({i for i in picker.unobtainable() if not picker.knows_hash(i)})
            try:
                await self._take_from_peers(partial, hand_off)
                hand_off(picker.unobtainable())
            except Exception as exc:  # raised below, outside the nursery: no exception group
                failure = exc
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        self._raise_failure()  # the upstream's part failed on our side (the disk)
        log.info(
            "took what the peers held of %s beside %d pieces no peer held from the upstream: "
            "%d of %d pieces here",
            self.digest,
            len(handed),
            len(partial.piece_hashes),
            partial.layout.count,
        )

    async def _fetch_unheld(
        self, partial: PartialBlob, runs: list[tuple[int, int]], drain: trio.CancelScope
    ) -> None:
        """The upstream's part of a takeover, beside the peers': waiting for the peers first
        left the registry idle (on the testbed a new owner took 25 s to drain its peers, then
        asked for the 34 MB nobody held). What the upstream fails is asked again by the
        upstream fetch that follows the drain, which reports it; a failure on our side (the
        disk) ends the drain and the fetch."""
        size = sum(end - start for start, end in runs)
        log.info(
            "fetching %d bytes of %s that no peer holds from the upstream, in %d ranges",
            size,
            self.digest,
            len(runs),
        )
        try:
            await self.swarm.upstream.fetch_runs(self.download, dict(self.headers), partial, runs)
        except UpstreamError as exc:
            log.info("%s: the upstream's part failed, asked again later: %s", self.digest, exc)
        except Exception as exc:  # DiskFull, NoRoom, StoreError: raised by `_drain_peers`
            self.failure = exc
            drain.cancel()

    async def _take_from_peers(
        self, partial: PartialBlob, hand_off: Callable[[set[int]], None]
    ) -> None:
        self._scheduling = True
        try:
            await self._drain_loop(partial, hand_off)
        finally:
            self._scheduling = False

    async def _drain_loop(self, partial: PartialBlob, hand_off: Callable[[set[int]], None]) -> None:
        """The drain's loop; UNHELD_GRACE after it starts, what no peer holds then goes to
        `hand_off` (the upstream)."""
        picker = self.picker
        assert picker is not None
        start = trio.current_time()
        grace_at: float | None = start + UNHELD_GRACE
        last_progress, progress = start, len(partial.piece_hashes)
        while not self._done(partial):
            self._raise_failure()
            now = trio.current_time()
            if grace_at is not None and now >= grace_at:
                hand_off(picker.unobtainable())
                grace_at = None
            if not picker.obtainable():
                break
            if len(partial.piece_hashes) != progress:
                last_progress, progress = now, len(partial.piece_hashes)
            elif now - last_progress > DRAIN_STALL:
                break
            self._schedule()
            deadline = last_progress + DRAIN_STALL + 0.01
            if grace_at is not None:
                deadline = min(deadline, grace_at)
            await self._wait_change(self._deadline(deadline, now))

    def _deadline(self, other: float, now: float) -> float:
        """The earlier of `other` and the picker's next wake (the fetch just scheduled)."""
        wake = self.picker.wake_at(now) if self.picker is not None else None
        return other if wake is None else min(other, wake)

    def _schedule(self) -> None:
        """Ask the picker for Requests and post them (never blocks: nothing can change the
        picker or the links between its decision and the sends)."""
        picker = self.picker
        if picker is None:
            return
        # While this node fetches a blob from the upstream (it owns it), it takes pieces from
        # few peers at a time: every TCP flow into its link gets a like share, and the
        # upstream flow is the one the whole swarm waits for. Not for a blob it prefetches
        # ahead of its client (Download.ahead_of_client): that one keeps few registry flows
        # (chunks.UNREAD_SHARE) and holds nothing back, since its own client, reading another
        # blob, waited on it (in the simulator, one blob at a time, an owner of two such
        # blobs ended 6-10 s after the others).
        picker.source_limit = peers_while_owning(self.swarm.upstream.blobs_wanted_now())
        sends = picker.schedule(trio.current_time())
        if sends:
            self._send_access({s.peer for s in sends if isinstance(s.event, Request)})
            self._post(sends)

    def _post(self, sends: list[Send]) -> None:
        """Post the picker's messages, each peer's together (one write when they go at once)."""
        batches: dict[PeerLink, list[Event]] = {}
        requests: dict[PeerLink, int] = {}
        for send in sends:
            link = self.swarm.links.get(send.peer)
            if link is None or link.closed:
                # Gone since the picker heard of it: its requests are free again.
                self._lost(send.peer)
                continue
            event = send.event
            if isinstance(event, Request):
                if link.request_room() - requests.get(link, 0) <= 0:
                    # Other fetches fill this link's requests: asked again at a later schedule.
                    if self.picker is not None:
                        self.picker.unsent(send.peer, event.index)
                    continue
                requests[link] = requests.get(link, 0) + 1
            batches.setdefault(link, []).append(event)
        for link, events in batches.items():
            if requests.get(link) and (told := self.swarm.inflow_before_requests(link.peer_id)):
                events.insert(0, told)  # the uploader ranks our link by it (inflow.py)
            link.post_many(events)

    def _send_access(self, peers: set[bytes]) -> None:
        """Before the first Request for a private blob's pieces to each peer, pass the
        client's credentials on, so the peer can check them, and again every ACCESS_REFRESH
        seconds: a peer's grant lasts DEFAULT_TTL, and a long transfer must not run into
        a refusal. Posted before the Requests, so it arrives first."""
        auth = self.headers.get("authorization")
        if auth is None or not self.swarm.store.is_private(self.digest):
            return
        download = self.download
        access = Access(self.digest, download.namespace, download.name, auth)
        now = trio.current_time()
        for peer_id in peers:
            sent = self.access_sent.get(peer_id)
            if sent is not None and now - sent < self.swarm.access_refresh:
                continue
            link = self.swarm.links.get(peer_id)
            if link is not None and not link.closed:
                link.post(access)
                self.access_sent[peer_id] = now

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def _log_stall(self, partial: PartialBlob) -> None:
        picker = self.picker
        assert picker is not None
        missing = sorted(picker.missing)
        log.warning(
            "no progress on %s for %.0fs: %d pieces missing %s, in flight %s, peers %s",
            self.digest,
            STALL_REPORT,
            len(missing),
            missing[:8],
            {i: [p.hex()[:8] for p in s] for i, s in list(picker.inflight.items())[:8]},
            {p.hex()[:8]: len(picker.available(p)) for p in picker.peers},
        )

    async def _wait_change(self, deadline: float) -> None:
        self._asleep_until = deadline
        try:
            with trio.move_on_at(deadline):
                await self._changed.wait()
        finally:
            self._asleep_until = None
        self._changed = trio.Event()

    def _changed_by_peer(self) -> None:
        """A peer's event changed the picker. While the fetch exchanges or drains, schedule
        here, in the read loop (posting never blocks), as the simulator does: waking the
        fetch's task for every piece and Have cost a task switch and a loop for the one
        schedule. The task is woken only for what it alone does: the blob is complete, a
        store error, or the picker's next deadline comes before the task's."""
        if not self._scheduling:
            self._poke()
            return
        self._schedule()
        partial, picker, asleep_until = self.partial, self.picker, self._asleep_until
        if asleep_until is None:
            return  # the task is running: it looks at everything before it sleeps again
        if self.failure is not None or (partial is not None and self._done(partial)):
            self._poke()
        elif picker is not None:
            wake = picker.wake_at(trio.current_time())
            if wake is not None and wake < asleep_until:
                self._poke()

    def _poke(self) -> None:
        self._changed.set()

    # ---- events from links (called from read loops: nothing here may block) --------------

    async def on_event(self, link: PeerLink, event: Event) -> None:
        picker = self.picker
        if link.peer_id in self.suspects and not isinstance(event, PieceMeta | Refused):
            # Left out of this fetch (its piece failed a hash): what it offers or sends for
            # this blob is not taken until the verdict.
            if isinstance(event, Piece):
                self.swarm.counters.wasted_bytes += len(event.data)
                if isinstance(event.data, bytearray):
                    link.protocol.recycle(event.data)
            return
        if isinstance(event, PieceMeta | Refused):
            # From the owner only (it is set before the Want goes out): another member's
            # hashes or origins would let it poison pieces or strip a blob's privacy.
            if link.peer_id == self.owner:
                if isinstance(event, PieceMeta):
                    # Updates may come before `_want` has read the first answer: kept here,
                    # none is lost.
                    taken = self._take_owner_hashes(link.peer_id, event)
                    if picker is not None:
                        self._owner_meta(link.peer_id, taken)
                if self._meta is None:
                    self._meta = event
        elif picker is None:
            if isinstance(event, Have):
                self._keep_early(link.peer_id, [event.index], replace=False)
        elif isinstance(event, Have):
            self._add_peer(link.peer_id)
            picker.have(link.peer_id, event.index)
            partial = self.partial
            if link.peer_id == self.owner and partial and event.index in partial.piece_hashes:
                # The owner offers a piece we hold (it did not know): say so, or the offer
                # holds one of our few offer slots until it goes stale.
                link.post_answer(Have(self.digest, event.index))
            if not picker.could_ask(link.peer_id, event.index):
                # Haves are most of the events: wake the fetch only when this one can give
                # a request now (as the simulator does; it changed nothing else).
                return
        elif isinstance(event, Peers):
            # The owner's answer to our PeersRequest only: it is the blob's tracker, and
            # another member's list would steer our links (a linking task per message).
            if link.peer_id == self.owner:
                self._link_in_turn(link.peer_id, event)
        elif isinstance(event, Piece):
            await self._on_piece(link, event)
        elif isinstance(event, Reject):
            picker.rejected(link.peer_id, event.index)
        self._changed_by_peer()

    def on_bitfield(self, peer_id: bytes, indices: set[int]) -> None:
        """A peer's Bitfield, decoded (`indices_of`)."""
        if peer_id in self.suspects:
            return
        if self.picker is None:
            self._keep_early(peer_id, indices, replace=True)
            return
        self._add_peer(peer_id)
        self.picker.bitfield(peer_id, indices)
        self._changed_by_peer()

    def on_choke(self, peer_id: bytes, choked: bool) -> None:
        if self.picker is not None:
            self.picker.choke(peer_id, choked)
        self._changed_by_peer()

    def piece_count(self) -> int | None:
        """The blob's pieces as this fetch cuts it: its partial's, else the owner's answer's
        (None before either)."""
        if self.partial is not None:
            return self.partial.layout.count
        layout = _layout_of(self._meta)
        return layout.count if layout is not None else None

    def _keep_early(self, peer_id: bytes, indices: Iterable[int], *, replace: bool) -> None:
        """Keep the owner's offers until the picker exists (see `_early`): only the owner's
        (nobody else has been told of us yet), only after its PieceMeta (its offers follow
        it), only indices of that blob (a Have per index: never more than were sent)."""
        count = self.piece_count()
        if peer_id != self.owner or count is None:
            return
        kept = self._early.setdefault(peer_id, set())
        if replace:
            kept.clear()
        kept.update(i for i in indices if 0 <= i < count)

    def link_lost(self, peer_id: bytes, last: bool = True) -> None:
        """A link to `peer_id` closed; `last`: no other link to it runs."""
        if not last:
            # What we asked of it may have gone on the closed link: asked again if need be
            # (a copy that still comes is a duplicate); what it holds and its owner role stay.
            if self.picker is not None:
                self.picker.requests_lost(peer_id)
            self._poke()
            return
        self._lost(peer_id)
        if peer_id == self.owner:
            self._owner_lost = True
        self._poke()

    def _lost(self, peer_id: bytes) -> None:
        self.access_sent.pop(peer_id, None)  # a new link starts without our credentials
        if self.picker is not None:
            self.picker.lost(peer_id)

    def _set_owner(self, owner: bytes | None) -> None:
        """Ask `owner` for the blob from now on. The linking of an earlier owner's answer
        stops: a lying owner's list of members that never answer would hold the next one's."""
        if owner != self.owner and self._linking_scope is not None:
            self._linking_scope.cancel()
        self.owner = owner
        self.state.wanted_from = owner

    def _link_in_turn(self, sender: bytes, event: Peers) -> None:
        """Link to the peers of the owner's answer, in a task (connecting may take seconds:
        not in the read loop), one at a time: of the answers that come while one is linked,
        only the latest waits, and only while its sender is the owner. The owner is a member
        like any other and may lie: with a task per answer, each dialling its list (a
        handshake's time-out per peer that never answers), an owner that sent Peers without
        end grew the node's memory without bound (a probe of a real node, 2026-12-04: 49 to
        628 MiB in 55 s)."""
        if self._linking:
            self._peers_next = (sender, event)
            return
        self._linking = True
        self.swarm.start_soon(self._link_answers, (sender, event))

    async def _link_answers(self, first: tuple[bytes, Peers]) -> None:
        try:
            answer: tuple[bytes, Peers] | None = first
            while answer is not None:
                sender, event = answer
                if sender == self.owner:
                    with trio.CancelScope() as self._linking_scope:
                        await self._link_peers(event)
                answer, self._peers_next = self._peers_next, None
        finally:
            self._linking = False
            self._linking_scope = None
            self._peers_next = None

    async def _link_peers(self, event: Peers) -> None:
        """Link to the peers the owner listed (up to `peers_to_link`), LINK_DIALS_AT_ONCE at a
        time: dialled one by one, each member listed that never answered held the rest back
        a handshake's time-out (10 s). Members noted unreachable are not dialled."""
        swarm = self.swarm
        if self.partial is None:
            return
        limit = peers_to_link(len(swarm.membership.alive_ids()))
        now = trio.current_time()
        waiting = [
            peer_id
            for peer_id, _host, _port in event.peers
            if peer_id != swarm.node_id
            and not swarm.is_banned(peer_id)
            and not swarm.bans.is_unreachable(peer_id, now)
        ]
        waiting.reverse()  # taken from the end: the owner's order
        while waiting:
            room = limit + 1 - len(self.linked)
            wave: list[bytes] = []
            while waiting and len(wave) < min(room, LINK_DIALS_AT_ONCE):
                peer_id = waiting.pop()
                if peer_id not in self.linked and peer_id not in wave:
                    wave.append(peer_id)
            if not wave:
                break
            async with trio.open_nursery() as dials:
                for peer_id in wave:
                    dials.start_soon(self._link_peer, peer_id, limit)
        self._poke()

    async def _link_peer(self, peer_id: bytes, limit: int) -> None:
        try:
            link = await self.swarm.link_to(peer_id)
        except LinkClosed:
            return
        partial = self.partial
        if partial is None or len(self.linked) >= limit + 1 or peer_id in self.linked:
            return  # the fetch ended, or others linked meanwhile
        self._add_peer(peer_id)
        self.state.bitfield_sent.add(peer_id)
        # A private blob's: our client's credentials first, so that the peer, once it
        # checked them, answers with its own Bitfield (it says nothing to a member that
        # has shown none: which private blobs it holds is not a member's to learn).
        self._send_access({peer_id})
        link.post(Bitfield(self.digest, bits_of(partial.piece_hashes, partial.layout.count)))

    async def _on_piece(self, link: PeerLink, piece: Piece) -> None:
        try:
            await self._store_piece(link, piece)
        finally:
            if isinstance(piece.data, bytearray):
                link.protocol.recycle(piece.data)  # written (or dropped): reuse the buffer

    async def _store_piece(self, link: PeerLink, piece: Piece) -> None:
        swarm = self.swarm
        partial, picker = self.partial, self.picker
        if isinstance(piece.data, FileRange):  # only ever sent, never decoded
            return
        if partial is None or picker is None:
            swarm.counters.wasted_bytes += len(piece.data)
            return
        data = memoryview(piece.data)
        if not picker.received(link.peer_id, piece.index, trio.current_time()):
            # A duplicate from the endgame, or a piece we no longer need.
            swarm.counters.wasted_bytes += len(data)
            return
        if len(data) != partial.layout.length(piece.index):
            # Cut to another piece size (a node configured differently): not usable here.
            picker.store_failed(piece.index)
            swarm.counters.wasted_bytes += len(data)
            return
        # Read together, before any await: an owner change meanwhile replaces both.
        expected = self.hashes.get(piece.index)
        giver, vouched = self.hash_givers.get(piece.index, (None, False))
        if expected is None:
            # Its hash went with the owner that gave it (a new owner's answer is awaited):
            # nothing to check it against, and nobody's fault.
            picker.store_failed(piece.index)
            swarm.counters.wasted_bytes += len(data)
            return
        completed: list[int] | None = None
        try:
            swarm.store.ensure_room(partial, len(data))
            async with partial.write_lock:
                # Checked and written in one call: the piece is hashed once. A small piece
                # here on the event loop, a large one in a worker thread (see INLINE_WRITE).
                if len(data) <= INLINE_WRITE:
                    completed = partial.write_piece_sync(piece.index, data, expected)
                else:
                    completed = await trio.to_thread.run_sync(
                        partial.write_piece_sync, piece.index, data, expected
                    )
        except StoreError as exc:
            # The disk, not the peer: the fetch fails (its clients get 507 or 500), the link
            # stays. Raised from the exchange loop, which the read loop must not be.
            picker.store_failed(piece.index)
            self.failure = exc
            self._poke()
            return
        if completed is None:
            picker.bad_piece(link.peer_id, piece.index)
            swarm.counters.bad_pieces += 1
            self._lost(link.peer_id)
            if link.peer_id == giver:
                # Its own bytes failed its own hash: nobody else to blame.
                await swarm.ban(
                    link.peer_id, f"piece {piece.index} of {self.digest} failed its own hash"
                )
            else:
                # The sender or the owner lied: the verified blob may tell (blame.py).
                self.suspects[link.peer_id] = Suspect(
                    piece.index, partial.layout.piece_size, expected, giver, vouched
                )
            return
        self.took_from_peers = True
        self.pieces_stored += 1
        if self.sole_voucher is None and vouched and giver == link.peer_id:
            self.sole_voucher = link.peer_id
        elif self.sole_voucher != link.peer_id or not vouched or giver != link.peer_id:
            self.sole_voucher = False
        swarm.counters.bytes_from_peers += len(data)
        swarm.counters.pieces_from_peers += 1
        await swarm.download_limit.consume(len(data))
        self.download.received_from_peers(len(data))
        partial.announce(completed)
        self._post(picker.stored(piece.index, owner=self.owner))
