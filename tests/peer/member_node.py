"""A real node on loopback with a fake registry, and a member that talks to its peer port
directly (a node with the cluster token, a liar perhaps): for tests of what a node answers
to what other nodes send it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.components import free_port
from peer.cluster.rendezvous import owner_order
from peer.config import Address, NodeConfig
from peer.node import Node
from peer.swarm.link import LinkClosed, PeerLink
from tests.peer.fake_registry import FakeRegistry, digest_of
from wire.events import (
    Bitfield,
    Event,
    Have,
    Members,
    Peers,
    Piece,
    PieceMeta,
    Refused,
    Reject,
    Request,
)
from wire.identity import NodeIdentity
from wire.names import address_text
from wire.protocol import Role

TOKEN = b"cluster token"


@dataclass
class Setup:
    registry: FakeRegistry
    node: Node
    client: httpx.AsyncClient
    peer_port: int


async def start_node(
    tmp_path: Path, nursery: trio.Nursery, registry: FakeRegistry, **settings: Any
) -> Setup:
    """A node on loopback (`settings`: NodeConfig fields other than the test's defaults)."""
    peer_port = free_port()
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=registry.url,
        piece_size=64 * 1024,
        peer=Address("127.0.0.1", peer_port),
        cluster_token=TOKEN,
    )
    node = Node(replace(config, **settings))
    port = await nursery.start(node.run)
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
    return Setup(registry, node, client, peer_port)


@asynccontextmanager
async def node_and_registry(
    tmp_path: Path, nursery: trio.Nursery, **settings: Any
) -> AsyncIterator[Setup]:
    """A node with a fake registry behind it (both running in `nursery`) and its client."""
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    made = await start_node(tmp_path, nursery, registry, **settings)
    async with made.client:
        yield made


@dataclass(eq=False)
class Member:
    """A node with the token asking the node for pieces directly."""

    link: PeerLink
    identity: NodeIdentity
    offers: list[Have | Bitfield] = field(default_factory=list)  # the node's, in order
    members: list[Members] = field(default_factory=list)  # the node's membership pushes
    metas: list[PieceMeta | Refused] = field(default_factory=list)  # answers to Wants
    peer_lists: list[Peers] = field(default_factory=list)  # answers to PeersRequests
    seen: list[Event] = field(default_factory=list)  # everything the node sent, in order

    def __post_init__(self) -> None:
        self.answers: trio.MemorySendChannel[Event]
        self.answers, self._answers = trio.open_memory_channel[Event](100)

    async def on_event(self, link: PeerLink, event: Event) -> None:
        self.seen.append(event)
        if isinstance(event, Piece | Reject):
            await self.answers.send(event)
        elif isinstance(event, Have | Bitfield):
            self.offers.append(event)
        elif isinstance(event, Members):
            self.members.append(event)
        elif isinstance(event, PieceMeta | Refused):
            self.metas.append(event)
        elif isinstance(event, Peers):
            self.peer_lists.append(event)

    async def run(self) -> None:
        async with self.answers:  # closed with the link: ask() then says so
            await self.link.run(self.on_event)

    async def ask(self, digest: str, index: int) -> Event | None:
        """The answer to a Request; None when the node closed the link instead."""
        try:
            await self.link.send(Request(digest, index))
            with trio.fail_after(10):
                return await self._answers.receive()
        except (LinkClosed, trio.EndOfChannel):
            return None


def node_at(setup: Setup) -> str:
    """The node's peer address, as its members dial it."""
    return address_text("127.0.0.1", setup.peer_port)


async def open_link(setup: Setup, identity: NodeIdentity) -> PeerLink:
    """A link to the node as the member `identity`, handshaken (no task reads it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", setup.peer_port)
    link = PeerLink(
        stream,
        identity,
        TOKEN,
        role=Role.INITIATOR,
        address=node_at(setup),
        peer_id=setup.node.node_id,
    )
    await link.handshake()
    return link


async def link_member(
    setup: Setup, nursery: trio.Nursery, identity: NodeIdentity | None = None
) -> Member:
    """A member linked to the node (as `identity`, a new one by default: a second link of the
    same member is what two nodes that connect to each other at once hold)."""
    identity = identity if identity is not None else NodeIdentity.generate()
    link = await open_link(setup, identity)
    member = Member(link, identity)
    nursery.start_soon(member.run)
    return member


async def serve_member(
    nursery: trio.Nursery,
    identity: NodeIdentity,
    port: int,
    on_event: Callable[[PeerLink, Event], Awaitable[None]],
) -> None:
    """A scripted member listening at 127.0.0.1:`port` as `identity` (the node dials it, as
    an owner or a peer): every link to it is answered by `on_event`."""

    async def accept(stream: trio.SocketStream) -> None:
        link = PeerLink(
            stream, identity, TOKEN, role=Role.RESPONDER, address=address_text("127.0.0.1", port)
        )
        try:
            await link.handshake()
            await link.run(on_event)
        except LinkClosed:
            pass

    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, accept, listeners)


async def announce_member(setup: Setup, identity: NodeIdentity, port: int) -> None:
    """`identity`'s member, listening at 127.0.0.1:`port`, says on a link of its own that it
    is a member; back once the node knows it."""
    member_id = identity.node_id
    hello = await open_link(setup, identity)
    await hello.send(Members([(member_id, "127.0.0.1", port, 0, 0, 0)], reply=True))
    await hello.close()
    membership = setup.node.membership
    assert membership is not None
    with trio.fail_after(10):
        while member_id not in membership.members:
            await trio.sleep(0.05)


def blob_owned_by(owner: NodeIdentity, node_id: bytes, size: int) -> bytes:
    """Random bytes of `size` whose rendezvous owner, between the node `node_id` and
    `owner`, is `owner`."""
    for _ in range(1000):
        data = os.urandom(size)
        if owner_order(digest_of(data), [node_id, owner.node_id])[0] == owner.node_id:
            return data
    raise AssertionError("no blob owned by the member in 1000 tries")
