"""A member reached that never completes the handshake is noted unreachable, as one whose
address refuses the connection is: only a failed connect was noted, so every owner's answer
that listed such a member dialled it again and waited out the handshake's time-out (a review's
find). A real node; the member is a port that accepts and says nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import peer.swarm.link
from bench.components import free_port
from peer.swarm.link import LinkClosed
from tests.peer.member_node import announce_member, node_and_registry
from wire.identity import NodeIdentity


async def test_a_member_that_never_handshakes_is_noted_unreachable(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer.swarm.link, "HANDSHAKE_TIMEOUT", 0.5)
    async with node_and_registry(tmp_path, nursery) as setup:
        swarm = setup.node.swarm
        assert swarm is not None
        member, port = NodeIdentity.generate(), free_port(avoid=[setup.peer_port])
        accepted: list[trio.SocketStream] = []

        async def mute(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            await trio.sleep_forever()

        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        nursery.start_soon(trio.serve_listeners, mute, listeners)
        await announce_member(setup, member, port)
        # The announcing link was the member's own (a real handshake, closed by it): link_to
        # would hand it back until the node has seen it close.
        with trio.fail_after(10):
            while (link := swarm.links.get(member.node_id)) is not None and not link.closed:
                await trio.sleep(0.01)
        assert not swarm.bans.is_unreachable(member.node_id, trio.current_time())
        with pytest.raises(LinkClosed, match="handshake timed out"):
            await swarm.link_to(member.node_id)
        assert accepted  # reached: the connect itself succeeded
        assert swarm.bans.is_unreachable(member.node_id, trio.current_time())
