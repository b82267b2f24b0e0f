"""Unit tests of the kopf-indexes benchmark's pure parts (bench/lvs_bench/kopf_indexes.py):
medians over trials, the 1.5x verdict, the report, the kopf registry it runs
(one index and one event handler per operator kind) and the snapshot built
from kopf's index stores. No cluster, no timing."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import kopf_indexes as K  # noqa: E402


def _run(mode: str, held: float, compiled: float, change: float, **kw) -> dict:
    return {"mode": mode, "to_held": held, "to_compiled": compiled, "change_s": change, "compile_s": 0.5,
            "to_settled": compiled, "peak_rss_mib": 100.0, "cpu_s": 1.0, **kw}


def test_median_ignores_missing_and_averages_even_counts():
    assert K.median([3.0, None, 1.0, 2.0]) == 2.0
    assert K.median([4.0, 1.0]) == 2.5
    assert K.median([None]) is None


def test_summarize_leaves_out_failed_trials():
    runs = [_run("caches", 1, 2, 0.01), _run("caches", 3, 4, 0.03), _run("kopf", 5, 6, 0.05),
            _run("kopf", 99, 99, 9, error="timeout")]
    med = K.summarize(runs)
    assert med["caches"]["to_compiled"] == 3 and med["caches"]["trials_ok"] == 2
    assert med["kopf"]["to_compiled"] == 6 and med["kopf"]["trials_ok"] == 1


def test_verdict_needs_both_figures_within_the_factor():
    med = K.summarize([_run("caches", 1, 10, 0.1), _run("kopf", 1, 14, 0.14)])
    v = K.verdict(med)
    assert abs(v["to_compiled"] - 1.4) < 1e-9 and v["within"]
    assert not K.verdict(K.summarize([_run("caches", 1, 10, 0.1), _run("kopf", 1, 16, 0.1)]))["within"]
    assert not K.verdict(K.summarize([_run("caches", 1, 10, 0.1), _run("kopf", 1, 10, 0.2)]))["within"]
    # kopf never got there: not within (a missing figure is no pass)
    failed = K.verdict(K.summarize([_run("caches", 1, 10, 0.1), _run("kopf", 1, 10, 0.1, error="x")]))
    assert failed["to_compiled"] is None and not failed["within"]


def test_render_shows_ratios_and_conclusion():
    runs = [_run("caches", 1, 10, 0.1), _run("kopf", 2, 30, 0.1)]
    med = K.summarize(runs)
    size = {"virtual_services": 1000, "per_vs": 10, "trials": 1, "objects": 11001, "runs": runs,
            "median": med, "verdict": K.verdict(med)}
    result = {"machine": {"cpu": "x"}, "sizes": [size], "conclusion": K.conclusion([size])}
    md = K.render(result)
    assert "| start to compiled (all NodeStates computed) | 10.0 s | 30.0 s | 3.00x |" in md
    assert "**not met**" in md and "keep the operator's own caches" in md


def test_registry_has_one_index_and_one_event_handler_per_operator_kind():
    from lvs_operator.watch import operator_kinds
    reg = K.kopf_registry("kube-lvs-system", ("bench", "vs1-rs0"), 5, {})
    kinds = {(k.group, k.version, k.plural) for k in operator_kinds("kube-lvs-system")}
    indexed = {(s.group, s.version, s.any_name) for s in reg._indexing.get_all_selectors()}
    watched = {(s.group, s.version, s.any_name) for s in reg._watching.get_all_selectors()}
    assert indexed == kinds and watched == kinds


def test_index_snapshot_flattens_each_store():
    class Store(list):
        pass
    idx = {"realservers": {("ns", "a"): Store([{"n": "a"}]), ("ns", "b"): Store([{"n": "b"}])}, "nodes": {}}
    snap = K.index_snapshot(idx)
    assert sorted(o["n"] for o in snap["realservers"]) == ["a", "b"] and snap["nodes"] == []


def test_growth_exponent_between_sizes():
    def size(n, t):
        return {"virtual_services": n, "median": {"caches": {"to_compiled": t}, "kopf": {"to_compiled": None}}}
    g = K.growth([size(100, 1.0), size(1000, 100.0)], "caches")
    assert g[0] == (100, 1.0, None) and abs(g[1][2] - 2.0) < 1e-9
    assert K.growth([size(100, 1.0)], "kopf") == []
    lines = K.growth_lines([size(100, 1.0), size(1000, 100.0)])
    assert any("extrapolated to 10,000" in ln and "2.8 h" in ln for ln in lines)


def test_conclusion_uses_the_largest_size_measured_in_both_modes():
    def size(n, caches, kopf_runs):
        runs = [_run("caches", 1, caches, 0.1)] + kopf_runs
        med = K.summarize(runs)
        return {"virtual_services": n, "per_vs": 10, "median": med, "verdict": K.verdict(med)}
    small = size(100, 1.0, [_run("kopf", 1, 1.2, 0.1)])
    big = size(1000, 2.0, [{"mode": "kopf", "error": "not run"}])
    assert K.conclusion([small]).startswith("Within")
    text = K.conclusion([small, big])
    assert text.startswith("Not within") and "at 100 VirtualServices" in text and "not measured at 1,000" in text
