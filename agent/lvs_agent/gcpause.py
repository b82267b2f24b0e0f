"""Garbage-collector pauses in the agent.

A full (generation 2) collection walks every object the collector tracks and
holds the interpreter lock all the while: the agent keeps objects in
proportion to its NodeStates (the objects, their parses, the spec, the
ownership record, the statuses sent), so a full walk is a pause that grows
with the table, in which no watch event is read and no change programmed.

So the agent moves what has survived out of the collector's sight
(``gc.freeze``) every SETTLE_EVERY seconds, in a pass that programs no
change, after a collection of what is not frozen yet: that collection walks
only what came since the last one, and so does every automatic one. The
long-lived structures are acyclic (reference counting frees them when they
are replaced, frozen or not); a reference cycle that dies while frozen is
kept until the next reclaim, once per RECLAIM_EVERY, which unfreezes and
walks everything once (the one full pause left, hourly). Slow collections
are logged and counted (metrics: kube_lvs_gc_*).

While every pass programs a change (a mass create) no pass settles, and the
unfrozen heap would grow until each automatic full collection is a long
pause again. A pass that programs a change therefore freezes without
collecting once no settle has run for STARVED seconds: no pause (a freeze
moves lists), and a cycle frozen while garbage waits for the hourly reclaim.
"""
from __future__ import annotations

import gc
import logging
import math
import time

log = logging.getLogger(__name__)


class GCPauses:
    """Times collections (``install``); ``settle()`` after a pass that
    programmed no change."""

    # Seconds: a collection this long is logged (a pause a change's latency would show).
    SLOW = 0.1
    # Seconds between freezes: often enough that each collection of the young
    # heap stays small, rarely enough that the collect before each is no cost.
    SETTLE_EVERY = 10.0
    # Seconds without a settle after which a change's pass freezes (no
    # collection): a few settle periods, so a burst of changes only skips a
    # settle that a quiet moment would have run.
    STARVED = 30.0
    # Seconds between full walks (frozen cycles reclaimed): the one long pause
    # left, rare enough to cost nothing, often enough to bound leaked cycles.
    RECLAIM_EVERY = 3600.0

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._started = 0.0
        self.slow = 0  # collections that took SLOW or more
        self.longest = 0.0  # seconds
        self.freezes = 0
        self.reclaims = 0
        self._settled_at = -math.inf
        self._reclaimed_at: float | None = None

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

    def settle(self) -> bool:
        """Collect what is not frozen and freeze what survived, at most every
        SETTLE_EVERY seconds; once per RECLAIM_EVERY, everything is unfrozen
        first. Whether it ran."""
        now = self._clock()
        if now - self._settled_at < self.SETTLE_EVERY:
            return False
        self._settled_at = now
        if self._reclaimed_at is None:
            self._reclaimed_at = now
        elif now - self._reclaimed_at >= self.RECLAIM_EVERY:
            self._reclaimed_at = now
            self.reclaims += 1
            gc.unfreeze()
        gc.collect()
        gc.freeze()
        self.freezes += 1
        return True

    def before_full_pass(self) -> None:
        """Freeze, without a collection, before a full pass (the first one,
        from the cache or after a failure). The spec it reads lives through
        the whole pass, and the pass allocates in proportion to the table (the
        table read back, the plan, the record): unfrozen, every automatic full
        collection in it would walk the spec again."""
        gc.freeze()
        self.freezes += 1

    def freeze_starved(self) -> bool:
        """After a pass that programmed a change: freeze, without a collection,
        if no settle has run for STARVED seconds. Whether it did."""
        now = self._clock()
        if now - self._settled_at < self.STARVED:
            return False
        self._settled_at = now
        gc.freeze()
        self.freezes += 1
        return True


__all__ = ["GCPauses"]
