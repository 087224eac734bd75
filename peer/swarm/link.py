"""One connection to another node: the handshake, a read loop, and serialized sends.

The protocol rules live in wire/; this module only moves bytes between a trio stream and a
PeerProtocol, under time-outs, and hands each event to a callback. On a TCP socket
(`trio.SocketStream`) piece payloads skip Python: sendfile out of the store, recv_into the
payload's own buffer. Any other `trio.abc.Stream` (in memory in tests, `trio.SSLStream`)
gets the same bytes through `send_all` and `receive_some`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence

import trio

from peer.receive_mark import ReceiveMark, SenderQuiet
from wire.errors import LocalProtocolError, RemoteProtocolError
from wire.events import Error, Event, FileRange, Hello, Piece, Proof, Reject, Request
from wire.frames import PayloadPool
from wire.identity import NodeIdentity
from wire.protocol import CLOSED, HANDSHAKE_MAX_FRAME, NEED_DATA, PeerProtocol, Role, State

log = logging.getLogger("pollen.link")

RECEIVE_SIZE = 256 * 1024
# While a piece's payload arrives, the kernel wakes us only once this much of it is there (or
# the rest of it, or the connection ends): SO_RCVLOWAT (peer/receive_mark.py).
PAYLOAD_LOWAT = 256 * 1024
# Reads before the peer has proved the token: no more than a handshake frame is taken in (and
# held) per read for a stranger.
HANDSHAKE_RECEIVE_SIZE = HANDSHAKE_MAX_FRAME
HANDSHAKE_TIMEOUT = 10.0
SEND_TIMEOUT = 60.0
# Seconds a piece's payload may come without a byte before the link is closed: its buffer is
# set aside until the payload is whole, and a member that stated a piece and sent 10 bytes of
# it held that buffer for as long as the link lived (a helper's probe, 2026-12-07). A sender
# at the slowest rate a link carries sends a byte far more often than this.
PAYLOAD_STALL = 60.0
# And a whole payload must come at this many bytes a second at least (after PAYLOAD_STALL):
# a byte every 59 s held the buffer all the same. A 512 KiB piece may take 2 minutes more, a
# 16 MiB one over an hour.
PAYLOAD_LEAST_RATE = 4096
# Received piece payloads are reused across all of the node's links: a piece's buffer is free
# again once it is written, and the next piece on any link takes it, instead of every link
# keeping (and first zero-filling and faulting in) buffers of its own. In all at most 16
# buffers and 64 MiB are kept (before, each link kept up to two: 8 MiB a link at 4 MiB
# pieces). Fewer missed here: a node takes pieces from up to 9 links at once.
PAYLOADS = PayloadPool(buffers=16, max_bytes=64 * 1024 * 1024)
# Posted control messages that are sent together in one write (Have, Request, Cancel, ...):
# buffers up to this size are joined, larger ones (a PieceMeta of many hashes, a sealed
# piece) go as they are.
COALESCE_MAX = 64 * 1024
# Answers to a peer's requests (`post_answer`: a Peers for each PeersRequest) waiting for it
# to read: past this many it is taken for a peer that asks and never reads (a flood of
# PeersRequests queued 400,000 answers before SEND_TIMEOUT ended the link): nothing more is
# queued and the link closes at the next event read from it. An honest peer asks once per
# blob it fetches every PEERS_PERIOD, and reads.
MAX_ANSWERS_WAITING = 1024


class LinkClosed(Exception):
    """The link is gone (closed, broken, refused, or the peer broke the protocol)."""


class PeerLink:
    def __init__(
        self,
        stream: trio.abc.Stream,
        identity: NodeIdentity,
        token: bytes | None,
        *,
        role: Role,
        address: str,
        peer_id: bytes | None = None,
        encrypt: bool = False,
        pool: PayloadPool | None = None,
    ) -> None:
        """A link over `stream`, not yet authenticated (run `handshake()` first).

        Args:
            identity: this node's identity key pair (the handshake proves its node id).
            address: the initiator's: the address it dialled; the responder's: its own
                address as the cluster knows it (see wire.protocol.PeerProtocol).
            role: INITIATOR if we connected (then `peer_id` is the node we meant to reach:
                any other is refused), RESPONDER if we accepted the connection.
            encrypt: seal every frame after the handshake (--peer-encryption); the peer
                must have the same setting or the handshake fails.
            pool: where received piece payloads are reused from (default: the node's
                `PAYLOADS`, shared by all its links).
        """
        self.stream = stream
        self.protocol = PeerProtocol(
            identity,
            token,
            role=role,
            address=address,
            peer_id=peer_id,
            nonce=os.urandom(32),
            ephemeral=os.urandom(32),
            encrypt=encrypt,
            pool=pool if pool is not None else PAYLOADS,
        )
        self._send_lock = trio.Lock()
        # Small control messages posted from read loops: a read loop must never block on a
        # send, or two nodes whose buffers are full each wait for the other to read.
        self._outbox: list[Event] = []
        self._requests_queued = 0  # Requests in the outbox or being written
        self._outbox_ready = trio.Event()
        # The rest of control frames written at once by `post_many` that the socket did not
        # take whole: the next send writes it first, before anything else.
        self._unsent = b""
        self._answers_waiting: set[int] = set()  # id() of the posted answers not yet written
        self._not_reading = False  # MAX_ANSWERS_WAITING answers waited: closed by `_read`
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        # When the peer last sent us any bytes (a piece's payload too, which may take longer
        # to arrive than any time-out): a fetch stays with an owner that gossip buried while
        # it talks on its link (peer/swarm/owner_change.py), gossip takes it for alive.
        self.heard_at = trio.current_time()
        # Requests the peer cancelled that we have not answered yet: when their turn to be
        # sent comes, they go out as a Reject instead of megabytes nobody wants any more.
        self.cancelled: set[tuple[str, int]] = set()
        self.pieces_cancelled = 0
        self._mark = ReceiveMark(stream.socket) if isinstance(stream, trio.SocketStream) else None
        # A piece is arriving, or being handled once whole (peer/swarm/inflow.py counts such
        # links, and those whose piece ended just now); the owner of the link is told when
        # that changes.
        self.receiving_piece = False
        self.piece_done_at = -math.inf
        self.on_receiving: Callable[[], None] | None = None
        self._payload_due = math.inf  # when the payload being received must be whole

    @property
    def peer_id(self) -> bytes:
        assert self.protocol.peer_id is not None
        return self.protocol.peer_id

    async def handshake(self) -> None:
        """The initiator sends its Hello, gets the responder's, proves, and checks the
        responder's proof; the responder proves only after checking the initiator's.

        Raises:
            LinkClosed: the peer was refused (wrong token, wrong node, other encryption
                setting, protocol error), closed the connection, or took too long.
        """
        protocol = self.protocol
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                if protocol.role is Role.INITIATOR:
                    await self._send_raw(protocol.hello())
                    await self._expect(Hello)
                    await self._send_raw(protocol.proof())
                    await self._expect(Proof)
                else:
                    await self._expect(Hello)
                    await self._send_raw(protocol.hello())
                    await self._expect(Proof)
                    await self._send_raw(protocol.proof())
        except trio.TooSlowError as exc:
            await self.close()
            raise LinkClosed("handshake timed out") from exc
        except RemoteProtocolError as exc:
            await self._close_with_error("refused", str(exc))
            raise LinkClosed(str(exc)) from exc
        except LinkClosed:
            await self.close()
            raise

    async def _expect(self, kind: type[Hello] | type[Proof]) -> None:
        event = await self._next_event()
        if not isinstance(event, kind):  # the protocol raises first; kept as a guard
            raise LinkClosed(f"expected {kind.__name__}, got {type(event).__name__}")

    def post(self, event: Event) -> None:
        """Send a control message now if the socket takes it, else queue it for the link's
        writer task (never blocks)."""
        self.post_many([event])

    def post_many(self, events: Sequence[Event]) -> None:
        """`post` for several messages, in one write when they go at once.

        On a plain TCP socket with nothing queued or being written, the frames are written
        here, without waking the writer task: a node posts a Have or a Request per piece to
        each of its peers, and the writer's wake-up, lock, cancel scope and trio's send_all
        cost ~60 % of the ~10 % of a testbed node's CPU that sending them took. What the socket
        does not take goes to the writer, which sends it before anything else."""
        if self.closed:
            return
        if self._may_write_now() and not any(isinstance(e, Piece | Reject) for e in events):
            buffers: list[bytes | memoryview] = []
            for done, event in enumerate(events):
                try:
                    encoded = self.protocol.send_buffers(event)
                except LocalProtocolError:
                    # (Refused before it changed any state.) The writer raises it, as it did.
                    events = events[done:]
                    break
                buffers += encoded  # type: ignore[arg-type]  # control messages: no FileRange
            else:
                events = []
            if buffers:
                self._write_now(b"".join(buffers))
            if not events:
                return
        for event in events:
            if isinstance(event, Request):
                self._requests_queued += 1
            self._outbox.append(event)
        self._outbox_ready.set()

    def post_answer(self, event: Event) -> None:
        """`post` an answer to the peer's request, unless MAX_ANSWERS_WAITING of them wait for
        it to read already: then nothing is queued and the link closes at its next event."""
        if len(self._answers_waiting) >= MAX_ANSWERS_WAITING:
            self._not_reading = True
            return
        queued = len(self._outbox)
        self.post(event)
        if len(self._outbox) > queued:
            self._answers_waiting.add(id(event))

    @property
    def backlog(self) -> bool:
        """Something posted waits for the peer to read (queued, or partly written)."""
        return bool(self._outbox or self._unsent)

    def _may_write_now(self) -> bool:
        """Nothing is queued or being written, and the frames need no sealing: a write now
        keeps them in order."""
        return (
            not self._outbox
            and not self._unsent
            and not self._send_lock.locked()
            and not self.protocol.encrypt
            and isinstance(self.stream, trio.SocketStream)
        )

    def _write_now(self, data: bytes) -> None:
        assert isinstance(self.stream, trio.SocketStream)
        try:
            written = os.write(self.stream.socket.fileno(), data)
        except OSError:  # full (BlockingIOError), or broken: then the writer's send fails too
            written = 0
        self.bytes_out += written
        if written < len(data):
            self._unsent = data[written:]
            self._outbox_ready.set()

    def request_room(self) -> int:
        """Requests that may still be posted: the protocol's limit (one peer, all blobs)
        less those outstanding and those queued. Past it the protocol refuses to send, and
        the link would close: several fetches (a client's, prefetch's) share one peer."""
        protocol = self.protocol
        return protocol.max_requests - len(protocol.our_requests) - self._requests_queued

    async def _write_posted(self) -> None:
        while not self.closed:
            await self._outbox_ready.wait()
            self._outbox_ready = trio.Event()
            try:
                await self.send_many([])  # what is posted by the time it has the link
            except LinkClosed:
                return

    async def run(self, on_event: Callable[[PeerLink, Event], Awaitable[None]]) -> None:
        """Read events until the link closes; each is handed to `on_event` in order."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_posted)
            try:
                await self._read(on_event)
            finally:
                nursery.cancel_scope.cancel()

    async def _read(self, on_event: Callable[[PeerLink, Event], Awaitable[None]]) -> None:
        try:
            while True:
                event = await self._next_event()
                await on_event(self, event)
                if isinstance(event, Piece):
                    self.piece_done_at = trio.current_time()
                    self._receiving(False)
                if self._not_reading:
                    log.warning(
                        "peer %s asks and reads nothing (%d answers waiting): closing the link",
                        self.peer_id.hex()[:12],
                        len(self._answers_waiting),
                    )
                    raise LinkClosed("the peer reads nothing")
        except RemoteProtocolError as exc:
            log.warning("peer %s broke the protocol: %s", self.peer_id.hex()[:12], exc)
            await self._close_with_error("protocol", str(exc))
        except LinkClosed:
            pass
        finally:
            await self.close()

    async def send(self, event: Event) -> bool:
        """Send one event; False if it was a Piece the peer cancelled meanwhile (a Reject
        went instead). Raises LinkClosed when the link is gone."""
        return (await self.send_many([event]))[0]

    async def send_many(self, events: list[Event]) -> list[bool]:
        """Send events in order, the small frames of consecutive events in one write (the
        posted control messages: one system call and one pass through trio instead of one
        per Have or Request). Per event as `send`: False for a Piece the peer cancelled
        meanwhile. Raises LinkClosed when the link is gone.

        What was posted and not yet written goes first, whoever sends: a Request posted
        while a piece went out waits for the rest of that piece, not for the next one too
        (the writer task, woken for it, queued for the link behind the next piece's sender:
        on the testbed, 8 hosts, a Request posted while its link carried a piece reached the
        peer 0.41 s later on average, 0.04 s on an idle link)."""
        async with self._send_lock:
            if self.closed:
                raise LinkClosed("link closed")
            posted, self._outbox = self._outbox, []
            # Shielded: posted messages have no caller to tell, and a caller cancelled half
            # way through them (a fetch's time-out around its Want) would leave the protocol
            # counting frames never written, or half a frame on the wire. SEND_TIMEOUT bounds
            # the wait.
            with trio.CancelScope(shield=True):
                if self._unsent:
                    unsent, self._unsent = self._unsent, b""
                    await self._send_raw(unsent)
                if posted:
                    await self._send_posted(posted)
            return await self._send_in_order(events)

    async def _send_posted(self, posted: list[Event]) -> None:
        """The posted events, in order, under the send lock. Each Request leaves the count of
        those queued as it is encoded (the protocol counts it from then on: counted twice
        while a piece went out after it, `request_room` turned fetches away)."""
        pending: list[bytes | memoryview] = []
        queued = sum(isinstance(e, Request) for e in posted)
        try:
            for event in posted:
                try:
                    await self._send_buffers(self._unless_cancelled(event)[0], pending)
                except LocalProtocolError as exc:
                    await self._flush(pending)  # the events before this one go
                    # A posted message the protocol refused (a bug of ours, no caller to
                    # tell): what was posted after it cannot keep its order, so the link
                    # goes, as it did when the writer task raised this.
                    log.exception("posted %s refused; closing the link", type(event).__name__)
                    await self.close()
                    raise LinkClosed(f"posted message refused: {exc}") from exc
                if isinstance(event, Request):
                    queued -= 1
                    self._requests_queued -= 1
                self._answers_waiting.discard(id(event))
            await self._flush(pending)
        finally:
            self._requests_queued -= queued  # those never encoded

    async def _send_in_order(self, events: list[Event]) -> list[bool]:
        """`send_many`'s own events, under its lock."""
        sent: list[bool] = []
        pending: list[bytes | memoryview] = []  # small buffers not written yet
        try:
            for event in events:
                event, answered = self._unless_cancelled(event)
                await self._send_buffers(event, pending)
                sent.append(answered)
        except LocalProtocolError:
            await self._flush(pending)  # the events before this one go, as one by one
            raise
        await self._flush(pending)
        return sent

    def _unless_cancelled(self, event: Event) -> tuple[Event, bool]:
        """A Piece the peer cancelled meanwhile goes as a Reject (False: not answered). A
        pushed piece answers no request and cannot be cancelled."""
        if isinstance(event, Piece | Reject) and not (isinstance(event, Piece) and event.pushed):
            key = (event.digest, event.index)
            if key in self.cancelled:
                self.cancelled.discard(key)
                if isinstance(event, Piece):
                    self.pieces_cancelled += 1
                    return Reject(event.digest, event.index, "cancelled"), False
        return event, True

    async def _send_buffers(self, event: Event, pending: list[bytes | memoryview]) -> None:
        """Encode `event` after what `pending` holds: small buffers are added to it, a large
        one or a file range writes `pending` first and then goes itself."""
        # Where a piece from a file can go with sendfile: a socket, and only unsealed.
        sock = None
        if isinstance(self.stream, trio.SocketStream) and not self.protocol.encrypt:
            sock = self.stream.socket
        if sock is None and isinstance(event, Piece) and isinstance(event.data, FileRange):
            # A sealed piece's bytes must pass through AES-GCM, and a stream that is not a
            # socket takes bytes: read them first, before any of the frame goes out.
            event = Piece(event.digest, event.index, await self._read_file(event.data))
        for buffer in self.protocol.send_buffers(event):
            if isinstance(buffer, FileRange):
                assert sock is not None  # read above for any other stream
                await self._flush(pending)
                await self._send_file(sock, buffer)
            elif len(buffer) > COALESCE_MAX:
                await self._flush(pending)
                await self._send_raw(buffer)
            elif buffer:
                pending.append(buffer)

    async def _flush(self, pending: list[bytes | memoryview]) -> None:
        if pending:
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            await self._send_raw(data)

    async def _read_file(self, source: FileRange) -> bytes:
        """The bytes of `source`, read in a thread (the store may be on a slow disk)."""
        try:
            data = await trio.to_thread.run_sync(os.pread, source.fd, source.length, source.offset)
        except OSError as exc:
            self.closed = True
            raise LinkClosed(f"reading the piece failed: {exc}") from exc
        if len(data) != source.length:
            self.closed = True
            raise LinkClosed("piece file ended early")
        return data

    async def _send_file(self, sock: trio.socket.SocketType, source: FileRange) -> None:
        """sendfile from the store to the socket: piece bytes never enter Python."""
        offset, left = source.offset, source.length
        while left:
            try:
                sent = os.sendfile(sock.fileno(), source.fd, offset, left)
            except BlockingIOError:
                try:
                    with trio.move_on_after(SEND_TIMEOUT) as scope:
                        await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError as exc:  # closed by another task
                    self.closed = True
                    raise LinkClosed("link closed") from exc
                if scope.cancelled_caught:
                    self.closed = True
                    raise LinkClosed("peer stopped reading") from None
                continue
            except OSError as exc:
                self.closed = True
                raise LinkClosed(f"sendfile failed: {exc}") from exc
            if sent == 0:
                self.closed = True
                raise LinkClosed("piece file ended early")
            offset += sent
            left -= sent
            self.bytes_out += sent
            await trio.lowlevel.checkpoint()

    async def _send_raw(self, data: bytes | memoryview) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.closed = True
                raise LinkClosed(f"send failed: {exc}") from exc
        if scope.cancelled_caught:
            # Part of a frame may have gone out: nothing more can be sent on this stream.
            self.closed = True
            raise LinkClosed("peer stopped reading")
        self.bytes_out += len(data)

    async def _next_event(self) -> Event:
        while True:
            event = self.protocol.next_event()
            if event is CLOSED:
                raise LinkClosed("peer closed the connection")
            if event is not NEED_DATA:
                if isinstance(event, Error):
                    raise LinkClosed(f"peer closed with {event.code}: {event.message}")
                if not self.receiving_piece and isinstance(event, Piece):
                    self._receiving(True)  # whole in one read: it was arriving all the same
                return event
            payload = self.protocol.payload_buffer()
            if payload is not None:
                if not self.receiving_piece:
                    self._receiving(True)
                    slowest = PAYLOAD_STALL + len(payload) / PAYLOAD_LEAST_RATE
                    self._payload_due = trio.current_time() + slowest
                try:
                    count = await self._receive_into(payload)
                finally:
                    payload.release()
                self.bytes_in += count
                if count:
                    self.heard_at = trio.current_time()
                    self.protocol.payload_received(count)
                else:
                    self.protocol.receive_data(b"")
                continue
            size = RECEIVE_SIZE if self.protocol.state is State.OPEN else HANDSHAKE_RECEIVE_SIZE
            if self._mark is not None:
                self._mark.clear()  # frame headers and control messages: wake for any byte
            try:
                data = await self.stream.receive_some(size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise LinkClosed(f"receive failed: {exc}") from exc
            self.bytes_in += len(data)
            if data:
                self.heard_at = trio.current_time()
            self.protocol.receive_data(data)

    def _receiving(self, receiving: bool) -> None:
        self.receiving_piece = receiving
        if self.on_receiving is not None:
            self.on_receiving()

    async def _receive_into(self, payload: memoryview) -> int:
        """The rest of a large piece, into its own buffer: straight from a socket once
        PAYLOAD_LOWAT of it is there, or one read of at most its length from any other
        stream. The number of bytes written to the start of `payload` (0 at the end of the
        stream)."""
        with trio.move_on_at(self._payload_due):  # however it trickles
            if self._mark is not None:
                try:
                    return await self._mark.receive_into(
                        payload, PAYLOAD_LOWAT, self._heard, quiet=PAYLOAD_STALL
                    )
                except SenderQuiet:
                    raise LinkClosed("a piece's payload stopped coming") from None
                except (OSError, trio.ClosedResourceError) as exc:  # closed by another task
                    raise LinkClosed(f"receive failed: {exc}") from exc
            with trio.move_on_after(PAYLOAD_STALL):
                try:
                    data = await self.stream.receive_some(len(payload))
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise LinkClosed(f"receive failed: {exc}") from exc
                payload[: len(data)] = data
                return len(data)
            raise LinkClosed("a piece's payload stopped coming")
        raise LinkClosed("a piece's payload came too slowly")

    def _heard(self) -> None:
        """More of a piece came, below the mark: the peer is alive (gossip, fetches)."""
        self.heard_at = trio.current_time()

    async def _close_with_error(self, code: str, message: str) -> None:
        if not self.closed:
            with trio.move_on_after(1):
                with contextlib.suppress(LinkClosed, LocalProtocolError):
                    await self._send_raw(self.protocol.send(Error(code, message[:500])))
        await self.close()

    async def close(self) -> None:
        self.closed = True
        with trio.CancelScope(shield=True):
            await self.stream.aclose()
