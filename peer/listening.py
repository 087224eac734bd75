"""The node's listening sockets, bound with an error that names the listener and address.

A node binds up to five sockets at start (registry API, peer links and gossip on the peer
port, admin API, Harbor's preheat API); an operator whose port is taken needs to know which.
"""

from __future__ import annotations

import trio

from peer.config import Address


class CannotListen(Exception):
    """An address the node must listen on cannot be bound (in use, not local, not allowed)."""


def cannot_listen(role: str, host: str, port: int, exc: OSError) -> CannotListen:
    where = Address(host, port)
    return CannotListen(f"cannot listen on {where} ({role}): {exc.strerror or exc}")


async def open_tcp_listeners(role: str, address: Address) -> list[trio.SocketListener]:
    """trio's listeners on `address`.

    Raises:
        CannotListen: the address cannot be bound (the message names `role` and `address`).
    """
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise cannot_listen(role, address.host, address.port, exc) from exc
