"""The parsing worker: small bodies in place, large ones in another process; what the reader
raises reaches the caller; a worker that dies (mid-parse or idle) or is too slow fails only
its own parse, and the next one gets a new worker; the wait for it is bounded. Real worker
processes (spawned), stopped when `workers()` closes."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
import trio

from peer import body_parser
from peer.body_parser import BodyParser, ParserBusy, ParserFailed
from peer.preheat.resolve import Platform, UnusableManifest, index_manifests
from pieces.manifest_facts import read_facts


def which_process(body: bytes) -> int:
    """The PID of the process that read `body`."""
    return os.getpid()


def die(body: bytes) -> int:
    """A reader that takes its process down with it (a worker killed mid-parse)."""
    os._exit(3)


def stall(body: bytes) -> int:
    """A reader that never ends on its own (bounded: 60 s)."""
    time.sleep(60)
    return 0


def _alive(pid: int) -> bool:
    """Running, not dead (a zombie waits for its parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def parser() -> AsyncIterator[BodyParser]:
    body_parser = BodyParser(inline_bytes=1024, timeout=5.0)
    async with body_parser.workers():
        yield body_parser


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
    assert parser.worker_failures == 1
    assert await parser.parse(which_process, b"z" * 2048) != os.getpid()


async def test_a_worker_killed_while_idle_is_replaced(parser: BodyParser) -> None:
    """The standard library's pool broke for good when its worker died between parses (the
    OOM killer, an operator): every later large manifest failed (a review's find)."""
    worker = await parser.parse(which_process, b"w" * 2048)
    os.kill(worker, signal.SIGKILL)
    with trio.fail_after(10):
        while _alive(worker):
            await trio.sleep(0.05)
    for _ in range(3):
        assert await parser.parse(which_process, b"w" * 2048) not in (worker, os.getpid())


async def test_a_parse_over_the_time_out_is_killed_with_its_worker(parser: BodyParser) -> None:
    parser.timeout = 0.5
    with pytest.raises(ParserFailed, match=r"over 0\.5 s"):
        await parser.parse(stall, b"s" * 2048)
    assert parser.worker_failures == 1
    parser.timeout = 5.0
    assert await parser.parse(which_process, b"s" * 2048) != os.getpid()


async def test_bodies_beyond_the_waiting_bound_are_refused(
    parser: BodyParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(body_parser, "WAITING", 2)
    parser.timeout = 30.0
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await parser.parse(stall, b"q" * 2048)
            outcomes.append("parsed")
        except ParserBusy:
            outcomes.append("busy")

    with trio.move_on_after(3):  # one stalls in the worker, two wait: the rest are refused
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(one)
    assert outcomes == ["busy"] * 3
    assert await parser.parse(which_process, b"q" * 2048) != os.getpid()  # cancelled: freed


async def test_a_cancelled_parse_leaves_the_parser_usable(parser: BodyParser) -> None:
    body = json.dumps([[[]]] * 300_000).encode()  # slow to parse: ~0.2 s
    with trio.move_on_after(0.01):
        await parser.parse(read_facts, body)
    assert (await parser.parse(read_facts, body)).error == "a JSON list, not an object"


async def test_without_workers_a_large_body_is_a_bug_not_a_parse_here() -> None:
    with pytest.raises(RuntimeError, match="no workers"):
        await BodyParser(inline_bytes=10).parse(read_facts, b"[" * 11)
