"""Garbage-collector pauses in the agent.

A full (generation 2) collection walks every object the collector tracks and
holds the interpreter lock all the while: with 10k NodeStates the agent keeps
about a million (the objects, their parses, the spec, the ownership record,
the statuses sent), and in the lab VM such a walk is seconds in which no watch
event is read and no change programmed. Those structures are long-lived and
acyclic (reference counting frees them when they are replaced), so once they
have settled after growth the agent moves them out of the collector's sight
(``gc.freeze``); young garbage is still collected as before, and a full
collection only walks what came since. The price: a reference cycle among
frozen objects is never collected. Slow collections are logged and counted
(metrics: kube_lvs_gc_*).
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)


class GCPauses:
    """Times collections; ``settle(n)`` freezes the heap when the agent's
    object count ``n`` has grown by GROWTH since the last freeze."""

    SLOW = 0.1  # seconds: a collection this long is logged
    GROWTH = 1.25  # freeze again once the object count has grown by a quarter
    MIN_OBJECTS = 100  # below this many NodeStates a full collection is cheap

    def __init__(self) -> None:
        self._started = 0.0
        self.slow = 0  # collections that took SLOW or more
        self.longest = 0.0  # seconds
        self.freezes = 0
        self._frozen_at = 0  # the object count at the last freeze

    def install(self) -> "GCPauses":
        if self._timer not in gc.callbacks:
            gc.callbacks.append(self._timer)
        return self

    def uninstall(self) -> None:
        if self._timer in gc.callbacks:
            gc.callbacks.remove(self._timer)

    def _timer(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        self.longest = max(self.longest, took)
        if took >= self.SLOW:
            self.slow += 1
            log.info("garbage collection of generation %d took %.3fs (%d collected)",
                     info.get("generation", -1), took, info.get("collected", 0))

    def settle(self, objects: int) -> bool:
        """After a pass: freeze what is alive now if the agent's objects
        grew enough to make a full collection costly. Whether it froze."""
        if objects < self.MIN_OBJECTS or objects < self._frozen_at * self.GROWTH:
            return False
        started = time.perf_counter()
        gc.collect()  # what is garbage now must not be frozen
        gc.freeze()
        self._frozen_at = objects
        self.freezes += 1
        log.info("%d objects settled: %d heap objects frozen out of the collector's walk in %.3fs",
                 objects, gc.get_freeze_count(), time.perf_counter() - started)
        return True


__all__ = ["GCPauses"]
