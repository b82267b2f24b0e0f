"""Tenants choose a VIP and nothing past what the admin allowed (issue 16), compiler side.

Each attack is a RealServer or VirtualService a tenant may write in its own
namespace. With a pool that sets the tenant limits, the attack compiles to no
NodeState content at all (no dest, so no probe either: health checks only run
against dests), and the object says why. Without limits the same object is
programmed: the limits are what stops it, not something else.
"""
from __future__ import annotations

import pytest

from lvs_operator.compiler import compile_cluster
from test_compiler import DIRECTOR, check_specs_parse, node, pool, rs, vs

BACKEND = {"matchLabels": {"lvs.kube-lvs.io/backend": "true"}}
LIMITS = {"realServerAddresses": ["10.0.0.0/26"], "backendNodeSelector": BACKEND,
          "directorNodeSelector": DIRECTOR}
NODES = [node("d1", "10.0.0.30", True), node("d2", "10.0.0.31", True),
         node("b1", "10.0.0.51"), node("apiserver", "10.0.0.70"), node("infra", "10.0.0.99")]
NODES[2]["metadata"]["labels"]["lvs.kube-lvs.io/backend"] = "true"
NODES[4]["metadata"]["labels"]["tier"] = "infra"


def limited(**extra):
    return [pool("tenant", ["192.168.0.0/24"], **{**LIMITS, **extra})]


def dests(result, node_="d1", name="http"):
    spec = result.nodestates.get(f"{node_}-team-a-{name}", {}).get("spec") or {}
    return [(d["address"], d["port"]) for s in spec.get("services") or () for d in s["dests"]]


def accepted(result, ref):
    return next(c for c in result.rs_status[ref]["conditions"] if c["type"] == "Accepted")


HTTP = vs("http", address="192.168.0.30", port=80, method="dr",
          healthCheck={"type": "tcp", "interval": 1, "timeout": 1})
OK_RS = rs("ok", "http", "10.0.0.51", nodeName="b1")

# (attack id, the tenant's RealServer, expected reason, a word the message must hold)
ATTACKS = [
    ("cloud metadata, under any pool", rs("x", "http", "169.254.169.254"), "Invalid", "link-local"),
    ("an address outside the ranges", rs("x", "http", "10.0.0.100"), "AddressNotAllowed",
     "spec.realServerAddresses"),
    ("the API server's address", rs("x", "http", "10.0.0.70"), "AddressNotAllowed", "10.0.0.70"),
    ("another tenant's pod range", rs("x", "http", "10.244.3.7"), "AddressNotAllowed", "tenant"),
    ("nodeName on an infrastructure node", rs("x", "http", "10.0.0.52", nodeName="infra"),
     "NodeNotAllowed", "spec.nodeName infra"),
    ("nodeName on a director", rs("x", "http", "10.0.0.53", nodeName="d2"), "NodeNotAllowed", "d2"),
    ("nodeName on a node that does not exist yet", rs("x", "http", "10.0.0.54", nodeName="later"),
     "NodeNotAllowed", "backendNodeSelector"),
]


