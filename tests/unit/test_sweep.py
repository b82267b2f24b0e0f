"""The drift sweep's budget (lvs_agent.sweep), the clock passed in."""
from __future__ import annotations

import pytest

from lvs_agent.sweep import STARVED, Sweep


def steps(sweep, table):
    """Each row: (services, now, change) -> the expected slice."""
    return [sweep.size(services, now, change) for (services, now, change), _ in table], [n for _, n in table]


@pytest.mark.parametrize("table", [
    # The slice follows the clock: a 30 s round of 10,000 services.
    [((9999, 100.0, False), 0),  # no sweep before the first pass
     ((9999, 100.5, False), 167),  # half a second of the round
     ((9999, 100.5, False), 0),  # no time passed
     ((9999, 200.0, False), 10000),  # a long pass: the whole round, no more
     ((0, 200.5, False), 1)],  # an empty spec: the node side still gets checked
    # A change's pass sweeps nothing unless the sweep is starved; the tick catches up.
    [((9999, 100.0, False), 0),
     ((9999, 100.4, True), 0),
     ((9999, 100.5, False), 167),  # half a second's slice, nothing lost
     ((9999, 100.9, True), 0),
     ((9999, 101.0 + STARVED, True), 834)],  # starved: 2.5 s of round
])
def test_slices(table):
    got, want = steps(Sweep(resync=30.0), table)
    assert got == want


def test_no_resync_no_sweep():
    s = Sweep(resync=0.0)
    assert [s.size(100, t) for t in (1.0, 50.0)] == [0, 0]


def test_restart_moves_the_sweep_to_a_full_reconcile():
    s = Sweep(resync=30.0)
    s.restart(100.0)
    assert s.size(9999, 100.5) == 167


def test_sweep_keeps_to_its_budget_on_a_slow_machine():
    """At 10 ms per service the sweep may take 20 % of the time: 10 services
    per half second, not 167; the round takes longer and its length is measured."""
    s = Sweep(resync=30.0)
    s.size(9999, 100.0)
    s.done(100, 5.0, False, 100.0, learn=False)  # a change's pass teaches nothing
    assert s.cost is None
    s.done(100, 1.0, True, 100.0)
    assert s.cost == 0.01 and s.round_seconds == 0.0  # the first round's start
    assert s.size(9999, 100.5) == 10
    s.done(10, 0.1, True, 160.0)
    assert s.round_seconds == 60.0
    s.cost = 1e-5  # a fast machine: the clock decides
    assert s.size(9999, 101.0) == 167
    s.cost = 0.01
    assert s.size(9999, 111.0) == 10  # 10 s since: 2 s of budget, but one slice is 0.1 s at most
    s.done(10, 0.2, False, 112.0)
    assert s.cost == pytest.approx(0.8 * 0.01 + 0.2 * 0.02)  # a moving average
