"""Unit tests of the agent-as-a-process trial's pure parts
(bench/lvs_bench/agent_process.py and its use in kernel.py): the report it
prints, its peak RSS, the NodeState file; no kernel, no timing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import agent_process as A  # noqa: E402
from lvs_bench import kernel as K  # noqa: E402
from lvs_bench import report as R  # noqa: E402
from lvs_bench import workload as W  # noqa: E402

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"


def report(**over) -> dict:
    rep = {"imports": 0.5, "read_parse": 1.0, "reconcile": 2.0, "ops": 30, "failed": 0,
           "first_error": None, "services": 3, "peak_rss_mib": 60.5}
    return {**rep, **over}


def test_vm_hwm_is_the_peak_not_the_current_rss():
    assert A.vm_hwm_mib(STATUS) == 200.0
    assert A.vm_hwm_mib("VmRSS:\t 1024 kB\n") is None
    assert A.vm_hwm_mib("VmHWM:\t lots kB\n") is None


def test_parse_report_reads_the_last_json_line_after_other_output():
    out = "WARNING something\n" + json.dumps(report(ops=1)) + "\n" + json.dumps(report()) + "\n"
    assert A.parse_report(out) == report()
    assert A.parse_report(json.dumps(report(ops=0)), expect_ops=0)["ops"] == 0


@pytest.mark.parametrize("out, why", [
    ("Traceback (most recent call last):\n  boom\n", "no JSON report"),
    ("{not json\n", "bad JSON report"),
    ("[1]\n", "no JSON report"),
    (json.dumps(report(reconcile=None)), "reconcile"),
    (json.dumps(report(imports=-1.0)), "imports"),
    (json.dumps(report(peak_rss_mib=True)), "peak_rss_mib"),
    (json.dumps(report(failed=2, first_error="EEXIST")), "2 failed ops: EEXIST"),
])
def test_parse_report_refuses_a_bad_report(out, why):
    with pytest.raises(ValueError, match=why):
        A.parse_report(out)


def test_parse_report_refuses_a_restart_that_did_something():
    with pytest.raises(ValueError, match="issued 3 ops, expected 0"):
        A.parse_report(json.dumps(report(ops=3)), expect_ops=0)


def test_nodestate_file_merges_to_the_workloads_spec():
    from lvs_agent.nodestate import merge
    w = W.Workload(5, 3)
    objects = json.loads(K.nodestates_json(w))
    merged = merge(objects, "bench")
    assert merged.errors == {}
    assert merged.spec == W.node_spec(w)


def test_process_cells_keep_errors_and_take_the_peak_rss():
    ok1 = {**report(peak_rss_mib=50.0), "seconds": 3.0}
    ok2 = {**report(peak_rss_mib=70.0), "seconds": 5.0}
    bad = R.error("agent process: no JSON report")
    assert K._process_field(ok1, "seconds") == 3.0
    assert K._process_field(bad, "seconds") is bad
    assert K._process_field("not run above 10 dests", "seconds") == "not run above 10 dests"
    assert K._peak([K._process_field(c, "peak_rss_mib") for c in (ok1, ok2)]) == 70.0
    assert R.is_error(K._peak([K._process_field(c, "peak_rss_mib") for c in (ok1, bad)]))


def test_new_columns_ratios_and_summary():
    prog = {"dests": 1000, "services": 100, "ours": 0.5, "ipvsadm_restore": 1.0, "keepalived": 2.0,
            "ours_apply": 0.3, "ours_build": 0.1, "ours_path": "batch", "ours_process": 1.5,
            "ours_process_rss": 61.2}
    chg = {"dests": 1000, "ours": 0.02, "ours_ops": 1, "ours_full": 0.8, "ipvsadm_restore": 1.0,
           "keepalived": 0.1, "ipvsadm_edit": 0.01, "ours_read": 0.01, "ours_observe": 0.15}
    dft = {"dests": 1000, "ours": 0.3, "ours_ops": 1, "ipvsadm_save": 0.1, "ours_observe": 0.2,
           "ours_sweep": 0.4, "ours_slice": 0.01, "ours_restart": 0.15, "ours_restart_reconcile": 0.1}
    t1, t2, t3 = K.build_tables([prog], [chg], [dft], K.STANDING_NOTES)[:3]
    for t in (t1, t2, t3):
        assert t.missing_columns() == [] and t.errors() == []
    assert t1.rows[0]["ours_process/ipvsadm_restore"] == pytest.approx(1.5)
    assert t1.rows[0]["ours_process/keepalived"] == pytest.approx(0.75)
    assert t2.rows[0]["ours/ipvsadm_edit"] == pytest.approx(2.0)
    assert t3.rows[0]["ours_restart/ipvsadm_save"] == pytest.approx(1.5)
    assert "| 61 |" in R.render_markdown(t1)
    lines = R.summary_lines([t1, t2, t3])
    assert lines[0].endswith("; ours from process start 1.50 s = 1.50x ipvsadm-restore, 0.75x keepalived, "
                             "peak RSS 61 MiB")
    assert lines[1].endswith(", 2.00x ipvsadm -e")
    assert lines[2].endswith("; agent restart on the full table 150.0 ms = 1.50x ipvsadm -Sn")
