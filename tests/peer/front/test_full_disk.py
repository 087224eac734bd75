"""A full disk under a real pollen front (a small tmpfs, a real ENOSPC): a blob that cannot fit
gets a clear 507 before any byte is promised, nothing is left behind to keep the disk full, and
the node recovers by itself once there is room, also after a restart."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from peer.config import Address, NodeConfig
from peer.node import Node
from tests.peer.fake_registry import FakeRegistry
from tests.tmpfs import mounted_tmpfs

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: a real ENOSPC, not a simulated one."""
    with mounted_tmpfs(tmp_path / "tiny", "2m") as mount:
        yield mount


@dataclass
class Running:
    node: Node
    client: httpx.AsyncClient
    stop: Callable[[], None]  # stop the node now (the block still ends as usual)


@contextlib.asynccontextmanager
async def running_node(data_dir: Path, registry: FakeRegistry) -> AsyncIterator[Running]:
    """A node on `data_dir` until the block ends (then stopped, as a restart would)."""
    node = Node(
        NodeConfig(
            http=Address("127.0.0.1", 0),
            data_dir=data_dir,
            default_upstream=registry.url,
            piece_size=64 * KiB,
            upstream_timeout=2.0,
        )
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(node.run)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield Running(node, client, nursery.cancel_scope.cancel)
        nursery.cancel_scope.cancel()


def fill(disk: Path) -> Path:
    """Take every free byte of `disk` with a file that is not pollen's."""
    filler = disk / "filler"
    chunk = b"\xff" * (64 * KiB)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\xff" * 4096)
    return filler


async def wait_idle(running: Running) -> None:
    with trio.fail_after(10):
        while running.node.downloads_in_flight():
            await trio.sleep(0.01)


async def get_ok(running: Running, digest: str, data: bytes) -> None:
    response = await running.client.get(f"/v2/org/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.content == data
    await wait_idle(running)


async def get_507(running: Running, digest: str, why: str) -> None:
    response = await running.client.get(f"/v2/org/app/blobs/{digest}")
    assert response.status_code == 507
    assert response.headers["content-type"] == "application/json"
    assert why in response.json()["errors"][0]["message"]
    await wait_idle(running)


def partials(disk: Path) -> list[str]:
    return sorted(p.name for p in (disk / "partial").iterdir())


async def test_a_full_disk_gets_a_clear_status_and_the_node_recovers(
    tiny_disk: Path, nursery: trio.Nursery
) -> None:
    registry = FakeRegistry()
    await nursery.start(registry.serve)
    big = os.urandom(3 * MiB)
    big_digest = registry.add_blob(big)
    small = [os.urandom(size * KiB) for size in (256, 512, 256, 256)]
    small_digests = [registry.add_blob(data) for data in small]

    async with running_node(tiny_disk, registry) as running:
        # Larger than the disk: refused before any byte, nothing left behind.
        await get_507(running, big_digest, "larger than the disk")
        assert partials(tiny_disk) == []
        await get_ok(running, small_digests[0], small[0])

        # The disk filled by someone else, more than the cache could free: refused; once the
        # space is back, served.
        filler = fill(tiny_disk)
        await get_507(running, small_digests[1], "free on disk")
        filler.unlink()
        await get_ok(running, small_digests[1], small[1])

        # The disk fills mid-stream: the stream is cut, the partial dropped, and the node
        # serves the blob once there is room again.
        middle = os.urandom(768 * KiB)
        middle_digest = registry.add_blob(middle)
        registry.pace = 0.02
        async with trio.open_nursery() as inner:
            cut = trio.Event()

            async def fetch() -> None:
                with pytest.raises(httpx.RemoteProtocolError):
                    await running.client.get(f"/v2/org/app/blobs/{middle_digest}")
                cut.set()

            inner.start_soon(fetch)
            with trio.fail_after(10):
                while (partial := running.node.store.partial(middle_digest)) is None or (
                    partial.bytes_present < 128 * KiB
                ):
                    await trio.sleep(0.005)
            filler = fill(tiny_disk)
            await cut.wait()
        registry.pace = 0.0
        await wait_idle(running)
        assert partials(tiny_disk) == []
        filler.unlink()
        await get_ok(running, middle_digest, middle)

        # The node stops mid-download: the partial stays for a resume, on most of the disk.
        leftover = os.urandom(1536 * KiB)
        leftover_digest = registry.add_blob(leftover)
        registry.pace = 0.01
        async with trio.open_nursery() as inner:

            async def fetch_until_stopped() -> None:
                with pytest.raises(httpx.HTTPError):
                    await running.client.get(f"/v2/org/app/blobs/{leftover_digest}")

            inner.start_soon(fetch_until_stopped)
            with trio.fail_after(10):
                while (partial := running.node.store.partial(leftover_digest)) is None or (
                    partial.bytes_present < 1 * MiB
                ):
                    await trio.sleep(0.005)
            running.stop()
        registry.pace = 0.0
        assert len(partials(tiny_disk)) == 2  # its data and meta

    # After a restart the leftover partial does not block new blobs, and the rest holds.
    async with running_node(tiny_disk, registry) as running:
        fresh = os.urandom(1 * MiB)
        await get_ok(running, registry.add_blob(fresh), fresh)
        assert partials(tiny_disk) == []  # the leftover made room
        await get_507(running, big_digest, "larger than the disk")
        await get_ok(running, small_digests[2], small[2])
        # The disk filled by someone else: the cache makes room.
        filler = fill(tiny_disk)
        await get_ok(running, small_digests[3], small[3])
        filler.unlink()
