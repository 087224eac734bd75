"""Member and peer addresses are checked where they enter: a host the resolver would raise
on (not OSError) must never reach a socket call."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.errors import RemoteProtocolError
from wire.events import Members, Peers
from wire.frames import decode_header
from wire.names import is_valid_host

BAD_HOSTS = ["a\x00b", "x" * 300, "[", "a..b", "", "h\u00e9te", "-a", "a b", "[::1]"]


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_bad_hosts(host: str) -> None:
    assert not is_valid_host(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "::1", "fe80::1", "node-1.cluster.local", "a"])
def test_good_hosts(host: str) -> None:
    assert is_valid_host(host)


@given(st.text(max_size=300))
def test_a_valid_host_encodes_for_the_resolver(host: str) -> None:
    if is_valid_host(host):
        host.encode("idna")  # what the socket layer does to a name; must not raise


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_members_and_peers_with_a_bad_host_are_refused(host: str) -> None:
    decode_header(msgpack.packb([Members.TYPE, [[b"\x01" * 16, "10.0.0.1", 4000, 1, 0, 0]], False]))
    member = [b"\x01" * 16, host, 4000, 1, 0, 0]  # the same with the bad host: refused
    with pytest.raises(RemoteProtocolError):
        decode_header(msgpack.packb([Members.TYPE, [member], False]))
    with pytest.raises(RemoteProtocolError):
        decode_header(msgpack.packb([Peers.TYPE, "sha256:" + "0" * 64, [[b"\x01" * 16, host, 1]]]))
