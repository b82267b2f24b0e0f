"""Unit tests of the failover benchmark's pure parts (bench/lvs_bench/failover.py,
issue 17 part 6): the figures taken from a request log, the side-by-side
table and its ratio, the keepalived configuration (checked by keepalived's
own parser) and kube-lvs's node spec. No kernel, no timing; the module did
not exist before, so each of these failed then."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import failover as F  # noqa: E402
from lvs_bench import report as R  # noqa: E402


def test_takeover_counts_from_the_link_down_to_the_first_success():
    log = [(9.0, True), (9.5, False),  # before the failure: not counted
           (10.1, False), (10.6, False), (11.2, False), (13.05, True), (13.2, False), (13.4, True)]
    got = F.takeover(log, down=10.0)
    assert got == {"takeover_seconds": 3.05, "failed_requests": 3,
                   "failed_after_first_success": 1, "requests_after": 2}


def test_takeover_without_a_success_is_none():
    assert F.takeover([(1.0, True), (2.5, False), (3.0, False)], down=2.0) is None


def trial(takeover: float, failed: int, answering: int = 200) -> dict:
    return {"takeover_seconds": takeover, "failed_requests": failed, "failed_after_first_success": 0,
            "held_answering": answering, "held": 200, "sync_seconds": 1.0, "start_seconds": 9.0,
            "new_holder": "d2", "holder": "d1"}


def test_side_by_side_table_reports_median_range_and_ratio_to_keepalived():
    results = {"kube-lvs": [trial(9.0, 18), trial(8.0, 16), trial(10.0, 19, 199)],
               "keepalived": [trial(3.0, 5), trial(3.2, 6), trial(2.9, 5)]}
    main, trials = F.build_tables(results, 200, ["a note"])
    ours, peer = main.rows
    assert (ours["who"], peer["who"]) == ("kube-lvs", "keepalived")
    assert (ours["takeover"], ours["takeover_range"]) == (9.0, "8.00 s - 10.00 s")
    assert (ours["failed"], ours["answering"], ours["answering_min"]) == (18, 200, 199)
    assert ours["takeover/keepalived"] == pytest.approx(3.0)
    assert ours["failed/keepalived"] == pytest.approx(18 / 5)
    assert peer["takeover/keepalived"] is None
    assert not main.errors() and not main.missing_columns() and not trials.missing_columns()
    assert len(trials.rows) == 6
    md = F.render_markdown([main, trials], {"mode": "full"})
    assert "| kube-lvs | 9.00 s | 8.00 s - 10.00 s | 18 |" in md
    assert "3.00x" in md and "ERROR" not in md


def test_a_failed_trial_is_an_error_never_a_number():
    results = {"kube-lvs": [trial(9.0, 18), {"error": "TrialError: no VIP holder"}],
               "keepalived": [{"error": "keepalived not installed"}]}
    main, trials = F.build_tables(results, 200, [])
    ours, peer = main.rows
    assert ours["trials"] == "1 (+1 failed)" and ours["takeover"] == 9.0
    assert R.is_error(peer["takeover"]) and ours["takeover/keepalived"] is None
    assert [e[1] for e in trials.errors()] == ["takeover_seconds", "takeover_seconds"]
    text = F.render_text([main, trials], {})
    assert "keepalived: not measured (keepalived not installed)" in text


def test_report_round_trips_through_json(tmp_path):
    main, trials = F.build_tables({"kube-lvs": [trial(9.0, 18)], "keepalived": [trial(3.0, 5)]}, 200, [])
    files = F.write_outputs([main, trials], {"mode": "smoke", "details": {"trials": {}}}, tmp_path, "failover")
    assert sorted(f.name for f in files) == ["failover.json", "failover.md", "failover.txt"]
    tables, machine = R.load_report((tmp_path / "failover.json").read_text())
    assert [t.id for t in tables] == ["failover", "failover_trials"]
    assert tables[0].rows[0]["takeover/keepalived"] == pytest.approx(3.0)
    assert "details" not in (tmp_path / "failover.md").read_text()


def test_node_spec_is_one_group_of_both_directors_with_the_vip():
    from lvs_model.nodespec import parse_node_spec
    spec, errors = parse_node_spec(json.loads(json.dumps(F.node_doc("d2"))))
    assert not errors
    assert spec.node == "d2" and len(spec.services) == 2
    doc = F.node_doc("d2")["directorGroups"][0]
    assert doc["members"] == ["d1", "d2"] and doc["vips"] == [F.VIP] and doc["syncId"] == F.SYNC_ID


# keepalived's parser checks that the interfaces exist (and refuses lo for VRRP):
# one of this machine's own devices stands in for the lab's eth0.
DEVICE = next((d.name for d in sorted(Path("/sys/class/net").iterdir()) if d.name != "lo"), None)


@pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived not installed (bash bench/setup.sh)")
@pytest.mark.skipif(DEVICE is None, reason="no network device besides lo for keepalived's interface check")
@pytest.mark.parametrize("node", F.DIRECTORS)
def test_keepalived_accepts_the_config(tmp_path, node):
    """keepalived's own parser (--config-test) takes the file without a
    warning; a misspelt routing method makes it fail (checked below), so
    this is not vacuous."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(F.keepalived_conf(node, dev=DEVICE))
    p = subprocess.run(["keepalived", "--config-test", "-f", str(conf), "--log-console"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr
    conf.write_text(F.keepalived_conf(node, dev=DEVICE).replace("lb_kind DR", "lb_kind DRR"))
    bad = subprocess.run(["keepalived", "--config-test", "-f", str(conf), "--log-console"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0


def test_keepalived_config_differs_only_in_role():
    d1, d2 = F.keepalived_conf("d1"), F.keepalived_conf("d2")
    assert "state MASTER" in d1 and "priority 150" in d1
    assert "state BACKUP" in d2 and "priority 100" in d2
    assert f"lvs_sync_daemon eth0 VI_1 id {F.SYNC_ID}" in d1 and f"virtual_router_id {F.VRID}" in d2
    strip = lambda s: [ln for ln in s.splitlines() if not ln.strip().startswith(("state", "priority", "router_id"))]  # noqa: E731
    assert strip(d1) == strip(d2)
    assert d1.count("lb_kind DR") == 2 and d1.count("real_server") == 4
