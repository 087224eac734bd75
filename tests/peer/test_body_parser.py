"""The parsing worker: small bodies in place, large ones in another process; what the reader
raises reaches the caller; a worker that dies fails only its own parse, and the next one gets
a new worker. Real worker processes (spawned), stopped by `close`."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator

import pytest
import trio

from peer.body_parser import BodyParser, ParserFailed
from peer.preheat.resolve import Platform, UnusableManifest, index_manifests
from pieces.manifest_facts import read_facts


def which_process(body: bytes) -> int:
    """The PID of the process that read `body`."""
    return os.getpid()


def die(body: bytes) -> int:
    """A reader that takes its process down with it (a worker killed mid-parse)."""
    os._exit(3)


@pytest.fixture
async def parser() -> AsyncIterator[BodyParser]:
    body_parser = BodyParser(inline_bytes=1024)
    try:
        yield body_parser
    finally:
        body_parser.close()


async def test_small_bodies_are_read_here_large_ones_in_the_worker(parser: BodyParser) -> None:
    assert await parser.parse(which_process, b"x" * 1024) == os.getpid()
    worker = await parser.parse(which_process, b"x" * 1025)
    assert worker != os.getpid()
    assert await parser.parse(which_process, b"y" * 5000) == worker  # one worker, kept
    assert parser.parsed_in_worker == 2


async def test_the_worker_reads_as_this_process_does(parser: BodyParser) -> None:
    layers = [{"digest": "sha256:" + f"{n:064x}", "size": n} for n in range(100)]
    body = json.dumps({"mediaType": "a/b", "layers": layers, "config": {}}).encode()
    assert len(body) > parser.inline_bytes
    assert await parser.parse(read_facts, body) == read_facts(body)


async def test_what_the_reader_raises_reaches_the_caller(parser: BodyParser) -> None:
    entries = [{"digest": "sha256:" + "a" * 64, "size": 1, "platform": {"os": "plan9"}}] * 20
    index = json.dumps({"manifests": entries}).encode()
    assert len(index) > parser.inline_bytes
    read = functools.partial(index_manifests, platforms=[Platform("linux", "amd64")])
    with pytest.raises(UnusableManifest, match="no manifest for linux/amd64"):
        await parser.parse(read, index)


async def test_a_worker_that_dies_fails_its_parse_only(parser: BodyParser) -> None:
    with pytest.raises(ParserFailed, match="died"):
        await parser.parse(die, b"z" * 2048)
    assert parser.worker_restarts == 2  # tried in a second worker, which died too
    assert await parser.parse(which_process, b"z" * 2048) != os.getpid()


async def test_a_cancelled_parse_leaves_the_parser_usable(parser: BodyParser) -> None:
    body = json.dumps([[[]]] * 300_000).encode()  # slow to parse: ~0.2 s
    with trio.move_on_after(0.01):
        await parser.parse(read_facts, body)
    assert (await parser.parse(read_facts, body)).error == "a JSON list, not an object"
