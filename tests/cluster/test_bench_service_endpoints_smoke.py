"""Smoke size of the Service-endpoints benchmark (issue 19): the harness runs
against a real control plane and its sanity checks hold: every dest of both
services reaches every director's NodeState, and one endpoint change (like
one RealServer change) rewrites one NodeState per director, nothing else.

Never asserts a time. Starts its own control plane (the benchmark measures a
fresh one). Before issue 19 the endpoint-backed service never got a dest.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lvs_cluster import binaries

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.cluster


def test_one_endpoint_change_is_one_nodestate_write_per_director(tmp_path):
    missing = binaries.missing_binaries()
    if missing:
        pytest.fail(f"control-plane binaries missing ({', '.join(missing)}): run bash cluster/build.sh")
    from lvs_bench import service_endpoints as S
    table, details = S.run([250], directors=2, changes=3, timeout=300, workdir=tmp_path)
    assert table.errors() == [], (table.errors(), details)
    r = table.rows[0]
    assert (r["ep_writes"], r["rs_writes"]) == (2, 2), details
    assert all(isinstance(r[c.key], (int, float)) for c in table.columns), r
    assert r["nodestate_kib"] > 0
