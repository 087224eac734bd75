from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.ranges import ByteRange, RangeNotSatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("bytes=0-", 100, ByteRange(0, 100)),
        ("bytes=10-19", 100, ByteRange(10, 20)),
        ("bytes=90-200", 100, ByteRange(90, 100)),
        ("bytes=-10", 100, ByteRange(90, 100)),
        ("bytes=-1000", 100, ByteRange(0, 100)),
        ("bytes=5-4", 100, None),  # invalid: ignored, whole blob
        ("bytes=0-1,5-6", 100, None),  # several ranges: whole blob
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_parse(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)]
)
def test_unsatisfiable(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, size)


@given(st.text(max_size=40), st.integers(0, 10**12))
def test_never_crashes_and_stays_inside(header: str, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert 0 <= result.start < result.end <= size


@given(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 10**9))
def test_content_range_round_trip(a: int, b: int, size: int) -> None:
    first, last = sorted((a % size, b % size))
    result = parse_range(f"bytes={first}-{last}", size)
    assert result == ByteRange(first, last + 1)
    assert result.content_range(size) == f"bytes {first}-{last}/{size}"
