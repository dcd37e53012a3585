"""Python's garbage collector set for a process that imports torch, diffusers and Prefect and holds models.

Such a process imports about a million objects that live as long as it does (modules, classes, functions). With
CPython's defaults, a young collection every 700 allocations, a full collection walks all of them again each time
the heap grows by a quarter, and every full collection the pipeline cache makes to return a released model's memory
walks them too (about 0.3 s each). A process that imports the CLI and the flows, then loads and releases the five
tiny models a produce uses, spends 2.2 s of its 8.2 s of CPU in the collector so, and 0.9 s of 7.1 s with these
settings (`bench/gc_heap.py`).

    collect_less_often()        # a process's entry point: the CLI, the flows a worker runs
    freeze_what_lives_now()     # once the model libraries are imported, before the first model loads
"""

from __future__ import annotations

import gc

# Allocations between two collections of the young generation (CPython's default is 700). A young collection costs
# what it walks, so fewer, larger ones do about the same work; the full collections, which come after a number of
# young ones, come far less often.
YOUNG_GENERATION_ALLOCATIONS = 50_000


def collect_less_often() -> None:
    """Collect the young generation every YOUNG_GENERATION_ALLOCATIONS allocations (the older ones as before)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_ALLOCATIONS, older, oldest)


def freeze_what_lives_now() -> None:
    """Leave every object alive now out of all later collections (`gc.freeze`), once the young garbage is gone.

    Only for a moment when what lives will live as long as the process (after imports, before a model loads): a
    reference cycle among frozen objects is never collected, so a model frozen with its cycles would keep its
    memory after it is released."""
    gc.collect(1)
    gc.freeze()
