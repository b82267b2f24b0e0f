"""Unit tests of the lvsctl-as-a-process table (bench/lvs_bench/kernel.py, 1b):
its pure parts, no kernel and no timing (the kernel tier runs it for real)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import kernel as K  # noqa: E402
from lvs_bench import report as R  # noqa: E402
from lvs_bench import workload as W  # noqa: E402


def test_lvsctl_summary_reads_the_last_line():
    out = "programmed  tcp/10.1.0.0:80\n30 operations, 0 failed, uplink -, 13.10s\n"
    assert K.lvsctl_summary(out) == (30, 0, 13.1)
    assert K.lvsctl_summary("nothing to do\n") is None
    assert K.lvsctl_summary("3 operations, 1 failed, uplink eth0, 0.50s\n") == (3, 1, 0.5)


def test_edit_argv_is_one_ipvsadm_edit_of_the_changed_dest():
    w = W.Workload(6, 4)
    changed = (3, 2, 7)
    assert K.edit_argv(changed) == ["ipvsadm", "-e", "-t", f"{W.vip(3)}:{W.VIP_PORT}",
                                    "-r", f"{W.rip(3, 2)}:{W.RIP_PORT}", "-m", "-w", "7"]
    # the same dest and weight the changed restore rules hold
    rule = f"-a -t {W.vip(3)}:{W.VIP_PORT} -r {W.rip(3, 2)}:{W.RIP_PORT} -m -w 7"
    assert rule in W.save_lines(w, changed)


def test_spec_yaml_is_the_workloads_node_spec_as_lvsctl_reads_it(tmp_path):
    from lvs_agent import lvsctl as L
    from lvs_model.nodespec import parse_node_spec
    w = W.Workload(3, 4)
    f = tmp_path / "node.yaml"
    f.write_text(K.spec_yaml(w, (1, 2, 9)))
    doc = L.load_spec_document(str(f))
    assert doc == W.node_spec_doc(w, (1, 2, 9))
    spec, errors = parse_node_spec(doc)
    assert not errors and spec == W.node_spec(w, (1, 2, 9))


def test_lvsctl_argv_runs_the_console_script_or_the_module(monkeypatch, tmp_path):
    py = tmp_path / "python"
    monkeypatch.setattr(K.sys, "executable", str(py))
    assert K.lvsctl_argv() == [str(py), "-m", "lvs_agent.lvsctl"]
    (tmp_path / "lvsctl").write_text("#!/bin/sh\n")
    assert K.lvsctl_argv() == [str(tmp_path / "lvsctl")]


def test_parse_sizes():
    assert K.parse_sizes("1000,10_000") == [1000, 10000]
    assert K.parse_sizes("") == []


def row(**kw):
    base = {"dests": 24000, "services": 6000, "ipvsadm_restore": 17.5, "lvsctl": 189.6,
            "lvsctl_reconcile": 13.1, "lvsctl_dry_run": 181.6, "ipvsadm_edit": 0.05, "lvsctl_change": 100.0}
    base.update(kw)
    return base


def test_lvsctl_table_has_both_ratios_and_every_column():
    t = K.build_lvsctl_table([row()], K.LVSCTL_NOTES)
    assert t.id == "lvsctl" and t.missing_columns() == []
    assert round(t.rows[0]["lvsctl/ipvsadm_restore"], 3) == round(189.6 / 17.5, 3)
    assert t.rows[0]["lvsctl_change/ipvsadm_edit"] == 2000.0
    labels = [c.label for c in t.columns]
    assert "lvsctl apply/ipvsadm -R" in labels and "one change: lvsctl/ipvsadm -e" in labels
    assert any("ipvsadm -e" in n and "lvsctl apply" in n for n in t.notes)


def test_lvsctl_table_keeps_errors_and_gives_no_ratio():
    t = K.build_lvsctl_table([row(lvsctl=R.error("boom"), lvsctl_reconcile=None,
                                  lvsctl_change=R.error("no table"))], [])
    assert t.rows[0]["lvsctl/ipvsadm_restore"] is None
    assert t.rows[0]["lvsctl_change/ipvsadm_edit"] is None
    assert [k for _, k, _ in t.errors()] == ["lvsctl", "lvsctl_change"]


def test_summary_names_both_ratios():
    t = K.build_lvsctl_table([row()], [])
    lines = [x for x in R.summary_lines([t]) if x.startswith("lvsctl as a process")]
    assert lines == ["lvsctl as a process, 24,000 dests: apply 190 s (reconcile 13.10 s) = 10.83x ipvsadm -R; "
                     "one weight change 100 s = 2000x ipvsadm -e"]
    t = K.build_lvsctl_table([row(lvsctl=R.error("boom"))], [])
    assert "no ratio to ipvsadm -R" in R.summary_lines([t])[0]
