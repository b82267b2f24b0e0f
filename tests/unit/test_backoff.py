"""lvs_kube.backoff: doubling to a cap, jittered, reset after a success."""
from __future__ import annotations

from lvs_kube.backoff import Backoff


def test_doubles_to_the_cap_and_resets():
    b = Backoff(1.0, 8.0, jitter=lambda: 1.0)
    assert [b.next() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    b.reset()
    assert b.next() == 1.0


def test_jitter_stays_within_a_fifth():
    b = Backoff(10.0, 10.0)
    delays = [b.next() for _ in range(200)]
    assert all(8.0 <= d <= 12.0 for d in delays) and len(set(delays)) > 1
