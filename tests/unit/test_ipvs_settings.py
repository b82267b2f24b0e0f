"""IPVSSettings: the node-spec timeouts field, the compiler's NodeStates per
(node, settings), oldest-wins per node, the defaults without one, statuses,
and the reconciler's handling (full passes only, garbage collection).

Every test here fails on the code before IPVSSettings existed: the node spec
refused ``timeouts`` as an unknown field, ``compile_cluster`` had no
``ipvssettings`` argument, and a SNAT service's conntrack could be turned off
by an explicit sysctl.
"""
from __future__ import annotations

import json

import pytest

from lvs_model import channel as C
from lvs_model.nodespec import (NodeSpec, Service, dump_node_spec, effective_sysctls, parse_node_spec,
                                parse_node_spec_strict)
from lvs_operator.compiler import compile_cluster
from lvs_operator.scope import scope_of_change, scoped_snapshot
from lvs_operator.write_plan import compile_snapshot, plan_writes

from test_compiler import NODES, POOLS, obj, rs, vs

NS = C.DEFAULT_NAMESPACE
DIRECTORS = {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}


def settings(name, ts="2026-01-01T00:00:00Z", gen=1, status=None, **spec):
    spec.setdefault("nodeSelector", DIRECTORS)
    o = obj(name, spec, namespace="", ts=ts, gen=gen, status=status)
    # Distinct per content: the compiler memoises by (uid, resourceVersion), as the API server's are.
    o["metadata"]["resourceVersion"] = f"{name}-{gen}-{json.dumps(spec, sort_keys=True)}"
    return o


# --------------------------------------------------------------------------
# The node-spec document
# --------------------------------------------------------------------------

def test_timeouts_parse_and_dump_round_trip():
    spec = parse_node_spec_strict({"node": "d1", "timeouts": {"tcp": 900, "tcpFin": 30, "udp": 0}})
    assert spec.timeouts == (("tcp", 900), ("tcpfin", 30))  # 0: the kernel's, not written
    assert dump_node_spec(spec)["timeouts"] == {"tcp": 900, "tcpFin": 30}
    assert parse_node_spec_strict(dump_node_spec(spec)) == spec


@pytest.mark.parametrize("raw, path, words", [
    ({"tcp": -1}, "timeouts.tcp", "out of range"),
    ({"udp": 2**31}, "timeouts.udp", "out of range"),
    ({"tcpFin": "60"}, "timeouts.tcpFin", "must be an integer"),
    ({"tcpfin": 60}, "timeouts.tcpfin", "unknown field"),
    ([900], "timeouts", "must be a mapping"),
])
def test_bad_timeouts_are_reported_with_their_field_path_and_not_set(raw, path, words):
    spec, errors = parse_node_spec({"node": "d1", "timeouts": raw})
    assert [e.path for e in errors] == [path] and words in errors[0].message
    assert spec.timeouts == ()


def test_a_declared_ipvs_sysctl_wins_over_the_default_but_snat_keeps_conntrack():
    svc = Service(address="192.0.2.10", port=80)
    plain = NodeSpec(node="d1", services=(svc,))
    assert effective_sysctls(plain, "")["net.ipv4.vs.expire_nodest_conn"] == "1"  # today's default
    declared = NodeSpec(node="d1", services=(svc,), sysctls=(("net.ipv4.vs.expire_nodest_conn", "0"),
                                                            ("net.ipv4.vs.conntrack", "0")))
    assert effective_sysctls(declared, "")["net.ipv4.vs.expire_nodest_conn"] == "0"
    snat = NodeSpec(node="d1", services=(Service(address="192.0.2.10", port=80, snat=True),),
                    sysctls=(("net.ipv4.vs.conntrack", "0"),))
    assert effective_sysctls(snat, "")["net.ipv4.vs.conntrack"] == "1"


# --------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------

def _settings_states(result):
    return {n: b for n, b in result.nodestates.items()
            if C.LABEL_IPVSSETTINGS in b["metadata"]["labels"]}


