"""One simulated node: the real Membership, Choker and BanList, and the driver around them.

The driver does what peer/swarm/swarm.py and peer/cluster/gossip.py do for a real node:
SWIM datagrams in and out (with the modelled latency), timers at the policies' deadlines,
links to other nodes (connecting takes three round trips: TCP, then the two-step handshake;
to a dead node it fails after one, the kernel's reset), the answers to what peers send (Want,
PeersRequest, Bitfield, Request, Cancel, Choke...), a re-choke every RECHOKE_PERIOD, and a
push-pull membership sync on every new link and every ~30 s.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.simulate.fetch import BlobState, SwarmFetch, UpstreamFetch
from bench.simulate.uploads import Uploader
from peer.cluster.membership import Address, Member, Membership, Message, Status, Update
from peer.cluster.sync import JOIN_VIEW_WAIT, join_sync_peers, joins_others
from peer.fetch.prefetch import DEFAULT_CONCURRENCY as PREFETCH_WORKERS
from peer.swarm.actions import Send
from peer.swarm.bans import BanList
from peer.swarm.bits import bits_of, indices_of
from peer.swarm.choker import Choker
from peer.swarm.fetch import peers_while_owning
from peer.swarm.held_probe import fetches_from, not_held
from peer.swarm.inflow import InflowReports
from peer.swarm.recent_pieces import RecentPieces
from peer.swarm.seeding import Seeder
from wire.events import (
    NOT_HELD_HEADER,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Have,
    Inflow,
    Invite,
    Peers,
    PeersRequest,
    PieceMeta,
    Refused,
    Reject,
    Request,
    Unchoke,
    Want,
)

if TYPE_CHECKING:
    from bench.simulate.world import Simulation

PEERS_ANSWER = 32  # peers in one Peers answer
PEERS_SLACK = 8  # drawn beyond PEERS_ANSWER, for repeats, the asker and dead members
SYNC_PERIOD = 30.0
CONNECT_RTTS = 3  # TCP's SYN/SYN-ACK, then Hello/Hello and Proof/Proof


@dataclass(frozen=True, slots=True)
class MembersSync:
    """Push-pull membership (the real `Members` event). The full state is read when the
    message arrives: building it for every link, as the real node does, costs O(members) and
    changes nothing when both sides already agree, so it is skipped when their summaries
    (`SimNode.view_summary`) match."""

    summary: tuple[int, int]
    reply: bool


@dataclass(frozen=True, slots=True)
class MemberWord:
    """A `Members` event with one update, as the node's gossip driver sends it on a link: its
    own refutation to every linked peer, a suspicion to the suspect (peer/cluster/gossip.py)."""

    update: Update


class SimNode:
    def __init__(
        self,
        world: Simulation,
        name: str,
        node_id: bytes,
        address: Address,
        host: int,
        rng: random.Random,
        seeds: tuple[Address, ...],
    ) -> None:
        self.world = world
        self.name = name
        self.node_id = node_id
        self.address = address
        self.host = host  # this node's host in the network
        self.rng = rng
        self.alive = True
        self.started_at = world.queue.now
        # Every host declares its uplink, as an operator does with --uplink.
        uplink = int(world.network.uplinks[host])
        self.membership = Membership(node_id, address, rng=rng, seeds=seeds, capacity=uplink)
        # As the node's swarm: a joining node's fetches wait for its first full sync, which
        # it asks of the first member gossip brings it (JOIN_VIEW_WAIT after start at most).
        self.view_ready = not joins_others(self.membership)
        self._view_waiters: list[Callable[[], None]] = []
        self._join_sync_asked = False
        self.choker = Choker(rng, world.queue.now)
        self.bans = BanList()
        self.uploader = Uploader(self)
        self.recent_pieces = RecentPieces()  # the uploads send the newest pieces first
        self.links: dict[bytes, None] = {}  # ordered: iteration must not depend on hashing
        self.heard_at: dict[bytes, float] = {}  # when each peer last sent us an event
        self.connecting: dict[bytes, list[Callable[[bool], None]]] = {}
        self.blobs: dict[str, BlobState] = {}
        # As the node's swarm: how many transfers come in, told to the peers where our
        # requests wait (peer/swarm/inflow.py): peers' flows into this host now, and the
        # registry's (its answers; their changes alone are not told, as in the node).
        self.inflow = InflowReports()
        self.receiving = 0
        self.upstream_streams = 0
        self.epoch = 0  # bumped whenever membership reports a change
        self._owners: dict[str, tuple[int, list[bytes]]] = {}
        self._ids: frozenset[bytes] = frozenset()
        self._capacities: frozenset[tuple[bytes, int]] = frozenset()
        self._ids_epoch = -1
        self._summary: tuple[int, int] | None = None
        self._summary_epoch = -1
        self._live = (-1, 0)  # (epoch, live members counted then)
        self._tick_at: float | None = None

    # ---- starting and stopping ---------------------------------------------------------------

    def know(self, others: list[SimNode]) -> None:
        """Start from a converged, quiet membership (every other node alive, no gossip left
        to spread): the state the testbed waits for before it starts the clients."""
        now = self.world.queue.now
        self.view_ready = True
        self.membership.members = {
            o.node_id: Member(o.node_id, o.address, 0, Status.ALIVE, now, o.membership.capacity)
            for o in others
            if o is not self
        }

    def start(self) -> None:
        queue = self.world.queue
        now = queue.now
        # The real gossip driver ticks every 0.2 s whatever the deadlines: the first tick
        # sets the probe timer, from then on the deadlines say when.
        self._tick_at = now
        queue.at(now, self._tick, now)
        queue.at(self.choker.next_deadline(), self._rechoke)
        queue.at(now + SYNC_PERIOD * self.rng.uniform(0.8, 1.2), self._sync)

    def die(self) -> None:
        self.alive = False
        self.uploader.close_all()
        for state in self.blobs.values():
            if state.upstream is not None:
                state.upstream.close()
            if state.fetch is not None:
                state.fetch.end()
        self.links.clear()
        self.connecting.clear()

    # ---- membership --------------------------------------------------------------------------

    def receive_datagram(self, message: Message, source: Address) -> None:
        self.membership.receive(message, source, self.world.queue.now)
        if self._flush():
            self._schedule_tick()

    def _tick(self, at: float) -> None:
        if not self.alive or at != self._tick_at:
            return  # dead, or replaced by an earlier timer
        self._tick_at = None
        membership, heard_at = self.membership, self.heard_at
        for peer in self.links:  # as the node's gossip driver tells its membership
            if (heard := heard_at.get(peer)) is not None:
                membership.heard_on_link(peer, heard)
        membership.tick(self.world.queue.now)
        self._flush()
        self._schedule_tick()

    def _flush(self) -> bool:
        """Send what membership queued (datagrams, and on links our refutation and each new
        suspicion, as the node's driver does); True when it saw a member change."""
        world = self.world
        membership = self.membership
        for address, message in membership.take_outgoing():
            world.datagram(self, address, message)
        refutation = membership.take_refutation()
        if refutation is not None:
            for peer in self.links:
                self.send(peer, MemberWord(refutation))
        for suspicion in membership.take_suspicions():
            self.send(suspicion.node_id, MemberWord(suspicion))  # dropped if not linked
        events = self.membership.events
        if not events:
            return False
        stats = world.stats
        for _node, status in events:
            if status is Status.SUSPECT:
                stats.member_suspected += 1
            elif status is Status.DEAD:
                stats.member_declared_dead += 1
        events.clear()
        self.epoch += 1
        if not self.view_ready and not self._join_sync_asked:
            self._join_sync()
        return True

    def _join_sync(self) -> None:
        """The first full sync, with the first member gossip brought (the real node's
        `Swarm._join_sync`); a new link starts with our state, as the node's does."""
        members = join_sync_peers(self.membership)
        if not members:
            return
        self._join_sync_asked = True
        peer = self.rng.choice(members)
        if peer in self.links:
            self._push_members(peer)
        else:
            self.link_to(peer, self._join_linked)

    def _join_linked(self, ok: bool) -> None:
        if not ok:
            self._join_sync_asked = False  # another member, at the next member change

    def after_view(self, then: Callable[[], None]) -> None:
        """Call `then` once this node has had its first full sync, or JOIN_VIEW_WAIT after
        its start, whichever comes first (at once on a node that joins nobody)."""
        now = self.world.queue.now
        if self.view_ready or now >= self.started_at + JOIN_VIEW_WAIT:
            then()
            return
        if not self._view_waiters:
            self.world.queue.at(self.started_at + JOIN_VIEW_WAIT, self._view_settled)
        self._view_waiters.append(then)

    def _view_settled(self, _arg: object = None) -> None:
        self.view_ready = True
        waiters, self._view_waiters = self._view_waiters, []
        if self.alive:
            for then in waiters:
                then()

    def _schedule_tick(self) -> None:
        deadline = self.membership.next_deadline()
        if deadline is None:
            return
        now = self.world.queue.now
        deadline = max(deadline, now)
        if self._tick_at is None or deadline < self._tick_at:
            self._tick_at = deadline
            self.world.queue.at(deadline, self._tick, deadline)

    def owner_candidates(self, digest: str) -> list[bytes]:
        """Live, unbanned members in rendezvous order (this node included). Cached until
        membership changes (no bans are simulated, so none runs out meanwhile)."""
        cached = self._owners.get(digest)
        if cached is not None and cached[0] == self.epoch:
            return cached[1]
        if self._ids_epoch != self.epoch:
            now = self.world.queue.now
            ids = self.membership.alive_ids()
            if self.bans.banned(now):
                ids = {n for n in ids if not self.bans.is_banned(n, now)}
            self._ids = frozenset(ids)
            self._capacities = frozenset(self.membership.capacities().items())
            self._ids_epoch = self.epoch
        order = self.world.owner_order(digest, self._ids, self._capacities)
        self._owners[digest] = (self.epoch, order)
        return order

    def live_members(self) -> int:
        """Live members, this node included (as the node's `alive_ids`), counted once per
        membership change."""
        if self._live[0] != self.epoch:
            self._live = (self.epoch, len(self.membership.alive_ids()))
        return self._live[1]

    def view_summary(self) -> tuple[int, int]:
        """The members (ourselves included) and a checksum of their incarnations and states:
        equal summaries, nothing for a push-pull sync to change (in all but contrived cases;
        a member's incarnation rising with no change of state is not noticed until then)."""
        if self._summary is None or self._summary_epoch != self.epoch:
            members = self.membership.members.values()
            checksum = sum(m.incarnation * 3 + int(m.status) for m in members)
            self._summary = (len(members) + 1, checksum)
            self._summary_epoch = self.epoch
        # Ourselves as the others see us (alive); our incarnation moves without a member
        # event (a refutation), so it is read each time.
        return (self._summary[0], self._summary[1] + 3 * self.membership.incarnation)

    def _sync(self, _arg: object) -> None:
        if not self.alive:
            return
        queue = self.world.queue
        queue.at(queue.now + SYNC_PERIOD * self.rng.uniform(0.8, 1.2), self._sync)
        members = [m.node_id for m in self.membership.alive()]
        if members:
            peer = self.rng.choice(members)
            self.link_to(peer, lambda ok: self._push_members(peer) if ok else None)

    def _push_members(self, peer: bytes) -> None:
        self.send(peer, MembersSync(self.view_summary(), reply=False))

    def _on_member_word(self, _source: bytes, event: MemberWord) -> None:
        self.membership.merge([event.update], self.world.queue.now)
        if self._flush():
            self._schedule_tick()

    def _on_members(self, source: bytes, event: MembersSync) -> None:
        world = self.world
        if event.summary == self.view_summary():
            world.stats.syncs_skipped += 1
        else:
            world.stats.syncs += 1
            sender = world.by_id[source]
            self.membership.merge(sender.membership.full_state(), world.queue.now)
            if self._flush():
                self._schedule_tick()
        if event.reply and not self.view_ready:
            self._view_settled()  # after the merge: the waiting fetches see the new view
        if not event.reply:
            self.send(source, MembersSync(self.view_summary(), reply=True))

    # ---- links -------------------------------------------------------------------------------

    def link_to(self, peer: bytes, then: Callable[[bool], None]) -> None:
        """Call `then(True)` once linked to `peer` (at once if already), `then(False)` if it
        cannot be (not a live member, banned, or it does not answer)."""
        if peer in self.links:
            then(True)
            return
        waiting = self.connecting.get(peer)
        if waiting is not None:
            waiting.append(then)
            return
        world = self.world
        now = world.queue.now
        member = self.membership.members.get(peer)
        if self.bans.is_banned(peer, now) or member is None or member.status is Status.DEAD:
            then(False)
            return
        self.connecting[peer] = [then]
        target = world.by_id.get(peer)
        world.stats.connects += 1
        if target is None or not target.alive:
            world.queue.at(now + 2 * world.latency, self._connect_failed, peer)
        else:
            world.queue.at(now + 2 * CONNECT_RTTS * world.latency, self._connected, peer)

    def _connected(self, peer: bytes) -> None:
        if not self.alive:
            return
        target = self.world.by_id[peer]
        if not target.alive:
            self._connect_failed(peer)
            return
        self.world.link(self, target)
        self._push_members(peer)
        for then in self.connecting.pop(peer, []):
            then(True)

    def _connect_failed(self, peer: bytes) -> None:
        if not self.alive:
            return
        self.world.stats.connects_failed += 1
        self.bans.unreachable(peer, self.world.queue.now)
        for then in self.connecting.pop(peer, []):
            then(False)

    def link_lost(self, peer: bytes) -> None:
        """The link to `peer` broke (it died): every fetch and the uploads forget it."""
        if self.links.pop(peer, 0) is None:
            self.heard_at.pop(peer, None)  # a new link starts afresh, as a PeerLink does
            self.uploader.link_lost(peer)
            self.choker.lost(peer)
            self.inflow.forget(peer)
            for state in list(self.blobs.values()):
                state.bitfield_sent.discard(peer)
                state.invited.pop(peer, None)  # a credit lives on its link
                if state.seeder is not None:
                    self._seeded(state, state.seeder.left(peer, self.world.queue.now))
                if state.fetch is not None:
                    state.fetch.on_link_lost(peer)

    # ---- how many transfers come in (peer/swarm/inflow.py) -----------------------------------

    def inflows(self) -> int:
        """As the node: links receiving a piece now (a flow from a peer), and answers
        arriving from the registry now."""
        return self.receiving + self.upstream_streams

    def receiving_changed(self, delta: int) -> None:
        """A peer's flow into this host started (+1) or stopped (-1)."""
        self.receiving += delta
        due = self.inflow.changed(self.world.queue.now)
        if due is not None:
            self.world.queue.at(due, self._tell_inflows, None)

    def _tell_inflows(self, _arg: object) -> None:
        if not self.alive:
            return
        inflows = self.inflows()
        for peer in self.inflow.flush(inflows, self._requests_waiting_at()):
            self.send(peer, Inflow(inflows))

    def _requests_waiting_at(self) -> list[bytes]:
        """The peers holding requests of ours that send us nothing now (in a fixed order)."""
        asked: set[bytes] = set()
        for state in self.blobs.values():
            if state.fetch is not None:
                asked |= state.fetch.picker.asking()
        return [p for p in sorted(asked) if not self._sending_to_us(p)]

    def _sending_to_us(self, peer: bytes) -> bool:
        """Does `peer` send this host a piece now (a flow from it)?"""
        return self.world.by_id[peer].uploader.sending_to(self.node_id)

    def with_inflow(self, sends: list[Send]) -> list[Send]:
        """`sends` with an Inflow before the first Request to each peer that must hear the
        number first (as the node's fetch posts them)."""
        out: list[Send] = []
        told: set[bytes] = set()
        for send in sends:
            if (
                isinstance(send.event, Request)
                and send.peer not in told
                and not self._sending_to_us(send.peer)
            ):
                told.add(send.peer)
                inflows = self.inflows()
                if self.inflow.before_requests(send.peer, inflows):
                    out.append(Send(send.peer, Inflow(inflows)))
            out.append(send)
        return out

    def send(self, peer: bytes, event: Event | MembersSync | MemberWord) -> None:
        self.world.send(self, peer, event)

    def send_many(self, sends: list[Send]) -> None:
        if sends:
            self.world.send_many(self, sends)

    # ---- what peers send ---------------------------------------------------------------------

    def receive(self, source: bytes, event: Any) -> None:
        self.heard_at[source] = self.world.queue.now
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, source, event)

    def _on_want(self, source: bytes, want: Want) -> None:
        state = self.state(want.digest)
        if want.held_only and not state.complete and state.upstream is None:
            # As the node's owner side: neither held nor fetched from the registry here.
            source_id = state.fetch.fetching_from if state.fetch is not None else None
            self.send(source, not_held(want.digest, source_id))
            return
        if state.complete or (state.active and state.partial):
            self._answer_want(state, source)
        else:
            # The answer waits for the partial: our own fetch's owner's answer, or (no download
            # running) that of a node that holds the blob, else the registry's (as the node's
            # `OwnerUpstream.join_for_peer`).
            state.want_waiters[source] = None
            if not state.active:
                self._start_fetch(state, from_holders=True)

    def _answer_want(self, state: BlobState, peer: bytes) -> None:
        if peer not in state.interested:  # only now: PieceMeta updates go to it
            state.interested[peer] = None
            state.interested_list.append(peer)
        layout = state.layout
        held = dict.fromkeys(sorted(state.have), b"")
        self.send(peer, PieceMeta(state.digest, layout.size, layout.piece_size, held))
        seeder = state.seeder
        if seeder is None:
            seeder = state.seeder = Seeder(state.digest, layout.count, self.rng, held=state.have)
        self._seeded(state, seeder.joined(peer, self.world.queue.now), pushes=False)

    def _seeded(self, state: BlobState, sends: list[Send], *, pushes: bool = True) -> None:
        """Send the seeder's offers (to a peer that invited pushes, the piece itself, as the
        node's owner side does, never for a Want: `OwnerSide._offer`); wake it at its next
        deadline."""
        seeder = state.seeder
        assert seeder is not None
        if not seeder.open and state.invited:
            sends = [s for s in sends if not self._pushed(state, s, pushes)]
        self.send_many(sends)
        deadline = seeder.next_deadline()
        if deadline is not None and (state.seed_at is None or deadline < state.seed_at):
            state.seed_at = deadline
            self.world.queue.at(deadline, self._seed_tick, (state, deadline))

    def _pushed(self, state: BlobState, send: Send, may_push: bool) -> bool:
        """Does this offer go as the piece itself (a first copy, the peer's credit has room,
        or it goes already)?"""
        event = send.event
        if not isinstance(event, Have):
            return False
        uploader = self.uploader
        if uploader.pushing(send.peer, event.digest, event.index):
            return True  # an offer told again (the peer's Want came again): it is coming
        if not may_push or not state.seeder or not state.seeder.first_copy(event.index):
            return False
        credit = state.invited.get(send.peer, 0)
        if credit <= 0:
            return False
        state.invited[send.peer] = credit - 1
        uploader.push(send.peer, event.digest, event.index)
        return True

    def _on_invite(self, source: bytes, event: Invite) -> None:
        state = self.blobs.get(event.digest)
        if state is not None:
            state.invited[source] = state.invited.get(source, 0) + event.count

    def _seed_tick(self, arg: tuple[BlobState, float]) -> None:
        state, at = arg
        if not self.alive or state.seed_at != at or state.seeder is None:
            return
        state.seed_at = None
        self._seeded(state, state.seeder.tick(self.world.queue.now))

    def partial_opened(self, state: BlobState) -> None:
        """The blob's partial exists (the owner's or the registry's first answer): Wants that
        waited for it are answered."""
        state.partial = True
        waiting, state.want_waiters = state.want_waiters, {}
        for peer in waiting:
            if peer in self.links:
                self._answer_want(state, peer)

    def _on_piece_meta(self, source: bytes, meta: PieceMeta) -> None:
        state = self.blobs.get(meta.digest)
        if state is not None and state.fetch is not None:
            state.fetch.on_meta(source, meta.hashes)

    def _on_refused(self, source: bytes, event: Refused) -> None:
        state = self.blobs.get(event.digest)
        value = event.headers.get(NOT_HELD_HEADER)
        if state is not None and state.fetch is not None and value is not None:
            state.fetch.on_not_held(source, fetches_from(value))

    def _on_peers_request(self, source: bytes, event: PeersRequest) -> None:
        """Up to 32 random peers among those that sent a Want and our own fetch's peers (not
        the asker, not dead). The real node shuffles them all and takes 32; drawing a few
        more than 32 at random (repeats dropped) gives the same kind of answer at O(32)
        instead of O(interested), which grows with the cluster: a PeersRequest per node per
        blob every 2 s would make the run O(N^2). The pool grows in the order Wants came:
        the same run, the same order."""
        state = self.blobs.get(event.digest)
        out: list[tuple[bytes, str, int]] = []
        if state is not None:
            members = self.membership.members

            def eligible(peers: Iterable[bytes]) -> list[tuple[bytes, str, int]]:
                chosen = []
                for peer in peers:
                    member = members.get(peer)
                    if peer != source and member is not None and member.status is not Status.DEAD:
                        chosen.append((peer, member.address[0], member.address[1]))
                return chosen

            pool = state.interested_list
            if state.fetch is not None:
                extra = [p for p in state.fetch.picker.peers if p not in state.interested]
                pool = pool + extra if extra else pool
            want = PEERS_ANSWER + PEERS_SLACK
            out = []
            if len(pool) > 4 * want:
                # Random draws (a few repeat: dropped), in random order already.
                draw, size = self.rng.random, len(pool)
                out = eligible(dict.fromkeys(pool[int(draw() * size)] for _ in range(want)))
            if len(out) < PEERS_ANSWER:
                # A small pool, or many of the draws were dead (or the asker): all of them.
                out = eligible(pool)
                self.rng.shuffle(out)
        self.send(source, Peers(event.digest, out[:PEERS_ANSWER]))

    def _on_peers(self, source: bytes, event: Peers) -> None:
        state = self.blobs.get(event.digest)
        # The owner's answer only, as the node takes it (peer/swarm/fetch.py).
        if state is not None and state.fetch is not None and source == state.fetch.owner:
            state.fetch.on_peers(event.peers)

    def _on_bitfield(self, source: bytes, event: Bitfield) -> None:
        state = self.blobs.get(event.digest)
        if state is None:
            return  # neither held nor fetched: nothing to say, nothing to keep
        held = sorted(indices_of(event.bits))
        if state.fetch is not None:
            state.fetch.on_bitfield(source, held)
        if state.seeder is not None:
            self._seeded(state, state.seeder.peer_has(source, held, self.world.queue.now))
        if (
            source not in state.bitfield_sent
            and source not in state.interested
            and (state.partial or state.complete)
        ):
            state.bitfield_sent.add(source)
            self.send(source, Bitfield(state.digest, bits_of(state.have, state.layout.count)))

    def _on_have(self, source: bytes, event: Have) -> None:
        state = self.blobs.get(event.digest)
        if state is None:
            return
        if state.fetch is not None:
            state.fetch.on_have(source, event.index)
        if state.seeder is not None:
            now = self.world.queue.now
            self._seeded(state, state.seeder.peer_has(source, (event.index,), now))

    def piece_sent(self, peer: bytes, digest: str, index: int) -> None:
        """A piece went out whole to `peer`: the seeding counts it as the peer's (as the node,
        peer/swarm/swarm.py `_piece_sent`)."""
        state = self.blobs.get(digest)
        if state is not None and state.seeder is not None:
            self._seeded(state, state.seeder.peer_has(peer, (index,), self.world.queue.now))

    def _on_request(self, source: bytes, event: Request) -> None:
        self.uploader.request(source, event.digest, event.index)

    def _on_cancel(self, source: bytes, event: Cancel) -> None:
        self.uploader.cancel(source, event.digest, event.index)

    def _on_reject(self, source: bytes, event: Reject) -> None:
        state = self.blobs.get(event.digest)
        if state is not None and state.fetch is not None:
            state.fetch.on_reject(source, event.index)

    def _on_inflow(self, source: bytes, event: Inflow) -> None:
        self.uploader.lanes.report(source, event.inflows)

    def _on_choke(self, source: bytes, event: Choke | Unchoke) -> None:
        choking = isinstance(event, Choke)
        for state in list(self.blobs.values()):
            if state.fetch is not None:
                state.fetch.on_choke(source, choking)

    def on_piece(self, source: bytes, digest: str, index: int, nbytes: int) -> None:
        state = self.blobs.get(digest)
        if state is None or state.fetch is None:
            self.world.stats.duplicate_bytes += nbytes  # a late answer for a fetch that ended
            return
        state.fetch.on_piece(source, index, nbytes)

    def _rechoke(self, _arg: object) -> None:
        if not self.alive:
            return
        queue = self.world.queue
        sends = self.choker.rechoke(queue.now, self._owners_fetched_from())
        choked = [s.peer for s in sends if isinstance(s.event, Choke)]
        self.world.stats.chokes += len(choked)
        self.send_many(sends)
        for state in self.blobs.values():
            if state.seeder is not None:
                for send in sends:
                    is_choke = isinstance(send.event, Choke)
                    self._seeded(state, state.seeder.choked(send.peer, is_choke, queue.now))
        queue.at(self.choker.next_deadline(), self._rechoke)

    def _owners_fetched_from(self) -> set[bytes]:
        """As the node (peer/swarm/swarm.py): the owners this node's fetches take pieces from."""
        owners = (s.fetch.fetching_from for s in self.blobs.values() if s.fetch is not None)
        return {owner for owner in owners if owner is not None}

    # ---- blobs -------------------------------------------------------------------------------

    def state(self, digest: str) -> BlobState:
        state = self.blobs.get(digest)
        if state is None:
            state = self.blobs[digest] = BlobState(digest, self.world.layouts[digest])
        return state

    def request_blob(self, digest: str, then: Callable[[float], None]) -> None:
        """A client asks for the blob: `then(time)` once this node holds all of it."""
        state = self.state(digest)
        if state.complete:
            then(self.world.queue.now)
            return
        state.waiters.append(then)
        if not state.active:
            self._start_fetch(state)

    def _start_fetch(self, state: BlobState, from_holders: bool = False) -> None:
        fetch = state.fetch = SwarmFetch(self, state, from_holders)
        fetch.start()

    def prefetch(self, digests: list[str]) -> None:
        """Download the blobs of a manifest this node served, PREFETCH_WORKERS at a time (the
        client's own requests join them)."""
        waiting = [d for d in digests if not self.state(d).complete]
        for digest in waiting:  # one in flight (for peers, say) now runs ahead of our client
            state = self.state(digest)
            if state.active:
                self._prefetch_wants(state)
        waiting.reverse()

        def next_one(_now: float = 0.0) -> None:
            while waiting and self.alive:
                digest = waiting.pop()
                state = self.state(digest)
                if not state.complete:
                    self._prefetch_wants(state)
                    self.request_blob(digest, next_one)
                    return

        for _ in range(PREFETCH_WORKERS):
            next_one()

    def start_upstream(self, state: BlobState, runs: list[tuple[int, int]] | None = None) -> None:
        """Fetch `runs` of pieces (default: all that are missing) from the registry."""
        upstream = state.upstream = UpstreamFetch(self, state, runs)
        upstream.start()

    def piece_stored(self, state: BlobState, index: int) -> None:
        """A verified piece is on disk: those that sent us a Want hear of it (PieceMeta)."""
        state.have.add(index)
        self.recent_pieces.stored(state.digest, [index], self.world.queue.now)
        if state.interested:
            layout = state.layout
            meta = PieceMeta(state.digest, layout.size, layout.piece_size, {index: b""})
            self.send_many([Send(peer, meta) for peer in state.interested if peer in self.links])
            if state.seeder is not None:
                self._seeded(state, state.seeder.piece_ready(index, self.world.queue.now))
        if len(state.have) == state.layout.count and not state.complete:
            state.complete = True
            if state.fetch is not None:
                state.fetch.end()
            waiters, state.waiters = state.waiters, []
            for then in waiters:
                then(self.world.queue.now)
        for watcher in list(state.watchers):
            watcher()  # a client reading the blob in order (clients.py)

    @property
    def source_limit(self) -> int | None:
        """As the node: counting the blobs fetched from the registry that are not prefetched
        ahead of the client here (peer/swarm/fetch.py)."""
        return peers_while_owning(
            sum(1 for s in self.blobs.values() if s.upstream is not None and not s.ahead_of_client)
        )

    def upstream_started(self) -> None:
        self._set_source_limits()

    def upstream_ended(self) -> None:
        self._set_source_limits()

    def client_reads(self, digest: str) -> None:
        """This host's client asks for the blob (as `Download.client_reads` in the node): its
        registry flows may all open, and it counts for the source limit."""
        state = self.state(digest)
        if state.read_by_client:
            return
        state.read_by_client = True
        self._set_source_limits()
        if state.upstream is not None:
            state.upstream.client_reads()

    def _prefetch_wants(self, state: BlobState) -> None:
        """This host's prefetch asks for the blob (`Download.prefetch_wants`)."""
        if not state.prefetched:
            state.prefetched = True
            self._set_source_limits()

    def _set_source_limits(self) -> None:
        limit = self.source_limit
        for state in self.blobs.values():
            if state.fetch is not None:
                state.fetch.picker.source_limit = limit


_HANDLERS: dict[type, Callable[[SimNode, bytes, Any], None]] = {
    Want: SimNode._on_want,
    PieceMeta: SimNode._on_piece_meta,
    Refused: SimNode._on_refused,
    PeersRequest: SimNode._on_peers_request,
    Peers: SimNode._on_peers,
    Bitfield: SimNode._on_bitfield,
    Have: SimNode._on_have,
    Request: SimNode._on_request,
    Cancel: SimNode._on_cancel,
    Reject: SimNode._on_reject,
    Inflow: SimNode._on_inflow,
    Invite: SimNode._on_invite,
    Choke: SimNode._on_choke,
    Unchoke: SimNode._on_choke,
    MembersSync: SimNode._on_members,
    MemberWord: SimNode._on_member_word,
}
