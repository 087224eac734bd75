"""SWIM membership on a seeded, lossy fake network with a fake clock."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest

from peer.cluster.gossip import MAX_INCARNATION
from peer.cluster.membership import (
    DEAD_KEPT,
    INCARNATION_STEP,
    MAX_MEMBERS,
    Ack,
    Address,
    Membership,
    Message,
    Ping,
    Status,
    SwimConfig,
    Update,
)

CONFIG = SwimConfig()


@dataclass(order=True)
class _Delivery:
    at: float
    order: int
    destination: Address = field(compare=False)
    source: Address = field(compare=False)
    message: Message = field(compare=False)


class FakeNetwork:
    """Delivers datagrams with random latency; drops `loss` of them; nodes can be paused."""

    def __init__(self, seed: int, loss: float) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.now = 0.0
        self.nodes: dict[Address, Membership] = {}
        self.paused: set[Address] = set()
        self.stopped: set[Address] = set()
        self._queue: list[_Delivery] = []
        self._order = 0
        self.sent: dict[tuple[Address, Address], int] = {}
        # Pairs of nodes that hold a peer link carrying something each step (a rollout's
        # pieces): each hears the other on it (`Membership.heard_on_link`) while both run.
        self.links: set[frozenset[Address]] = set()
        # As the driver does: our refutation also goes to the linked, a suspicion to the
        # suspect if linked.
        self.tell_on_links = False

    def add(self, index: int, seeds: tuple[Address, ...]) -> Membership:
        address = (f"10.0.0.{index}", 7000)  # names only: nothing is sent on any network
        node = Membership(
            index.to_bytes(16, "big"),
            address,
            CONFIG,
            random.Random(self.rng.random()),
            seeds,
        )
        self.nodes[address] = node
        return node

    def run_until(self, end: float, step: float = 0.05) -> None:
        while self.now < end:
            self.now = round(self.now + step, 6)
            while self._queue and self._queue[0].at <= self.now:
                d = heapq.heappop(self._queue)
                if d.destination in self.stopped or d.destination in self.paused:
                    continue
                target = self.nodes.get(d.destination)
                if target is not None:
                    target.receive(d.message, d.source, d.at)
            running = {
                address: node
                for address, node in self.nodes.items()
                if address not in self.stopped and address not in self.paused
            }
            for address, node in running.items():
                linked = [o for a, o in running.items() if frozenset((a, address)) in self.links]
                for other in linked:
                    node.heard_on_link(other.node_id, self.now)
                deadline = node.next_deadline()
                if deadline is None or deadline <= self.now:
                    node.tick(self.now)
                refutation = node.take_refutation()
                suspicions = node.take_suspicions()
                for other in linked if self.tell_on_links else []:  # TCP: nothing lost
                    if refutation is not None:
                        other.merge([refutation], self.now)
                    for suspicion in suspicions:
                        if suspicion.node_id == other.node_id:
                            other.merge([suspicion], self.now)
                for destination, message in node.take_outgoing():
                    key = (address, destination)
                    self.sent[key] = self.sent.get(key, 0) + 1
                    if self.rng.random() < self.loss:
                        continue
                    self._order += 1
                    latency = self.rng.uniform(0.001, 0.02)
                    heapq.heappush(
                        self._queue,
                        _Delivery(self.now + latency, self._order, destination, address, message),
                    )

    def link_all(self) -> None:
        self.links = {frozenset((a, b)) for a in self.nodes for b in self.nodes if a != b}

    def link_some(self, per_node: int) -> None:
        """Link each node to `per_node` others at random (and to those that chose it)."""
        addresses = list(self.nodes)
        self.links = set()
        for a in addresses:
            for b in self.rng.sample([x for x in addresses if x != a], per_node):
                self.links.add(frozenset((a, b)))

    def views(self) -> dict[Address, set[bytes]]:
        return {
            a: n.alive_ids()
            for a, n in self.nodes.items()
            if a not in self.stopped and a not in self.paused
        }


def cluster(n: int, seed: int, loss: float) -> FakeNetwork:
    net = FakeNetwork(seed, loss)
    seed_address = ("10.0.0.0", 7000)
    for i in range(n):
        net.add(i, () if i == 0 else (seed_address,))
    return net


def converged(net: FakeNetwork, expected: set[bytes]) -> bool:
    return all(view == expected for view in net.views().values())


def test_twenty_nodes_converge_over_a_lossy_network() -> None:
    net = cluster(20, seed=1, loss=0.05)
    everyone = {n.node_id for n in net.nodes.values()}
    for _ in range(120):  # bounded: at most 60 s of simulated time
        net.run_until(net.now + 0.5)
        if converged(net, everyone):
            break
    print(f"converged after {net.now:.1f}s")
    assert converged(net, everyone), {a: len(v) for a, v in net.views().items()}
    # Nobody was wrongly declared dead on the way.
    assert all(s is not Status.DEAD for n in net.nodes.values() for _, s in n.events)


@pytest.mark.parametrize("linked", [False, True])
def test_a_killed_node_is_declared_dead_on_every_survivor_within_the_bound(linked: bool) -> None:
    """Also when the nodes hear each other on peer links: a killed node's links fall silent."""
    net = cluster(20, seed=2, loss=0.05)
    if linked:
        net.link_all()
    everyone = {n.node_id for n in net.nodes.values()}
    net.run_until(30)
    assert converged(net, everyone)
    victim = ("10.0.0.7", 7000)
    victim_id = net.nodes[victim].node_id
    net.stopped.add(victim)
    killed_at = net.now
    bound = CONFIG.detection_bound(20)
    dead_at: dict[Address, float] = {}
    while net.now < killed_at + bound and len(dead_at) < 19:
        net.run_until(net.now + 0.25)
        for address, node in net.nodes.items():
            if address in net.stopped or address in dead_at:
                continue
            member = node.members[victim_id]
            if member.status is Status.DEAD:
                dead_at[address] = net.now
    assert len(dead_at) == 19, f"{19 - len(dead_at)} survivors still think it lives"
    print(
        f"dead on all survivors after {max(dead_at.values()) - killed_at:.1f}s (bound {bound:.1f}s)"
    )
    assert max(dead_at.values()) - killed_at <= bound
    # The survivors still agree on each other.
    assert converged(net, everyone - {victim_id})