def test_settings_compile_to_one_nodestate_per_selected_node():
    s = settings("lvs", timeouts={"tcp": 900, "tcpFin": 60, "udp": 300}, expireNodestConn=False,
                 connReuseMode=0, sloppyTcp=True)
    r = compile_cluster(nodes=NODES, ipvssettings=[s])
    states = _settings_states(r)
    assert sorted(states) == ["d1.ipvssettings.lvs", "d2.ipvssettings.lvs"]
    body = states["d1.ipvssettings.lvs"]
    assert body["metadata"]["labels"] == {C.LABEL_NODE: "d1", C.LABEL_IPVSSETTINGS: "lvs",
                                          C.LABEL_MANAGED_BY: C.MANAGED_BY}
    assert body["metadata"]["annotations"] == {C.ANNOTATION_IPVSSETTINGS: "lvs"}
    assert body["spec"] == {"node": "d1", "services": [],
                            "sysctls": {"net.ipv4.vs.conn_reuse_mode": "0",
                                        "net.ipv4.vs.expire_nodest_conn": "0",
                                        "net.ipv4.vs.sloppy_tcp": "1"},
                            "timeouts": {"tcp": 900, "tcpFin": 60, "udp": 300}}
    spec = parse_node_spec_strict(body["spec"])  # the agent reads what the operator writes
    assert spec.timeouts == (("tcp", 900), ("tcpfin", 60), ("udp", 300))
    st = r.settings_status["lvs"]
    assert st["nodes"] == ["d1", "d2"] and st["nodeCount"] == 2
    assert {c["type"]: c["reason"] for c in st["conditions"]} == {
        "Accepted": "Accepted", "Conflict": "NoConflict", "Programmed": "Pending"}


def test_without_settings_nothing_changes_and_the_defaults_stay():
    """No IPVSSettings: the same NodeStates as before the kind existed, and
    the agent's defaults (expire_nodest_conn=1 on a director) unchanged."""
    vss, rss = [vs("web", address="192.168.0.10", port=80)], [rs("a", "web", "10.0.0.51", port=80)]
    r = compile_cluster(vss, rss, POOLS, NODES)
    assert not _settings_states(r) and r.settings_status == {}
    spec = parse_node_spec_strict(r.nodestates["d1-team-a-web"]["spec"])
    assert spec.timeouts == () and spec.sysctls == ()
    assert effective_sysctls(spec, "")["net.ipv4.vs.expire_nodest_conn"] == "1"


def test_two_settings_on_one_node_the_oldest_wins_and_the_other_names_the_node():
    old = settings("old", ts="2026-01-01T00:00:00Z", timeouts={"tcp": 100},
                   nodeSelector={"matchLabels": {"kubernetes.io/hostname": "d1"}})
    new = settings("new", ts="2026-02-01T00:00:00Z", timeouts={"tcp": 200})
    r = compile_cluster(nodes=NODES, ipvssettings=[new, old])
    assert sorted(_settings_states(r)) == ["d1.ipvssettings.old", "d2.ipvssettings.new"]
    assert r.settings_status["new"]["nodes"] == ["d2"]
    conflict = next(c for c in r.settings_status["new"]["conditions"] if c["type"] == "Conflict")
    assert conflict["status"] == "True" and "d1" in conflict["message"] and "old" in conflict["message"]
    assert "d2" not in conflict["message"]
    win = next(c for c in r.settings_status["old"]["conditions"] if c["type"] == "Conflict")
    assert win["status"] == "False"


def test_invalid_settings_claim_no_node_and_say_which_field():
    bad = settings("bad", ts="2026-01-01T00:00:00Z", connReuseMode=7, timeouts={"tcp": -5})
    good = settings("good", ts="2026-02-01T00:00:00Z", timeouts={"udp": 30})
    r = compile_cluster(nodes=NODES, ipvssettings=[bad, good])
    assert sorted(_settings_states(r)) == ["d1.ipvssettings.good", "d2.ipvssettings.good"]
    acc = r.settings_status["bad"]["conditions"][0]
    assert acc["status"] == "False" and "spec.connReuseMode" in acc["message"] and "spec.timeouts.tcp" in acc["message"]
    assert r.settings_status["bad"]["nodes"] == []


def test_settings_programmed_once_every_agent_reports_the_current_spec():
    s = settings("lvs", timeouts={"tcp": 900})
    first = compile_cluster(nodes=NODES, ipvssettings=[s])
    reported = []
    for name, body in _settings_states(first).items():
        o = {**body, "metadata": {**body["metadata"], "generation": 1}}
        o["status"] = {"observedGeneration": 1, "conditions": [{"type": "Programmed", "status": "True"}]}
        reported.append(o)
    r = compile_cluster(nodes=NODES, ipvssettings=[s], nodestates=reported)
    prog = r.settings_status["lvs"]["conditions"][2]
    assert (prog["status"], prog["reason"]) == ("True", "Programmed")


