"""Hypothesis strategies for every event of the peer protocol."""

from __future__ import annotations

from hypothesis import strategies as st

from pieces.layout import MAX_PIECE_SIZE, MAX_PIECES
from wire import events as ev
from wire.frames import MAX_INFLOWS

digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
ids = st.binary(min_size=16, max_size=16)
indexes = st.integers(0, 2**40)
text = st.text(max_size=50)
# Authorization values: what an HTTP header carries (latin-1, no control but tab).
header_values = st.text(
    st.characters(codec="latin-1", exclude_categories=["Cc"]) | st.just("\t"), max_size=50
)
hashes16 = st.binary(min_size=16, max_size=16)
hosts = st.sampled_from(["10.0.0.1", "::1", "node-1.cluster.local", "a"])
registries = st.sampled_from(["docker.io", "registry.internal:5000", "[::1]:443", "10.0.0.1"])
repositories = st.sampled_from(["library/alpine", "org/team/app", "a", "x-y_z.w"])
origins = st.lists(st.sampled_from(["https://ghcr.io", "http://10.0.0.1:5000"]), max_size=3)

events = st.one_of(
    st.builds(
        ev.Want,
        digests,
        st.none() | registries,
        repositories,
        st.none() | header_values,
        st.booleans(),
    ),
    st.builds(ev.Access, digests, st.none() | registries, repositories, st.none() | header_values),
    st.builds(
        ev.Warm, indexes, digests, st.none() | registries, repositories, st.none() | header_values
    ),
    st.builds(ev.Warmed, indexes, digests, st.integers(100, 599), text),
    st.builds(
        ev.PieceMeta,
        digests,
        st.integers(0, 2**50),
        st.integers(1, MAX_PIECE_SIZE),
        st.dictionaries(st.integers(0, 10_000), hashes16, max_size=20),
        origins,
        st.booleans(),
    ),
    st.builds(
        ev.Refused,
        digests,
        st.integers(100, 599),
        st.dictionaries(text, text, max_size=5),
        st.binary(max_size=200),
    ),
    st.builds(ev.Bitfield, digests, st.binary(max_size=300)),
    st.builds(ev.Have, digests, indexes),
    st.builds(ev.Request, digests, indexes),
    st.builds(ev.Piece, digests, indexes, st.binary(max_size=5000), st.booleans()),
    st.builds(ev.Invite, digests, st.integers(1, MAX_PIECES)),
    st.builds(ev.Cancel, digests, indexes),
    st.builds(ev.Reject, digests, indexes, text),
    st.builds(ev.Choke),
    st.builds(ev.Inflow, st.integers(0, MAX_INFLOWS)),
    st.builds(ev.Unchoke),
    st.builds(ev.PeersRequest, digests),
    st.builds(
        ev.Peers,
        digests,
        st.lists(st.tuples(ids, hosts, st.integers(1, 65535)), max_size=10),
    ),
    st.builds(ev.Error, text, text),
    st.builds(
        ev.Members,
        st.lists(
            st.tuples(
                ids,
                hosts,
                st.integers(1, 65535),
                st.integers(0, 2**31),
                st.integers(0, 2),
                st.integers(0, 2**40),
            ),
            max_size=10,
        ),
        st.booleans(),
    ),
)
