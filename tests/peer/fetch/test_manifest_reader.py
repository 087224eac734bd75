"""The reader's cache of manifest facts: a digest read again is not parsed again, and what
it keeps is bounded by the descriptors it holds, however large the manifests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import trio
import trio.testing

from peer.body_parser import BodyParser
from peer.fetch.manifest_reader import ManifestReader
from pieces.digest import digest_bytes

T = TypeVar("T")


class CountingParser(BodyParser):
    """Parses in place, and counts."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies = 0

    async def parse(self, read: Callable[[bytes], T], body: bytes) -> T:
        self.bodies += 1
        return read(body)


def manifest(layers: int, tag: int = 0) -> tuple[str, bytes]:
    descriptors = [{"digest": "sha256:" + f"{tag:032x}{n:032x}", "size": n} for n in range(layers)]
    body = json.dumps({"layers": descriptors}).encode()
    return digest_bytes(body), body


async def test_a_manifest_read_again_is_not_parsed_again() -> None:
    parser = CountingParser()
    reader = ManifestReader(parser)
    digest, body = manifest(3)
    first = await reader.facts(digest, body)
    assert await reader.facts(digest, body) is first
    assert parser.bodies == 1
    assert len(first.descriptors) == 3


async def test_the_cache_holds_at_most_its_items() -> None:
    parser = CountingParser()
    reader = ManifestReader(parser, cached_items=100)
    bodies = [manifest(10, tag) for tag in range(20)]  # 21 items each (1 + 10 + 10)
    for digest, body in bodies:
        await reader.facts(digest, body)
    for digest, body in bodies[-4:]:  # the last four fit
        await reader.facts(digest, body)
    assert parser.bodies == 20
    await reader.facts(*bodies[0])  # long gone
    assert parser.bodies == 21
    huge = manifest(200, 99)  # larger than the whole cache: never kept
    await reader.facts(*huge)
    await reader.facts(*huge)
    assert parser.bodies == 23


class HeldParser(BodyParser):
    """Parses in place once `release` is set, and counts."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies = 0
        self.release = trio.Event()

    async def parse(self, read: Callable[[bytes], T], body: bytes) -> T:
        self.bodies += 1
        await self.release.wait()
        return read(body)


async def test_clients_of_one_manifest_at_once_share_its_parse(nursery: trio.Nursery) -> None:
    """N clients asking at once for one large manifest cost N parses in the worker (the
    cache was looked at only before the wait), and held back everyone else's (a review's
    find)."""
    parser = HeldParser()
    reader = ManifestReader(parser)
    digest, body = manifest(3)
    got: list[int] = []

    async def read() -> None:
        got.append(len((await reader.facts(digest, body)).descriptors))

    for _ in range(5):
        nursery.start_soon(read)
    await trio.testing.wait_all_tasks_blocked()
    parser.release.set()
    with trio.fail_after(5):
        while len(got) < 5:
            await trio.sleep(0.01)
    assert got == [3] * 5
    assert parser.bodies == 1