def _deaths_with_a_third_of_datagrams_lost(linked: bool) -> list[Status]:
    """Sixteen converged nodes, then two minutes with a third of all datagrams lost: the
    suspicions and deaths declared (every node is alive all along)."""
    net = cluster(16, seed=5, loss=0.0)
    everyone = {n.node_id for n in net.nodes.values()}
    net.run_until(30)
    assert converged(net, everyone)
    for node in net.nodes.values():
        node.events.clear()
    net.loss = 0.33
    if linked:
        net.link_all()
    net.run_until(150)
    return [status for n in net.nodes.values() for _, status in n.events]


def test_members_heard_on_peer_links_are_neither_suspected_nor_buried_when_datagrams_are_lost() -> (
    None
):
    """On the testbed's shaped links, full of pieces, gossip's datagrams were lost and live
    nodes were declared dead by the hundred: with only datagrams to go by, here too. A node
    heard on a link since its probe went out is not suspected."""
    blind = _deaths_with_a_third_of_datagrams_lost(linked=False)
    assert blind.count(Status.DEAD) > 0  # the hole: live nodes buried
    assert _deaths_with_a_third_of_datagrams_lost(linked=True) == []


def test_a_suspect_heard_on_a_link_is_not_buried_by_us_while_it_talks() -> None:
    """Another member's suspicion reaches us; the suspect keeps talking on our link to it:
    we do not declare it dead (only its refutation clears the suspicion), until it falls
    silent for a suspicion time-out."""
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    other, address = b"o" * 16, ("10.0.0.2", 7000)
    me.merge([Update(other, address, 0, Status.ALIVE)], 0.0)
    me.merge([Update(other, address, 0, Status.SUSPECT)], 1.0)
    timeout = CONFIG.suspicion_timeout(2)
    told = me.take_suspicions()  # the driver tells the suspect on its link
    now = 1.0
    while now < 1.0 + 3 * timeout:  # it talks for three time-outs
        me.heard_on_link(other, now)
        me.tick(now)
        assert me.members[other].status is Status.SUSPECT, now
        deadline = me.next_deadline()
        assert deadline is not None and deadline > now  # no tick loop on a re-armed suspect
        told += me.take_suspicions()
        now += 0.25
    # Each time its suspicion waits longer, the suspect is told again (a word may be lost).
    assert told == [Update(other, address, 0, Status.SUSPECT)] * len(told) and len(told) >= 3
    silent_from = now - 0.25
    while me.members[other].status is Status.SUSPECT and now < silent_from + 2 * timeout:
        me.tick(now)
        now += 0.25
    assert me.members[other].status is Status.DEAD
    assert silent_from + timeout <= now - 0.25 < silent_from + timeout + 0.5


