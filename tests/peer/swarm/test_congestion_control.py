"""The peer links' TCP congestion control (`--peer-congestion-control`): set on both ends of
every link, refused at start-up when the kernel will not give it, left alone as 'system'.

Reno is what these tests ask for: every Linux kernel has it and lets any process use it, and
it is neither this machine's default (BBR) nor the node's (CUBIC), so a link that has it got
it from the node."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from peer.config import Address, NodeConfig
from peer.swarm import congestion
from peer.swarm.congestion import CongestionControlUnavailable
from tests.peer.swarm.real_nodes import knows, make_node, registry_and_seed, running, until

ASKED = "reno"


def _algorithm(sock: socket.socket | trio.socket.SocketType) -> str:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
    return bytes(raw).split(b"\0", 1)[0].decode()


def _system_default() -> str:
    return Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()


def test_the_asked_algorithm_is_set_on_a_socket() -> None:
    assert _system_default() != ASKED
    with socket.socket() as sock:
        congestion.set_on(sock, ASKED)
        assert _algorithm(sock) == ASKED


def test_system_leaves_the_hosts_default() -> None:
    congestion.check(congestion.SYSTEM)
    with socket.socket() as sock:
        congestion.set_on(sock, congestion.SYSTEM)
        assert _algorithm(sock) == _system_default()


def test_the_default_is_one_this_kernel_gives() -> None:
    congestion.check(congestion.DEFAULT)
    assert NodeConfig(data_dir=Path("x")).peer_congestion_control == "cubic"


@pytest.mark.parametrize("name", ["no-such-algorithm", "", "c" * 200, "cubic\0bbr"])
def test_an_algorithm_the_kernel_refuses_stops_the_start(name: str, tmp_path: Path) -> None:
    config = NodeConfig(
        data_dir=tmp_path, peer=Address("127.0.0.1", 0), peer_congestion_control=name
    )
    with pytest.raises(CongestionControlUnavailable, match="peer-congestion-control") as caught:
        config.check()
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    assert all(known in str(caught.value) for known in allowed)  # what may be named instead


def test_a_lone_mirror_has_no_peer_links_to_set(tmp_path: Path) -> None:
    NodeConfig(data_dir=tmp_path, peer_congestion_control="no-such-algorithm").check()


async def test_both_ends_of_a_peer_link_use_the_asked_algorithm(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    registry, _ = await registry_and_seed(tmp_path, nursery)
    first = make_node(registry, tmp_path / "a", peer_congestion_control=ASKED)
    assert first.config.peer is not None
    second = make_node(
        registry, tmp_path / "b", join=(first.config.peer,), peer_congestion_control=ASKED
    )
    async with running(first, nursery), running(second, nursery):
        await until(lambda: knows(first, second) and knows(second, first))
        assert second.swarm is not None and first.swarm is not None
        await second.swarm.link_to(first.node_id)  # the initiator's end
        await until(lambda: second.node_id in first.swarm.links)  # type: ignore[union-attr]
        ends = [second.swarm.links[first.node_id], first.swarm.links[second.node_id]]
        for link in ends:
            assert isinstance(link.stream, trio.SocketStream)
            assert _algorithm(link.stream.socket) == ASKED
