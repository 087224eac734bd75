"""When the owner of a blob asks a busy registry again: a pure rule (time and chance come in).

A registry answering 502, 503 or 504 is busy, or a proxy in front of it is down or timing out.
The owner of a blob is the one node that fetches it from the registry for the cluster; the
nodes that asked it for the blob wait on that download (their Wants open). Had it failed at
once, every one of them would have asked the registry itself at the same moment: the load
that made it fail. So the owner asks again after each of BUSY_WAITS (each scaled by a random
0.5-1.5, so that the owners of blobs refused together do not come back together), while:

- nothing of the blob has been given to anyone (readers and peers are served from the partial
  once it opened);
- the next answer can come within BUSY_DEADLINE of the download's start (the time spent, the
  wait and as long again as the last answer took): the nodes waiting for it give up on an
  owner's answer after 30 s (peer/swarm/fetch.py, META_TIMEOUT) and would then ask elsewhere;
- the registry was not found busy for this blob in the last BUSY_MEMORY seconds: a download
  that follows one that gave up (a client with other credentials, a node that asked too late)
  asks once, without waiting as long again.

A 429 is a refusal by the client's own limits (the client gets it), and a broken connection,
a 500 or a local failure is no sign of load: none of them is asked again.
"""

from __future__ import annotations

BUSY_STATUSES = frozenset({502, 503, 504})
BUSY_WAITS = (1.0, 2.0, 4.0)
BUSY_DEADLINE = 20.0
BUSY_MEMORY = 10.0


def busy_retry_wait(
    status: int | None,
    failures: int,
    *,
    started: bool,
    elapsed: float,
    answer_took: float,
    chance: float,
) -> float | None:
    """Seconds before asking the registry again after the download's `failures`-th failure in
    a row, which answered `status` (None: no answer, a broken connection) `answer_took` seconds
    after it was asked, `elapsed` seconds into the download; `chance` is a random number in
    [0, 1). None: the download fails.

    Args:
        started: the blob's partial has been given to readers (the download is ready).
    """
    if started or status not in BUSY_STATUSES or failures > len(BUSY_WAITS):
        return None
    wait = BUSY_WAITS[failures - 1] * (0.5 + chance)
    return wait if elapsed + wait + answer_took < BUSY_DEADLINE else None


def still_busy(busy_until: float | None, now: float) -> bool:
    """The registry gave up on this blob less than BUSY_MEMORY ago (`busy_until`: then +
    BUSY_MEMORY, None: never)."""
    return busy_until is not None and now < busy_until