def test_a_link_word_counts_only_for_a_live_member() -> None:
    """A link may claim any node id: words from ids that are not members are not kept (they
    would pile up), and a dead member stays dead."""
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    for i in range(100):
        me.heard_on_link(bytes([i]) * 16, 1.0)
    assert me._link_heard == {}
    dead, address = b"d" * 16, ("10.0.0.2", 7000)
    me.merge([Update(dead, address, 0, Status.ALIVE), Update(dead, address, 0, Status.DEAD)], 1.0)
    me.heard_on_link(dead, 2.0)
    me.tick(2.0)
    assert me.members[dead].status is Status.DEAD and me._link_heard == {}


def test_a_ping_to_a_suspect_tells_it_of_its_suspicion() -> None:
    """Lifeguard's buddy system: the suspect refutes at once, not when gossip reaches it."""
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    others = [(bytes([i]) * 16, (f"10.0.0.{i}", 7000)) for i in range(2, 14)]
    me.merge([Update(node_id, address, 0, Status.ALIVE) for node_id, address in others], 0.0)
    suspect, suspect_address = others[0]
    me.merge([Update(suspect, suspect_address, 3, Status.SUSPECT)], 0.5)
    for _ in range(1000):  # gossip spent: no ping carries the suspicion unless for the suspect
        if not me._piggyback():
            break
    assert me._piggyback() == ()
    me.take_outgoing()
    ids = dict((address, node_id) for node_id, address in others)
    pinged = False
    now = 1.0
    while not pinged and now < 30:  # bounded: round robin reaches every member in 12 periods
        me.heard_on_link(suspect, now)  # keeps its suspicion from ending before we probe it
        me.tick(now)
        for address, message in me.take_outgoing():
            if address == suspect_address and isinstance(message, Ping):
                pinged = True
                assert Update(suspect, suspect_address, 3, Status.SUSPECT) in message.updates
            elif isinstance(message, Ping):
                me.receive(Ack(message.seq, ids[address]), address, now)
        now += 0.1
    assert pinged


def test_a_refutation_is_handed_to_the_driver_once() -> None:
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    assert me.take_refutation() is None
    me.merge([Update(me.node_id, me.address, 2, Status.SUSPECT)], 1.0)
    assert me.take_refutation() == Update(me.node_id, me.address, 3, Status.ALIVE)
    assert me.take_refutation() is None
    me.merge([Update(me.node_id, me.address, 1, Status.DEAD)], 2.0)  # older than ours: nothing
    assert me.take_refutation() is None


