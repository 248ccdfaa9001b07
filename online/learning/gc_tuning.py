"""Garbage-collector settings for long event loops.

Decoding thousands of JSON events per batch allocates many short-lived containers, and each
allocation burst triggers CPython's cyclic collector, which then re-scans every long-lived
object (the model, its dicts of weights, the clients). Events are freed by reference counting
(they hold no cycles), so the daemon and replay (1) freeze what exists after start-up, moving it
out of the collector's generations, and (2) collect the young generation every 50,000
allocations instead of every 700. Measured on the daemon: about 6-10 µs/event less with
StandardScaler | LogisticRegression (benchmarks/daemon_stages.py, daemon_vs_peers.py).

>>> import gc
>>> previous = steady_state_gc()
>>> gc.get_threshold()[0]
50000
>>> restore_gc(previous)
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 50_000


def steady_state_gc(threshold: int = YOUNG_GENERATION_THRESHOLD) -> tuple[int, int, int]:
    """Freeze the objects alive now and raise the young-generation threshold; return the old thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, previous[1], previous[2])
    return previous


def restore_gc(previous: tuple[int, int, int]) -> None:
    """Undo `steady_state_gc` (for in-process callers such as tests)."""
    gc.unfreeze()
    gc.set_threshold(*previous)
