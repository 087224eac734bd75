"""The relay attack on the handshake, played with PeerProtocol objects and no network.

A and B are honest nodes with the cluster token; M (the attacker) has no token but can open
connections to both, accept theirs, read every frame, forward it, or forge frames with any
field changed. Protocol version 1 fell to this: B's Hello nonce relayed to A made A send a
proof that B accepted as coming from A. Every arrangement below must leave the honest
endpoint of each of M's connections short of OPEN, and no honest responder may send a Proof
before it has verified the initiator's.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import pytest

from wire.errors import RemoteProtocolError
from wire.events import PROTOCOL_VERSION, Event, FileRange, Have, Hello, Proof
from wire.frames import FrameDecoder, encode
from wire.identity import NodeIdentity
from wire.protocol import CLOSED, NEED_DATA, PeerProtocol, Role, State

TOKEN = b"cluster token"
A, B, M = (NodeIdentity(letter * 32) for letter in (b"A", b"B", b"M"))
A_ID, B_ID, M_ID = A.node_id, B.node_id, M.node_id
IDENTITIES = {A_ID: A, B_ID: B, M_ID: M}
AT = {A_ID: "a.test:1", B_ID: "b.test:1", M_ID: "m.test:1"}  # each as the others dial it


class Honest:
    """One honest endpoint of a connection to M, driven the way PeerLink drives it."""

    def __init__(
        self, node_id: bytes, role: Role, peer_id: bytes | None = None, encrypt: bool = False
    ) -> None:
        self.protocol = PeerProtocol(
            IDENTITIES[node_id],
            TOKEN,
            role=role,
            address=AT[peer_id] if peer_id is not None else AT[node_id],
            peer_id=peer_id,
            nonce=os.urandom(32),
            ephemeral=os.urandom(32),
            encrypt=encrypt,
        )
        self.outbox = bytearray()
        self.refused: RemoteProtocolError | None = None
        self.proofs_sent = 0
        if role is Role.INITIATOR:
            self.outbox += self.protocol.hello()

    @property
    def opened(self) -> bool:
        return self.protocol.state is State.OPEN

    def take(self) -> bytes:
        out = bytes(self.outbox)
        self.outbox.clear()
        return out

    def receive(self, data: bytes) -> None:
        """Frames from M (nothing to pass on is not the end of the connection)."""
        if not data or self.refused is not None or self.protocol.state is State.CLOSED:
            return
        self.protocol.receive_data(data)
        try:
            while True:
                event = self.protocol.next_event()
                if event is NEED_DATA or event is CLOSED:
                    return
                if isinstance(event, Hello):
                    if self.protocol.role is Role.RESPONDER:
                        self.outbox += self.protocol.hello()
                    else:
                        self._prove()
                elif isinstance(event, Proof) and self.protocol.role is Role.RESPONDER:
                    self._prove()
        except RemoteProtocolError as exc:
            self.refused = exc

    def _prove(self) -> None:
        # The property under test: a responder proves only once the initiator has.
        if self.protocol.role is Role.RESPONDER:
            assert self.protocol.state is State.OPEN, "responder proved before verifying"
        self.outbox += self.protocol.proof()
        self.proofs_sent += 1


def frames(data: bytes) -> list[Event]:
    """What M reads from bytes an honest endpoint sent (handshake frames are plain)."""
    decoder = FrameDecoder(1 << 20)
    decoder.feed(data)
    out = []
    while (event := decoder.next_event()) is not None:
        out.append(event)
    return out


def forge(event: Event, **changes: Any) -> bytes:
    """`event` with some fields changed, as a frame: what M can send without the token. A
    Hello given another node id gets that node's identity public key too (M has seen it: it
    is in every Hello of that node), or it would be refused before any proof."""
    if isinstance(event, Hello) and "node_id" in changes and "identity" not in changes:
        changes["identity"] = IDENTITIES[changes["node_id"]].public
    if isinstance(event, Hello) and "callee" in changes and "dialed" not in changes:
        callee = changes["callee"]
        changes["dialed"] = AT[callee] if callee is not None else None
    changed = dataclasses.replace(event, **changes)
    return b"".join(b for b in encode(changed) if not isinstance(b, FileRange))


def m_hello(node_id: bytes, callee: bytes | None, **changes: Any) -> bytes:
    """A Hello of M's own making, claiming to be `node_id` (with that node's identity public
    key, which every peer of it sees)."""
    identity = IDENTITIES[node_id].public
    dialed = AT[callee] if callee is not None else None
    hello = Hello(
        PROTOCOL_VERSION, node_id, os.urandom(32), os.urandom(32), identity, callee, False, dialed
    )
    return forge(hello, **changes)


def only(data: bytes, kind: type[Hello] | type[Proof]) -> Hello | Proof:
    (event,) = frames(data)
    assert isinstance(event, kind)
    return event


# Each arrangement plays M against fresh honest endpoints and returns them all.
Arrangement = Callable[[], list[Honest]]


def m_dials_both_and_relays_b_nonce_to_a() -> list[Honest]:
    """The attack that opened version 1: M dials A and B, claims to be A towards B, and
    hands B's nonce and key to A hoping A will prove over them."""
    a = Honest(A_ID, Role.RESPONDER)
    b = Honest(B_ID, Role.RESPONDER)
    b.receive(m_hello(A_ID, B_ID))
    hello_b = only(b.take(), Hello)
    a.receive(forge(hello_b, callee=A_ID))  # B's nonce and key, as an initiator's Hello
    only(a.take(), Hello)  # A answers, then waits for a proof M cannot make
    b.receive(forge(Proof(os.urandom(32))))
    return [a, b]


