"""How often Python's cyclic garbage collector runs while the agent serves.

The collector's default pace, a young collection every 700 tracked objects allocated and not
yet freed, suits programs whose objects die young. A server under concurrent load keeps the
objects of every request in flight alive across those collections: each young collection
finds them alive and promotes them, the older generations fill with objects that die soon
after, and full collections, which walk every object in the process (the imported libraries'
included), follow. Counted on the bare server under 128 concurrent requests of the heavy
model, 12 s of load: 1,918 young and 15 full collections, the full ones 30 to 44 ms each, and
not one object freed by any of them; every request in flight waits out each full collection,
and they made the p99 latency (benchmarks/README.md, "The collector's pace").

A young collection every YOUNG_THRESHOLD allocations lets the requests in flight finish between
two: in the same load, one young collection and no full one, and p99 0.63x. Garbage in reference
cycles still goes at the next collection, and what can wait for it is at most YOUNG_THRESHOLD
small objects (about a megabyte).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 10_000  # tracked allocations between two young collections (Python's: 700)


def pace_collection() -> None:
    """Collect the young generation every YOUNG_THRESHOLD allocations, unless the process
    already collects less often or not at all (an application embedding the server chose)."""
    young, middle, old = gc.get_threshold()
    if not gc.isenabled() or young == 0 or young >= YOUNG_THRESHOLD:
        return
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    log.debug("young garbage collections every %d allocations (was %d)", YOUNG_THRESHOLD, young)
