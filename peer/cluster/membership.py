"""SWIM-style membership as a pure state machine: time and datagrams in, datagrams out.

Each protocol period a node probes one member (round robin over a shuffled list) with a Ping;
if no Ack comes within the probe time-out it asks `indirect_probes` other members to ping it
(PingReq); if the period ends without any Ack the member becomes *suspect*. A suspect that does
not refute within the suspicion time-out (which grows with log N) is declared *dead*. A member
refutes by raising its incarnation number. Membership changes ride on every Ping and Ack
(piggybacking), each retransmitted a bounded number of times that grows with log N.

Nothing here reads a clock or touches a socket: the driver (peer/gossip.py) passes `now`,
delivers datagrams with `receive`, calls `tick` when `next_deadline` passes and sends what
`take_outgoing` returns. The same code runs in the fake-network tests.
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

Address = tuple[str, int]

# How far above what we know of a member its incarnation may be said to be. A member raises
# its own by one per refutation; a liar (a member with the cluster token: ids are claimed)
# that could name any would name one past the last that encodes (gossip.MAX_INCARNATION) and
# leave its victim no refutation: buried, or at the liar's address, for good.
INCARNATION_STEP = 2**16
# A dead member is kept (and told of) this long, then forgotten: word of the death of a node
# we do not know adds nothing (memberlist's rule), so stale word does not bring it back. Kept
# for ever, the dead of a cluster whose nodes come and go (autoscaling) filled the table.
DEAD_KEPT = 300.0
# Members known at most (the largest cluster we build for is 1,000 nodes): a liar's stream
# of made-up members stops here, and so do the probes and the full state they cost.
MAX_MEMBERS = 4096


class Status(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2


@dataclass(frozen=True, slots=True)
class Update:
    """What one node believes about a member; the unit of gossip."""

    node_id: bytes
    address: Address
    incarnation: int
    status: Status
    # The member's upload capacity in bytes/s as it declares it (--uplink); 0: not declared.
    # Rendezvous owners are weighted by it (peer/cluster/rendezvous.py).
    capacity: int = 0


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    sender: bytes
    sender_address: Address
    updates: tuple[Update, ...] = ()
    on_behalf_of: Address | None = None  # set when this ping answers a PingReq


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    sender: bytes
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    sender: bytes
    sender_address: Address
    target: bytes
    target_address: Address
    updates: tuple[Update, ...] = ()


Message = Ping | Ack | PingReq


@dataclass(frozen=True, slots=True)
class SwimConfig:
    probe_period: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    suspicion_multiplier: float = 4.0
    retransmit_multiplier: int = 4
    max_piggyback: int = 8
    join_retry_min: float = 1.0
    join_retry_max: float = 30.0

    def suspicion_timeout(self, members: int) -> float:
        """memberlist's rule: mult * max(1, log10(N)) * probe period."""
        return self.suspicion_multiplier * max(1.0, math.log10(max(members, 1))) * self.probe_period

    def retransmit_limit(self, members: int) -> int:
        return self.retransmit_multiplier * math.ceil(math.log10(members + 1))

    def detection_bound(self, members: int) -> float:
        """Worst case from a crash until every survivor has declared the node dead: up to two
        protocol periods of every member before one probes it (round robin over a reshuffled
        list), one period to suspect it, the suspicion time-out, and the dissemination of the
        verdict (a few periods per log N; we allow its full retransmit budget)."""
        return (
            (2 * members + 1) * self.probe_period
            + self.suspicion_timeout(members)
            + self.retransmit_limit(members) * self.probe_period
        )


@dataclass(slots=True)
class Member:
    node_id: bytes
    address: Address
    incarnation: int
    status: Status
    since: float
    capacity: int = 0  # declared upload bytes/s; 0: not declared
    heard: bool = False  # a message of its own reached us (a datagram from it, its link)


@dataclass(slots=True)
class _Probe:
    target: bytes
    seq: int
    sent_at: float
    indirect_sent: bool = False
    acked: bool = False


@dataclass(slots=True)
class _Relay:
    """A ping we send for someone else's PingReq; its Ack goes back to them."""

    requester: Address
    requester_seq: int
    expires: float


@dataclass(slots=True)
class _Gossip:
    update: Update
    transmits: int = 0


