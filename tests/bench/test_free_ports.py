"""The harness's ports: outside the kernel's ephemeral range (an outgoing connection cannot
take one between the pick and the node's bind) and distinct within one process."""

from __future__ import annotations

import socket

from bench.components import PICK_PORTS_FROM, ephemeral_ports, free_port, free_ports


def test_picked_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    low, high = ephemeral_ports()
    assert PICK_PORTS_FROM < low <= high
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(PICK_PORTS_FROM <= port < low for port in ports)


def test_a_picked_port_binds_for_tcp_and_udp() -> None:
    port = free_port()
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", port))
        udp.bind(("127.0.0.1", port))
