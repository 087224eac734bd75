"""The owner's side of a blob: answering Wants with PieceMeta (and more as pieces arrive),
offering its pieces a few at a time (peer/swarm/seeding.py; to a peer that invited them, the
offer is the piece itself, pushed), and telling fetching nodes about each other (the owner is
the blob's tracker).

The owner alone fetches the blob from the upstream, through the download it shares with its
own clients (`PeerUpstream.join_for_peer`); the peer's client's credentials are used for that
fetch only, and a private blob is described only to a peer whose credentials pass the check.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import trio

from peer.access.auth_gate import credentials_key
from peer.access.policy import AccessPolicy
from peer.cluster.membership import Membership, Status
from peer.fetch.coordinator import Fetch
from peer.fetch.download import BlobSource, Download
from peer.front.routes import InvalidNamespace
from peer.swarm.actions import Send
from peer.swarm.digest_state import DigestState
from peer.swarm.grants import Grants
from peer.swarm.held_probe import not_held
from peer.swarm.link import LinkClosed, PeerLink
from peer.swarm.recent_pieces import RecentPieces
from peer.swarm.seeding import Seeder
from peer.upstream.errors import UpstreamError, UpstreamRefusal
from pieces.partial import PartialBlob
from pieces.store import Store
from wire.events import Access, Choke, Event, Have, PieceMeta, Refused, Want

MAX_PEERS_LISTED = 32  # peers in one answer to PeersRequest


class PeerUpstream(Protocol):
    """The swarm's narrow view of the fetch side (peer/fetch/coordinator.py)."""

    async def join_for_peer(self, source: BlobSource, holders: Fetch, peer: bytes) -> Download:
        """The download of a blob for a peer's Want: the one in flight, or a new one that
        `holders` fills from a node that holds the blob (it raises OwnerUnavailable when none
        does), else the upstream."""
        ...

    def in_flight(self, digest: str) -> Download | None:
        """The download of `digest` running here from an upstream now, if any."""
        ...

    def blobs(self) -> int:
        """The blobs this node fetches from an upstream now."""
        ...

    def blobs_wanted_now(self) -> int:
        """Those of `blobs` not fetched ahead of a client here (`Download.ahead_of_client`):
        for peers' Wants, or for a client that asked."""
        ...

    def streams(self) -> int:
        """Answers arriving from an upstream now (a blob fetched in chunks has several)."""
        ...

    async def fetch_runs(
        self,
        download: Download,
        headers: dict[str, str],
        partial: PartialBlob,
        runs: list[tuple[int, int]],
    ) -> None:
        """Fetch these byte runs of `partial` from the upstream while the swarm fills the
        rest (peer/fetch/upstream_fetch.py: `UpstreamFetcher.fetch_runs`)."""
        ...


