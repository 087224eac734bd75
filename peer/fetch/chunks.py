"""How a large blob fetched whole from its registry is cut into Range requests: a pure rule.

A blob's owner fetches it from the registry with several requests at once (`whole_flows`, more
for a larger blob): its one flow would share its downlink with the flows of the blobs it takes
from peers, and the registry's uplink, which the whole swarm waits for, would carry fewer flows.
The blob is cut into *chunks* taken in order: the first asked alone (its answer shows whether
the registry honours Range), then each flow that is free takes the next one, a share of what
is left (1 / CHUNK_SHARE of it, at least CHUNK_MIN), so the chunks shrink towards the end and
the flows end within a small chunk of each other, whatever their rates. (With credentials
that expire, chunks stop at a window, below: then each flow's last is an equal share of the
rest.)

Why not three equal parts at once (the rule until 2026-11-30): the registry's flows do not go
at like rates (on the testbed, 8 hosts at 50 Mbit/s, the first part of a blob came at 1.0-2.4
MB/s and the two beside it at 0.2-0.5 MB/s for tens of seconds), so the parts ended seconds
apart. In the last seconds the registry's uplink carried a few slow flows, and whichever part
ended last held every client, which reads in order: when a blob's last piece arrived, a host's
client still had 53-106 of its 299 pieces to read on average (a third or two thirds of the
blob in most blobs), and every host read them at the same moment. In chunks: 7-18. Testbed,
alternating with the parts, owners 1+1+1: 1.144-1.156 x T_min with chunks of a sixth against
1.179-1.199 (the origin idle 0.7-2.1 s of the run against 1.6-4.1 s); the simulator at 100
hosts preferred an eighth (1.130-1.150 against 1.134-1.181 with a sixth, seeds 0-3; 1.123-1.146
with the parts), the testbed then 1.150, 1.152 (docs/issue10/HISTORY.md, "Where the 8-host
testbed's time goes"; four flows: 1.157-1.166). An owner of two blobs needs its seeding to
count a piece it sent (peer/swarm/swarm.py, `_piece_sent`): its downlink full of chunks, its
peers' Haves came late and its offers stopped.
"""

from __future__ import annotations

import base64
import json
import math

WHOLE_FLOWS = 3  # Range requests at once for a blob fetched whole: the least
# ... and one more for every FLOW_BYTES of the blob, up to MOST_WHOLE_FLOWS (`whole_flows`).
# The registry's uplink gives each flow a like share, so with a fixed count per blob the small
# blobs were done early and the largest one came last, alone: on the testbed (8 hosts, 8
# layers of 112 MiB to 200 KiB, 25 Mbit/s) the registry ran at 65-93 % of its rate for the
# last 30 s, sending only to the largest layer's owner, whose downlink was also taking the
# other layers from its peers. With flows in proportion to the size the blobs end closer
# together and the registry stays full longer (docs/issue10/HISTORY.md, *Registry flows by
# blob size*).
FLOW_BYTES = 16 * 1024 * 1024
MOST_WHOLE_FLOWS = 8  # a registry meets more connections from one client with suspicion
CHUNK_SHARE = 8  # a chunk asks for 1 / CHUNK_SHARE of what is left of the blob
CHUNKED_MIN_PIECES = 64  # a blob of fewer pieces comes in one request, not in chunks...
# ...unless it is this large: 64 of the rule's smallest pieces (256 KiB), so that fewer, larger
# pieces (--pieces-per-blob 32: 4 MiB pieces of a 128 MiB blob) keep the registry's flows.
CHUNKED_MIN_BYTES = 16 * 1024 * 1024


def chunked(count: int, size: int) -> bool:
    """Does a blob of `count` pieces and `size` bytes fetched whole come in chunks?"""
    return count >= CHUNKED_MIN_PIECES or size >= CHUNKED_MIN_BYTES


