"""HTTP Range requests on blobs (RFC 9110 section 14): one byte range per request."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Leading zeros are dropped and a number may have at most 19 more digits (2**63 - 1, the largest
# file size, has 19): a longer one is no offset into any blob, and Python refuses to convert
# strings of over 4300 digits anyway. Such a header does not match and is ignored.
_NUMBER = r"(?:0*([0-9]{1,19}))?"
_RANGE = re.compile(rf"bytes={_NUMBER}-{_NUMBER}", re.ASCII)


class RangeNotSatisfiable(ValueError):
    """The range lies outside the blob; answer 416 with `Content-Range: bytes */size`."""


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, end) of a blob."""

    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The range a `Range` header asks for, or None to send the whole blob.

    Headers we do not handle (other units, several ranges, syntax errors, numbers past any file
    size) are ignored, as RFC 9110 allows: the client gets the whole blob with 200, which every
    registry client accepts.

    Raises:
        RangeNotSatisfiable: a well-formed single range with no byte inside the blob.
    """
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:
        # Suffix range: the last N bytes.
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(0, size - suffix), size)
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # last < first: invalid, ignore the header
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, min(end, size))