class OwnerSide:
    def __init__(
        self,
        store: Store,
        access: AccessPolicy,
        upstream: PeerUpstream,
        grants: Grants,
        links: Mapping[bytes, PeerLink],
        membership: Membership,
        rng: random.Random,
        piece_size_of: Callable[[str], int],  # the piece size a blob is cut to here
        recent: RecentPieces,  # when pieces were stored here (the uploads send the newest first)
        from_holders: Fetch,  # fills a download from nodes that hold the blob (Swarm's)
        # Sends a piece unasked on a link where the peer invited it (Swarm's): the PieceMeta
        # with its hash goes first there, unless that link is the one updates take.
        push: Callable[[bytes, str, int, PieceMeta | None], bool],
        pushing: Callable[[bytes, str, int], bool],  # is that piece on its way to the peer?
    ) -> None:
        self._store = store
        self._access = access
        self._upstream = upstream
        self._grants = grants
        self._links = links
        self._membership = membership
        self._rng = rng
        self._piece_size_of = piece_size_of
        self._recent = recent
        self._from_holders = from_holders
        self._push = push
        self._pushing = pushing

    async def answer_want(self, link: PeerLink, want: Want, state: DigestState) -> None:
        digest = want.digest
        try:
            self._access.check_namespace(want.namespace)
        except InvalidNamespace as exc:
            await _send(link, _failure(digest, 400, str(exc)))
            return
        headers = {"authorization": want.authorization} if want.authorization else {}
        access = Access(digest, want.namespace, want.repository, want.authorization)
        if self._store.has_blob(digest):
            if not await self._allowed_or_refused(link, access, want.held_only):
                return
            size = self._store.blob_size(digest)
            # The size its pieces are served in here (the download's, while we remember it):
            # hashes for one layout and pieces cut to another would fail every check.
            piece_size = self._piece_size_of(digest)
            hashes = await trio.to_thread.run_sync(
                self._store.complete_piece_hashes_sync, digest, piece_size
            )
            if hashes is not None and size is not None:
                state.interested.add(link.peer_id)
                origins = self._store.origins_of(digest)
                # Stored, so its sha256 was checked: these hashes are of its true bytes.
                meta = PieceMeta(digest, size, piece_size, hashes, origins, verified=True)
                await _send(link, meta)
                now = trio.current_time()
                if state.seeder is None or state.seeder.count != len(hashes):
                    state.seeder = Seeder(digest, len(hashes), self._rng, held=hashes)
                else:
                    # Complete here: every piece is ours to offer, whatever the seeder made
                    # during the download heard.
                    self._offer(state, state.seeder.pieces_ready(hashes, now))
                self._offer(state, state.seeder.joined(link.peer_id, now), pushes=False)
                return
        source = BlobSource(
            digest, want.namespace, want.repository, headers, credentials_key(headers)
        )
        if not want.held_only:
            try:
                download = await self._upstream.join_for_peer(
                    source, self._from_holders, link.peer_id
                )
            except UpstreamError as exc:  # too many downloads here: the peer fetches it
                await self._refuse(link, want.held_only, _failure(digest, 503, str(exc)))
                return
        elif (in_flight := self._upstream.in_flight(digest)) is not None:
            download = in_flight
        else:
            # The asker looks for a node that has the blob already: we do not, so it looks
            # further or fetches it itself; nothing starts here. If we take it from a peer's
            # swarm, we name that peer (when many joined at once, the asker's next are new).
            fetching_from = state.fetch.fetching_from if state.fetch is not None else None
            await _send(link, not_held(digest, fetching_from))
            return
        await download.ready.wait()
        if download.refusal is not None:
            await self._refuse(link, want.held_only, _refused(digest, download.refusal))
            return
        partial = download.partial
        if partial is None:
            message = f"owner's upstream fetch failed: {download.error}"
            await self._refuse(link, want.held_only, _failure(digest, 502, message))
            return
        if download.auth_key is not None and download.auth_key == credentials_key(headers):
            # The upstream accepted these very credentials for this private download.
            self._grants.grant(digest, link.peer_id)
        elif download.auth_key != credentials_key(headers) and not await self._allowed_or_refused(
            link, access, want.held_only
        ):
            # Joined a download another client's credentials started, and failed the same
            # check as for serving it from disk (it has been sent the refusal).
            return
        state.interested.add(link.peer_id)  # only now: PieceMeta updates go to it
        self.listen(state, partial)
        meta = PieceMeta(
            digest,
            partial.layout.size,
            partial.layout.piece_size,
            dict(partial.piece_hashes),
            self._store.origins_of(digest),
        )
        await _send(link, meta)
        if state.seeder is not None:
            self._offer(state, state.seeder.joined(link.peer_id, trio.current_time()), pushes=False)

    async def _allowed_or_refused(self, link: PeerLink, access: Access, held_only: bool) -> bool:
        """True when the peer may have the blob; else it has been sent a Refused."""
        try:
            refusal = await self._grants.check(link.peer_id, access)
        except UpstreamError as exc:
            failure = _failure(access.digest, 502, f"access check failed: {exc}")
            await self._refuse(link, held_only, failure)
            return False
        if refusal is not None:
            await self._refuse(link, held_only, _refused(access.digest, refusal))
            return False
        return True

    @staticmethod
    async def _refuse(link: PeerLink, held_only: bool, refusal: Refused) -> None:
        """Send `refusal`; to a held-only Want, the answer for a blob not held instead: any
        other would tell a member which private blobs this node's clients pulled (with no
        registry request and no log line). The asker then asks its own registry."""
        await _send(link, not_held(refusal.digest, None) if held_only else refusal)

    def listen(self, state: DigestState, partial: PartialBlob) -> None:
        """Send the hashes of `partial`'s pieces, as they are recorded, to the peers that
        want the blob from us. (A fetching node's Have messages come from its picker.)"""
        if state.listening is partial:
            return
        state.listening = partial
        origins = self._store.origins_of(state.digest)
        seeder = Seeder(state.digest, partial.layout.count, self._rng, held=partial.piece_hashes)
        state.seeder = seeder

        def on_pieces(indices: list[int]) -> None:
            now = trio.current_time()
            self._recent.stored(state.digest, indices, now)
            hashes = {i: partial.piece_hashes[i] for i in indices}
            layout = partial.layout
            meta = PieceMeta(state.digest, layout.size, layout.piece_size, hashes, origins)
            for peer_id in list(state.interested):
                link = self._links.get(peer_id)
                if link is not None:
                    link.post(meta)
            # After the hashes: a peer offered a piece can verify it.
            for index in indices:
                self._offer(state, seeder.piece_ready(index, now))

        partial.piece_listeners.append(on_pieces)

    def _offer(self, state: DigestState, sends: list[Send], *, pushes: bool = True) -> None:
        """Send the seeder's words. The offer of a first copy (a Have while the seeding
        lasts, of a piece no peer holds) goes as the piece itself to a peer that invited
        pushes: it need not ask through our downlink, which the registry's flows fill while
        we fetch (docs/issue10/HISTORY.md, *Pushed first copies*). Beyond the peer's credit, or a
        second copy, it stays an offer the peer answers with a Request if it still lacks the piece.

        `pushes=False` for what a Want brings (`Seeder.joined`): a new peer has invited
        nothing yet (its Invite follows our PieceMeta), and a peer that asks again hears its
        outstanding offers again, which went as Haves (pushed, the piece it may have asked
        for would come twice) or are on their way."""
        seeder = state.seeder
        for send in sends:
            if send.peer not in state.interested or (link := self._links.get(send.peer)) is None:
                continue
            event = send.event
            if isinstance(event, Have) and seeder is not None and not seeder.open:
                if self._pushing(send.peer, event.digest, event.index):
                    continue  # an offer told again (the peer's Want came again): it is coming
                if (
                    pushes
                    and seeder.first_copy(event.index)
                    and self._push(
                        send.peer, event.digest, event.index, _hash_of(state, event.index)
                    )
                ):
                    continue
            link.post(event)

    def peer_has(self, state: DigestState, peer: bytes, indices: Iterable[int]) -> None:
        """A peer announced pieces of a blob we own (Have, Bitfield)."""
        if state.seeder is not None:
            self._offer(state, state.seeder.peer_has(peer, indices, trio.current_time()))

    def peer_lost(self, state: DigestState, peer: bytes) -> None:
        """The peer's last link is gone: its offers go to others."""
        state.interested.discard(peer)
        if state.seeder is not None:
            self._offer(state, state.seeder.left(peer, trio.current_time()))

    def choked(self, states: Iterable[DigestState], sends: list[Send]) -> None:
        """Our choker's decisions: a choked peer is offered nothing."""
        now = trio.current_time()
        for state in states:
            if state.seeder is not None:
                for send in sends:
                    choking = isinstance(send.event, Choke)
                    self._offer(state, state.seeder.choked(send.peer, choking, now))

    def tick(self, states: Iterable[DigestState]) -> None:
        """Stale offers go to others (called at least every rechoke period)."""
        now = trio.current_time()
        for state in states:
            seeder = state.seeder
            if seeder is not None and (at := seeder.next_deadline()) is not None and at <= now:
                self._offer(state, seeder.tick(now))

    def peers_for(self, state: DigestState | None, asker: bytes) -> list[tuple[bytes, str, int]]:
        """Up to MAX_PEERS_LISTED live nodes exchanging the blob, at random, for `asker`."""
        if state is None:
            return []
        out = []
        for peer_id in state.interested | (state.fetch.linked if state.fetch else set()):
            member = self._membership.members.get(peer_id)
            if peer_id != asker and member is not None and member.status is not Status.DEAD:
                out.append((peer_id, member.address[0], member.address[1]))
        self._rng.shuffle(out)
        return out[:MAX_PEERS_LISTED]


def _hash_of(state: DigestState, index: int) -> PieceMeta | None:
    """A PieceMeta with the hash of one piece of the blob we fetch and own (None: we hold it
    whole; the PieceMeta that answered the peer's Want gave every hash)."""
    partial = state.listening
    if partial is None or index not in partial.piece_hashes:
        return None
    layout = partial.layout
    return PieceMeta(
        state.digest, layout.size, layout.piece_size, {index: partial.piece_hashes[index]}
    )


async def _send(link: PeerLink, event: Event) -> None:
    with contextlib.suppress(LinkClosed):
        await link.send(event)


def _refused(digest: str, refusal: UpstreamRefusal) -> Refused:
    return Refused(digest, refusal.status, dict(refusal.headers), refusal.body)


def _failure(digest: str, status: int, message: str) -> Refused:
    return Refused(digest, status, {}, message.encode()[:4000])
