"""One blob on one node: what the node holds of it, and the fetch that fills it.

Mirrors peer/swarm/swarm.py (`SwarmFetch`) and peer/fetch/downloads.py (`_fetch_upstream`),
with a real `PiecePicker` deciding what to ask of whom:

- find the owner: the first live member in rendezvous order; link to it and send a Want; the
  first PieceMeta is the answer (30 s at most, else the next candidate). A candidate whose
  link fails is skipped (and noted unreachable for 5 s). This node first: it owns the blob and
  fetches it from the registry. Every node ahead failed: a fallback, counted, the same way.
- exchange: PeersRequest at once and every 2 s (then also a fresh Want while hashes are
  missing); link to the peers in the answer up to `peers_to_link` (half the cluster, 8 to
  32) and send each our Bitfield; give the picker every event and send what `schedule`
  returns. The owner lost (its link, or another node now first in rendezvous order): find the
  owner again, keeping every peer and request.
- drain: when this node takes over (the owner died), first take from the peers what they hold,
  until nothing is left to get or nothing arrived for 5 s, the registry sending meanwhile the
  pieces whose hash is unknown, and 2 s later (or at the drain's end) those no peer holds;
  then the registry, for the runs of pieces still missing, one request per run, up to
  RANGES_AT_ONCE at once.
"""

from __future__ import annotations

import enum
import functools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from peer.fetch.chunks import (
    CHUNK_WINDOW,
    Chunks,
    chunked,
    first_chunk,
    least_pieces,
    whole_flows,
)
from peer.fetch.upstream_fetch import RANGES_AT_ONCE
from peer.swarm.actions import Send
from peer.swarm.bits import bits_of
from peer.swarm.fetch import (
    DRAIN_STALL,
    META_TIMEOUT,
    PEERS_PERIOD,
    UNHELD_GRACE,
    peers_to_link,
)
from peer.swarm.held_probe import HELD_ASK_TIMEOUT, HELD_PROBE_TIMEOUT, HeldProbe
from peer.swarm.owner_change import leaves_owner, stalled
from peer.swarm.picker import PiecePicker
from peer.swarm.seeding import Seeder
from pieces.layout import PieceLayout
from wire.events import Bitfield, Have, Invite, PeersRequest, Request, Want

if TYPE_CHECKING:
    from bench.simulate.network import Flow
    from bench.simulate.node import SimNode

DRAIN_WAKE = 1.0  # the drain loop looks again at least this often
NAMESPACE, REPOSITORY = "docker.io", "bench/app"


@dataclass(eq=False)
class BlobState:
    """What one node knows of one blob (DigestState and the partial, in the real node)."""

    digest: str
    layout: PieceLayout
    have: set[int] = field(default_factory=set)
    complete: bool = False
    partial: bool = False  # a partial is open: the node answers Bitfields and Wants with it
    interested: dict[bytes, None] = field(default_factory=dict)  # sent us a Want: PieceMeta
    interested_list: list[bytes] = field(default_factory=list)  # the same, to sample from
    invited: dict[bytes, int] = field(default_factory=dict)  # peer -> pieces it lets us push
    bitfield_sent: set[bytes] = field(default_factory=set)
    fetch: SwarmFetch | None = None
    seeder: Seeder | None = None  # this node owns it: its offers to the interested peers
    seed_at: float | None = None  # the seeder's pending timer
    upstream: UpstreamFetch | None = None
    want_waiters: dict[bytes, None] = field(default_factory=dict)  # Wants before the partial
    waiters: list[Callable[[float], None]] = field(default_factory=list)  # clients
    watchers: list[Callable[[], None]] = field(default_factory=list)  # reading clients: a piece
    # As the node's Download: this host's prefetch asked for it, its client asked since. (The
    # node also wants its client reading another blob meanwhile, `DownloadTable.held_back`:
    # a simulated client reads from its first blob to its last without a pause.)
    prefetched: bool = False
    read_by_client: bool = False

    @property
    def ahead_of_client(self) -> bool:
        return self.prefetched and not self.read_by_client

    @property
    def active(self) -> bool:
        """A download is running (the one every client and Want joins)."""
        return self.fetch is not None or self.upstream is not None

    def missing_runs(self) -> list[tuple[int, int]]:
        """Runs [start, end) of missing pieces, in order."""
        return index_runs(set(range(self.layout.count)) - self.have)


