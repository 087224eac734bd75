from __future__ import annotations

import hashlib

import pytest

from pieces.digest import (
    InvalidDigest,
    digest_bytes,
    digest_hex,
    digest_of_hex,
    hasher_for,
    is_digest,
    is_store_key,
)

GOOD = "sha256:" + "ab" * 32


def test_accepts_sha256_and_sha512() -> None:
    assert digest_hex(GOOD) == "ab" * 32
    assert digest_hex("sha512:" + "cd" * 64) == "cd" * 64
    assert digest_of_hex("ab" * 32) == GOOD and digest_of_hex("cd" * 64) == "sha512:" + "cd" * 64
    assert is_store_key("ab" * 32) and is_store_key("cd" * 64)
    assert not is_store_key("ab" * 33) and not is_store_key("AB" * 32) and not is_store_key("x")


def test_the_hash_follows_the_algorithm() -> None:
    assert digest_bytes(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
    sha512 = digest_bytes(b"abc", "sha512:" + "0" * 128)
    assert sha512 == "sha512:" + hashlib.sha512(b"abc").hexdigest()
    assert hasher_for(sha512).name == "sha512" and hasher_for(GOOD).name == "sha256"


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "AB" * 32,  # upper case
        "sha256:" + "ab" * 31,  # short
        "sha256:" + "ab" * 33,  # long
        "sha512:" + "ab" * 32,  # sha512 of sha256's length
        "blake3:" + "ab" * 32,  # another algorithm
        "ab" * 32,  # no algorithm
        "sha256:" + "ab" * 31 + "zz",
        "sha256:../../etc/passwd",
        "",
    ],
)
def test_rejects_anything_else(bad: str) -> None:
    with pytest.raises(InvalidDigest):
        digest_hex(bad)


def test_tag_or_digest() -> None:
    assert is_digest(GOOD)
    assert not is_digest("v1.2.3")
