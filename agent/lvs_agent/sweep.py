"""The drift sweep's budget (pure: the clock is passed in).

Every pass re-checks a slice of the services against the kernel so that each
is re-checked once per ``resync`` seconds. The slice grows with the time
since the last one, but the sweep is background work: it may take at most
BUDGET of the agent's time at the cost per service measured so far, and one
slice at most SLICE_MAX seconds, since a change arriving meanwhile waits for
it. On a machine too slow for its table a round takes longer (the metric
kube_lvs_sweep_round_seconds shows how long) instead of crowding out changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# The largest share of the agent's time background reads of the kernel (the
# sweep, the connection counts) may take: changes get the rest.
BUDGET = 0.2
# Seconds a change's pass may keep the sweep from running before it sweeps a
# slice too: changes in a row must not postpone drift repair for ever.
STARVED = 2.0
# Seconds of sweeping in one pass at most: what a change arriving then may wait for.
SLICE_MAX = 0.1
# Weight of the newest pass in the moving average of the cost per service.
COST_WEIGHT = 0.2


@dataclass
class Sweep:
    """Where the sweep is and what it costs; ``resync`` seconds per round (0: no sweep)."""

    resync: float
    swept_at: float | None = None  # the time up to which the sweep has advanced
    cost: float | None = None  # seconds per swept service (moving average)
    round_started: float | None = None
    round_seconds: float = 0.0  # how long the last complete round took

    def restart(self, now: float) -> None:
        """A full reconcile checked everything: the sweep goes on from ``now``."""
        self.swept_at = now

    def size(self, services: int, now: float, change: bool = False) -> int:
        """How many services this pass re-checks (one more than ``services``
        per round: an empty spec still gets its node side checked).
        ``change``: a pass that programs a change sweeps nothing (the next
        tick's slice catches up) unless the sweep has been starved for STARVED."""
        since = self.swept_at
        if change and since is not None and now - since < STARVED:
            return 0
        self.swept_at = now
        if since is None or self.resync <= 0:
            return 0
        n = math.ceil((services + 1) * min(1.0, (now - since) / self.resync))
        if self.cost:
            work = min((now - since) * BUDGET, SLICE_MAX)
            n = min(n, max(1, int(work / self.cost)))
        return n

    def done(self, swept: int, duration: float, round_done: bool, now: float, learn: bool = True) -> None:
        """A pass swept ``swept`` services in ``duration`` seconds; ``learn``:
        a pass of the sweep alone (no change in it), whose time is the sweep's cost."""
        if swept and learn:
            cost = duration / swept
            self.cost = cost if self.cost is None else (1 - COST_WEIGHT) * self.cost + COST_WEIGHT * cost
        if round_done:
            if self.round_started is not None:
                self.round_seconds = now - self.round_started
            self.round_started = now


__all__ = ["BUDGET", "SLICE_MAX", "STARVED", "Sweep"]
