"""Protocol errors, as in h11: who broke the rules decides the class."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of the peer protocol's errors."""


class LocalProtocolError(ProtocolError):
    """We (the caller) misused the protocol object: a bug on this side."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or against the rules; close the connection."""
