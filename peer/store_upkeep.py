"""The store's maintenance timer: the TTL, the quota and the disk watermarks checked at least
every CHECK_INTERVAL (and every TTL, or sooner when a blob's TTL runs out first), and the
running totals checked against the disk every RESCAN_INTERVAL (files removed by hand).

The decisions are the store's (`Store.sweep`, pure ones in pieces/room.py); this only carries
them out on time. A failing check is logged and tried again at the next one: the node goes on
serving either way.
"""

from __future__ import annotations

import logging
import time

import trio

from pieces.partial import StoreError
from pieces.store import Store

log = logging.getLogger("pollen.store")

CHECK_INTERVAL = 60.0
RESCAN_INTERVAL = 600.0
MIN_DELAY = 1.0  # between two checks, whatever the TTLs say


async def keep_store(store: Store) -> None:
    """Run the store's periodic checks until cancelled."""
    last_rescan = trio.current_time()
    while True:
        try:
            if trio.current_time() - last_rescan >= RESCAN_INTERVAL:
                # The walk stats every file: in a thread, not on the event loop. Applied
                # only if nothing changed the totals meanwhile (else at the next round).
                generation = store.ledger.generation
                entries = await trio.to_thread.run_sync(store.walk)
                if store.apply_walk(entries, generation):
                    last_rescan = trio.current_time()
            store.sweep(time.time())
            expiry = store.next_expiry()
        except (OSError, StoreError) as exc:
            log.error("the store's periodic check failed (tried again later): %s", exc)
            expiry = None
        # A blob stored after this check expires a TTL from now at the soonest.
        delay = min(CHECK_INTERVAL, store.policy.ttl or CHECK_INTERVAL)
        if expiry is not None:
            delay = min(delay, max(MIN_DELAY, expiry - time.time()))
        await trio.sleep(max(MIN_DELAY, delay))