class Phase(enum.Enum):
    FINDING = "finding the owner"
    EXCHANGE = "exchanging pieces"
    DRAIN = "taking from peers before the registry"
    ENDED = "ended"


class SwarmFetch:
    def __init__(self, node: SimNode, state: BlobState, from_holders: bool = False) -> None:
        self.node = node
        self.state = state
        self.from_holders = from_holders  # for peers' Wants: a holder, else the registry
        self.queue = node.world.queue
        self.picker = PiecePicker(
            state.digest, state.layout, node.rng, have=state.have, source_limit=node.source_limit
        )
        self.phase = Phase.FINDING
        self.owner: bytes | None = None
        self.meta_pending = False  # a Want went to `owner`; its PieceMeta has not come
        self._candidates: list[bytes] = []
        self._held: HeldProbe | None = None  # whom this owner asks whether they hold it
        self._held_until = 0.0  # ... until then at most
        self._next = 0
        self._skipped = 0
        self._era = 0  # bumped on every phase change and new owner: older timers are void
        self._deadline: float | None = None  # the picker's timer, when one is pending
        self._progress = 0
        self._last_progress = 0.0
        self._stored_at = 0.0  # a piece last stored, or the exchange with this owner began
        self._stalled: set[bytes] = set()  # owners left for sending no piece (never again)
        # peer -> pieces asked of it and not answered (a Piece or a Reject), cancelled or not:
        # the node's link refuses a second Request for one of them (wire/protocol.py), and so
        # does the simulator, loudly, so that a picker that would do it cannot pass here.
        self._open: dict[bytes, set[int]] = {}

    # ---- finding the owner -------------------------------------------------------------------

    def start(self) -> None:
        self.node.after_view(self._find_owner)

    @property
    def fetching_from(self) -> bytes | None:
        """The owner whose swarm this fetch takes pieces from now, if any."""
        return self.owner if self.phase is Phase.EXCHANGE else None

    def _find_owner(self) -> None:
        self.phase = Phase.FINDING
        self._era += 1
        self.meta_pending = False
        self._candidates = self.node.owner_candidates(self.state.digest)
        self._next = 0
        self._skipped = 0
        if not self.from_holders:
            self._try_next()
        elif self.state.partial:
            self._owner_unavailable()
        else:
            own = self.node.node_id
            self._start_held([c for c in self._candidates if c != own])

    def _start_held(self, later: list[bytes]) -> None:
        self._held = HeldProbe(self.node.node_id, later)
        self._held_until = self.queue.now + HELD_PROBE_TIMEOUT
        self._ask_held()

    def _try_next(self) -> None:
        node = self.node
        now = self.queue.now
        while self._next < len(self._candidates):
            candidate = self._candidates[self._next]
            self._next += 1
            if candidate == node.node_id:
                if self._skipped:
                    break
                if self.state.partial:
                    self._owner_unavailable()  # this node is the owner
                else:
                    # The owner asks the next in order whether they hold it already.
                    self._start_held(self._candidates[self._next :])
                return
            if node.bans.is_unreachable(candidate, now) or candidate in self._stalled:
                self._skipped += 1
                continue
            self.owner = candidate  # set before asking: PieceMeta may follow the answer at once
            self._era += 1
            node.link_to(candidate, functools.partial(self._owner_linked, era=self._era))
            return
        # Every node ahead of us failed: a fallback to the registry.
        node.world.stats.upstream_fallbacks += 1
        self._owner_unavailable()

    def _ask_held(self) -> None:
        """A held-only Want to the next node `_held` names; none left: this node owns it."""
        node = self.node
        assert self._held is not None
        while self.queue.now < self._held_until and (candidate := self._held.next()) is not None:
            if node.bans.is_unreachable(candidate, self.queue.now):
                continue
            self.owner = candidate
            self._era += 1
            node.link_to(candidate, functools.partial(self._held_linked, era=self._era))
            return
        self.owner = None
        self._owner_unavailable()

    def _held_linked(self, ok: bool, era: int) -> None:
        if era != self._era or self.phase is not Phase.FINDING:
            return
        if not ok:
            self._ask_held()
            return
        assert self.owner is not None
        self.meta_pending = True
        self.node.send(self.owner, Want(self.state.digest, NAMESPACE, REPOSITORY, None, True))
        self.queue.at(self.queue.now + HELD_ASK_TIMEOUT, self._held_timeout, era)

    def _held_timeout(self, era: int) -> None:
        if era == self._era and self.meta_pending and self.node.alive:
            self.meta_pending = False
            self._ask_held()

    def on_not_held(self, source: bytes, fetches_from: bytes | None) -> None:
        """The answer to a held-only Want: that node neither holds the blob nor fetches it
        from the registry; it fetches it from `fetches_from` (if anyone)."""
        if source == self.owner and self.meta_pending and self.phase is Phase.FINDING:
            assert self._held is not None
            self.meta_pending = False
            self._era += 1
            self._held.refused(fetches_from)
            self._ask_held()

    def _owner_linked(self, ok: bool, era: int) -> None:
        if era != self._era or self.phase is not Phase.FINDING:
            return
        if not ok:
            self._skipped += 1
            self._try_next()
            return
        assert self.owner is not None
        self.meta_pending = True
        self.node.send(self.owner, Want(self.state.digest, NAMESPACE, REPOSITORY, None))
        self.queue.at(self.queue.now + META_TIMEOUT, self._meta_timeout, era)

    def _meta_timeout(self, era: int) -> None:
        if era == self._era and self.meta_pending and self.node.alive:
            self.meta_pending = False
            self._skipped += 1
            self._try_next()

    def on_meta(self, source: bytes, hashes: Iterable[int]) -> None:
        """PieceMeta: taken from the owner only (another node's hashes could poison pieces)."""
        if source != self.owner or self.phase is Phase.ENDED:
            return
        picker = self.picker
        known = list(hashes)
        picker.hashes(known)
        picker.add_peer(source)
        if self.meta_pending:
            self.meta_pending = False
            state = self.state
            if not state.partial:
                self.node.partial_opened(state)
            elif state.have:
                # As the node: what we hold already goes to the owner (its offers skip it).
                self.node.send(
                    source, Bitfield(state.digest, bits_of(state.have, state.layout.count))
                )
            lacking = state.layout.count - len(state.have)
            if lacking and self.node.world.config.pushes:
                # As the node: its first copies may come unasked (peer/swarm/fetch.py).
                self.node.send(source, Invite(state.digest, lacking))
            self._exchange()
        elif any(picker.holders(i) for i in known):
            # Hashes alone give nothing to ask (the owner offers its pieces with Haves) unless
            # a peer already announced one of those pieces.
            self.schedule()

    def _owner_unavailable(self) -> None:
        """This node owns the blob now, or no owner could be reached: the registry it is,
        after what the peers hold (when there are peers to ask)."""
        if self.state.partial and self.picker.peers:
            self._drain()
        else:
            self._to_upstream()

    # ---- the exchange ------------------------------------------------------------------------

    def _exchange(self) -> None:
        self.phase = Phase.EXCHANGE
        self._era += 1
        self._stored_at = self.queue.now
        assert self.owner is not None
        self.node.send(self.owner, PeersRequest(self.state.digest))
        self.queue.at(self.queue.now + PEERS_PERIOD, self._peers_tick, self._era)
        self.schedule()

    def _peers_tick(self, era: int) -> None:
        if era != self._era or self.phase is not Phase.EXCHANGE or not self.node.alive:
            return
        node = self.node
        owner = self.owner
        assert owner is not None
        now = self.queue.now
        if leaves_owner(
            owner=owner,
            first=node.owner_candidates(self.state.digest)[0],
            linked=owner in node.links,
            heard_at=node.heard_at.get(owner, now),
            progress_at=self._stored_at,
            now=now,
        ):
            # Gone, buried by gossip and silent, or no piece in a long time: the next owner.
            if stalled(self._stored_at, now):
                self._stalled.add(owner)
            self._find_owner()
            return
        node.send(owner, PeersRequest(self.state.digest))
        if self.picker.hashes_missing():
            # Ask again for a fresh PieceMeta: cheap, and it heals a lost update.
            node.send(owner, Want(self.state.digest, NAMESPACE, REPOSITORY, None))
        self.queue.at(self.queue.now + PEERS_PERIOD, self._peers_tick, era)

    def on_peers(self, peers: list[tuple[bytes, str, int]]) -> None:
        if self.phase is Phase.ENDED or not self.state.partial:
            return
        self._link_next(iter([p[0] for p in peers]))

    def _link_next(self, peers: Iterator[bytes]) -> None:
        """Link to the peers of a Peers answer one after the other (as the real task does)."""
        node = self.node
        known = set(self.picker.peers)
        limit = peers_to_link(node.live_members())
        for peer in peers:
            if self.phase is Phase.ENDED or len(known) >= limit + 1:
                return
            if peer in known or peer == node.node_id or node.bans.is_banned(peer, self.queue.now):
                continue
            node.link_to(peer, functools.partial(self._peer_linked, peer=peer, rest=peers))
            return

    def _peer_linked(self, ok: bool, peer: bytes, rest: Iterator[bytes]) -> None:
        if ok and self.phase is not Phase.ENDED:
            self.picker.add_peer(peer)
            state = self.state
            state.bitfield_sent.add(peer)
            self.node.send(peer, Bitfield(state.digest, bits_of(state.have, state.layout.count)))
        self._link_next(rest)

    # ---- events for the picker ---------------------------------------------------------------

    def on_bitfield(self, peer: bytes, held: list[int]) -> None:
        self.picker.bitfield(peer, held)
        self.schedule()

    def on_have(self, peer: bytes, index: int) -> None:
        if peer == self.owner and index in self.state.have:
            # As the node: an offer of a piece we hold is answered with our Have.
            self.node.send(peer, Have(self.state.digest, index))
        self.picker.have(peer, index)
        self._maybe_schedule(peer, index)

    def _maybe_schedule(self, peer: bytes, index: int) -> None:
        """`peer` newly holds `index`: schedule only if that could give it a request now
        (`PiecePicker.could_ask`, as the node does). Haves (and the owner's PieceMeta for each
        piece) are most of the events at scale; skipping the schedules that cannot send
        anything changes no decision, only the rng's draws."""
        if not self.picker.could_ask(peer, index):
            self.node.world.stats.schedules_skipped += 1
            return
        self.schedule()

    def on_reject(self, peer: bytes, index: int) -> None:
        self._answered(peer, index)
        self.picker.rejected(peer, index)
        self.schedule()

    def on_choke(self, peer: bytes, choking: bool) -> None:
        if peer not in self.picker.peers:
            return  # the picker ignores it too
        self.picker.choke(peer, choking)
        if not choking:
            self.schedule()

    def on_link_lost(self, peer: bytes) -> None:
        self._open.pop(peer, None)
        self.picker.lost(peer)
        if peer == self.owner:
            if self.phase is Phase.FINDING and self.meta_pending:
                self.meta_pending = False
                self._skipped += 1
                self._try_next()
                return
            if self.phase is Phase.EXCHANGE:
                self._find_owner()
                return
        self.schedule()

    def on_piece(self, peer: bytes, index: int, nbytes: int) -> None:
        node = self.node
        stats = node.world.stats
        self._answered(peer, index)
        if not self.picker.received(peer, index, self.queue.now):
            stats.duplicate_bytes += nbytes  # the endgame's losing copy, or never asked
            self.schedule()
            return
        # Verified and written (no CPU or disk time is modelled).
        self._stored_at = self.queue.now
        stats.bytes_from_peers += nbytes
        stats.pieces_from_peers += 1
        sends = self.picker.stored(index, owner=self.owner)
        interested = self.state.interested
        if interested:  # they hear of it by PieceMeta instead
            sends = [s for s in sends if not (isinstance(s.event, Have) and s.peer in interested)]
        node.send_many(sends)
        node.piece_stored(self.state, index)
        if self.phase is Phase.ENDED:
            return
        self.schedule()
        if self.phase is Phase.DRAIN:
            self._drain_check()

    def schedule(self) -> None:
        if self.phase is not Phase.EXCHANGE and self.phase is not Phase.DRAIN:
            return
        node = self.node
        node.world.stats.schedules += 1
        sends = self.picker.schedule(self.queue.now)
        if sends:
            self._opened(sends)
            node.world.stats.requests += sum(isinstance(s.event, Request) for s in sends)
            node.send_many(node.with_inflow(sends))
        at = self.picker.wake_at(self.queue.now)
        if at is not None and (self._deadline is None or at < self._deadline):
            self._deadline = at
            self.queue.at(at, self._on_deadline, at)

    def _opened(self, sends: list[Send]) -> None:
        for send in sends:
            if isinstance(send.event, Request):
                asked = self._open.setdefault(send.peer, set())
                if send.event.index in asked:
                    raise RuntimeError(
                        f"{self.node.name} asked a peer again for piece {send.event.index} of "
                        f"{self.state.digest} before it answered: the node's link would refuse it"
                    )
                asked.add(send.event.index)

    def _answered(self, peer: bytes, index: int) -> None:
        asked = self._open.get(peer)
        if asked is not None:
            asked.discard(index)

    def _on_deadline(self, at: float) -> None:
        if at != self._deadline or not self.node.alive:
            return
        self._deadline = None
        self.schedule()

    # ---- taking over -------------------------------------------------------------------------

    def _drain(self) -> None:
        self.phase = Phase.DRAIN
        self._era += 1
        # As the node: the registry sends at once the pieces whose hash nobody gave us, and
        # UNHELD_GRACE later (or when the drain ends) those no peer has announced by then.
        picker = self.picker
        self._hand_off({i for i in picker.unobtainable() if not picker.knows_hash(i)})
        self.queue.at(self.queue.now + UNHELD_GRACE, self._grace_over, self._era)
        self._progress = len(self.state.have)
        self._last_progress = self.queue.now
        self.schedule()
        self._drain_check()
        if self.phase is Phase.DRAIN:
            self.queue.at(self.queue.now + DRAIN_WAKE, self._drain_tick, self._era)

    def _hand_off(self, pieces: set[int]) -> None:
        """These pieces come from the registry: beside the one asking already, or a new one."""
        taken = self.picker.elsewhere(pieces)
        if not taken:
            return
        upstream = self.state.upstream
        if upstream is not None:
            upstream.add(index_runs(taken))
        else:
            self.node.start_upstream(self.state, index_runs(taken))

    def _grace_over(self, era: int) -> None:
        if era == self._era and self.phase is Phase.DRAIN and self.node.alive:
            self._hand_off(self.picker.unobtainable())

    def _drain_tick(self, era: int) -> None:
        if era != self._era or self.phase is not Phase.DRAIN or not self.node.alive:
            return
        self.schedule()
        self._drain_check()
        if self.phase is Phase.DRAIN:
            self.queue.at(self.queue.now + DRAIN_WAKE, self._drain_tick, era)

    def _drain_check(self) -> None:
        now = self.queue.now
        if not self.picker.obtainable():
            self._to_upstream()
        elif len(self.state.have) != self._progress:
            self._progress, self._last_progress = len(self.state.have), now
        elif now - self._last_progress > DRAIN_STALL:
            self._to_upstream()

    def _to_upstream(self) -> None:
        if self.phase is Phase.DRAIN:
            self._hand_off(self.picker.unobtainable())
        self.end()
        upstream = self.state.upstream
        if upstream is not None:
            upstream.then_the_rest()  # what no peer held is still coming: the rest after it
        else:
            self.node.start_upstream(self.state)

    def end(self) -> None:
        """The fetch is over (done, or handed to the registry): late pieces are waste."""
        self.phase = Phase.ENDED
        self._era += 1
        if self.state.fetch is self:
            self.state.fetch = None