CHUNK_MIN = 1024 * 1024  # the least a chunk asks for (a new request costs a connection)
# Credentials that expire bound when chunks may be asked for: the upstream checks the client's
# bearer token on every request. None or Basic: no bound, chunks to the end. A JWT names its
# expiry: until TOKEN_MARGIN before it (Docker Hub's last 300 s). Any other token may last a
# minute (the distribution spec's token answer: 60 s when it names no expiry, never less): no
# chunk after CHUNK_WINDOW from the blob's download start. Within a window, a chunk lasts up to
# a quarter of the time left at the flows' rate so far (at least CHUNK_SECONDS; the least
# before any byte came), and a flow that would come back within FINALS_MARGIN of the window
# takes its last chunk now, an equal share of what is left: every flow carries the blob to its
# end. (Until 2026-11-30 every fetch had the 45 s window and past it one request took the
# whole rest: on the testbed at 25 Mbit/s, 8 hosts, every owner was down to one registry flow
# from ~48 s, the origin's uplink fell from 0.98 to 0.82-0.93 of its rate, and the owners'
# last flows ended 14 s apart. Simulator, 16 hosts, 512 MiB, 25 Mbit/s, seeds 0-1: 1.125,
# 1.119 x T_min; now 1.073, 1.065 without credentials and 1.069, 1.069 with tokens of 45 s.)
CHUNK_WINDOW = 45.0
# The flows of a blob fetched whole open one at a time, one more for every RAMP_PIECES pieces
# of the blob in, not all at once: every flow gets a like share of the owner's part of the
# registry's uplink, so with 8 at once (a 128 MiB layer) each came at an eighth of it and no
# piece of any was in for seconds: on the testbed (16 hosts, 512 MiB in 4 layers, 25 Mbit/s)
# three owners sent nothing for 4-8 s, the hosts' downlinks ran at 0.2-0.35 of their rate for
# 8 s and were 5.8 s behind the registry by then, a lag no host makes up (its downlink is no
# faster than the registry's uplink); in the simulator no piece was stored anywhere before 5 s.
# Counted in pieces, not seconds: flows 2 s apart gained more at 25 Mbit/s and cost 8 hosts at
# 100 Mbit/s 0.018 x T_min (docs/issue10/HISTORY.md, *The registry's flows, one at a time at
# first*).
RAMP_PIECES = 2
# A blob this node prefetches ahead of its client (Download.ahead_of_client: prefetched, and no
# client here has asked for it yet) takes at most 1 / UNREAD_SHARE of its flows: the registry's
# uplink then goes first to the blobs clients read now, which a client that reads one blob at
# a time, in the manifest's order, waits for. (A fetch for peers' Wants only is never held
# back: an owner whose host pulls nothing would otherwise fetch every blob on fewer flows.)
# With every blob at its full count the largest, read first, ended last (its share of flows was
# below its share of bytes), and each client then read the other blobs after it: in the
# simulator, 8 hosts, 8 layers of 112 MiB to 200 KiB at 25 Mbit/s, one blob at a time, 3.8 s
# past the last byte (docs/issue10/HISTORY.md, *The blobs clients read first*).
UNREAD_SHARE = 2
CHUNK_SECONDS = 5.0
FINALS_MARGIN = 5.0
# A JWT names its expiry (`exp`): the window then ends this long before it (clocks differ).
TOKEN_MARGIN = 30.0
MAX_TOKEN_CHARS = 16 * 1024  # a longer "token" is not read


def chunk_window(authorization: str | None, wall_now: float, elapsed: float) -> float | None:
    """Seconds after a blob's download began (`elapsed` ago) that no chunk may be asked for
    with `authorization`: None for credentials that do not expire (none, Basic); for a JWT
    (the distribution spec's tokens, Docker Hub's, GitLab's, Harbor's, quay's) until
    TOKEN_MARGIN before the expiry it names; else CHUNK_WINDOW (a token that may last a
    minute). A JWT's claims are read, not verified: the registry accepted this token for the
    blob's first request, so its claims are the token server's (altered ones fail its
    signature)."""
    if authorization is None or not may_expire(authorization):
        return None
    scheme, _, token = authorization.partition(" ")
    left = _token_seconds_left(token.strip(), wall_now) if scheme.lower() == "bearer" else None
    return CHUNK_WINDOW if left is None else elapsed + max(0.0, left - TOKEN_MARGIN)


def may_expire(authorization: str | None) -> bool:
    """Whether these credentials may expire mid-fetch: any but none or Basic (`first_chunk`
    then asks the least)."""
    if not authorization:
        return False
    return authorization.partition(" ")[0].lower() != "basic"


