"""The compiler (pure): exact NodeStates, pools, conflicts, statuses, minimal change."""
from __future__ import annotations

import copy
import random

import pytest

from lvs_model import channel as C
from lvs_model.nodespec import dump_node_spec, parse_node_spec
from lvs_operator.compiler import compile_cluster
from lvs_operator.write_plan import plan_writes

NS = C.DEFAULT_NAMESPACE
DIRECTOR = {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}


def obj(name, spec, namespace="team-a", ts="2026-01-01T00:00:00Z", gen=1, status=None, labels=None):
    meta = {"name": name, "creationTimestamp": ts, "generation": gen, "uid": f"uid-{namespace}-{name}"}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    o = {"metadata": meta, "spec": spec}
    if status is not None:
        o["status"] = status
    return o


def vs(name, namespace="team-a", ts="2026-01-01T00:00:00Z", **spec):
    spec.setdefault("directorSelector", DIRECTOR)
    return obj(name, spec, namespace, ts)


def rs(name, virtual_service, address, namespace="team-a", ts="2026-01-01T00:00:00Z", **spec):
    return obj(name, {"virtualService": virtual_service, "address": address, **spec}, namespace, ts)


def pool(name, addresses=(), namespaces=("team-a",), fwmarks=(), **extra):
    spec = {"namespaces": list(namespaces), **extra}
    if addresses:
        spec["addresses"] = list(addresses)
    if fwmarks:
        spec["fwmarks"] = [{"first": a, "last": b} for a, b in fwmarks]
    return obj(name, spec, namespace="")


def node(name, ip, director=False, ip6=None):
    labels = {"kubernetes.io/hostname": name}
    if director:
        labels["lvs.kube-lvs.io/director"] = "true"
    addrs = [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
    if ip6:
        addrs.append({"type": "InternalIP", "address": ip6})
    return {"metadata": {"name": name, "labels": labels}, "status": {"addresses": addrs}}


NODES = [node("d1", "10.0.0.30", True, "fd00::30"), node("d2", "10.0.0.31", True, "fd00::31"),
         node("b1", "10.0.0.51", ip6="fd00::51"), node("b2", "10.0.0.52", ip6="fd00::52"),
         node("other", "10.0.0.99")]
POOLS = [pool("lab", ["192.168.0.0/24", "192.168.1.3", "2001:db8::/64"], fwmarks=[(100, 199)])]


def nodestate(name, node_, vs_name, spec, vs_ns="team-a"):
    return {
        "apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "NodeState",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {C.LABEL_NODE: node_, C.LABEL_VS_NAMESPACE: vs_ns, C.LABEL_VS_NAME: vs_name,
                                C.LABEL_MANAGED_BY: C.MANAGED_BY},
                     "annotations": {C.ANNOTATION_VIRTUALSERVICE: f"{vs_ns}/{vs_name}"}},
        "spec": spec,
    }


def check_specs_parse(result):
    for name, body in result.nodestates.items():
        spec, errors = parse_node_spec(body["spec"])
        assert errors == [], (name, errors)
        assert dump_node_spec(spec) == body["spec"], name


# --------------------------------------------------------------------------
# Exact NodeStates per forwarding method
# --------------------------------------------------------------------------

def test_nat_two_directors_two_backends_exact():
    r = compile_cluster(
        [vs("web", address="192.168.0.30", port=80, protocol="tcp", scheduler="wlc", method="nat")],
        [rs("rs1", "web", "10.0.0.51", port=80, weight=1, nodeName="b1"),
         rs("rs2", "web", "10.0.0.52", port=8080, weight=3, nodeName="b2")],
        POOLS, NODES)
    service = {"name": "team-a/web", "protocol": "tcp", "address": "192.168.0.30", "port": 80,
               "scheduler": "wlc",
               "dests": [{"address": "10.0.0.51", "port": 80, "weight": 1, "method": "nat"},
                         {"address": "10.0.0.52", "port": 8080, "weight": 3, "method": "nat"}]}
    # natReturn: gateway (default) configures nothing on the backends.
    assert r.nodestates == {
        f"{d}-team-a-web": nodestate(f"{d}-team-a-web", d, "web", {
            "node": d, "services": [service], "directorAddresses": [{"address": "192.168.0.30"}]})
        for d in ("d1", "d2")}
    check_specs_parse(r)
    assert r.events == []
    st = r.vs_status[("team-a", "web")]
    assert st["directors"] == "0/2" and st["realServers"] == "0/2" and st["service"] == "tcp:192.168.0.30:80"
    assert {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]} == {
        "Accepted": ("True", "Accepted"), "Conflict": ("False", "NoConflict"),
        "Programmed": ("False", "Pending"), "Ready": ("False", "Pending")}