def test_a_settings_name_taken_by_a_virtualservice_nodestate_gets_the_hashed_form():
    # node d1, namespace "ipvssettings"... cannot collide (no dot in a namespace);
    # a VirtualService named so that node-namespace-name spells it can.
    vss = [vs("x.ipvssettings.lvs", namespace="a", address="192.0.2.10", port=80)]
    nodes = NODES + [{"metadata": {"name": "d-a-x", "labels": {"lvs.kube-lvs.io/director": "true"}},
                      "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.40"}]}}]
    pools = [obj("p", {"namespaces": ["a"], "addresses": ["192.0.2.0/24"]}, namespace="")]
    vss[0]["spec"]["directorSelector"] = {"matchLabels": {"kubernetes.io/hostname": "d"}}
    nodes.append({"metadata": {"name": "d", "labels": {"kubernetes.io/hostname": "d"}}, "status": {}})
    r = compile_cluster(vss, [], pools, nodes, ipvssettings=[settings("lvs", timeouts={"tcp": 9})])
    assert "d-a-x.ipvssettings.lvs" in r.nodestates  # the VirtualService's, plain
    assert r.nodestates["d-a-x.ipvssettings.lvs"]["metadata"]["labels"].get(C.LABEL_VS_NAME)
    ours = [n for n, b in _settings_states(r).items() if b["spec"]["node"] == "d-a-x"]
    assert ours == [C.hashed_settings_nodestate_name("d-a-x", "lvs")]


# --------------------------------------------------------------------------
# The reconciler
# --------------------------------------------------------------------------

def _snap(settings_objs, nodestates=()):
    return {"virtualservices": [], "realservers": [], "vippools": [], "nodes": NODES, "namespaces": [],
            "nodestates": list(nodestates), "ipvssettings": settings_objs}


def test_writes_create_update_and_garbage_collect_settings_nodestates():
    s1 = settings("lvs", timeouts={"tcp": 900})
    w = plan_writes(compile_snapshot(_snap([s1]), NS, "now"), _snap([s1]), NS)
    assert sorted(b["metadata"]["name"] for b in w.create) == ["d1.ipvssettings.lvs", "d2.ipvssettings.lvs"]
    assert [(p, n) for p, _, n, _ in w.status] == [("ipvssettings", "lvs")]
    written = [{**b, "metadata": {**b["metadata"], "uid": "u-" + b["metadata"]["name"], "resourceVersion": "1"}}
               for b in w.create]
    s2 = settings("lvs", gen=2, timeouts={"tcp": 60})
    w2 = plan_writes(compile_snapshot(_snap([s2], written), NS, "now"), _snap([s2], written), NS)
    assert not w2.create and sorted(b["spec"]["timeouts"]["tcp"] for b in w2.replace) == [60, 60]
    w3 = plan_writes(compile_snapshot(_snap([], written), NS, "now"), _snap([], written), NS)
    assert sorted(n for n, _ in w3.delete) == ["d1.ipvssettings.lvs", "d2.ipvssettings.lvs"]


def test_settings_changes_need_a_full_pass_and_scoped_passes_leave_them_alone():
    s = settings("lvs", timeouts={"tcp": 900})
    assert scope_of_change("ipvssettings", ("", "lvs"), None, s) is None
    edited = settings("lvs", gen=2, timeouts={"tcp": 1})
    assert scope_of_change("ipvssettings", ("", "lvs"), s, edited) is None
    status_only = {**s, "status": {"nodes": ["d1"]}}
    assert scope_of_change("ipvssettings", ("", "lvs"), s, status_only) == set()
    # A scoped pass neither recreates nor deletes the settings' NodeStates.
    w = plan_writes(compile_snapshot(_snap([s]), NS, "now"), _snap([s]), NS)
    written = [{**b, "metadata": {**b["metadata"], "uid": "u", "resourceVersion": "1"}} for b in w.create]
    scoped = scoped_snapshot(_snap([s], written), {("team-a", "web")})
    ws = plan_writes(compile_snapshot(scoped, NS, "now"), scoped, NS)
    assert not ws.create and not ws.delete and not ws.status


def test_the_agent_merges_a_settings_nodestate_with_the_services_and_its_values_win():
    """Operator to agent: the NodeStates of one director merge into one spec
    whose timeouts and declared sysctls are the IPVSSettings' and override
    the defaults; adding the settings NodeState after the services takes the
    full merge (node-level fields changed), not the fast path."""
    from lvs_agent.nodestate import merge

    vss, rss = [vs("web", address="192.168.0.10", port=80)], [rs("a", "web", "10.0.0.51", port=80)]
    s = settings("lvs", timeouts={"tcp": 120}, expireNodestConn=False)
    r = compile_cluster(vss, rss, POOLS, NODES, ipvssettings=[s])
    mine = {n: b for n, b in r.nodestates.items() if b["spec"]["node"] == "d1"}
    assert sorted(mine) == ["d1-team-a-web", "d1.ipvssettings.lvs"]
    services_only = merge({"d1-team-a-web": mine["d1-team-a-web"]}, "d1")
    assert effective_sysctls(services_only.spec, "")["net.ipv4.vs.expire_nodest_conn"] == "1"
    both = merge(mine, "d1", services_only)
    assert both.spec.timeouts == (("tcp", 120),) and not both.errors
    assert effective_sysctls(both.spec, "")["net.ipv4.vs.expire_nodest_conn"] == "0"
    assert [s.key for s in both.spec.services] == [s.key for s in services_only.spec.services]