def _token_seconds_left(token: str, wall_now: float) -> float | None:
    """How long a JWT has left by its `exp` claim (and at most its lifetime from `iat`, for a
    fresh token on a clock behind the token server's); None when it is not a JWT with one.
    `wall_now`: the registry's clock where it gave one (its answer's Date), the one `exp`
    is held to."""
    if len(token) > MAX_TOKEN_CHARS:
        return None
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):  # binascii's, JSON's and Unicode's errors are ValueErrors
        return None
    if not isinstance(claims, dict):
        return None
    expiry, issued = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
    if expiry is None:
        return None
    left = expiry - wall_now
    return left if issued is None else min(left, expiry - issued)


def _seconds(value: object) -> float | None:
    """A claim that is a plain number of seconds from the epoch (not a bool, not NaN or
    infinite, not beyond 2**40: a larger int would not even convert), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value) if 0 <= value < 2**40 else None


def whole_flows(size: int) -> int:
    """Range requests at once for a blob of `size` bytes fetched whole: one per FLOW_BYTES,
    at least WHOLE_FLOWS and at most MOST_WHOLE_FLOWS."""
    return max(WHOLE_FLOWS, min(MOST_WHOLE_FLOWS, -(-size // FLOW_BYTES)))


def least_pieces(piece_size: int) -> int:
    """CHUNK_MIN in pieces (at least one)."""
    return max(1, -(-CHUNK_MIN // piece_size))


def next_chunk(count: int, cursor: int, least: int, flows: int = WHOLE_FLOWS) -> tuple[int, int]:
    """The chunk [cursor, end) of a blob of `count` pieces taken by `flows` flows: 1 /
    CHUNK_SHARE of what is left (a smaller share for more flows, so that the chunks under way
    cover as much of the blob as WHOLE_FLOWS flows' do: the clients read in order, and with
    eighths on 8 flows two thirds of a blob came at once, its first chunk last among them; on
    the testbed, 16 hosts, every client then read the rest of 4 blobs at the end: 1.31 x
    against 1.19), at least `least` pieces, and none of fewer than `least` left after it."""
    share = CHUNK_SHARE * flows // WHOLE_FLOWS
    return _at_least(count, cursor, max(least, (count - cursor) // share), least)


def first_chunk(
    count: int, least: int, expiring: bool, flows: int = WHOLE_FLOWS
) -> tuple[int, int]:
    """The first chunk of a blob fetched whole, asked alone: the usual eighth, or the least
    when the credentials may expire (`may_expire`): it is asked before any rate is known,
    and a flow busy with an eighth of a large blob on a slow link would come back past the
    window."""
    return _at_least(count, 0, least, least) if expiring else next_chunk(count, 0, least, flows)


def whole_chunks(
    count: int, least: int, flows: int = WHOLE_FLOWS, size: int = 0
) -> list[tuple[int, int]]:
    """Every chunk of a blob of `count` pieces (`size` bytes) fetched whole on `flows` flows,
    in order (one when it is not `chunked`)."""
    if not chunked(count, size):
        return [(0, count)] if count else []
    chunks = Chunks(count, 0, least, started=0.0, window=None, flows=flows)
    return list(iter(lambda: chunks.take(0.0, 0), None))


def final_chunk(count: int, cursor: int, least: int, flows: int) -> tuple[int, int]:
    """The last chunk [cursor, end) of one of `flows` flows that have not taken theirs: an
    equal share of what is left, at least `least` pieces, and none of fewer left after it."""
    share = -(-(count - cursor) // max(1, flows))
    return _at_least(count, cursor, max(least, share), least)


def _at_least(count: int, cursor: int, size: int, least: int) -> tuple[int, int]:
    """[cursor, cursor + size), and to the end when fewer than `least` would be left."""
    end = min(count, cursor + size)
    if count - end < least:
        end = count
    return cursor, end


class Chunks:
    """The chunks of a blob from `cursor` on, handed out in order to whichever of `flows`
    flows is free; `started`: when the blob's download began; `window`: seconds after it
    that no chunk may be asked for (`chunk_window`), None for none."""

    def __init__(
        self,
        count: int,
        cursor: int,
        least: int,
        started: float,
        *,
        window: float | None,
        flows: int = WHOLE_FLOWS,
        measured_from: float | None = None,
    ) -> None:
        """`measured_from`: when the first request for these pieces went out (the rate is
        measured from then; `started` may be earlier: a swarm tried first, a busy registry
        waited for); default `started`."""
        if least < 1 or flows < 1:
            raise ValueError("a chunk is at least one piece, taken by at least one flow")
        self.count, self.cursor, self.least, self.started = count, cursor, least, started
        self.window, self.flows = window, flows
        self.measured_from = started if measured_from is None else measured_from
        self._finals_left = flows  # flows that have not taken their last chunk

    def opens_after(self, flow: int) -> int:
        """How many pieces of the blob must be in (as `take` counts them) before flow number
        `flow` asks for its first chunk: none for flow 0, the blob's first request, and
        RAMP_PIECES more for each next one. With a window, none: every flow must be under
        way in time to take its last chunk before the window ends (`_within` shares the
        rest among them), and a flow opened late would ask past it."""
        return 0 if self.window is not None else flow * RAMP_PIECES

    @property
    def unread_flows(self) -> int:
        """The flows a blob fetched ahead of its client may use (at least one)."""
        return max(1, self.flows // UNREAD_SHARE)

    def may_open(self, flow: int, arrived: int, read: bool = True) -> bool:
        """May flow number `flow` ask for its first chunk, `arrived` pieces of the blob being
        in, a client waiting for the blob (`read`) or the fetch ahead of it? Without a window
        a fetch ahead keeps to its `unread_flows`; with one every flow opens (see
        `opens_after`)."""
        if not read and self.window is None and flow >= self.unread_flows:
            return False
        return self.opens_after(flow) <= max(0, arrived)

    @property
    def exhausted(self) -> bool:
        """Every chunk taken (or `close`d): a flow not open yet has nothing left to ask."""
        return self.cursor >= self.count

    def flows_open(self, arrived: int, read: bool = True) -> int:
        """How many of the `flows` may be asking with `arrived` pieces of the blob in: those
        `may_open` lets open (one rule for the node's waiting flows and the simulator)."""
        return sum(1 for flow in range(self.flows) if self.may_open(flow, arrived, read))

    def take(self, now: float, arrived: int) -> tuple[int, int] | None:
        """The next chunk (piece indices [start, end)), `arrived` pieces of the blob being
        in; None when every chunk was taken. With a window: chunks of up to a quarter of the
        time left at the rate so far (at least CHUNK_SECONDS of it), each flow's last before
        the window (an equal share of the rest, in pieces: flows at unlike rates end apart),
        and all the rest in one request past it."""
        if self.cursor >= self.count:
            return None
        if self.window is None:
            start, end = next_chunk(self.count, self.cursor, self.least, self.flows)
        else:
            start, end = self._within(self.window, now, arrived)
        self.cursor = end
        return start, end

    def _within(self, window: float, now: float, arrived: int) -> tuple[int, int]:
        elapsed = now - self.started
        if elapsed >= window or self._finals_left <= 1:
            return self.cursor, self.count
        measured = now - self.measured_from
        rate = arrived / measured / self.flows if arrived > 0 and measured > 0 else None
        if rate is None:  # no byte in yet: the least, and a measure by its end
            return _at_least(self.count, self.cursor, self.least, self.least)
        usual = next_chunk(self.count, self.cursor, self.least, self.flows)
        # About CHUNK_SECONDS at the rate near the window; far from it (a JWT's 300 s), up to
        # a quarter of the time left, and never more than the usual share.
        seconds = max(CHUNK_SECONDS, (window - FINALS_MARGIN - elapsed) / 4)
        size = max(self.least, min(usual[1] - usual[0], int(rate * seconds)))
        back_at = elapsed + size / rate  # when this flow would ask again
        if back_at < window - FINALS_MARGIN:
            return _at_least(self.count, self.cursor, size, self.least)
        chunk = final_chunk(self.count, self.cursor, self.least, self._finals_left)
        self._finals_left -= 1
        return chunk

    def close(self) -> None:
        """Hand out no more chunks (an answer only one request at a time may act on came:
        the fetch's next round asks for whatever is missing)."""
        self.cursor = self.count