def m_dials_both_and_reflects_a_hellos() -> list[Honest]:
    """M dials A three times and plays A's Hellos back to A on the other connections."""
    a1 = Honest(A_ID, Role.RESPONDER)
    a2 = Honest(A_ID, Role.RESPONDER)
    a3 = Honest(A_ID, Role.RESPONDER)
    a1.receive(m_hello(B_ID, A_ID))
    hello_1 = only(a1.take(), Hello)
    a2.receive(forge(hello_1, callee=A_ID))  # A's own id: refused as a loop
    a3.receive(forge(hello_1, node_id=B_ID, callee=A_ID))  # A's nonce and key, as B's
    a1.receive(forge(only(a3.take(), Hello), node_id=B_ID))
    return [a1, a2, a3]


def a_dials_m_and_m_forwards_to_b_unchanged() -> list[Honest]:
    """A dials M (believing it is node M); M passes A's frames to B and back, unchanged."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    b = Honest(B_ID, Role.RESPONDER)
    b.receive(a.take())  # names M as callee: B is not M
    a.receive(b.take())
    b.receive(a.take())
    return [a, b]


def a_dials_m_and_m_retargets_the_hellos() -> list[Honest]:
    """As above, but M rewrites the callee of A's Hello to B and the sender of B's Hello
    to M, so each honest node sees the Hello it expects."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    b = Honest(B_ID, Role.RESPONDER)
    hello_a = only(a.take(), Hello)
    b.receive(forge(hello_a, callee=B_ID))
    hello_b = only(b.take(), Hello)
    a.receive(forge(hello_b, node_id=M_ID))
    proof_a = a.take()  # A proves, over the transcript it saw
    b.receive(proof_a)
    a.receive(b.take())
    return [a, b]


