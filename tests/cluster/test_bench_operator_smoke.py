"""Smoke size of benchmark part 4 (operator scale, issue 7): the harness runs
against a real control plane and its sanity checks pass (NodeStates counted and
compared, one change rewrites one NodeState per director).

Never asserts a time: these machines are shared and noisy. Figures live in
``bash bench/run.sh`` (bench/results/). Starts its own control plane (the
benchmark measures a fresh one), so it does not touch the session's.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lvs_cluster import binaries

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    missing = binaries.missing_binaries()
    if missing:
        pytest.fail(f"control-plane binaries missing ({', '.join(missing)}): run bash cluster/build.sh")
    from lvs_bench import operator_scale as O
    t, _ = O.run([5], per_vs=3, timeout=300, workdir=tmp_path_factory.mktemp("bench-operator"))
    return t


def test_sanity_checks_pass(table):
    assert table.status == "ok"
    assert table.errors() == [], table.errors()
    r = table.rows[0]
    assert (r["virtual_services"], r["real_servers"], r["directors"]) == (5, 15, 3)
    assert r["nodestates"] == 5 * 3
    assert r["change_writes"] == r["change_target"] == 3


def test_every_column_has_a_value(table):
    assert table.missing_columns() == []
    for c in table.columns:
        v = table.rows[0][c.key]
        assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{c.key} = {v!r}"


def test_report_renders(table):
    from lvs_bench import report as R
    text = R.render_text(table)
    assert "ERROR" not in text and "4. Operator scale" in text
    assert any(line.startswith("operator, 5 VirtualServices") for line in R.summary_lines([table]))