def test_dr_backends_get_the_vip_on_lo():
    r = compile_cluster(
        [vs("dr", address="192.168.0.40", port=443, scheduler="sh", schedulerFlags=["sh-port"], method="dr",
            persistence={"timeout": 600, "netmask": "255.255.255.0"})],
        [rs("a", "dr", "10.0.0.51", nodeName="b1", weight=2), rs("b", "dr", "10.0.0.52", nodeName="b2"),
         rs("c", "dr", "10.0.0.53")],  # not a Kubernetes node: directors only
        POOLS, NODES)
    svc = {"name": "team-a/dr", "protocol": "tcp", "address": "192.168.0.40", "port": 443, "scheduler": "sh",
           "schedulerFlags": ["sh-port"], "persistence": {"timeout": 600, "netmask": "255.255.255.0"},
           "dests": [{"address": "10.0.0.51", "port": 443, "weight": 2, "method": "dr"},
                     {"address": "10.0.0.52", "port": 443, "weight": 1, "method": "dr"},
                     {"address": "10.0.0.53", "port": 443, "weight": 1, "method": "dr"}]}
    expect = {f"{d}-team-a-dr": nodestate(f"{d}-team-a-dr", d, "dr", {
        "node": d, "services": [svc], "directorAddresses": [{"address": "192.168.0.40"}]}) for d in ("d1", "d2")}
    for b in ("b1", "b2"):
        expect[f"{b}-team-a-dr"] = nodestate(f"{b}-team-a-dr", b, "dr", {
            "node": b, "services": [], "backendVips": [{"address": "192.168.0.40", "method": "dr"}]})
    assert r.nodestates == expect
    check_specs_parse(r)


def test_tun_seed_and_gue_override():
    r = compile_cluster(
        [vs("tun", address="192.168.1.3", port=80, scheduler="wlc", method="tun")],
        [rs("rs1", "tun", "192.168.1.10", nodeName="b1"),
         rs("rs2", "tun", "192.168.1.11", nodeName="b2", tunnel={"type": "gue", "port": 6080, "checksum": "csum"})],
        POOLS, NODES)
    svc = {"name": "team-a/tun", "protocol": "tcp", "address": "192.168.1.3", "port": 80, "scheduler": "wlc",
           "dests": [{"address": "192.168.1.10", "port": 80, "weight": 1, "method": "tun"},
                     {"address": "192.168.1.11", "port": 80, "weight": 1, "method": "tun",
                      "tunnel": {"type": "gue", "port": 6080, "checksum": "csum"}}]}
    assert r.nodestates["d1-team-a-tun"]["spec"] == {
        "node": "d1", "services": [svc], "directorAddresses": [{"address": "192.168.1.3"}]}
    assert r.nodestates["d2-team-a-tun"]["spec"]["services"] == [svc]
    assert r.nodestates["b1-team-a-tun"]["spec"] == {
        "node": "b1", "services": [], "backendVips": [{"address": "192.168.1.3", "method": "tun"}]}
    assert r.nodestates["b2-team-a-tun"]["spec"] == {
        "node": "b2", "services": [],
        # The GUE port travels to the backend, whose agent opens it (FOU).
        "backendVips": [{"address": "192.168.1.3", "method": "tun", "tunnelType": "gue", "tunnelPort": 6080}]}
    assert set(r.nodestates) == {"d1-team-a-tun", "d2-team-a-tun", "b1-team-a-tun", "b2-team-a-tun"}
    check_specs_parse(r)


