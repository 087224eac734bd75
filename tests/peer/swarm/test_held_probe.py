"""Whom an owner asks whether they hold a blob: the next in order, then whom refusals name,
each once, within a budget of asks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from peer.swarm.held_probe import (
    HELD_ASKED,
    REDIRECTS,
    HeldProbe,
    fetches_from,
    not_held,
)
from wire.events import NOT_HELD_HEADER

US = b"U" * 16
NODES = [bytes([i]) * 16 for i in range(1, 20)]


def asked(probe: HeldProbe) -> list[bytes]:
    out = []
    while (node := probe.next()) is not None:
        out.append(node)
    return out


def test_the_next_nodes_in_order_are_asked_in_turn() -> None:
    assert asked(HeldProbe(US, NODES)) == NODES[:HELD_ASKED]
    assert asked(HeldProbe(US, NODES[:2])) == NODES[:2]
    assert asked(HeldProbe(US, [])) == []


def test_a_named_source_is_asked_next_and_never_us_or_twice() -> None:
    probe = HeldProbe(US, NODES)
    assert probe.next() == NODES[0]
    probe.refused(NODES[10])  # it fetches from an old node further down
    assert probe.next() == NODES[10]
    probe.refused(US)  # fetches from us: nobody new to ask
    probe.refused(NODES[10])  # asked already
    probe.refused(None)
    assert probe.next() == NODES[1]


@given(st.lists(st.sampled_from([*NODES, US, None]), max_size=40))
def test_asks_are_bounded_and_distinct_whatever_the_refusals_say(
    named: list[bytes | None],
) -> None:
    probe = HeldProbe(US, NODES)
    seen: list[bytes] = []
    for source in named:
        node = probe.next()
        if node is None:
            break
        seen.append(node)
        probe.refused(source)
    seen += asked(probe)
    assert len(seen) == len(set(seen)) <= HELD_ASKED + REDIRECTS
    assert US not in seen


def test_the_header_value_round_trips_and_junk_names_nobody() -> None:
    def named(source: bytes | None) -> bytes | None:
        answer = not_held("sha256:" + "a" * 64, source)
        assert answer.status == 404
        return fetches_from(answer.headers[NOT_HELD_HEADER])

    assert named(NODES[3]) == NODES[3]
    assert named(None) is None
    for junk in ["", "1", "zz" * 16, "ab" * 17, "-"]:
        assert fetches_from(junk) is None