def test_suspicions_and_refutations_on_links_save_suspects_that_lost_datagrams_would_bury() -> None:
    """Each node linked to two others, a third of datagrams lost: a suspect told of its
    suspicion on a link, and whose refutation reaches its linked peers there, is buried far
    less often than with gossip's datagrams alone."""

    def deaths(tell_on_links: bool) -> int:
        net = cluster(16, seed=5, loss=0.0)
        net.run_until(30)
        assert converged(net, {n.node_id for n in net.nodes.values()})
        for node in net.nodes.values():
            node.events.clear()
        net.loss, net.tell_on_links = 0.33, tell_on_links
        net.link_some(2)
        net.run_until(150)
        return sum(status is Status.DEAD for n in net.nodes.values() for _, status in n.events)

    gossip_only, with_links = deaths(False), deaths(True)
    print(f"live nodes buried in 120 s: {gossip_only} by gossip alone, {with_links} with links")
    assert with_links < gossip_only / 1.5


def test_new_suspicions_are_handed_to_the_driver_once() -> None:
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    a, b = (b"a" * 16, ("10.0.0.2", 7000)), (b"b" * 16, ("10.0.0.3", 7000))
    me.merge([Update(*a, 0, Status.ALIVE), Update(*b, 0, Status.ALIVE)], 0.0)
    assert me.take_suspicions() == []
    me.merge([Update(*a, 0, Status.SUSPECT), Update(*b, 0, Status.SUSPECT)], 1.0)
    me.merge([Update(*b, 1, Status.ALIVE)], 1.5)  # b refuted before the driver looked
    assert me.take_suspicions() == [Update(*a, 0, Status.SUSPECT)]
    assert me.take_suspicions() == []


def test_a_paused_node_refutes_its_suspicion() -> None:
    net = cluster(10, seed=3, loss=0.0)
    everyone = {n.node_id for n in net.nodes.values()}
    net.run_until(20)
    assert converged(net, everyone)
    sleeper = ("10.0.0.4", 7000)
    sleeper_id = net.nodes[sleeper].node_id
    net.paused.add(sleeper)
    # Long enough to be suspected, shorter than the suspicion time-out.
    suspected = False
    for _ in range(40):
        net.run_until(net.now + 0.25)
        if any(
            n.members[sleeper_id].status is Status.SUSPECT
            for a, n in net.nodes.items()
            if a != sleeper
        ):
            suspected = True
            break
    assert suspected
    net.paused.discard(sleeper)
    net.run_until(net.now + CONFIG.suspicion_timeout(10) * 3)
    assert net.nodes[sleeper].incarnation > 0  # it refuted
    assert converged(net, everyone)
    assert all(
        n.members[sleeper_id].status is Status.ALIVE for a, n in net.nodes.items() if a != sleeper
    )
    assert not any(
        node_id == sleeper_id and status is Status.DEAD
        for n in net.nodes.values()
        for node_id, status in n.events
    )


def test_join_retries_with_back_off_until_the_seed_answers() -> None:
    net = FakeNetwork(seed=4, loss=0.0)
    seed = ("10.0.0.0", 7000)
    late = net.add(1, (seed,))
    net.run_until(20)
    # The seed is not there yet: the joiner retried, each time waiting longer (1+2+4+8 s).
    assert late.alive() == []
    assert net.sent[(late.address, seed)] == 5
    first = net.add(0, ())
    net.run_until(net.now + CONFIG.join_retry_max + 5)
    assert late.alive_ids() == first.alive_ids() == {late.node_id, first.node_id}


def test_a_leaving_node_is_dead_everywhere_at_once_and_stays_dead() -> None:
    """A node that shuts down says so: no member waits for a probe, a suspicion and its
    time-out (seconds at best); and its own death, gossiped back to it, is not refuted."""
    net = cluster(10, seed=4, loss=0.0)
    everyone = {n.node_id for n in net.nodes.values()}
    net.run_until(20)
    assert converged(net, everyone)
    leaver_address = ("10.0.0.5", 7000)
    leaver = net.nodes[leaver_address]
    leaver.leave()
    left_at = net.now
    net.run_until(left_at + 0.1)  # the farewell datagrams' latency, not a probe period
    others = [n for a, n in net.nodes.items() if a != leaver_address]
    assert all(n.members[leaver.node_id].status is Status.DEAD for n in others)
    net.run_until(left_at + 30)  # gossip and full syncs of its death come back to it
    assert all(n.members[leaver.node_id].status is Status.DEAD for n in others)
    assert leaver.take_outgoing() == [] and leaver.next_deadline() is None
    own = next(u for u in leaver.full_state() if u.node_id == leaver.node_id)
    assert own.status is Status.DEAD
    for node in others:  # a push-pull sync from the leaver does not bring it back
        node.merge(leaver.full_state(), net.now)
        assert node.members[leaver.node_id].status is Status.DEAD


