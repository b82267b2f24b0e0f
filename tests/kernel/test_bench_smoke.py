"""Smoke size of the kernel benchmarks (issue 7, parts 1-3): the harness runs
end to end on the real IPVS kernel and its sanity checks pass.

Never asserts a time: these machines are shared and noisy. Figures live in
``bash bench/run.sh`` (bench/results/).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not os.environ.get("KUBE_LVS_LAB") or os.geteuid() != 0,
                       reason="needs the lab VM (real IPVS kernel, root): make test-kernel"),
]


@pytest.fixture(scope="module")
def smoke():
    missing = [t for t in ("ipvsadm", "ipvsadm-restore", "keepalived") if not shutil.which(t)]
    assert not missing, f"{missing} not installed: run `bash bench/setup.sh` on the host"
    from lvs_bench import kernel as K
    tables, machine = K.run([20], mode="smoke")
    return {t.id: t for t in tables}, machine


def test_every_benchmark_is_reported(smoke):
    tables, _ = smoke
    assert list(tables) == ["program", "change", "drift", "operator_scale", "end_to_end"]
    for tid in ("operator_scale", "end_to_end"):
        assert tables[tid].status.startswith("not yet measured: needs")


def test_sanity_checks_pass(smoke):
    tables, _ = smoke
    for tid in ("program", "change", "drift"):
        t = tables[tid]
        assert t.errors() == [], f"{tid}: {t.errors()}"


def test_every_column_has_a_value(smoke):
    tables, _ = smoke
    for tid in ("program", "change", "drift"):
        t = tables[tid]
        assert t.missing_columns() == []
        assert len(t.rows) == 1 and t.rows[0]["dests"] == 20
        # growth needs two sizes; every measured column must hold a number
        for c in t.columns:
            if c.kind in ("sec", "ratio", "count", "int", "usec"):
                assert isinstance(t.rows[0][c.key], (int, float)), f"{tid}.{c.key} = {t.rows[0][c.key]!r}"


def test_one_change_is_one_op(smoke):
    tables, _ = smoke
    assert tables["change"].rows[0]["ours_ops"] == 1
    assert tables["drift"].rows[0]["ours_ops"] == 1


def test_outputs_render(smoke, tmp_path):
    from lvs_bench import kernel as K
    tables, machine = smoke
    files = K.write_outputs(list(tables.values()), machine, tmp_path, "smoke")
    assert {f.name for f in files} == {"smoke.json", "smoke.md", "smoke.txt"}
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["machine"]["guest_kernel"] == os.uname().release
    md = (tmp_path / "smoke.md").read_text()
    assert "ours/ipvsadm-restore" in md and "ours/keepalived" in md


def test_agent_process_ipvsadm_edit_and_restart_columns(smoke):
    tables, machine = smoke
    prog, chg, dft = (tables[t].rows[0] for t in ("program", "change", "drift"))
    for row, keys in ((prog, ("ours_process", "ours_process/ipvsadm_restore", "ours_process/keepalived",
                              "ours_process_rss")),
                      (chg, ("ipvsadm_edit", "ours/ipvsadm_edit")),
                      (dft, ("ours_restart", "ours_restart_reconcile", "ours_restart/ipvsadm_save"))):
        for k in keys:
            assert isinstance(row[k], (int, float)) and row[k] > 0, f"{k} = {row[k]!r}"
    # spawn to exit holds the process's own reconcile
    assert dft["ours_restart_reconcile"] < dft["ours_restart"]
    trials = machine["details"][0]["trials"]
    (process,) = [t for t in trials if t["bench"] == "process"]
    (restart,) = [t for t in trials if t["bench"] == "restart"]
    assert process["ops"] > 0 and process["services"] == 2
    assert restart["ops"] == 0  # the restart on the full table finds nothing to do
    assert process["reconcile"] < process["seconds"] and process["imports"] > 0
