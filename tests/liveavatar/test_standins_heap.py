"""The stand-ins keep the heap of the process that runs them out of full collections.

A full collection of the bench's heap took 70-150 ms holding the GIL; it stalled the libwebrtc
publisher's audio thread with the rest, its audio reached the viewer that much late and the
viewer's skew stepped by -100...-150 ms for seconds (docs/sync.md)."""

from __future__ import annotations

import gc

from bridge.sim import stack
from bridge.sim.stack import StandIns

BALLAST = 100_000


async def test_standins_freeze_the_heap_while_open() -> None:
    ballast = [[] for _ in range(BALLAST)]  # containers the collector would walk
    already = stack._open
    async with StandIns():
        assert gc.get_freeze_count() >= BALLAST
        # What is frozen is skipped by a full collection, not lost.
        assert not any(o is ballast for o in gc.get_objects(generation=2))
    if already == 0:
        assert gc.get_freeze_count() == 0
    assert stack._open == already
    del ballast


def test_heap_held_until_the_last_standins_close() -> None:
    already = stack._open
    try:
        stack.hold_heap()
        stack.hold_heap()
        stack.release_heap()
        assert gc.get_freeze_count() > 0
        stack.release_heap()
        if already == 0:
            assert gc.get_freeze_count() == 0
    finally:
        stack._open = already
        if already == 0:
            gc.unfreeze()