def test_newly_resolved_join_addresses_are_pinged_once_and_known_ones_not() -> None:
    """`--join NAME` resolves to the addresses of every node (a headless Service): each
    address it did not know is pinged, so two nodes that started alone (each found only
    itself) find each other when the name resolves to both."""
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1), (("peers", 7000),))
    me.set_seeds([("10.0.0.1", 7000)])  # only ourselves so far: nobody to ping
    assert me.take_outgoing() == []
    me.set_seeds([("10.0.0.1", 7000), ("10.0.0.2", 7000), ("10.0.0.3", 7000)])
    pinged = [address for address, _ in me.take_outgoing()]
    assert sorted(pinged) == [("10.0.0.2", 7000), ("10.0.0.3", 7000)]
    me.receive(Ping(1, b"b" * 16, ("10.0.0.2", 7000)), ("10.0.0.2", 7000), 0.0)
    me.take_outgoing()
    me.set_seeds([("10.0.0.2", 7000), ("10.0.0.3", 7000)])  # .2 is a member now
    assert [address for address, _ in me.take_outgoing()] == [("10.0.0.3", 7000)]
    assert me.seeds == (("10.0.0.2", 7000), ("10.0.0.3", 7000))


def test_a_declared_capacity_reaches_every_member_with_the_member() -> None:
    """Rendezvous weights need the same capacities everywhere as soon as a member is known:
    a node's capacity rides on its pings, not only on the periodic full sync."""
    net = FakeNetwork(seed=3, loss=0.0)
    seed_address = ("10.0.0.0", 7000)
    nodes = [net.add(i, () if i == 0 else (seed_address,)) for i in range(6)]
    nodes[5].capacity = 25_000_000 // 8
    everyone = {n.node_id for n in nodes}
    for _ in range(200):  # bounded: at most 20 s of simulated time
        net.run_until(net.now + 0.1)
        if converged(net, everyone):
            break
    assert converged(net, everyone)
    net.run_until(net.now + 5)
    slow = nodes[5].node_id
    for node in nodes[:5]:
        assert node.capacities() == {slow: 25_000_000 // 8}, node.address
    assert nodes[5].capacities() == {slow: 25_000_000 // 8}
    full = {u.node_id: u.capacity for u in nodes[0].full_state()}
    assert full[slow] == 25_000_000 // 8 and full[nodes[0].node_id] == 0


def test_a_node_that_left_no_longer_says_it_is_alive() -> None:
    net = FakeNetwork(seed=4, loss=0.0)
    seed_address = ("10.0.0.0", 7000)
    nodes = [net.add(i, () if i == 0 else (seed_address,)) for i in range(3)]
    nodes[2].capacity = 1000
    net.run_until(5.0)
    nodes[2].leave()
    net.run_until(net.now + 0.1)
    updates = nodes[2]._piggyback()
    assert all(u.status is not Status.ALIVE for u in updates if u.node_id == nodes[2].node_id)


# ---- a member that lies about others (it holds the cluster token; ids are claimed) -----------

V_ID, V_ADDRESS = b"v" * 16, ("10.0.0.2", 7000)
LIAR_ADDRESS = ("10.0.0.66", 7000)


def _knowing_v(capacity: int = 0) -> Membership:
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.ALIVE, capacity)], 0.0)
    return me