def test_fwmark_service():
    r = compile_cluster(
        [vs("fw", fwmark=150, scheduler="rr", method="dr", persistence={"timeout": 300},
            healthCheck={"type": "tcp", "port": 22})],
        [rs("a", "fw", "10.0.0.51", nodeName="b1"), rs("b", "fw", "10.0.0.52", port=0)],
        POOLS, NODES)
    spec = r.nodestates["d1-team-a-fw"]["spec"]
    assert spec == {"node": "d1", "services": [{
        "name": "team-a/fw", "fwmark": 150, "family": "ipv4", "scheduler": "rr",
        "persistence": {"timeout": 300},
        "healthCheck": {"type": "tcp", "port": 22, "path": "/", "expectedStatus": 200, "interval": 5.0,
                        "timeout": 2.0, "rise": 2, "fall": 3},
        "dests": [{"address": "10.0.0.51", "port": 0, "weight": 1, "method": "dr"},
                  {"address": "10.0.0.52", "port": 0, "weight": 1, "method": "dr"}]}]}
    # No VIP to hold for a mark: no directorAddresses, no backendVips.
    assert set(r.nodestates) == {"d1-team-a-fw", "d2-team-a-fw"}
    assert r.vs_status[("team-a", "fw")]["service"] == "fwm:150"
    assert r.vs_status[("team-a", "fw")]["protocol"] == "fwmark"
    check_specs_parse(r)


def test_ipv6_tun_with_policy_route_nat_neighbour():
    r = compile_cluster(
        [vs("v6", address="2001:db8::10", port=53, protocol="udp", scheduler="mh",
            schedulerFlags=["mh-fallback", "mh-port"], method="tun", onePacket=True),
         vs("v6nat", address="2001:db8::11", port=80, method="nat", natReturn="policy-route")],
        [rs("a", "v6", "fd00::51", nodeName="b1"), rs("b", "v6", "fd00::52", nodeName="b2", weight=5),
         rs("n", "v6nat", "fd00::52", port=8080, nodeName="b2")],
        POOLS, NODES)
    svc = {"name": "team-a/v6", "protocol": "udp", "address": "2001:db8::10", "port": 53, "scheduler": "mh",
           "schedulerFlags": ["mh-fallback", "mh-port"], "onePacket": True,
           "dests": [{"address": "fd00::51", "port": 53, "weight": 1, "method": "tun"},
                     {"address": "fd00::52", "port": 53, "weight": 5, "method": "tun"}]}
    for d in ("d1", "d2"):
        assert r.nodestates[f"{d}-team-a-v6"]["spec"] == {
            "node": d, "services": [svc], "directorAddresses": [{"address": "2001:db8::10"}]}
    assert r.nodestates["b1-team-a-v6"]["spec"]["backendVips"] == [{"address": "2001:db8::10", "method": "tun"}]
    # NAT with policy-route: b2 routes replies from [fd00::52]:8080 via the directors' IPv6 addresses.
    assert r.nodestates["b2-team-a-v6nat"]["spec"] == {
        "node": "b2", "services": [],
        "replyRoutes": [{"address": "fd00::52", "port": 8080, "protocol": "tcp", "via": ["fd00::30", "fd00::31"]}]}
    check_specs_parse(r)


def test_snat_marks_the_service_and_sets_vs_conntrack():
    r = compile_cluster([vs("s", address="192.168.0.50", port=80, natReturn="snat")],
                        [rs("a", "s", "10.0.0.51", nodeName="b1")], POOLS, NODES)
    spec = r.nodestates["d1-team-a-s"]["spec"]
    assert spec["services"][0]["snat"] is True
    assert spec["sysctls"] == {"net.ipv4.vs.conntrack": "1"}
    assert "b1-team-a-s" not in r.nodestates  # nothing to do on the backend
    check_specs_parse(r)


def test_directors_and_backend_on_one_node_share_one_object():
    nodes = NODES + [node("both", "10.0.0.60", True)]
    r = compile_cluster([vs("x", address="192.168.0.60", port=80, method="dr")],
                        [rs("a", "x", "10.0.0.60", nodeName="both")], POOLS, nodes)
    spec = r.nodestates["both-team-a-x"]["spec"]
    assert spec["directorAddresses"] == [{"address": "192.168.0.60"}]
    assert spec["backendVips"] == [{"address": "192.168.0.60", "method": "dr"}]


