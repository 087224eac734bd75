"""The peer links' TCP congestion control (`--peer-congestion-control`): set on both ends of
every link, CUBIC where none is named and this process may set it (else the host's, said in
the log), refused at start-up when a name given on purpose cannot be had.

Reno is what these tests name: every Linux kernel has it and lets any process use it, and it
is neither this machine's default (BBR) nor the node's preference (CUBIC), so a link that has
it got it from the node."""

from __future__ import annotations

import errno
import functools
import logging
import socket
from pathlib import Path

import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from peer.swarm import congestion
from peer.swarm.congestion import CongestionControlUnavailable
from peer.swarm.link import PeerLink
from tests.peer.fake_registry import FakeRegistry
from tests.peer.swarm.real_nodes import (
    blob_where,
    first_of,
    knows,
    make_node,
    registry_and_seed,
    running,
    until,
)

ASKED = "reno"


def _algorithm(sock: socket.socket | trio.socket.SocketType) -> str:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return bytes(raw).split(b"\0", 1)[0].decode()


def _system_default() -> str:
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def _allowed() -> list[str]:
    return Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()


def _two_nodes_naming(name: str, registry: FakeRegistry, tmp_path: Path) -> tuple[Node, Node]:
    """Two nodes given `name` for their links, the second joining through the first."""
    first = make_node(registry, tmp_path / "a", peer_congestion_control=name)
    assert first.config.peer is not None
    second = make_node(
        registry, tmp_path / "b", join=(first.config.peer,), peer_congestion_control=name
    )
    return first, second


def test_the_named_algorithm_is_set_on_a_socket() -> None:
    assert _system_default() != ASKED
    with socket.socket() as sock:
        congestion.set_on(sock, ASKED)
        assert _algorithm(sock) == ASKED


def test_system_leaves_the_hosts_default() -> None:
    congestion.check(congestion.SYSTEM)
    with socket.socket() as sock:
        congestion.set_on(sock, congestion.SYSTEM)
        assert _algorithm(sock) == _system_default()


def test_without_a_name_cubic_is_used() -> None:
    assert NodeConfig(data_dir=Path("x")).peer_congestion_control is None
    assert congestion.choose(None) == ("cubic", None)


def test_a_name_given_is_used() -> None:
    assert congestion.choose(ASKED) == (ASKED, None)


def test_without_a_name_a_host_that_refuses_cubic_keeps_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def restricted(_sock: object, name: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(congestion, "set_on", restricted)
    algorithms, refused = congestion.choose(None)
    assert algorithms == congestion.SYSTEM
    assert refused is not None and "CAP_NET_ADMIN" in refused


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("nosuchalgo", "no such algorithm"),  # a name, which the kernel does not have
        ("no-such-algorithm", "not an algorithm's name"),  # over the kernel's 15 characters
        ("", "not an algorithm's name"),
        ("cubic\0bbr", "not an algorithm's name"),  # the kernel would read "cubic"
    ],
)
def test_a_name_that_cannot_be_had_stops_the_start(name: str, why: str, tmp_path: Path) -> None:
    config = NodeConfig(
        data_dir=tmp_path, peer=Address("127.0.0.1", 0), peer_congestion_control=name
    )
    with pytest.raises(CongestionControlUnavailable, match="peer-congestion-control") as caught:
        config.check()
    assert why in str(caught.value)
    assert all(known in str(caught.value) for known in _allowed())  # what may be named


