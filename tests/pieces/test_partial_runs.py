"""Which byte ranges of a partial blob are still missing."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pieces.layout import PieceLayout
from pieces.partial import PartialBlob


def _partial(tmp: Path, size: int, piece: int) -> PartialBlob:
    return PartialBlob(
        "sha256:" + "0" * 64,
        PieceLayout(size, piece),
        tmp / "d",
        tmp / "m",
        tmp / "c",
        {},
    )


@given(
    size=st.integers(1, 5000),
    piece=st.integers(1, 700),
    written=st.lists(st.integers(0, 50), max_size=20),
    head=st.integers(0, 699),
)
def test_missing_runs_cover_exactly_the_unwritten_bytes(
    size: int, piece: int, written: list[int], head: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        partial = _partial(Path(tmp), size, piece)
        layout = partial.layout
        done = {i for i in written if i < layout.count}
        for index in sorted(done):
            partial.write_sync(layout.start(index), [bytes(layout.length(index))])
        # ... and the head of the first piece not written whole
        first_open = next((i for i in range(layout.count) if i not in done), None)
        if first_open is not None:
            take = min(head, layout.length(first_open) - 1)
            partial.write_sync(layout.start(first_open), [bytes(take)])
        runs = partial.missing_runs()
        covered = set()
        for start, end in runs:
            assert start < end
            covered |= set(range(start, end))
        written_bytes = {
            b for i in done for b in range(layout.start(i), layout.start(i) + layout.length(i))
        }
        if first_open is not None:
            written_bytes |= set(range(layout.start(first_open), layout.start(first_open) + take))
        assert covered == set(range(size)) - written_bytes
        # runs are sorted and do not touch: each is as long as it can be
        assert all(a[1] < b[0] for a, b in itertools.pairwise(runs))
        partial.close()