# --------------------------------------------------------------------------
# Pools
# --------------------------------------------------------------------------

def test_vip_outside_every_pool_is_not_programmed():
    r = compile_cluster([vs("web", address="203.0.113.5", port=80)], [rs("a", "web", "10.0.0.51")], POOLS, NODES)
    assert r.nodestates == {}
    acc = r.vs_status[("team-a", "web")]["conditions"][0]
    assert (acc["type"], acc["status"], acc["reason"]) == ("Accepted", "False", "NoPool")
    assert "VIPPool (vippools.lvs.kube-lvs.io" in acc["message"] and "203.0.113.5" in acc["message"]
    assert "team-a" in acc["message"]
    assert [(e.kind, e.name, e.type, e.reason) for e in r.events] == [
        ("VirtualService", "web", "Warning", "NoPool")]
    rs_ready = r.rs_status[("team-a", "a")]["conditions"][1]
    assert (rs_ready["status"], rs_ready["reason"]) == ("False", "NoPool")


def test_pool_of_another_namespace_does_not_count_and_selector_does():
    v = vs("web", namespace="team-b", address="192.168.0.30", port=80)
    assert compile_cluster([v], [], POOLS, NODES).nodestates == {}
    sel_pool = pool("sel", ["192.168.0.0/24"], namespaces=(), namespaceSelector={"matchLabels": {"lvs": "yes"}})
    ns_objs = [{"metadata": {"name": "team-b", "labels": {"lvs": "yes"}}}]
    assert set(compile_cluster([v], [], [sel_pool], NODES, ns_objs).nodestates) == {"d1-team-b-web", "d2-team-b-web"}
    by_name = pool("byname", ["192.168.0.0/24"], namespaces=(),
                   namespaceSelector={"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                                                            "operator": "In", "values": ["team-b"]}]})
    assert len(compile_cluster([v], [], [by_name], NODES).nodestates) == 2


def test_pool_ranges_and_fwmarks():
    p = pool("r", ["10.9.0.10-10.9.0.20"], fwmarks=[(5, 5)])
    ok = compile_cluster([vs("a", address="10.9.0.20", port=1), vs("f", fwmark=5)], [], [p], NODES)
    assert len(ok.nodestates) == 4
    bad = compile_cluster([vs("a", address="10.9.0.21", port=1), vs("f", fwmark=6)], [], [p], NODES)
    assert bad.nodestates == {}
    assert "fwmark 6" in bad.vs_status[("team-a", "f")]["conditions"][0]["message"]


# --------------------------------------------------------------------------
# Conflicts
# --------------------------------------------------------------------------

def test_conflict_oldest_wins_and_loser_is_told():
    old = vs("old", namespace="team-a", ts="2026-01-01T00:00:00Z", address="192.168.0.30", port=80)
    new = vs("new", namespace="team-b", ts="2026-01-02T00:00:00Z", address="192.168.0.30", port=80)
    other_proto = vs("udp", ts="2026-01-03T00:00:00Z", address="192.168.0.30", port=80, protocol="udp")
    pools = [pool("lab", ["192.168.0.0/24"], namespaces=("team-a", "team-b"))]
    r = compile_cluster([new, old, other_proto], [], pools, NODES)
    assert sorted(r.nodestates) == ["d1-team-a-old", "d1-team-a-udp", "d2-team-a-old", "d2-team-a-udp"]
    conds = {c["type"]: c for c in r.vs_status[("team-b", "new")]["conditions"]}
    assert conds["Conflict"]["status"] == "True" and "team-a/old" in conds["Conflict"]["message"]
    assert conds["Accepted"]["reason"] == "Conflict"
    win = {c["type"]: c for c in r.vs_status[("team-a", "old")]["conditions"]}
    assert win["Conflict"]["status"] == "False" and "team-b/new" in win["Conflict"]["message"]
    assert [(e.namespace, e.name, e.reason) for e in r.events] == [("team-b", "new", "Conflict")]
    # Same creation second: namespace/name breaks the tie.
    a = vs("a", namespace="team-b", address="192.168.0.30", port=80)
    b = vs("b", namespace="team-a", address="192.168.0.30", port=80)
    r2 = compile_cluster([a, b], [], pools, NODES)
    assert sorted(r2.nodestates) == ["d1-team-a-b", "d2-team-a-b"]


def test_event_only_when_condition_turns():
    new = vs("new", ts="2026-01-02T00:00:00Z", address="192.168.0.30", port=80)
    old = vs("old", address="192.168.0.30", port=80)
    r = compile_cluster([old, new], [], POOLS, NODES, now="2026-02-01T00:00:00Z")
    assert len(r.events) == 1
    new2 = copy.deepcopy(new)
    new2["status"] = r.vs_status[("team-a", "new")]
    r2 = compile_cluster([old, new2], [], POOLS, NODES, now="2026-03-01T00:00:00Z")
    assert r2.events == []
    # Unchanged conditions keep their transition time: the status is identical.
    assert r2.vs_status[("team-a", "new")] == new2["status"]


def test_duplicate_real_server_and_invalid_real_server():
    r = compile_cluster(
        [vs("dr", address="192.168.0.40", port=80, method="dr")],
        [rs("first", "dr", "10.0.0.51"), rs("second", "dr", "10.0.0.51", ts="2026-01-05T00:00:00Z"),
         rs("mapped", "dr", "10.0.0.52", port=8080), rs("lost", "nope", "10.0.0.53")],
        POOLS, NODES)
    dests = r.nodestates["d1-team-a-dr"]["spec"]["services"][0]["dests"]
    assert [d["address"] for d in dests] == ["10.0.0.51"]
    acc = {k[1]: v["conditions"][0] for k, v in r.rs_status.items()}
    assert acc["first"]["status"] == "True"
    assert acc["second"]["reason"] == "Duplicate" and "first" in acc["second"]["message"]
    assert acc["mapped"]["reason"] == "Invalid"
    assert acc["mapped"]["message"].startswith("spec.port: 8080 differs from the service port 80: only method nat")
    assert acc["lost"]["reason"] == "VirtualServiceNotFound"
    # "first" is programmed, but no agent puts the VIP on a DR server without a nodeName: said, not silent.
    assert {(e.name, e.reason) for e in r.events} == {("second", "Duplicate"), ("mapped", "Invalid"),
                                                     ("lost", "VirtualServiceNotFound"), ("first", "NoNodeName")}


def test_invalid_virtualservice_reports_model_message():
    r = compile_cluster([vs("bad", address="0.0.0.0", port=80)], [], POOLS, NODES)
    acc = r.vs_status[("team-a", "bad")]["conditions"][0]
    assert acc["reason"] == "Invalid"
    assert acc["message"].startswith("spec.address: 0.0.0.0 never matches a packet")
    assert "fwmark" in acc["message"]
    assert r.nodestates == {}


# --------------------------------------------------------------------------
# Minimal change, determinism, names
# --------------------------------------------------------------------------

def _world():
    vss = [vs("web", address="192.168.0.30", port=80), vs("dr", address="192.168.0.40", port=80, method="dr"),
           vs("tun", address="192.168.1.3", port=80, method="tun")]
    rss = [rs("w1", "web", "10.0.0.51", nodeName="b1"), rs("w2", "web", "10.0.0.52", nodeName="b2"),
           rs("d1", "dr", "10.0.0.51", nodeName="b1"), rs("d2", "dr", "10.0.0.52", nodeName="b2"),
           rs("t1", "tun", "192.168.1.10", nodeName="b1"), rs("t2", "tun", "192.168.1.11", nodeName="b2")]
    return vss, rss


def test_one_real_server_change_touches_only_its_objects():
    vss, rss = _world()
    before = compile_cluster(vss, rss, POOLS, NODES).nodestates
    rss2 = copy.deepcopy(rss)
    rss2[3]["spec"]["weight"] = 0  # d2 of "dr" drains
    after = compile_cluster(vss, rss2, POOLS, NODES).nodestates
    assert set(before) == set(after)
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["d1-team-a-dr", "d2-team-a-dr"]  # the two directors; b2's VIP stays
    # Moving a DR real server to another node: its old and new backend objects change too.
    rss3 = copy.deepcopy(rss)
    rss3[3]["spec"]["nodeName"] = "other"
    after3 = compile_cluster(vss, rss3, POOLS, NODES).nodestates
    assert sorted(set(before) ^ set(after3)) == ["b2-team-a-dr", "other-team-a-dr"]
    assert sorted(n for n in set(before) & set(after3) if before[n] != after3[n]) == []


def test_deterministic_whatever_the_input_order():
    vss, rss = _world()
    ref = compile_cluster(vss, rss, POOLS, NODES)
    rnd = random.Random(7)
    for _ in range(5):
        a, b, n = vss[:], rss[:], NODES[:]
        rnd.shuffle(a), rnd.shuffle(b), rnd.shuffle(n)
        r = compile_cluster(a, b, POOLS, n)
        assert r.nodestates == ref.nodestates and list(r.nodestates) == list(ref.nodestates)
        assert r.vs_status == ref.vs_status and r.rs_status == ref.rs_status


def test_name_collision_gets_a_hash_for_the_younger():
    # node "d1-x" + namespace "y" and node "d1" + namespace "x-y" both give "d1-x-y-web".
    nodes = [node("d1-x", "10.0.0.30", True), node("d1", "10.0.0.31", True)]
    pools = [pool("p", ["192.168.0.0/24"], namespaces=("y", "x-y"))]
    a = vs("web", namespace="y", ts="2026-01-01T00:00:00Z", address="192.168.0.30", port=80)
    b = vs("web", namespace="x-y", ts="2026-01-02T00:00:00Z", address="192.168.0.31", port=80)
    names = compile_cluster([a, b], [], pools, nodes).nodestates
    assert "d1-x-y-web" in names
    assert names["d1-x-y-web"]["metadata"]["annotations"][C.ANNOTATION_VIRTUALSERVICE] == "y/web"
    hashed = [n for n in names if n.startswith("d1-x-y-web-")]
    assert len(hashed) == 1 and len(names) == 4


def test_long_names_are_shortened_and_labels_valid():
    long_node = "n" * 200 + ".example.com"
    r = compile_cluster([vs("v" * 100, address="192.168.0.30", port=80)], [], POOLS,
                        [node(long_node, "10.0.0.30", True)])
    (name, body), = r.nodestates.items()
    assert len(name) <= 253
    labels = body["metadata"]["labels"]
    assert all(len(v) <= 63 for v in labels.values())
    assert labels[C.LABEL_NODE] == C.label_value(long_node)
    assert body["spec"]["node"] == long_node


# --------------------------------------------------------------------------
# Status aggregation from the agents' reports
# --------------------------------------------------------------------------

def _report(ns_body, gen, services, dests):
    o = copy.deepcopy(ns_body)
    o["metadata"]["generation"] = gen
    o["status"] = {"observedGeneration": gen, "services": services, "dests": dests}
    return o


def test_agent_reports_aggregate_into_statuses():
    vss = [vs("web", address="192.168.0.30", port=80)]
    rss = [rs("rs1", "web", "10.0.0.51"), rs("rs2", "web", "10.0.0.52"), rs("rs3", "web", "10.0.0.53", weight=0)]
    first = compile_cluster(vss, rss, POOLS, NODES)
    key = "tcp:192.168.0.30:80"
    def dest(addr, health, a, i, w=1):
        return {"service": key, "address": addr, "port": 80, "health": health, "weight": w,
                "activeConns": a, "inactiveConns": i}
    d1 = _report(first.nodestates["d1-team-a-web"], 1, [{"key": key, "programmed": True, "error": ""}],
                 [dest("10.0.0.51", "Healthy", 3, 1), dest("10.0.0.52", "Unhealthy", 0, 0, 0),
                  dest("10.0.0.53", "Draining", 1, 0, 0)])
    d2 = _report(first.nodestates["d2-team-a-web"], 1, [{"key": key, "programmed": True, "error": ""}],
                 [dest("10.0.0.51", "Healthy", 4, 2), dest("10.0.0.52", "Healthy", 1, 0)])
    r = compile_cluster(vss, rss, POOLS, NODES, nodestates=[d1, d2])
    st = r.vs_status[("team-a", "web")]
    assert (st["directors"], st["realServers"]) == ("2/2", "1/3")
    conds = {c["type"]: (c["status"], c["reason"]) for c in st["conditions"]}
    assert conds["Programmed"] == ("True", "Programmed") and conds["Ready"] == ("True", "Ready")
    s1, s2, s3 = (r.rs_status[("team-a", n)] for n in ("rs1", "rs2", "rs3"))
    assert (s1["health"], s1["activeConns"], s1["inactiveConns"]) == ("Healthy", 7, 3)
    assert [p["node"] for p in s1["directors"]] == ["d1", "d2"]
    assert s2["health"] == "Unhealthy" and "d1" in s2["conditions"][1]["message"]
    assert s3["health"] == "Draining" and s3["activeConns"] == 1
    # An agent error on one director: Programmed=False Failed, with its message.
    d2e = copy.deepcopy(d2)
    d2e["status"]["services"] = [{"key": key, "programmed": False, "error": "EINVAL"}]
    r2 = compile_cluster(vss, rss, POOLS, NODES, nodestates=[d1, d2e])
    prog = r2.vs_status[("team-a", "web")]["conditions"][2]
    assert (prog["status"], prog["reason"], prog["message"]) == ("False", "Failed", "d2: EINVAL")
    # A report for an older generation (spec rewritten since) does not count as ready.
    stale = copy.deepcopy(d1)
    stale["metadata"]["generation"] = 2
    r3 = compile_cluster(vss, rss, POOLS, NODES, nodestates=[stale, d2])
    assert r3.vs_status[("team-a", "web")]["directors"] == "1/2"


# --------------------------------------------------------------------------
# Writes planned from a result
# --------------------------------------------------------------------------

def test_plan_writes_only_the_difference():
    vss, rss = _world()
    r = compile_cluster(vss, rss, POOLS, NODES)
    snap = {"virtualservices": vss, "realservers": rss, "nodestates": []}
    w = plan_writes(r, snap, NS)
    assert len(w.create) == len(r.nodestates) and not w.replace and not w.delete
    assert len(w.status) == len(vss) + len(rss)
    # The cluster now holds exactly that (plus server-side fields) and the statuses: nothing to write.
    held = []
    for i, body in enumerate(r.nodestates.values()):
        o = copy.deepcopy(body)
        o["metadata"].update(resourceVersion=str(100 + i), uid=f"u{i}", generation=1)
        held.append(o)
    vss2 = [dict(v, status=r.vs_status[("team-a", v["metadata"]["name"])]) for v in vss]
    rss2 = [dict(x, status=r.rs_status[("team-a", x["metadata"]["name"])]) for x in rss]
    foreign = {"metadata": {"name": "hand-made", "namespace": NS, "labels": {}}, "spec": {"node": "x"}}
    stale = {"metadata": {"name": "gone-team-a-old", "namespace": NS, "uid": "u-old",
                          "labels": {C.LABEL_MANAGED_BY: C.MANAGED_BY}}, "spec": {"node": "gone"}}
    snap2 = {"virtualservices": vss2, "realservers": rss2, "nodestates": held + [foreign, stale]}
    r2 = compile_cluster(vss2, rss2, POOLS, NODES, nodestates=held)
    w2 = plan_writes(r2, snap2, NS)
    assert (w2.create, w2.replace, w2.status, w2.events) == ([], [], [], [])
    assert w2.delete == [("gone-team-a-old", "u-old")]  # ours and stale; the hand-made one stays
    # A changed spec is a replace carrying the resourceVersion it was based on.
    held[0]["spec"]["sysctls"] = {"x": "1"}
    w3 = plan_writes(r2, {**snap2, "nodestates": held}, NS)
    assert [b["metadata"]["resourceVersion"] for b in w3.replace] == ["100"]