def test_a_restricted_name_says_what_would_allow_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def restricted(_sock: object, name: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(congestion, "set_on", restricted)
    with pytest.raises(CongestionControlUnavailable, match="CAP_NET_ADMIN"):
        congestion.check("bbr")


def test_a_lone_mirror_has_no_peer_links_to_set(tmp_path: Path) -> None:
    NodeConfig(data_dir=tmp_path, peer_congestion_control="nosuchalgo").check()


async def test_both_ends_of_a_peer_link_use_the_named_algorithm(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first, second = _two_nodes_naming(ASKED, registry, tmp_path)
    async with running(first, nursery), running(second, nursery):
        await until(lambda: knows(first, second) and knows(second, first))
        assert first.swarm is not None and second.swarm is not None
        here = (await second.swarm.link_to(first.node_id)).stream
        assert isinstance(here, trio.SocketStream)
        there: list[trio.SocketStream] = []  # the other end of that very connection

        def found() -> bool:
            for link in first.swarm._open_links.get(second.node_id, set()):  # type: ignore[union-attr]
                stream = link.stream
                if not isinstance(stream, trio.SocketStream):
                    continue
                if stream.socket.getpeername() == here.socket.getsockname():
                    there.append(stream)
            return bool(there)

        await until(found)
        ends = {second: here, first: there[0]}
        # One end was accepted (it sits on its node's peer port), the other dialled out.
        ports = {node: node.config.peer.port for node in ends if node.config.peer is not None}
        accepted = [n for n, end in ends.items() if end.socket.getsockname()[1] == ports[n]]
        assert len(accepted) == 1
        for end in ends.values():
            assert _algorithm(end.socket) == ASKED


def links_between(node: Node, peer: Node) -> set[PeerLink]:
    """The links `node` has open to `peer` now."""
    assert node.swarm is not None
    return set(node.swarm._open_links.get(peer.node_id, ()))


def forgotten(node: Node, peer: Node, links: set[PeerLink]) -> bool:
    """Whether `node` holds none of these `links` to `peer` open any more."""
    return not links & links_between(node, peer)


async def test_links_whose_sockets_refuse_still_work_and_are_logged_once_a_period(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(_sock: object, name: str) -> None:  # the host's settings changed since start
        raise PermissionError(errno.EPERM, "Operation not permitted")

    registry, _ = await registry_and_seed(tmp_path, nursery)
    first, second = _two_nodes_naming(ASKED, registry, tmp_path)
    data = blob_where(lambda d: first_of(d, first, second) == first.node_id)
    digest = registry.add_blob(data)
    monkeypatch.setattr(congestion, "set_on", refused)
    caplog.set_level(logging.WARNING, "pollen.swarm")
    async with running(first, nursery) as a, running(second, nursery) as b:
        await until(lambda: knows(first, second) and knows(second, first))
        assert await a.pull(digest) == data
        assert await b.pull(digest) == data  # from the owner, over a link
        assert first.swarm is not None and second.swarm is not None
        for _ in range(3):  # more links within the period: no more lines
            await second.swarm.link_to(first.node_id)  # dialled when none is open
            # Every link between them, each until this node has forgotten it: the wait until
            # the first node had no link to the second ran out once in CI (two links stand
            # when both nodes dialled at once, 1 run in 15 here, and either node may dial
            # again meanwhile).
            closed = links_between(second, first)
            for link in closed:
                await link.close()
            await until(functools.partial(forgotten, second, first, closed))
    assert registry.count("GET", digest) == 1
    told = [r.getMessage() for r in caplog.records if "congestion control" in r.getMessage()]
    assert len(told) == 2, told  # one per node: the dialling end and the accepting end
    assert all(ASKED in line and "refused" in line for line in told)


async def test_while_a_node_fetches_from_the_registry_its_links_keep_cubic(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """No name given: CUBIC on every link, the fetching owner's too (BBR there overran the
    uplinks' queues: docs/issue10/HISTORY.md, *The peer links' congestion control, again*)."""
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first = make_node(registry, tmp_path / "a")
    assert first.config.peer is not None
    second = make_node(registry, tmp_path / "b", join=(first.config.peer,))
    data = blob_where(lambda d: first_of(d, first, second) == second.node_id)
    digest = registry.add_blob(data)
    registry.gate = trio.Event()  # the registry holds its answer
    async with running(first, nursery), running(second, nursery) as b:
        await until(lambda: knows(first, second) and knows(second, first))
        assert first.swarm is not None and second.swarm is not None
        link = await second.swarm.link_to(first.node_id)
        assert isinstance(link.stream, trio.SocketStream)
        assert _algorithm(link.stream.socket) == "cubic"
        pulled: list[bytes] = []

        async def pull() -> None:
            pulled.append(await b.pull(digest))

        nursery.start_soon(pull)
        await until(lambda: registry.count("GET", digest) > 0)  # the owner's fetch runs
        assert _algorithm(link.stream.socket) == "cubic"
        far_end = first.swarm.links[second.node_id].stream
        assert isinstance(far_end, trio.SocketStream)
        assert _algorithm(far_end.socket) == "cubic"
        registry.gate.set()
        await until(lambda: bool(pulled))
        assert pulled == [data]
        assert _algorithm(link.stream.socket) == "cubic"


async def test_system_given_later_gives_the_open_links_the_hosts_default_again(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A reload to `system` must undo what the node set on its open links, not only leave
    the next ones alone."""
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first, second = _two_nodes_naming(ASKED, registry, tmp_path)
    async with running(first, nursery), running(second, nursery):
        await until(lambda: knows(first, second) and knows(second, first))
        assert second.swarm is not None
        link = await second.swarm.link_to(first.node_id)
        assert isinstance(link.stream, trio.SocketStream)
        assert _algorithm(link.stream.socket) == ASKED != _system_default()
        second.swarm.use_congestion_control(congestion.SYSTEM)
        assert _algorithm(link.stream.socket) == _system_default()
        assert second.swarm.applied_congestion_control == congestion.SYSTEM


def test_open_links_are_given_the_name_or_for_system_the_hosts_default() -> None:
    assert congestion.for_open_links(ASKED) == ASKED
    assert congestion.for_open_links(congestion.SYSTEM) == _system_default()