def test_a_node_refutes_another_address_put_in_its_mouth() -> None:
    """A liar says we live at its address (so that nodes dial it for our blobs, and send it
    their clients' credentials): we refute it, with our own address, at once."""
    v = Membership(V_ID, V_ADDRESS, CONFIG, random.Random(1))
    v.merge([Update(V_ID, LIAR_ADDRESS, 0, Status.ALIVE)], 1.0)
    assert v.take_refutation() == Update(V_ID, V_ADDRESS, 1, Status.ALIVE)
    # Our refutation overrides the lie wherever it went.
    me = _knowing_v()
    me.merge([Update(V_ID, LIAR_ADDRESS, 6, Status.ALIVE)], 1.0)
    me.merge([Update(V_ID, V_ADDRESS, 7, Status.ALIVE)], 2.0)
    assert me.members[V_ID].address == V_ADDRESS


def test_a_node_refutes_another_capacity_put_in_its_mouth() -> None:
    v = Membership(V_ID, V_ADDRESS, CONFIG, random.Random(1))
    v.capacity = 12_500_000
    v.merge([Update(V_ID, V_ADDRESS, 0, Status.ALIVE, 1)], 1.0)
    assert v.take_refutation() == Update(V_ID, V_ADDRESS, 1, Status.ALIVE, 12_500_000)
    # Not declaring one is no claim (a node first met by its ping is known before its update).
    v.merge([Update(V_ID, V_ADDRESS, 1, Status.ALIVE, 0)], 2.0)
    assert v.take_refutation() is None


def test_a_capacity_changes_only_with_a_newer_word_of_its_member() -> None:
    """A liar repeating a member's incarnation with another capacity changes nothing: only an
    update that overrides (which the member refutes if it is a lie) does."""
    me = _knowing_v(capacity=12_500_000)
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.ALIVE, 1)], 1.0)
    assert me.capacities() == {V_ID: 12_500_000}
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.SUSPECT, 1)], 2.0)  # overrides the status only
    assert me.capacities() == {V_ID: 12_500_000}
    me.merge([Update(V_ID, V_ADDRESS, 6, Status.ALIVE, 3_125_000)], 3.0)
    assert me.capacities() == {V_ID: 3_125_000}
    # A member we knew without one learns it from any update as recent as ours.
    other = _knowing_v()
    other.merge([Update(V_ID, V_ADDRESS, 5, Status.ALIVE, 12_500_000)], 1.0)
    assert other.capacities() == {V_ID: 12_500_000}


def test_an_incarnation_far_ahead_of_a_members_is_not_believed() -> None:
    """A liar cannot bury a member for good by naming an incarnation its refutation cannot
    pass (one more than the largest that encodes): a known member's incarnation moves in
    steps, and a node refutes only claims within a step of its own."""
    me = _knowing_v()
    me.merge([Update(V_ID, V_ADDRESS, MAX_INCARNATION - 1, Status.DEAD)], 1.0)
    assert me.members[V_ID].status is Status.ALIVE and me.members[V_ID].incarnation == 5
    me.merge([Update(V_ID, LIAR_ADDRESS, 5 + INCARNATION_STEP + 1, Status.ALIVE)], 1.0)
    assert me.members[V_ID].address == V_ADDRESS
    me.merge([Update(V_ID, V_ADDRESS, 5 + INCARNATION_STEP, Status.SUSPECT)], 1.0)
    assert me.members[V_ID].status is Status.SUSPECT  # within a step: SWIM's rules
    v = Membership(V_ID, V_ADDRESS, CONFIG, random.Random(1))
    v.merge([Update(V_ID, V_ADDRESS, MAX_INCARNATION - 1, Status.DEAD)], 1.0)
    assert v.take_refutation() is None and v.incarnation == 0
    v.merge([Update(V_ID, V_ADDRESS, INCARNATION_STEP, Status.DEAD)], 1.0)
    refutation = v.take_refutation()
    assert refutation is not None and refutation.incarnation == INCARNATION_STEP + 1