@dataclass
class Membership:
    node_id: bytes
    address: Address
    config: SwimConfig = field(default_factory=SwimConfig)
    rng: random.Random = field(default_factory=random.Random)
    seeds: tuple[Address, ...] = ()
    capacity: int = 0  # this node's declared upload bytes/s (0: not declared)

    def __post_init__(self) -> None:
        self.incarnation = 0
        self.members: dict[bytes, Member] = {}
        self._outgoing: list[tuple[Address, Message]] = []
        self._gossip: dict[bytes, _Gossip] = {}
        self._seq = 0
        self._probe: _Probe | None = None
        self._probe_order: list[bytes] = []
        self._next_probe_at: float | None = None
        self._relays: dict[int, _Relay] = {}
        self._join_at: float | None = 0.0 if self.seeds else None
        self._join_backoff = self.config.join_retry_min
        self.events: list[tuple[bytes, Status]] = []  # changes seen, for the driver's log
        self.members_refused = 0  # new members not added: the table held MAX_MEMBERS
        self._deaths: deque[tuple[float, bytes]] = deque()  # (since, node id), oldest first
        # Kept beside `members` so that the timers look at suspects only, not at every member
        # (a tick per probe period over thousands of members adds up in the simulator).
        self._suspects: set[bytes] = set()
        self.left = False  # this node said it leaves: it neither probes nor refutes any more
        # When each member last sent us something on a peer link, as the driver tells us
        # (`heard_on_link`): proof that it lives when datagrams are lost or late.
        self._link_heard: dict[bytes, float] = {}
        self._refutation: Update | None = None  # our latest, until `take_refutation`
        self._suspicions: dict[bytes, Update] = {}  # new ones, until `take_suspicions`

    # ---- queries -----------------------------------------------------------------------

    def alive(self) -> list[Member]:
        """Members believed alive or suspect (suspects still serve; they may refute)."""
        return [m for m in self.members.values() if m.status is not Status.DEAD]

    def alive_ids(self) -> set[bytes]:
        return {m.node_id for m in self.alive()} | {self.node_id}

    def declared_uplinks(self) -> list[int]:
        """What each live member declares of its upload capacity, us included (0: nothing)."""
        return [m.capacity for m in self.alive()] + [self.capacity]

    def capacities(self) -> dict[bytes, int]:
        """Declared upload capacity (bytes/s) of the members that declared one, us included."""
        known = {m.node_id: m.capacity for m in self.members.values() if m.capacity}
        if self.capacity:
            known[self.node_id] = self.capacity
        return known

    def take_outgoing(self) -> list[tuple[Address, Message]]:
        out, self._outgoing = self._outgoing, []
        return out

    def next_deadline(self) -> float | None:
        """When `tick` must be called next (None: only when a datagram arrives)."""
        if self.left:
            return None
        deadlines = [d for d in (self._next_probe_at, self._join_at) if d is not None]
        if self._probe is not None and not self._probe.acked:
            base = self._probe.sent_at
            deadlines.append(
                base
                + (
                    self.config.probe_period
                    if self._probe.indirect_sent
                    else self.config.probe_timeout
                )
            )
        if self._suspects:
            timeout = self._suspicion_timeout()
            deadlines += [self.members[n].since + timeout for n in self._suspects]
        return min(deadlines) if deadlines else None

    # ---- state sync (the driver does the TCP part) -------------------------------------

    def full_state(self) -> list[Update]:
        """Everything we know, ourselves included: the payload of a push-pull sync."""
        own_status = Status.DEAD if self.left else Status.ALIVE
        own = self._own_update(own_status)
        return [
            own,
            *(
                Update(m.node_id, m.address, m.incarnation, m.status, m.capacity)
                for m in self.members.values()
            ),
        ]

    def merge(self, updates: Iterable[Update], now: float) -> None:
        for update in updates:
            self._apply(update, now)

    # ---- inputs ------------------------------------------------------------------------

    def receive(self, message: Message, source: Address, now: float) -> None:
        """A datagram from `source` (already decoded)."""
        self.merge(message.updates, now)
        if isinstance(message, Ping):
            self._heard_from(message.sender, message.sender_address, now)
            self._send(message.sender_address, Ack(message.seq, self.node_id, self._piggyback()))
        elif isinstance(message, PingReq):
            self._heard_from(message.sender, message.sender_address, now)
            seq = self._next_seq()
            self._relays[seq] = _Relay(
                message.sender_address, message.seq, now + self.config.probe_period
            )
            ping = Ping(seq, self.node_id, self.address, self._piggyback())
            self._send(message.target_address, ping)
        elif isinstance(message, Ack):
            relay = self._relays.pop(message.seq, None)
            if relay is not None:
                self._send(
                    relay.requester, Ack(relay.requester_seq, message.sender, self._piggyback())
                )
            if self._probe is not None and self._probe.seq == message.seq:
                self._probe.acked = True
            member = self.members.get(message.sender)
            if member is not None and member.status is Status.ALIVE:
                member.since = now

    def set_seeds(self, seeds: Iterable[Address]) -> None:
        """The join addresses as resolved now (`--join NAME` follows a name's addresses as
        they change: the nodes behind a headless Service). Each address that is neither us
        nor a live member is pinged once: two nodes that started alone (each found only
        itself) meet when the name resolves to both."""
        self.seeds = tuple(dict.fromkeys(seeds))
        if self.left:
            return
        known = {m.address for m in self.members.values() if m.status is not Status.DEAD}
        for seed in self.seeds:
            if seed != self.address and seed not in known:
                self._send(
                    seed, Ping(self._next_seq(), self.node_id, self.address, self._piggyback())
                )

    def heard_on_link(self, node_id: bytes, at: float) -> None:
        """`node_id` sent us something on a peer link (TCP) at `at`: proof that it lives.

        A probe that gets no Ack in its period does not make the member suspect if it was
        heard on a link since the probe went out, and we do not declare a suspect dead that
        we heard since it became suspect (its suspicion waits, for its own refutation, as
        long as it keeps talking). Datagrams are lost or late where links are full of
        pieces or loops are starved: on the testbed's shaped links gossip buried live nodes
        hundreds of times a minute, and with them the owners of blobs they were fetching.
        memberlist answers the same with a TCP ping after a failed UDP probe; our links
        are TCP already, and busiest exactly when datagrams are lost.
        """
        member = self.members.get(node_id)
        if member is None or member.status is Status.DEAD:
            return  # only members' words count (a link may claim any id); the dead stay dead
        member.heard = True
        if at > self._link_heard.get(node_id, -math.inf):
            self._link_heard[node_id] = at

    def take_refutation(self) -> Update | None:
        """Our own update that refutes a suspicion (or death), once after each refutation:
        the driver also sends it over the peer links, which lose nothing. A refutation that
        gossip alone carries is lost with the datagrams of a link full of pieces, and the
        suspicion, which only we can lift, ends in our burial everywhere."""
        refutation, self._refutation = self._refutation, None
        return refutation

    def take_suspicions(self) -> list[Update]:
        """The suspicions we came to hold since the last call (ours or gossiped to us): the
        driver tells each suspect on its peer link, if it has one, so it refutes at once. A
        suspect learns of its suspicion from gossip's datagrams alone otherwise, and those
        are lost where its links are full of pieces (Lifeguard's buddy system, over TCP)."""
        suspicions = list(self._suspicions.values())
        self._suspicions.clear()
        return suspicions

    def leave(self) -> None:
        """This node is going away (shutting down): tell every member at once, so that none
        waits for a suspicion time-out, and stop probing and refuting.

        Our own death, at an incarnation above any we refuted with, rides a Ping to each
        member (they gossip it on); datagrams may be lost, and a member that misses it finds
        us dead the usual way.
        """
        if self.left:
            return
        self.left = True
        self.incarnation += 1
        farewell = (self._own_update(Status.DEAD),)
        for member in self.alive():
            self._send(member.address, Ping(self._next_seq(), self.node_id, self.address, farewell))
        self._probe = None
        self._join_at = None

    def tick(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        if self.left:
            return
        self._join(now)
        self._expire_relays(now)
        self._forget_the_dead(now)
        probe = self._probe
        if probe is not None and not probe.acked:
            target = self.members.get(probe.target)
            if target is None or target.status is Status.DEAD:
                self._probe = None
            elif not probe.indirect_sent and now >= probe.sent_at + self.config.probe_timeout:
                probe.indirect_sent = True
                self._send_ping_reqs(target, probe.seq)
            elif probe.indirect_sent and now >= probe.sent_at + self.config.probe_period:
                # The whole period passed with no Ack, direct or indirect: suspect it, unless
                # it spoke on a link meanwhile (`heard_on_link`).
                if self._link_heard.get(target.node_id, -math.inf) < probe.sent_at:
                    self._apply(_member_update(target, Status.SUSPECT), now)
                self._probe = None
        timeout = self._suspicion_timeout()
        for member in [self.members[n] for n in self._suspects]:
            if now < member.since + timeout:
                continue
            heard = self._link_heard.get(member.node_id, -math.inf)
            if heard > member.since and now < heard + timeout:
                member.since = heard  # it talks on a link: its suspicion waits from there
                # and it is told again (the first word may not have reached it)
                self._suspicions[member.node_id] = _member_update(member, Status.SUSPECT)
                continue
            self._apply(_member_update(member, Status.DEAD), now)
        if self._next_probe_at is None:
            self._next_probe_at = now + self.rng.uniform(0, self.config.probe_period)
        if now >= self._next_probe_at:
            self._next_probe_at = now + self.config.probe_period
            self._start_probe(now)

    # ---- internals ---------------------------------------------------------------------

    def _join(self, now: float) -> None:
        if self._join_at is None or now < self._join_at:
            return
        if self.alive():
            self._join_at = None  # someone answered: we are in
            return
        for seed in self.seeds:
            if seed != self.address:
                self._send(
                    seed, Ping(self._next_seq(), self.node_id, self.address, self._piggyback())
                )
        self._join_at = now + self._join_backoff
        self._join_backoff = min(self._join_backoff * 2, self.config.join_retry_max)

    def _start_probe(self, now: float) -> None:
        if self._probe is not None and not self._probe.acked:
            return  # the previous probe is still deciding (suspect at period end)
        self._probe = None
        while True:
            if not self._probe_order:
                # A new round over the members in a new random order (SWIM's round robin).
                self._probe_order = [
                    m.node_id for m in self.members.values() if m.status is not Status.DEAD
                ]
                if not self._probe_order:
                    return
                self.rng.shuffle(self._probe_order)
            target = self.members.get(self._probe_order.pop())
            if target is not None and target.status is not Status.DEAD:
                break
        seq = self._next_seq()
        self._probe = _Probe(target.node_id, seq, now)
        updates = self._piggyback()
        if target.status is Status.SUSPECT and all(u.node_id != target.node_id for u in updates):
            # Lifeguard's buddy system: a suspect we probe hears of its suspicion from us at
            # once, and refutes it, instead of when the gossip happens to reach it.
            updates = (*updates, _member_update(target, Status.SUSPECT))
        self._send(target.address, Ping(seq, self.node_id, self.address, updates))

    def _send_ping_reqs(self, target: Member, seq: int) -> None:
        helpers = [
            m for m in self.alive() if m.node_id != target.node_id and m.status is Status.ALIVE
        ]
        for helper in self.rng.sample(helpers, min(len(helpers), self.config.indirect_probes)):
            request = PingReq(
                seq, self.node_id, self.address, target.node_id, target.address, self._piggyback()
            )
            self._send(helper.address, request)

    def _expire_relays(self, now: float) -> None:
        for seq in [s for s, r in self._relays.items() if r.expires <= now]:
            del self._relays[seq]

    def _heard_from(self, node_id: bytes, address: Address, now: float) -> None:
        """A direct message proves a node alive; learn about it if it is new."""
        if node_id == self.node_id:
            return
        member = self.members.get(node_id)
        if member is None:
            self._apply(Update(node_id, address, 0, Status.ALIVE), now, direct=True)
            return
        member.heard = True
        if member.status is not Status.ALIVE:
            # It talks to us while we hold it suspect or dead: tell it, so it refutes.
            self._gossip_update(_member_update(member, member.status))

    def _apply(self, update: Update, now: float, direct: bool = False) -> None:
        """SWIM's precedence rules; accepted changes are gossiped on (`direct`: the member
        itself told us, in a message of its own)."""
        if update.node_id == self.node_id:
            if self.left:
                return  # we are leaving: our death stands
            if (
                self.incarnation <= update.incarnation <= self.incarnation + INCARNATION_STEP
                and self._misstates(update)
            ):
                # Someone suspects (or buried) us, or says we live elsewhere or upload at
                # another rate: refute with a higher incarnation, as we are.
                self.incarnation = update.incarnation + 1
                refutation = self._own_update(Status.ALIVE)
                self._gossip_update(refutation)
                self._refutation = refutation
            return
        member = self.members.get(update.node_id)
        if member is None and (update.status is not Status.ALIVE or self._full(now, direct)):
            return  # a stranger's suspicion or death tells nothing; a full table, no more
        if member is not None and update.incarnation > member.incarnation + INCARNATION_STEP:
            return  # not a step its member could have taken: a liar's
        if (
            member is not None
            and update.capacity
            and not member.capacity
            and update.incarnation >= member.incarnation
        ):
            # What a node declares of itself, learned from any update as recent as ours (a
            # member first met by its ping is known before its own update arrives); once
            # known, it changes only with an update that overrides (below): one the member
            # refutes if it is a lie, not a repeat of its incarnation with another rate.
            member.capacity = update.capacity
        if member is not None and not _overrides(update, member):
            return
        if member is None:
            member = Member(
                update.node_id,
                update.address,
                update.incarnation,
                update.status,
                now,
                update.capacity,
                heard=direct,
            )
            self.members[update.node_id] = member
            changed = True
        else:
            changed = member.status is not update.status
            if update.status is Status.ALIVE:
                # The member's own word (or a relay of it), newer than ours: its rate too,
                # none included (a liar's rate forced on a member that declares none goes
                # with its refutation). A suspicion or a death carries no rate of its own.
                member.capacity = update.capacity
            member.address = update.address
            member.incarnation = update.incarnation
            if changed:
                member.since = now
            member.status = update.status
        if member.status is Status.SUSPECT:
            self._suspects.add(member.node_id)
            self._suspicions[member.node_id] = update
        else:
            self._suspects.discard(member.node_id)
            self._suspicions.pop(member.node_id, None)
        if member.status is Status.DEAD:
            self._link_heard.pop(member.node_id, None)
            if changed:
                self._deaths.append((member.since, member.node_id))
        if changed:
            self.events.append((update.node_id, update.status))
        self._gossip_update(update)

    def _gossip_update(self, update: Update) -> None:
        self._gossip[update.node_id] = _Gossip(update)

    def _piggyback(self) -> tuple[Update, ...]:
        limit = self.config.retransmit_limit(len(self.members) + 1)
        chosen = sorted(self._gossip.values(), key=lambda g: g.transmits)[
            : self.config.max_piggyback
        ]
        for gossip in chosen:
            gossip.transmits += 1
            if gossip.transmits >= limit:
                del self._gossip[gossip.update.node_id]
        updates = tuple(g.update for g in chosen)
        if self.capacity and not self.left and all(u.node_id != self.node_id for u in updates):
            # A declared capacity rides on every message: whoever meets this node by a
            # ping learns it at once, so all order the owners of a blob the same way.
            updates = (*updates, self._own_update(Status.ALIVE))
        return updates

    def _full(self, now: float, direct: bool) -> bool:
        """No room for a new member: the table holds MAX_MEMBERS, none of them dead, and the
        newcomer did not talk to us itself (`direct`), or every member has (a node that
        pings us takes the place of one we only heard of: a liar's made-up members are
        never heard from, and would keep every new node out)."""
        if len(self.members) < MAX_MEMBERS:
            return False
        self._forget_the_dead(now, room=True)
        if len(self.members) < MAX_MEMBERS:
            return False
        if direct:
            unheard = next((n for n, m in self.members.items() if not m.heard), None)
            if unheard is not None:
                self._forget(unheard)
                return False
        self.members_refused += 1
        return True

    def _forget_the_dead(self, now: float, room: bool = False) -> None:
        """Forget the members dead for DEAD_KEPT (`room`: the longest dead one, at least)."""
        while self._deaths:
            since, node_id = self._deaths[0]
            member = self.members.get(node_id)
            if member is not None and (member.status is not Status.DEAD or member.since != since):
                self._deaths.popleft()  # revived, or dead again since (a later entry counts)
                continue
            if member is not None and now - since <= DEAD_KEPT and not room:
                return
            self._deaths.popleft()
            if member is not None:
                self._forget(node_id)
                room = False

    def _forget(self, node_id: bytes) -> None:
        del self.members[node_id]
        self._link_heard.pop(node_id, None)
        self._suspects.discard(node_id)
        self._suspicions.pop(node_id, None)

    def _misstates(self, update: Update) -> bool:
        """`update`, about us, says other than we do (a capacity of 0 declares nothing)."""
        return (
            update.status is not Status.ALIVE
            or update.address != self.address
            or update.capacity not in (0, self.capacity)
        )

    def _own_update(self, status: Status) -> Update:
        """What we say of ourselves (with our declared capacity)."""
        return Update(self.node_id, self.address, self.incarnation, status, self.capacity)

    def _suspicion_timeout(self) -> float:
        return self.config.suspicion_timeout(len(self.members) + 1)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, address: Address, message: Message) -> None:
        self._outgoing.append((address, message))


def _member_update(member: Member, status: Status) -> Update:
    """`status` for `member` at its address and incarnation as we know them: what we say of
    it (its capacity is its own to declare)."""
    return Update(member.node_id, member.address, member.incarnation, status)


def _overrides(update: Update, member: Member) -> bool:
    """Whether `update` replaces what we believe about `member` (the SWIM paper's rules)."""
    if update.status is Status.ALIVE:
        return update.incarnation > member.incarnation
    if update.status is Status.SUSPECT:
        if member.status is Status.DEAD:
            return update.incarnation > member.incarnation
        if member.status is Status.SUSPECT:
            return update.incarnation > member.incarnation
        return update.incarnation >= member.incarnation
    # DEAD
    if member.status is Status.DEAD:
        return False
    return update.incarnation >= member.incarnation