class UpstreamFetch:
    """The registry's answer to this node: the runs of missing pieces, up to RANGES_AT_ONCE
    requests at once, the longest run first (as the node); the bytes of a run in one flow
    from the origin host, each piece announced as it completes. A large blob fetched whole
    comes in chunks (peer/fetch/chunks.py) when no partial is open yet: the first asked alone,
    then, once its answer starts (the node learns there that the registry honours Range),
    up to `whole_flows` requests at once (more for a larger blob; they open one at a time,
    `Chunks.flows_open`, and past `unread_flows` only when not prefetched ahead of the client
    here: `BlobState.ahead_of_client`), each taking the next chunk in order (a node that took
    a blob over from the swarm resumes its partial in one request)."""

    def __init__(
        self, node: SimNode, state: BlobState, runs: list[tuple[int, int]] | None = None
    ) -> None:
        """Fetch `runs` (piece index runs [start, end); default: every missing piece)."""
        count = state.layout.count
        # The chunks after the first, asked once its answer starts (None: no chunks).
        self._chunks: Chunks | None = None
        self._chunks_asked = False
        if runs is None and not state.partial and chunked(count, state.layout.size):
            now = node.world.queue.now
            # As the node: the first chunk an eighth (the least with credentials that may
            # expire), then the others, with a window only for those (chunks.chunk_window;
            # --tokens: opaque ones).
            least = least_pieces(state.layout.piece_size)
            tokens = node.world.config.tokens
            flows = whole_flows(state.layout.size)
            first = first_chunk(count, least, tokens, flows)
            window = CHUNK_WINDOW if tokens else None
            runs = [first]
            self._chunks = (
                Chunks(count, first[1], least, now, window=window, flows=flows)
                if first[1] < count
                else None
            )
        self.node = node
        self.state = state
        self.runs = _longest_first(state.missing_runs() if runs is None else runs)
        self.open = 0  # requests asked or answering
        self.flows: list[Flow] = []
        self._rest = False  # when these runs are in, fetch what is still missing too

    def add(self, runs: list[tuple[int, int]]) -> None:
        """More runs to fetch, after those waiting (the node's requests for one blob share
        RANGES_AT_ONCE slots, taken in turn)."""
        self.runs.extend(_longest_first(runs))
        self._ask()

    def then_the_rest(self) -> None:
        """The drain is over: after these runs, every piece still missing."""
        self._rest = True

    def start(self) -> None:
        self.node.upstream_started()
        self._ask()

    def _ask(self) -> None:
        if not self.node.alive:
            return
        if not self.runs and not self.open and not self._chunks:
            if self._rest:
                self._rest = False
                self.runs = _longest_first(self.state.missing_runs())
            if not self.runs:
                self.state.upstream = None
                self.node.upstream_ended()
                return
        world = self.node.world
        while True:
            if self.runs and self.open < RANGES_AT_ONCE:
                run = self.runs.popleft()
            elif (
                self._chunks_asked
                and self._chunks
                and self.open
                < self._chunks.flows_open(len(self.state.have), not self.state.ahead_of_client)
            ):
                taken = self._chunks.take(world.queue.now, len(self.state.have))
                if taken is None:
                    self._chunks = None
                    break
                run = taken
            else:
                break
            self.open += 1
            # A new HTTP request: connect and ask, two round trips before the first byte.
            world.queue.at(world.queue.now + 4 * world.latency, self._respond, run)
            world.stats.upstream_requests += 1
            world.stats.last_upstream_request_ms = round(world.queue.now * 1000)

    def _respond(self, run: tuple[int, int]) -> None:
        node = self.node
        if not node.alive:
            return
        if not self.state.partial:
            node.partial_opened(self.state)
        if self._chunks and not self._chunks_asked:
            self._chunks_asked = True
            self._ask()
        world = node.world
        flow = world.network.open(world.origin_host, node.host, _RangeAnswer(self, *run))
        self.flows.append(flow)
        world.upstream_flows.append(flow)
        world.network.wake(flow)

    def client_reads(self) -> None:
        """A client here began to read the blob: the flows kept for it may open."""
        if self._chunks_asked and self._chunks:
            self._ask()

    def piece_arrived(self, index: int) -> None:
        if index not in self.state.have:
            self.node.piece_stored(self.state, index)
            chunks = self._chunks
            if self._chunks_asked and chunks and self.open < chunks.flows:
                self._ask()  # a flow more may open (`Chunks.flows_open`)

    def answered(self, now: float) -> None:
        """A request's last byte came: the next run, or the end."""
        self.open -= 1
        self.node.world.queue.at(now, lambda _arg: self._ask())

    def close(self) -> None:
        for flow in self.flows:
            self.node.world.network.close(flow)


def _longest_first(runs: list[tuple[int, int]]) -> deque[tuple[int, int]]:
    return deque(sorted(runs, key=lambda run: run[1] - run[0], reverse=True))


def index_runs(indices: set[int]) -> list[tuple[int, int]]:
    """Runs [start, end) of consecutive piece indices."""
    runs: list[tuple[int, int]] = []
    for index in sorted(indices):
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


class _RangeAnswer:
    """One Range request's answer: its run's pieces, in order, on one flow."""

    def __init__(self, fetch: UpstreamFetch, start: int, end: int) -> None:
        self.fetch = fetch
        self.pieces = deque(range(start, end))

    def next_transfer(self, now: float) -> int | None:
        return self.fetch.state.layout.length(self.pieces[0]) if self.pieces else None

    def transfer_done(self, now: float, nbytes: int) -> None:
        self.fetch.piece_arrived(self.pieces.popleft())
        if not self.pieces:
            self.fetch.answered(now)
