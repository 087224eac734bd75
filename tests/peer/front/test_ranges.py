from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peer.front.ranges import ByteRange, RangeNotSatisfiable, parse_range


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


HUGE = "9" * 5000  # Python 3.11 refuses int() of strings over 4300 digits


@pytest.mark.parametrize(
    "header",
    [
        f"bytes={HUGE}-",
        f"bytes=0-{HUGE}",
        f"bytes=-{HUGE}",
        f"bytes={HUGE}-{HUGE}",
        f"bytes={'0' * 5000}-",
        f"bytes={'0' * 5000}1-{'0' * 5000}2",
    ],
)
def test_numbers_with_thousands_of_digits_do_not_raise(header: str) -> None:
    try:
        result = parse_range(header, 100)
    except RangeNotSatisfiable:
        return
    assert result is None or 0 <= result.start < result.end <= 100


def test_leading_zeros_are_the_same_number() -> None:
    assert parse_range(f"bytes={'0' * 5000}1-{'0' * 5000}2", 100) == ByteRange(1, 3)
    assert parse_range("bytes=000-", 100) == ByteRange(0, 100)
    assert parse_range("bytes=-005", 100) == ByteRange(95, 100)


def test_only_ascii_digits_are_numbers() -> None:
    # str.isdigit and regex \d accept other scripts' digits; HTTP does not.
    assert parse_range("bytes=\u0661-\u0662", 100) is None


_DIGITS = st.one_of(
    st.just(""),
    st.text("0123456789", min_size=1, max_size=30),
    st.integers(4000, 6000).map(lambda n: "1" + "0" * n),
    st.integers(0, 6000).map(lambda n: "0" * n + "7"),
)


@given(_DIGITS, _DIGITS, st.sampled_from(["", " ", "\t"]), st.integers(0, 2**63 - 1))
def test_any_digit_count_parses_or_is_unsatisfiable(
    first: str, last: str, pad: str, size: int
) -> None:
    try:
        result = parse_range(f"{pad}bytes={first}-{last}{pad}", size)
    except RangeNotSatisfiable:
        return
    if result is not None:
        assert 0 <= result.start < result.end <= size
