"""The membership driver: SWIM datagrams over UDP on the peer port, and its datagram codec.

Each datagram is `mac(16) || msgpack([sent_at, message])`, where mac is a truncated
HMAC-SHA256 keyed by the cluster token (the empty key in an open cluster), so a node without
the token cannot join the membership or spread lies about it, and `sent_at` the sender's wall
clock (Unix seconds): a datagram sent more than MAX_CLOCK_SKEW from the receiver's clock is
dropped, so that one captured and sent again later is not taken (a node that had left and
been forgotten came back to life so, from anyone who had seen its traffic, a ghost owner
every fetch dialled in vain). Datagrams that fail the MAC or do not decode are dropped and
counted. Nodes' clocks must agree within MAX_CLOCK_SKEW (NTP does, by far); a node whose
clock does not hears nobody, and says so in its log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import socket
import time
from collections.abc import Iterable
from typing import Any, Protocol

import msgpack
import trio

from peer.cluster.membership import Ack, Address, Membership, Message, Ping, PingReq, Status, Update
from peer.listening import cannot_listen
from peer.log_throttle import LogThrottle
from wire.names import is_valid_host, is_valid_port

log = logging.getLogger("pollen.gossip")

MAC_SIZE = 16
# Incarnations a member may claim: a node raises its own once per refutation, and 2**62 is
# never reached; msgpack's largest integer (2**64 - 1) plus one cannot be encoded.
MAX_INCARNATION = 2**62
MAX_DATAGRAM = 60_000
# --join names are resolved again this often (seconds) while the node has no member, and then
# at this period: the nodes behind a name (a headless Service) come and go.
RESOLVE_WHILE_JOINING = 2.0
LINK_REFUTATION_EVERY = 0.5  # our refutations go out on the peer links at most this often
RESOLVE_PERIOD = 30.0
# Seconds a datagram's sending time may be from the receiver's clock. Under DEAD_KEPT, so
# that no replay outlives the memory of a death (word of a member we hold dead at that
# incarnation changes nothing); wide enough for hosts whose clocks drift between syncs.
MAX_CLOCK_SKEW = 60.0
STALE_LOG_PERIOD = 60.0
_PING, _ACK, _PING_REQ = 1, 2, 3
_STATUSES = frozenset(int(s) for s in Status)


class BadDatagram(ValueError):
    """A datagram that failed authentication or decoding."""


class StaleDatagram(BadDatagram):
    """An authentic datagram sent too far from now: a replay, or clocks that disagree."""


def update_out(u: Update) -> tuple[bytes, str, int, int, int, int]:
    """One member's state as gossip (UDP) and the swarm's Members sync (TCP) carry it."""
    return (u.node_id, u.address[0], u.address[1], u.incarnation, int(u.status), u.capacity)


def update_in(raw: Any) -> Update:
    """Checked: raises BadDatagram for anything but a valid member."""
    if not isinstance(raw, list | tuple) or len(raw) != 6:
        raise BadDatagram("bad update")
    node_id, host, port, incarnation, status, capacity = raw
    if type(capacity) is not int or not 0 <= capacity < 2**48:
        raise BadDatagram("bad capacity")
    if not (isinstance(node_id, bytes) and len(node_id) == 16 and is_valid_host(host)):
        raise BadDatagram("bad update")
    if not (is_valid_port(port) and type(incarnation) is int):
        raise BadDatagram("bad update")
    if not 0 <= incarnation < MAX_INCARNATION:
        # Past it our refutation (one more) might not encode, and the gossip task would end.
        raise BadDatagram("bad incarnation")
    if status not in _STATUSES:
        raise BadDatagram("bad status")
    return Update(node_id, (host, port), incarnation, Status(status), capacity)


def _address_in(raw: Any) -> Address:
    host, port = raw
    if not is_valid_host(host) or not is_valid_port(port):
        raise BadDatagram("bad address")
    return (host, port)


def encode(message: Message, token: bytes | None, sent_at: float) -> bytes:
    """The datagram for `message`, sent at `sent_at` (wall clock, Unix seconds)."""
    updates = [update_out(u) for u in message.updates]
    body: list[Any]
    if isinstance(message, Ping):
        behalf = list(message.on_behalf_of) if message.on_behalf_of else None
        body = [_PING, message.seq, message.sender, list(message.sender_address), updates, behalf]
    elif isinstance(message, Ack):
        body = [_ACK, message.seq, message.sender, updates]
    else:
        body = [
            _PING_REQ,
            message.seq,
            message.sender,
            list(message.sender_address),
            message.target,
            list(message.target_address),
            updates,
        ]
    packed: bytes = msgpack.packb([float(sent_at), body], use_bin_type=True)
    return _mac(token, packed) + packed


def decode(datagram: bytes, token: bytes | None, now: float) -> Message:
    """The message in `datagram`, received at `now` (wall clock, Unix seconds).

    Raises:
        StaleDatagram: authentic, but sent more than MAX_CLOCK_SKEW from `now`.
        BadDatagram: anything unauthenticated or malformed.
    """
    mac, packed = datagram[:MAC_SIZE], datagram[MAC_SIZE:]
    if not hmac.compare_digest(mac, _mac(token, packed)):
        raise BadDatagram("wrong cluster token or corrupted")
    try:
        sent_at, body = msgpack.unpackb(packed, raw=False)
        if type(sent_at) is not float or not math.isfinite(sent_at):
            raise BadDatagram("bad sending time")
        if abs(now - sent_at) > MAX_CLOCK_SKEW:
            raise StaleDatagram(
                f"sent {now - sent_at:+.0f}s from this host's clock (over {MAX_CLOCK_SKEW:.0f}s):"
                " a replay, or the two hosts' clocks disagree"
            )
        kind, seq, sender = body[0], body[1], body[2]
        if not isinstance(seq, int) or not isinstance(sender, bytes) or len(sender) != 16:
            raise BadDatagram("bad header")
        if kind == _PING:
            behalf = _address_in(body[5]) if body[5] is not None else None
            updates = tuple(update_in(u) for u in body[4])
            return Ping(seq, sender, _address_in(body[3]), updates, behalf)
        if kind == _ACK:
            return Ack(seq, sender, tuple(update_in(u) for u in body[3]))
        if kind == _PING_REQ:
            target = body[4]
            if not isinstance(target, bytes) or len(target) != 16:
                raise BadDatagram("bad target")
            updates = tuple(update_in(u) for u in body[6])
            return PingReq(seq, sender, _address_in(body[3]), target, _address_in(body[5]), updates)
    except BadDatagram:
        raise
    except Exception as exc:  # msgpack and unpacking raise many types on garbage
        raise BadDatagram(f"undecodable: {type(exc).__name__}") from None
    raise BadDatagram(f"unknown kind {kind}")


def _mac(token: bytes | None, data: bytes) -> bytes:
    return hmac.new(token or b"", data, hashlib.sha256).digest()[:MAC_SIZE]


class PeerLinks(Protocol):
    """The swarm's TCP links as gossip uses them (peer/swarm/swarm.py)."""

    def links_heard(self) -> Iterable[tuple[bytes, float]]:
        """Each linked peer and when it last sent us anything on its link."""
        ...

    def tell_links(self, update: Update) -> None:
        """Send `update` (our own) to every linked peer."""
        ...

    def tell_member(self, update: Update) -> None:
        """Send `update` to the member it is about, if we hold a link to it."""
        ...