@pytest.mark.parametrize("what,attack,reason,word", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_a_real_server_outside_the_limits_is_not_programmed_and_says_why(what, attack, reason, word):
    r = compile_cluster([HTTP], [OK_RS, attack], limited(), NODES)
    assert dests(r) == [("10.0.0.51", 80)], "only the allowed real server is a dest (and so probed)"
    cond = accepted(r, ("team-a", "x"))
    assert (cond["status"], cond["reason"]) == ("False", reason)
    assert word in cond["message"]
    assert [(e.kind, e.name, e.reason) for e in r.events if e.name == "x"] == [("RealServer", "x", reason)]
    # The backend side follows: no VIP, ARP or rp_filter on a node the tenant may not use.
    assert not [n for n in r.nodestates if n.startswith(("infra-", "later-"))]
    assert "d2-team-a-http" not in r.nodestates or all(
        not (r.nodestates["d2-team-a-http"]["spec"].get(k)) for k in ("backendVips", "replyRoutes"))
    # The same object under a pool without limits is programmed: the limit is what refused it.
    open_ = compile_cluster([HTTP], [OK_RS, attack], [pool("tenant", ["192.168.0.0/24"])], NODES)
    assert len(dests(open_)) == (1 if reason == "Invalid" else 2)
    check_specs_parse(r)


def test_directors_outside_the_pool_never_get_the_vip():
    everywhere = vs("http", address="192.168.0.30", port=80, directorSelector={})
    r = compile_cluster([everywhere], [OK_RS], limited(), NODES)
    holders = sorted(n for n, body in r.nodestates.items() if body["spec"].get("directorAddresses"))
    assert holders == ["d1-team-a-http", "d2-team-a-http"]
    prog = next(c for c in r.vs_status[("team-a", "http")]["conditions"] if c["type"] == "Programmed")
    assert "not on" in prog["message"]
    assert all(n in prog["message"] for n in ("apiserver", "b1", "infra"))


def test_a_selector_of_only_forbidden_directors_programs_nothing_and_warns():
    infra_only = vs("http", address="192.168.0.30", port=80, directorSelector={"matchLabels": {"tier": "infra"}})
    r = compile_cluster([infra_only], [OK_RS], limited(), NODES)
    assert not [n for n, b in r.nodestates.items() if b["spec"].get("directorAddresses")]
    prog = next(c for c in r.vs_status[("team-a", "http")]["conditions"] if c["type"] == "Programmed")
    assert (prog["status"], prog["reason"]) == ("False", "DirectorsNotAllowed")
    assert "spec.directorNodeSelector" in prog["message"] and "infra" in prog["message"]
    assert [e.reason for e in r.events] == ["DirectorsNotAllowed"]


def test_limits_of_any_admitting_pool_allow_and_other_namespaces_pools_do_not():
    pools = limited() + [
        pool("wide", ["192.168.0.0/24"], realServerAddresses=["10.0.0.0/24"], backendNodeSelector=BACKEND,
             directorNodeSelector=DIRECTOR),
        pool("elsewhere", ["192.168.0.0/24"], namespaces=("team-b",), realServerAddresses=["0.0.0.0/0"])]
    r = compile_cluster([HTTP], [OK_RS, rs("far", "http", "10.0.0.200")], pools, NODES)
    assert sorted(dests(r)) == [("10.0.0.200", 80), ("10.0.0.51", 80)]
    r = compile_cluster([HTTP], [OK_RS, rs("far", "http", "10.0.1.200")], pools, NODES)
    assert dests(r) == [("10.0.0.51", 80)]


def test_a_fwmark_policy_route_from_a_nodes_own_address_is_refused():
    """`from <node IP> lookup <table>` for every port would reroute all of that
    node's traffic through the directors."""
    fw = vs("fw", fwmark=150, method="nat", natReturn="policy-route", healthCheck={"type": "tcp", "port": 22})
    pools = [pool("tenant", fwmarks=[(100, 199)])]
    r = compile_cluster([fw], [rs("self", "fw", "10.0.0.51", nodeName="b1")], pools, NODES)
    cond = accepted(r, ("team-a", "self"))
    assert cond["reason"] == "NodeAddressNotAllowed"
    assert not any(b["spec"].get("replyRoutes") for b in r.nodestates.values())
    # A real server on its own port keeps the narrow reply route.
    web = vs("web", address="192.168.0.40", port=80, method="nat", natReturn="policy-route")
    r = compile_cluster([web], [rs("hostnet", "web", "10.0.0.51", port=8080, nodeName="b1")],
                        [pool("tenant", ["192.168.0.0/24"])], NODES)
    assert r.nodestates["b1-team-a-web"]["spec"]["replyRoutes"][0]["port"] == 8080


def test_the_pool_says_which_limits_it_leaves_open():
    r = compile_cluster([], [], [pool("open", ["192.168.0.0/24"]),
                                 pool("half", ["192.168.1.0/24"], realServerAddresses=["10.0.0.0/24"])] + limited(),
                        NODES)
    by = {name: {c["type"]: c for c in st["conditions"]} for name, st in r.pool_status.items()}
    assert by["tenant"]["TenantLimits"]["status"] == "True"
    assert by["open"]["TenantLimits"]["reason"] == "Unrestricted"
    assert "spec.realServerAddresses" in by["open"]["TenantLimits"]["message"]
    assert "spec.realServerAddresses" not in by["half"]["TenantLimits"]["message"]
    assert "spec.backendNodeSelector" in by["half"]["TenantLimits"]["message"]


# --------------------------------------------------------------------------
# Input that used to be ignored in silence
# --------------------------------------------------------------------------

def backend_condition(result, name):
    return next((c for c in result.rs_status[("team-a", name)]["conditions"] if c["type"] == "BackendConfigured"),
                None)


def test_a_real_server_side_nobody_configures_is_said():
    r = compile_cluster(
        [HTTP, vs("pr", address="192.168.0.31", port=80, method="nat", natReturn="policy-route"),
         vs("gw", address="192.168.0.32", port=80, method="nat")],
        [rs("nonode", "http", "10.0.0.52"), rs("ghost", "http", "10.0.0.53", nodeName="gone"), OK_RS,
         rs("prnonode", "pr", "10.0.0.54"), rs("gwnonode", "gw", "10.0.0.55")],
        [pool("tenant", ["192.168.0.0/24"])], NODES)
    assert backend_condition(r, "nonode")["reason"] == "NoNodeName"
    assert "spec.nodeName" in backend_condition(r, "nonode")["message"]
    assert backend_condition(r, "ghost")["reason"] == "NodeNotFound"
    assert backend_condition(r, "ok")["status"] == "True"
    assert backend_condition(r, "prnonode")["reason"] == "NoNodeName"
    assert "reply route" in backend_condition(r, "prnonode")["message"]
    assert backend_condition(r, "gwnonode") is None, "NAT through the gateway needs nothing on the server"
    assert {e.name for e in r.events} == {"nonode", "ghost", "prnonode"}
    # Still programmed: a hand-configured backend is a real LVS setup.
    assert ("10.0.0.52", 80) in dests(r)


def test_pools_sharing_addresses_across_namespaces_are_said():
    pools = [pool("a", ["192.168.0.0/24"]), pool("b", ["192.168.0.128-192.168.0.200"], namespaces=("team-b",)),
             pool("c", ["192.168.0.0/25"]), pool("d", ["10.9.0.0/16"], namespaces=("team-b",))]
    r = compile_cluster([], [], pools, NODES)
    by = {name: {c["type"]: c for c in st["conditions"]} for name, st in r.pool_status.items()}
    assert by["a"]["Overlapping"]["status"] == "True" and "VIPPool b" in by["a"]["Overlapping"]["message"]
    assert "VIPPool c" not in by["a"]["Overlapping"]["message"], "same namespaces: not a cross-tenant overlap"
    assert by["b"]["Overlapping"]["status"] == "True"
    assert by["c"]["Overlapping"]["status"] == "False", "192.168.0.0/25 ends below b's range"
    assert by["d"]["Overlapping"]["status"] == "False"


@pytest.mark.parametrize("spec,path", [
    ({"method": "dr", "natReturn": "snat"}, "spec.natReturn"),
    ({"protocol": "udp", "port": 53, "healthCheck": {"type": "http"}}, "spec.healthCheck.type"),
])
def test_options_that_cannot_apply_are_refused(spec, path):
    r = compile_cluster([vs("x", address="192.168.0.30", **{"port": 80, **spec})], [],
                        [pool("tenant", ["192.168.0.0/24"])], NODES)
    acc = r.vs_status[("team-a", "x")]["conditions"][0]
    assert acc["reason"] == "Invalid" and acc["message"].startswith(path)
