"""Unit tests of the benchmark harness's pure parts: report/ratio formatting
and the workload (bench/lvs_bench; no kernel, no timing)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import report as R  # noqa: E402
from lvs_bench import workload as W  # noqa: E402


# ---------------------------------------------------------------- numbers

def test_ratio_and_missing_values():
    assert R.ratio(2.0, 4.0) == 0.5
    assert R.ratio(1, 0) is None
    assert R.ratio(None, 1.0) is None
    assert R.ratio(R.error("broken"), 1.0) is None
    assert R.ratio(1.0, "not run above 10,000 dests") is None
    assert R.ratio(True, 1.0) is None
    assert R.ratio(float("nan"), 1.0) is None


def test_growth_is_relative_to_size_step():
    # 10x the work at 10x the time is linear (1.0); 20x the time is 2.0
    assert R.growth([1000, 10000, 100000], [1.0, 10.0, 200.0]) == [None, 1.0, 2.0]
    assert R.growth([1, 2, 4], [1.0, R.error("x"), 4.0]) == [None, None, None]
    assert R.growth([], []) == []


@pytest.mark.parametrize("x,text", [
    (0.0000042, "4 µs"), (0.0123, "12.3 ms"), (1.5, "1.50 s"), (250.0, "250 s"),
])
def test_fmt_seconds(x, text):
    assert R.fmt_seconds(x) == text


def test_fmt_cell_kinds():
    assert R.fmt_cell(None, "sec") == "-"
    assert R.fmt_cell(R.error("boom"), "sec") == "ERROR"
    assert R.fmt_cell(0.5, "ratio") == "0.50x"
    assert R.fmt_cell(1234.0, "ratio") == "1234x"
    assert R.fmt_cell(100000, "int") == "100,000"
    assert R.fmt_cell(1.0, "growth") == "1.00"
    assert R.fmt_cell("pyroute2", "text") == "pyroute2"
    assert R.fmt_cell("not run above 10 dests: slow", "sec") == "not run above 10 dests: slow"


def test_column_kind_is_checked():
    with pytest.raises(ValueError):
        R.Column("x", "x", "seconds")


# ---------------------------------------------------------------- tables

def _table():
    t = R.Table("program", "1. Programming", [
        R.Column("dests", "dests", "int"),
        R.Column("ours", "ours", "sec"),
        R.Column("peer", "peer", "sec"),
    ], [
        {"dests": 1000, "ours": 0.3, "peer": 0.4},
        {"dests": 10000, "ours": 3.3, "peer": R.error("table incomplete: 9 services")},
        {"dests": 100000, "ours": 33.0, "peer": "not run above 10,000 dests: too slow"},
    ], notes=["a note"])
    t.add_ratio("ours", "peer", "ours/peer")
    t.add_per_unit("dests", "ours", "ours µs/dest")
    t.add_growth("dests", "ours", "growth ours")
    return t


def test_derived_columns():
    t = _table()
    assert [r["ours/peer"] for r in t.rows] == [pytest.approx(0.75), None, None]
    assert t.rows[0]["ours.per_unit"] == pytest.approx(300.0)
    assert t.rows[2]["ours.growth"] == pytest.approx(1.0)
    assert t.missing_columns() == []
    assert t.errors() == [(1, "peer", "table incomplete: 9 services")]


def test_render_text_has_every_column_and_the_error():
    t = _table()
    text = R.render_text(t)
    header = text.splitlines()[1]
    for c in t.columns:
        assert c.label in header
    assert "0.75x" in text
    assert "ERROR" in text and "error in row 2, peer: table incomplete" in text
    assert "note: a note" in text
    # rows line up under the header
    lines = text.splitlines()
    assert len(lines[1]) >= len(lines[3].rstrip()) - 1


def test_render_markdown_table_shape():
    t = _table()
    md = R.render_markdown(t)
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(t.rows)
    ncols = len(t.columns)
    for line in rows:
        assert line.count("|") - line.count("\\|") == ncols + 1
    assert "- error in row 2" in md


def test_not_measured_table_renders_status_only():
    t = R.Table("e2e", "5. End to end", [], status="not yet measured: needs the operator",
                notes=["planned: p99"])
    assert "not yet measured: needs the operator" in R.render_text(t)
    assert "*not yet measured: needs the operator*" in R.render_markdown(t)
    assert t.errors() == []


def test_json_roundtrip_and_machine():
    t = _table()
    machine = {"date": "2026-11-24", "guest_kernel": "6.1.0-56-amd64", "host_cpu": "Xeon",
               "extra": "x", "unset_field": ""}
    text = R.report_json([t], machine)
    data = json.loads(text)
    assert data["machine"]["guest_kernel"] == "6.1.0-56-amd64"
    tables, m = R.load_report(text)
    assert tables[0].rows == json.loads(json.dumps(t.rows))
    assert [c.key for c in tables[0].columns] == t.keys()
    full = R.render_report_text(tables, m)
    assert "kernel (VM, uname -r): 6.1.0-56-amd64" in full and "extra: x" in full
    assert "unset_field" not in full
    md = R.render_report_markdown(tables, m)
    assert "| host CPU | Xeon |" in md


def test_kernel_tables_have_every_column_even_with_errors():
    from lvs_bench import kernel as K  # importable on the host: no kernel access at import
    prog = {"dests": 20, "services": 2, "ours": 0.1, "ipvsadm_restore": R.error("x"),
            "keepalived": 0.2, "ours_apply": 0.05, "ours_build": 0.01, "ours_path": "batch",
            "ours_process": R.error("y"), "ours_process_rss": R.error("y")}
    chg = {"dests": 20, "ours": 0.01, "ours_ops": 1, "ours_full": 0.05, "ipvsadm_restore": 0.3,
           "keepalived": None, "ipvsadm_edit": 0.02, "ours_read": 0.001, "ours_observe": 0.005}
    dft = {"dests": 20, "ours": 0.02, "ours_ops": 1, "ipvsadm_save": 0.01, "ours_observe": 0.01,
           "ours_sweep": 0.03, "ours_slice": 0.001, "ours_restart": 0.5, "ours_restart_reconcile": 0.2}
    tables = K.build_tables([prog], [chg], [dft], K.STANDING_NOTES)
    assert [t.id for t in tables] == ["program", "change", "drift", "operator_scale", "end_to_end"]
    assert tables[0].rows[0]["ours_process/ipvsadm_restore"] is None  # an error gives no ratio
    assert [k for _, k, _ in tables[0].errors()] == ["ipvsadm_restore", "ours_process", "ours_process_rss"]
    for t in tables[:3]:
        assert t.missing_columns() == [], t.id
    assert "ours/ipvsadm_restore" in tables[0].keys() and "ours/keepalived" in tables[0].keys()
    assert round(tables[1].rows[0]["ours/ours_full"], 6) == 0.2  # incremental vs full, one weight change
    assert [c.label for c in tables[1].columns][:4] == ["dests", "ours: ops", "ours", "ours: full reconcile"]
    assert tables[3].status.startswith("not yet measured: needs")
    assert tables[4].status.startswith("not yet measured: needs")


def test_caps():
    from lvs_bench import kernel as K
    caps = K.parse_caps(["keepalived=10000:too slow under TCG", "ours=5"])
    assert caps.skip("keepalived", 10000) is None
    assert "too slow under TCG" in caps.skip("keepalived", 100000)
    assert caps.skip("ours", 6) == "not run above 5 dests: capped by --cap"
    assert caps.skip("ipvsadm_restore", 10**6) is None


# ---------------------------------------------------------------- workload

def test_workload_sizes():
    w = W.Workload.for_total(100_000)
    assert (w.services, w.dests_per_service, w.total_dests, w.rules) == (10_000, 10, 100_000, 110_000)
    with pytest.raises(ValueError):
        W.Workload.for_total(25)
    with pytest.raises(ValueError):
        W.Workload(0)
    with pytest.raises(ValueError):
        W.Workload(10, 65)


def test_addresses_are_unique():
    w = W.Workload.for_total(100_000)
    vips = {W.vip(i) for i in range(w.services)}
    rips = {W.rip(i, j) for i in range(w.services) for j in range(w.dests_per_service)}
    assert len(vips) == w.services and len(rips) == w.total_dests
    assert not vips & rips


def test_node_spec_matches_the_parsed_document():
    from lvs_model.nodespec import parse_node_spec
    w = W.Workload(30, 4)
    changed = (7, 2, 9)
    spec, errors = parse_node_spec(W.node_spec_doc(w, changed))
    assert errors == []
    assert spec == W.node_spec(w, changed)
    assert spec.services[7].dests[2].weight == 9


def test_restore_text_and_check_table():
    w = W.Workload(3, 2)
    text = W.restore_text(w)
    assert text.count("\n-A ") + text.startswith("-A ") == 3
    assert text.count("-a ") == 6
    assert W.check_table(w, text) is None
    # ipvsadm -Sn pads nothing, but be lenient with whitespace
    assert W.check_table(w, text.replace(" -s ", "  -s ")) is None
    lines = text.splitlines()
    assert "incomplete: 3 services / 5 dests" in W.check_table(w, "\n".join(lines[:-1]))
    changed = (1, 0, 5)
    assert "differs" in W.check_table(w, W.restore_text(w, changed))
    assert W.check_table(w, W.restore_text(w, changed), changed) is None


def test_keepalived_conf_mirrors_the_rules():
    w = W.Workload(3, 2)
    conf = W.keepalived_conf(w, (2, 1, 4))
    assert conf.count("virtual_server ") == 3
    assert conf.count("real_server ") == 6
    assert "virtual_server 10.1.0.2 80 {" in conf
    assert "real_server 10.65.0.2 8080 {\n        weight 4" in conf
    assert "lb_algo wlc" in conf and "lb_kind NAT" in conf and "_CHECK" not in conf
    assert conf.count("{") == conf.count("}")


def test_summary_lines():
    from lvs_bench import kernel as K
    prog = {"dests": 1000, "services": 100, "ours": 0.5, "ipvsadm_restore": 1.0,
            "keepalived": R.error("x"), "ours_apply": 0.3, "ours_build": 0.1, "ours_path": "batch"}
    chg = {"dests": 1000, "ours": 0.2, "ours_ops": 1, "ours_full": 0.8, "ipvsadm_restore": 1.0,
           "keepalived": 0.1, "ours_read": 0.01, "ours_observe": 0.15}
    dft = {"dests": 1000, "ours": 0.3, "ours_ops": 1, "ipvsadm_save": 0.1, "ours_observe": 0.2,
           "ours_sweep": 0.4, "ours_slice": 0.01}
    tables = K.build_tables([prog], [chg], [dft], {})
    lines = R.summary_lines(tables)
    assert lines[0] == ("programming 1,000 dests from empty: ours 500.0 ms = 0.50x ipvsadm-restore, "
                        "no ratio to keepalived")
    assert lines[1].startswith("one weight change in 1,000 dests: ours 1 op(s), 200.0 ms (incremental; full "
                               "reconcile 800.0 ms) = 0.20x a full restore, 2.00x a keepalived reload")
    assert "3.00x ipvsadm -Sn" in lines[2]
    assert lines[3].startswith("4. Operator scale") and "not yet measured" in lines[3]
    assert "## Summary" in R.render_report_markdown(tables, {})
    assert "summary (ratios" in R.render_report_text(tables, {})


def test_rerender_from_json(tmp_path):
    t = _table()
    p = tmp_path / "latest.json"
    p.write_text(R.report_json([t], {"date": "d", "details": [{"big": 1}], "warm_up": {"seconds": 1}}))
    out = R.rerender(str(p))
    assert out == [str(tmp_path / "latest.md"), str(tmp_path / "latest.txt")]
    md = (tmp_path / "latest.md").read_text()
    assert "| date | d |" in md and "details" not in md and "warm_up" not in md
    assert "## Summary" in md and "programming 1,000 dests" in md


def test_small_ratios_keep_two_significant_digits():
    from lvs_bench.report import fmt_ratio
    assert [fmt_ratio(x) for x in (0.00113, 0.0342, 0.53, 1.0, 250.4)] == ["0.0011x", "0.034x", "0.53x", "1.00x",
                                                                            "250x"]


def test_summary_names_an_end_to_end_row_that_failed():
    from lvs_bench import end_to_end as E
    ok = {c.key: None for c in E.columns()} | {"services": 1000, "changes": 100, "seen": 100, "p50": 0.5, "p99": 3.6}
    bad = {c.key: None for c in E.columns()} | {"services": 10000, "changes": 100, "seen": R.error("race")}
    lines = R.summary_lines([E.build_table([ok, bad], [])])
    assert lines[0].startswith("end to end with 1,000 services: kubectl patch to kernel p50 500.0 ms, p99 3.60 s")
    assert lines[1] == "end to end with 10,000 services: not measured (error below the table)"


def test_summary_sets_statuses_settled_against_the_api_servers_floor():
    from lvs_bench import end_to_end as E
    row = {c.key: None for c in E.columns()} | {"services": 1000, "changes": 100, "seen": 100, "p50": 0.5,
                                                "p99": 3.6, "settled": 93.2, "writes": 12559, "floor": 64.6,
                                                "settled/floor": 93.2 / 64.6}
    lines = R.summary_lines([E.build_table([row], [])])
    assert lines[1].startswith("end to end with 1,000 services: statuses settled 93.20 s = 1.44x the API "
                               "server's floor (64.60 s) for the 12,559 writes"), lines


def test_end_to_end_breakdown_splits_each_change_at_the_nodestate_write():
    import calendar
    import time as _t

    from lvs_bench import end_to_end as E
    t0 = calendar.timegm(_t.strptime("2026-12-01 07:00:00", "%Y-%m-%d %H:%M:%S"))
    trace = [{"vs": "vs1", "patch": t0 + 0.1, "seen_guest": t0 + 0.9 - 2.0},  # guest clock 2 s behind
             {"vs": "vs11", "patch": t0 + 5.0, "seen_guest": None},  # never seen
             {"vs": "vs2", "patch": t0 + 9.0}]  # no operator line
    op_log = ["[2026-12-01 07:00:00,050] lvs_operator [INFO    ] updated NodeState nat-director-bench-e2e-vs1",
              "[2026-12-01 07:00:00,400] lvs_operator [INFO    ] updated NodeState nat-director-bench-e2e-vs1",
              "[2026-12-01 07:00:05,300] lvs_operator [INFO    ] updated NodeState nat-director-bench-e2e-vs11",
              "garbage"]
    # Guest clock: the pass that programmed vs1 woke at 07:00:00.6 host = 06:59:58.6 guest,
    # waited 0.05 s and took 0.2 s: its line is logged at 06:59:58.85 guest.
    agent_log = ["2026-12-01 06:59:58,850 INFO lvs-agent: reconciled: 1 ops, 0 failed in 0.200s (waited 0.050s, "
                 "merge 0.010s, engine 0.190s, swept 0; nat-director-bench-e2e-vs1)",
                 "2026-12-01 06:59:58,900 INFO lvs-agent: reconciled: 1 ops, 0 failed in 0.100s (waited 0.000s, "
                 "merge 0.010s, engine 0.090s, swept 0; nat-director-bench-e2e-vs11)"]
    got = E.breakdown(trace, op_log, agent_log, offset=-2.0)
    # The line before the patch is an earlier write; vs1 does not match vs11's line.
    assert got[0] == {"vs": "vs1", "operator": 0.3, "agent": 0.5, "delivery": 0.2, "pass": 0.3}
    assert got[1] == {"vs": "vs11", "operator": 0.3, "agent": None, "delivery": None, "pass": None}
    assert got[2] == {"vs": "vs2", "operator": None, "agent": None, "delivery": None, "pass": None}
    assert E._log_time("2026-12-01 07:00:00,250 INFO lvs-agent: reconciled") == t0 + 0.25


def test_create_many_creates_each_virtualservice_before_its_realservers():
    """8 threads, yet within a group (a VirtualService and its RealServers) in
    order: a RealServer created first would be compiled and evented as orphaned."""
    import threading
    import time as _time
    from lvs_bench.operator_scale import create_many
    done: list[str] = []
    lock = threading.Lock()

    class Api:
        def create(self, plural, ns, body):
            _time.sleep(0.001)
            with lock:
                done.append(body["metadata"]["name"])
    items = []
    for i in range(40):
        items.append(("virtualservices", "ns", {"metadata": {"name": f"vs{i}"}}))
        items += [("realservers", "ns", {"metadata": {"name": f"vs{i}-rs{j}"}}) for j in range(2)]
    create_many(Api(), items, threads=8, group=3)
    assert sorted(done) == sorted(b["metadata"]["name"] for _, _, b in items)
    pos = {name: k for k, name in enumerate(done)}
    assert all(pos[f"vs{i}"] < pos[f"vs{i}-rs{j}"] for i in range(40) for j in range(2))


def test_a_service_is_complete_with_all_its_dests_at_any_weight():
    """Part 5's sizes grow on top of each other: the smaller size's changes leave
    some dests at other weights, and those services are still in the kernel."""
    from lvs_bench import end_to_end as E
    def svc(i, weights):
        return "\n".join([f"TCP  {E.hexkey(E.vip(i), 80)} wlc"] +
                         [f"  -> {E.hexkey(a, 80)}      Masq    {w}      0          0" for a, w in zip(E.RS_ADDRS, weights)])
    raw = "\n".join(["IP Virtual Server version 1.2.1 (size=4096)", svc(0, (1, 1)), svc(1, (7, 1)), svc(2, (1,)),
                     svc(5, (1, 1))])
    assert E.complete_services(raw, 3) == 2  # vs0, vs1 (weight 7 counts); vs2 lacks a dest; vs5 not asked for


def test_part4_counts_the_api_servers_successful_status_writes_of_its_kinds_only():
    from lvs_bench.operator_scale import count_status_writes
    lvs = 'group="lvs.kube-lvs.io"'
    metrics = "\n".join([
        "# HELP apiserver_request_total Counter of apiserver requests",
        f'apiserver_request_total{{code="200",{lvs},resource="realservers",scope="resource",subresource="status",verb="PATCH"}} 755',
        f'apiserver_request_total{{code="200",{lvs},resource="virtualservices",scope="resource",subresource="status",verb="PATCH"}} 380',
        f'apiserver_request_total{{code="201",{lvs},resource="virtualservices",scope="resource",subresource="status",verb="PATCH"}} 5',
        f'apiserver_request_total{{code="409",{lvs},resource="realservers",scope="resource",subresource="status",verb="PATCH"}} 7',
        f'apiserver_request_total{{code="200",{lvs},resource="vippools",scope="resource",subresource="status",verb="PATCH"}} 1',
        f'apiserver_request_total{{code="200",{lvs},resource="nodestates",scope="resource",subresource="status",verb="PATCH"}} 9',
        f'apiserver_request_total{{code="200",{lvs},resource="realservers",scope="resource",subresource="",verb="PATCH"}} 3',
        f'apiserver_request_total{{code="200",{lvs},resource="realservers",scope="resource",subresource="status",verb="PUT"}} 2',
        'apiserver_request_duration_seconds_count{group="lvs.kube-lvs.io",resource="realservers",subresource="status",verb="PATCH"} 99',
    ])
    assert count_status_writes(metrics) == 755 + 380 + 5


def test_part4_keeps_the_operators_own_split_of_its_start():
    from lvs_bench.operator_scale import phase_lines
    log = "\n".join([
        "[t0] lvs_operator.leader [INFO] acquired leadership",
        "[t1] lvs_operator [INFO] caches populated (10 virtualservices, 100 realservers)",
        "[t2] lvs_operator [INFO] NodeStates: 30 created, 0 updated; 110 status(es) to write",
        "[t3] lvs_operator [INFO] first full pass as leader: 140 write(s) (derive 0.01s, compile 0.20s, plan 0.01s, write 1.00s)",
        "[t4] lvs_operator [INFO] reconciled: 3 write(s)",
    ])
    assert phase_lines(log) == [line.strip() for line in log.splitlines()[1:4]]