def a_dials_m_and_m_answers_itself() -> list[Honest]:
    """M answers A's connection with a Hello of its own and carries A's proof to B, in a
    connection where M claims to be A with A's Hello."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    b = Honest(B_ID, Role.RESPONDER)
    hello_a = only(a.take(), Hello)
    b.receive(forge(hello_a, callee=B_ID))
    hello_b = only(b.take(), Hello)
    a.receive(forge(hello_b, node_id=M_ID))
    b.receive(a.take())
    return [a, b]


def a_dials_m_and_m_answers_with_b_hello() -> list[Honest]:
    """A dials M; M answers with B's Hello as it is (B's id): A refuses before proving."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    b = Honest(B_ID, Role.RESPONDER)
    b.receive(forge(only(a.take(), Hello), callee=B_ID))
    a.receive(b.take())
    assert a.proofs_sent == 0
    return [a, b]


def a_and_b_dial_m_and_m_swaps_their_proofs() -> list[Honest]:
    """Both honest nodes dial M (believing it is node M), which answers each with the other's
    Hello (as from M), then swaps the initiators' proofs."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    b = Honest(B_ID, Role.INITIATOR, peer_id=M_ID)
    hello_a = only(a.take(), Hello)
    hello_b = only(b.take(), Hello)
    a.receive(forge(hello_b, node_id=M_ID, callee=None))
    b.receive(forge(hello_a, node_id=M_ID, callee=None))
    proof_a, proof_b = a.take(), b.take()
    a.receive(proof_b)
    b.receive(proof_a)
    return [a, b]


def a_dials_m_which_dials_a_back() -> list[Honest]:
    """Reflection: A dials M; M dials A and plays A's own frames back between the two."""
    out = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    back = Honest(A_ID, Role.RESPONDER)
    hello_out = only(out.take(), Hello)
    back.receive(forge(hello_out, node_id=M_ID, callee=A_ID))
    hello_back = only(back.take(), Hello)
    out.receive(forge(hello_back, node_id=M_ID, callee=None))
    back.receive(out.take())  # A's initiator proof, to A as responder
    out.receive(back.take())
    return [out, back]


def a_dials_m_which_echoes() -> list[Honest]:
    """Reflection on one connection: M sends A's bytes straight back."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=M_ID)
    hello = only(a.take(), Hello)
    a.receive(forge(hello, node_id=M_ID, callee=None))
    a.receive(a.take())  # A's own proof, back to it
    return [a]


@pytest.mark.parametrize(
    "arrangement",
    [
        m_dials_both_and_relays_b_nonce_to_a,
        m_dials_both_and_reflects_a_hellos,
        a_dials_m_and_m_forwards_to_b_unchanged,
        a_dials_m_and_m_retargets_the_hellos,
        a_dials_m_and_m_answers_itself,
        a_dials_m_and_m_answers_with_b_hello,
        a_and_b_dial_m_and_m_swaps_their_proofs,
        a_dials_m_which_dials_a_back,
        a_dials_m_which_echoes,
    ],
)
def test_the_attacker_opens_no_connection(arrangement: Arrangement) -> None:
    endpoints = arrangement()
    for endpoint in endpoints:
        assert not endpoint.opened
        if endpoint.protocol.role is Role.RESPONDER:
            assert endpoint.proofs_sent == 0  # never proved to M
    # No honest endpoint was fooled quietly either: each refused, or is still waiting.
    assert any(e.refused is not None for e in endpoints)


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_relay_on_the_path_to_the_node_a_named_is_routing(encrypt: bool) -> None:
    """A dials an address that M holds, for B, and M passes every byte on unchanged: that
    is what any router does, and the handshake succeeds between A and B themselves. With
    encryption, M cannot read what follows or slip in a frame of its own."""
    a = Honest(A_ID, Role.INITIATOR, peer_id=B_ID, encrypt=encrypt)
    b = Honest(B_ID, Role.RESPONDER, encrypt=encrypt)
    b.receive(a.take())
    a.receive(b.take())
    b.receive(a.take())
    a.receive(b.take())
    assert a.opened and b.opened
    if encrypt:
        b.protocol.receive_data(forge(Have("sha256:" + "0" * 64, 0)))
        with pytest.raises(RemoteProtocolError):
            b.protocol.next_event()
