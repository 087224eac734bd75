"""A node's identity: an X25519 key pair the node makes when it starts.

Its node id is a hash of the public key (`node_id_of`), and the handshake
(`wire/protocol.py`) mixes Diffie-Hellman results with both identity keys into the proofs, so
an open link proves the peer holds the private key of the id it names. Before, ids were only
claimed: a member with the cluster token could link under a live member's id and take the
access grants, Wants (with clients' credentials) and bans meant for that member.

A new key every start: a restarted node is a new member to the cluster, as it was with a new
random id.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

NODE_ID_BYTES = 16
KEY_BYTES = 32
_PERSON = b"pollen node id"  # blake2b's personalisation: these hashes are node ids only


def node_id_of(public: bytes) -> bytes:
    """The node id that identity public key `public` stands for."""
    return hashlib.blake2b(public, digest_size=NODE_ID_BYTES, person=_PERSON).digest()


class NodeIdentity:
    """An identity key pair and the node id it stands for."""

    __slots__ = ("node_id", "private", "public")

    def __init__(self, key: bytes) -> None:
        """`key`: the X25519 private key, 32 bytes.

        Raises:
            ValueError: not 32 bytes.
        """
        if len(key) != KEY_BYTES:
            raise ValueError(f"an identity key is {KEY_BYTES} bytes, not {len(key)}")
        self.private = X25519PrivateKey.from_private_bytes(key)
        self.public = self.private.public_key().public_bytes_raw()
        self.node_id = node_id_of(self.public)

    @classmethod
    def generate(cls) -> NodeIdentity:
        return cls(os.urandom(KEY_BYTES))

    def __repr__(self) -> str:
        return f"NodeIdentity({self.node_id.hex()[:12]})"  # never the private key
