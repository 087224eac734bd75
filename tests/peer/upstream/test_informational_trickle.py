"""A registry that answers every request with `100 Continue`, again and again, and never with
a response (a helper's probe, 2026-12-07): each 1xx restarted the silence time-out, and httpx
and the blob stream both skip 1xx while they wait for the head, so the node's requests stayed
open for as long as the registry liked (600 s, until the probe stopped), holding connections
and the slots of the registries clients name. The head of an answer must now come within
`--upstream-timeout` of the request, whatever comes before it.

Real node and sockets; the registry is a raw TCP server on 127.0.0.2.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node

DIGEST = "sha256:" + "ab" * 32


class Continuer:
    """Reads a request, then sends `100 Continue` every 0.1 s until the connection ends."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.open = 0

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.2")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        try:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 65536:
                data = await stream.receive_some(4096)
                if not data:
                    return
                request += data
            for _ in range(6000):  # at most 10 minutes
                await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                await trio.sleep(0.1)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.open -= 1
            await stream.aclose()


@pytest.mark.parametrize("path", ["manifests/latest", f"blobs/{DIGEST}"])
async def test_an_answer_of_endless_1xx_is_given_up_within_the_upstream_timeout(
    tmp_path: Path, nursery: trio.Nursery, path: str
) -> None:
    registry = Continuer()
    await nursery.start(registry.serve)
    config = NodeConfig(
        http=Address("127.0.0.1", 0),
        data_dir=tmp_path / "store",
        default_upstream=f"http://127.0.0.2:{registry.port}",
        prefetch=False,
        upstream_timeout=1.0,
    )
    port = await nursery.start(Node(config).run)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        with trio.fail_after(30):
            answer = await client.get(f"/v2/org/app/{path}")
    assert answer.status_code in (502, 504)
    assert registry.connections >= 1
    with trio.fail_after(30):  # the node's connections to the registry end too
        while registry.open:
            await trio.sleep(0.05)