class GossipDriver:
    """Runs a Membership on a UDP socket with the real clock."""

    def __init__(self, membership: Membership, bind: Address, token: bytes | None) -> None:
        self.membership = membership
        self.bind = bind
        self.token = token
        # The swarm's links, once it runs: what they heard goes to the membership before
        # every tick (`heard_on_link`), our refutations go out on them (`take_refutation`).
        self.links: PeerLinks | None = None
        self._refutation: Update | None = None  # not yet sent on the links
        self._refuted_at = -math.inf  # when one last was
        self.dropped = 0
        self._stale_told = LogThrottle(STALE_LOG_PERIOD)
        self._socket: trio.socket.SocketType | None = None
        self._wake = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            await sock.bind(self.bind)
        except OSError as exc:
            sock.close()
            raise cannot_listen("gossip, UDP", *self.bind, exc) from exc
        self._socket = sock
        with sock:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, sock)
                if self.membership.seeds:
                    nursery.start_soon(self._resolve_seeds, sock, self.membership.seeds)
                await self._timer_loop(sock)

    async def _resolve_seeds(
        self, sock: trio.socket.SocketType, names: tuple[Address, ...]
    ) -> None:
        """Resolve the --join names to every IPv4 address they have, again and again: often
        while the node has no member, then every RESOLVE_PERIOD (a name's nodes change)."""
        while True:
            resolved: list[Address] = []
            for host, port in names:
                try:
                    infos = await trio.socket.getaddrinfo(
                        host, port, family=trio.socket.AF_INET, type=trio.socket.SOCK_DGRAM
                    )
                except OSError as exc:  # gaierror: not (yet) in DNS
                    log.info("--join %s:%d does not resolve (yet): %s", host, port, exc)
                    continue
                resolved += [(str(info[4][0]), int(info[4][1])) for info in infos]
            if resolved:
                self.membership.set_seeds(resolved)
                await self._flush(sock)
            joining = not self.membership.alive()
            await trio.sleep(RESOLVE_WHILE_JOINING if joining else RESOLVE_PERIOD)

    async def leave(self) -> None:
        """Tell every member that this node leaves (Membership.leave), now."""
        self.membership.leave()
        if self._socket is not None:
            await self._flush(self._socket)

    async def _receive_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            data, source = await sock.recvfrom(MAX_DATAGRAM)
            try:
                message = decode(data, self.token, time.time())
            except StaleDatagram as exc:
                # Anyone who saw a datagram can send it again: told once a period at most.
                self.dropped += 1
                if (left_out := self._stale_told.event(trio.current_time())) is not None:
                    log.warning(
                        "dropped gossip from %s: %s (%d more such since the last told)",
                        source[0],
                        exc,
                        left_out,
                    )
                continue
            except BadDatagram as exc:
                self.dropped += 1
                log.debug("dropped a datagram from %s: %s", source, exc)
                continue
            self.membership.receive(message, (source[0], source[1]), trio.current_time())
            self._tell_links()
            await self._flush(sock)
            self._wake.set()

    async def _timer_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            now = trio.current_time()
            if self.links is not None:
                for node_id, heard_at in self.links.links_heard():
                    self.membership.heard_on_link(node_id, heard_at)
            self.membership.tick(now)
            self._tell_links()  # also what a push-pull sync on a link brought
            await self._flush(sock)
            self._log_changes()
            deadline = self.membership.next_deadline()
            wait = 0.2 if deadline is None else max(0.0, min(deadline - now, 0.2))
            with trio.move_on_after(wait if not math.isinf(wait) else 0.2):
                await self._wake.wait()
            self._wake = trio.Event()

    def _tell_links(self) -> None:
        """Our refutation to every linked peer (the latest, at most every LINK_REFUTATION_EVERY
        seconds: a member that suspects us in datagram after datagram makes us refute each
        time), and each new suspicion to its suspect."""
        refutation = self.membership.take_refutation()
        suspicions = self.membership.take_suspicions()
        if self.links is None:
            return
        if refutation is not None:
            self._refutation = refutation
        now = trio.current_time()
        if self._refutation is not None and now >= self._refuted_at + LINK_REFUTATION_EVERY:
            self.links.tell_links(self._refutation)
            self._refutation, self._refuted_at = None, now
        for suspicion in suspicions:
            self.links.tell_member(suspicion)

    async def _flush(self, sock: trio.socket.SocketType) -> None:
        for address, message in self.membership.take_outgoing():
            try:
                await sock.sendto(encode(message, self.token, time.time()), address)
            except (OSError, ValueError) as exc:  # ValueError: a host the resolver refuses
                log.debug("gossip to %s failed: %s", address, exc)

    def _log_changes(self) -> None:
        for node_id, status in self.membership.events:
            log.info("member %s is %s", node_id.hex()[:12], status.name.lower())
        self.membership.events.clear()
