from __future__ import annotations

import pytest

from pieces.digest import InvalidDigest, digest_hex, is_digest

GOOD = "sha256:" + "ab" * 32


def test_accepts_sha256() -> None:
    assert digest_hex(GOOD) == "ab" * 32


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "AB" * 32,  # upper case
        "sha256:" + "ab" * 31,  # short
        "sha256:" + "ab" * 33,  # long
        "sha512:" + "ab" * 64,  # other algorithm
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