def test_word_of_the_suspicion_or_death_of_a_stranger_adds_nothing() -> None:
    """As memberlist does: a member first heard of as suspect or dead is not added (a liar's
    stream of made-up dead members grew the table without bound)."""
    me = Membership(b"m" * 16, ("10.0.0.1", 7000), CONFIG, random.Random(1))
    strangers = [bytes([i]) * 16 for i in range(2, 200)]
    me.merge([Update(s, ("10.0.0.9", 7000), 0, Status.DEAD) for s in strangers[:99]], 0.0)
    me.merge([Update(s, ("10.0.0.9", 7000), 0, Status.SUSPECT) for s in strangers[99:]], 0.0)
    assert me.members == {}


def test_a_dead_member_is_forgotten_after_a_while() -> None:
    me = _knowing_v()
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.DEAD)], 1.0)
    me.tick(1.0 + DEAD_KEPT - 0.5)
    assert me.members[V_ID].status is Status.DEAD  # long enough to tell others
    me.tick(1.0 + DEAD_KEPT + 0.5)
    assert V_ID not in me.members
    # Stale word of it, now a stranger's death, does not bring it back.
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.DEAD)], 2.0 + DEAD_KEPT)
    assert V_ID not in me.members


def test_the_member_table_is_bounded() -> None:
    """A liar's stream of made-up live members stops at MAX_MEMBERS: the table, the probes
    and the full state it costs are bounded; members already known keep their entries."""
    me = _knowing_v()
    fakes = [
        Update(i.to_bytes(16, "big"), ("10.1.0.1", 1 + i % 60000), 0, Status.ALIVE)
        for i in range(1, MAX_MEMBERS + 100)
    ]
    me.merge(fakes, 1.0)
    assert len(me.members) == MAX_MEMBERS
    me.merge([Update(V_ID, V_ADDRESS, 6, Status.SUSPECT)], 2.0)
    assert me.members[V_ID].status is Status.SUSPECT


def test_a_rate_forced_on_a_member_that_declares_none_goes_with_its_refutation() -> None:
    """A liar says a member that declares no rate uploads at 1 byte/s (it would own nothing):
    the member refutes with its own word, no rate, and that word counts."""
    me = _knowing_v()
    me.merge([Update(V_ID, V_ADDRESS, 5, Status.ALIVE, 1)], 1.0)
    assert me.capacities() == {V_ID: 1}
    v = Membership(V_ID, V_ADDRESS, CONFIG, random.Random(1))
    v.incarnation = 5
    v.merge([Update(V_ID, V_ADDRESS, 5, Status.ALIVE, 1)], 1.0)
    refutation = v.take_refutation()
    assert refutation == Update(V_ID, V_ADDRESS, 6, Status.ALIVE, 0)
    me.merge([refutation], 2.0)
    assert me.capacities() == {}


def test_a_full_table_makes_room_for_a_node_that_talks_to_us() -> None:
    """A liar that fills the table with made-up members keeps no real node out: one that
    pings us takes the place of the longest dead, else of a member never heard from itself
    (a made-up one is never heard: no process answers for it)."""
    me = _knowing_v()
    me.merge([Update(V_ID, V_ADDRESS, 6, Status.DEAD)], 1.0)
    fakes = [
        Update(i.to_bytes(16, "big"), ("10.1.0.1", 1 + i % 60000), 0, Status.ALIVE)
        for i in range(1, MAX_MEMBERS + 100)
    ]
    me.merge(fakes, 2.0)
    assert len(me.members) == MAX_MEMBERS
    joiner, address = b"j" * 16, ("10.0.0.7", 7000)
    me.receive(Ping(1, joiner, address), address, 3.0)
    assert joiner in me.members and V_ID not in me.members  # the dead one made room
    other, other_address = b"o" * 16, ("10.0.0.8", 7000)
    me.receive(Ping(2, other, other_address), other_address, 4.0)
    assert other in me.members and len(me.members) == MAX_MEMBERS
    # Word of a member we never heard from ourselves makes no room.
    me.merge([Update(b"w" * 16, ("10.0.0.9", 7000), 0, Status.ALIVE)], 5.0)
    assert b"w" * 16 not in me.members
