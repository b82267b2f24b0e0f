"""Active-active in the operator (lvs_operator.bgp_peers and the compiler):
BGPPeer objects, the ``bgp`` section a VirtualService labelled
``failover: active-active`` gives each selected director, the directors it
leaves out and why, mode conflicts, the graceful drain of a director that
leaves, and the VirtualService's announcedBy.

Each fails before the change: compile_cluster took no BGPPeers (TypeError),
wrote no bgp section and kept no NodeState of a director that left.
"""
from __future__ import annotations

import pytest

from lvs_model import channel as C
from lvs_model.bgp import BgpPeer, BgpSpec, combined
from lvs_model.nodespec import effective_sysctls, parse_node_spec
from lvs_operator import bgp_peers as B
from lvs_operator.compiler import compile_cluster
from lvs_operator.objects import KINDS
from lvs_operator.scope import scope_of_change
from lvs_operator.write_plan import plan_writes
from lvs_operator.watch import operator_kinds

from test_compiler import NODES, POOLS, check_specs_parse, node, obj, rs, vs

AA = {"lvs.kube-lvs.io/failover": "active-active"}
AS = {"lvs.kube-lvs.io/failover": "active-standby"}
NS = C.DEFAULT_NAMESPACE
T0 = "2026-06-01T12:00:00Z"


def peer(name="tor", address="10.0.0.254", ts="2026-01-01T00:00:00Z", status=None, **spec):
    return obj(name, {"peerAddress": address, "peerASN": 65000, "myASN": 65001, **spec}, namespace="", ts=ts,
               status=status)


def web(labels=AA, name="web", address="192.168.0.30", port=80, ts="2026-01-01T00:00:00Z", status=None, **spec):
    o = vs(name, address=address, port=port, method="dr", ts=ts, **spec)
    if labels:
        o["metadata"]["labels"] = dict(labels)
    if status is not None:
        o["status"] = status
    return o


def compiled(vss=None, peers=(peer(),), nodes=NODES, nodestates=(), now=T0):
    vss = [web(scheduler="mh")] if vss is None else vss
    r = compile_cluster(vss, [rs("r1", v["metadata"]["name"], "10.0.0.51") for v in vss], POOLS, nodes,
                        nodestates=nodestates, now=now, bgppeers=list(peers))
    check_specs_parse(r)
    return r


def bgp_of(r) -> dict[str, tuple[BgpSpec, ...]]:
    return {b["spec"]["node"]: parse_node_spec(b["spec"])[0].bgp for b in r.nodestates.values()}


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


TOR = BgpPeer("10.0.0.254", 65000, 65001)


# --------------------------------------------------------------------------
# The bgp section, director by director
# --------------------------------------------------------------------------

def test_every_selected_director_announces_with_its_own_router_id_and_gets_sloppy_tcp():
    r = compiled()
    assert bgp_of(r) == {"d1": (BgpSpec("10.0.0.30", (TOR,), ("192.168.0.30",)),),
                         "d2": (BgpSpec("10.0.0.31", (TOR,), ("192.168.0.30",)),)}
    spec = parse_node_spec(r.nodestates["d1-team-a-web"]["spec"])[0]
    assert effective_sysctls(spec, "eth0")["net.ipv4.vs.sloppy_tcp"] == "1"  # implied by the announcement
    st = r.vs_status[("team-a", "web")]
    assert (cond(st, "BGP")["status"], cond(st, "BGP")["reason"]) == ("True", "Peered")
    assert "reset" not in cond(st, "BGP")["message"]  # mh: nothing to warn about
    assert r.peer_status["tor"]["nodes"] == ["d1", "d2"]


def test_without_the_label_nothing_changes():
    r = compiled([web(labels=None)])
    assert set(bgp_of(r).values()) == {()}
    assert "announcedBy" not in r.vs_status[("team-a", "web")]
    assert "BGP" not in {c["type"] for c in r.vs_status[("team-a", "web")]["conditions"]}


@pytest.mark.parametrize("peers, nodes, left_out, words", [
    # A peer for d1 only: d2 is left out, named with the fix.
    ([peer(nodeSelector={"matchLabels": {"kubernetes.io/hostname": "d1"}})], NODES, ["d2"],
     ["d2: no BGPPeer selects it", "spec.nodeSelector"]),
    # d2 has no IPv4 InternalIP: no router id.
    ([peer()], [NODES[0], {**node("d2", "fd00::31", True), "status": {"addresses": [
        {"type": "InternalIP", "address": "fd00::31"}]}}], ["d2"], ["d2: no IPv4 InternalIP", "router id"]),
    # Only an IPv6 router: an IPv4 VIP has nobody to go to.
    ([peer(address="fd00::1")], NODES, ["d1", "d2"], ["no BGPPeer of its peers is ipv4"]),
    # An invalid peer is not used at all.
    ([peer(holdTime=2)], NODES, ["d1", "d2"], ["no BGPPeer selects it"]),
])
def test_a_director_that_cannot_announce_is_left_out_and_named(peers, nodes, left_out, words):
    r = compiled(peers=peers, nodes=nodes)
    assert sorted(n for n, b in bgp_of(r).items() if b) == sorted({"d1", "d2"} - set(left_out))
    assert not set(left_out) & {b["spec"]["node"] for b in r.nodestates.values()}  # no VIP held there
    st = r.vs_status[("team-a", "web")]
    bgp = cond(st, "BGP")
    assert (bgp["status"], bgp["reason"]) == ("False", "NoBGPPeer")
    for w in words:
        assert w in bgp["message"]
    assert ("Warning", "NoBGPPeer") in {(e.type, e.reason) for e in r.events}
    if len(left_out) == 2:  # nobody left: not "matches no Node"
        prog = cond(st, "Programmed")
        assert (prog["status"], prog["reason"]) == ("False", "NoDirectors")
        assert "announce the VIP over BGP" in prog["message"]
        assert cond(st, "Ready")["status"] == "False"


def test_a_non_consistent_scheduler_is_named_in_the_bgp_condition():
    r = compiled([web(scheduler="wlc")])
    assert "scheduler wlc" in cond(r.vs_status[("team-a", "web")], "BGP")["message"]


@pytest.mark.parametrize("labels, fwmark, words", [
    ({"lvs.kube-lvs.io/failover": "active-activ"}, False, ["'active-activ' is not a mode"]),
    (AA, True, ["firewall-mark service has no VIP"]),
])
def test_an_unknown_mode_or_a_fwmark_in_active_active_is_invalid(labels, fwmark, words):
    v = vs("web", fwmark=100, method="dr") if fwmark else web(labels=None)
    v["metadata"]["labels"] = labels
    r = compile_cluster([v], [], POOLS, NODES, bgppeers=[peer()])
    acc = cond(r.vs_status[("team-a", "web")], "Accepted")
    assert (acc["status"], acc["reason"]) == ("False", "Invalid")
    assert all(w in acc["message"] for w in words)
    assert r.nodestates == {}


def test_one_vip_two_modes_the_oldest_wins():
    old = web(labels=AS, name="http", port=80, ts="2026-01-01T00:00:00Z")
    new = web(labels=AA, name="https", port=443, ts="2026-02-01T00:00:00Z")
    plain = web(labels=None, name="ssh", port=22, ts="2026-03-01T00:00:00Z")
    r = compile_cluster([new, old, plain], [], POOLS, NODES, bgppeers=[peer()])
    acc = cond(r.vs_status[("team-a", "https")], "Accepted")
    assert (acc["status"], acc["reason"]) == ("False", "Conflict")
    assert "active-standby in VirtualService team-a/http" in acc["message"]
    assert cond(r.vs_status[("team-a", "http")], "Accepted")["status"] == "True"
    assert cond(r.vs_status[("team-a", "ssh")], "Accepted")["status"] == "True"  # no mode goes with either
    assert ("team-a", "https") in r.entangled


# --------------------------------------------------------------------------
# BGPPeer objects
# --------------------------------------------------------------------------

@pytest.mark.parametrize("spec, path, words", [
    ({"holdTime": 0}, "spec.holdTime", "out of range 3-65535"),
    ({"holdTime": 9, "keepaliveTime": 9}, "spec.keepaliveTime", "is not below holdTime"),
    ({"peerASN": 0}, "spec.peerASN", "out of range"),
    ({"myASN": 2**32}, "spec.myASN", "out of range"),
    ({"passwordSecretKey": "../etc/shadow"}, "spec.passwordSecretKey", "never a path"),
    ({"peerAddress": "127.0.0.1"}, "spec.peerAddress", ""),
])
def test_an_invalid_bgppeer_says_which_field_and_is_not_used(spec, path, words):
    r = compiled(peers=[peer(**spec)])
    acc = cond(r.peer_status["tor"], "Accepted")
    assert (acc["status"], acc["reason"]) == ("False", "Invalid")
    assert path in acc["message"] and words in acc["message"]
    assert r.peer_status["tor"]["nodeCount"] == 0


def test_the_peer_settings_reach_the_node_spec_and_the_password_is_only_a_key():
    r = compiled(peers=[peer(port=1179, holdTime=30, keepaliveTime=10, passwordSecretKey="tor1", bfd=True)])
    (section,) = bgp_of(r)["d1"]
    assert section.peers == (BgpPeer("10.0.0.254", 65000, 65001, 1179, 30, 10, "tor1", True),)


def test_two_bgppeers_of_one_address_on_a_node_the_oldest_wins():
    old = peer("old", ts="2026-01-01T00:00:00Z")
    new = peer("new", ts="2026-02-01T00:00:00Z", peerASN=65009,
               nodeSelector={"matchLabels": {"kubernetes.io/hostname": "d2"}})
    r = compiled(peers=[new, old])
    assert {s.peers[0].asn for (s,) in bgp_of(r).values()} == {65000}
    conflict = cond(r.peer_status["new"], "Conflict")
    assert conflict["status"] == "True" and "node d2: BGPPeer old" in conflict["message"]
    assert r.peer_status["new"]["nodes"] == [] and r.peer_status["old"]["nodes"] == ["d1", "d2"]


def test_two_virtualservices_on_one_director_merge_into_one_bgp_view():
    """The agent's merge of a director's NodeStates: one peer, both VIPs."""
    from lvs_agent.nodestate import merge
    r = compiled([web(scheduler="mh"), web(name="api", address="192.168.0.31", scheduler="mh")])
    mine = {n: b for n, b in r.nodestates.items() if b["spec"]["node"] == "d1"}
    bgp, problems = combined(merge(mine, "d1").spec)
    assert bgp == BgpSpec("10.0.0.30", (TOR,), ("192.168.0.30", "192.168.0.31")) and problems == []


# --------------------------------------------------------------------------
# Who announces: the agents' reports
# --------------------------------------------------------------------------

def reported(r, node_name: str, announced: bool, reason: str) -> list[dict]:
    out = []
    for name, body in r.nodestates.items():
        o = {**body, "metadata": {**body["metadata"], "generation": 1}}
        if body["spec"]["node"] == node_name:
            o["status"] = {"observedGeneration": 1, "bgp": {"vips": [
                {"address": "192.168.0.30", "announced": announced, "reason": reason, "message": "m"}]}}
        out.append(o)
    return out


def test_announced_by_names_the_directors_whose_agents_announce():
    r = compiled()
    r2 = compiled(nodestates=reported(r, "d1", True, "Announced"))
    st = r2.vs_status[("team-a", "web")]
    assert st["announcedBy"] == "d1"
    assert [(a["node"], a["announced"], a["reason"]) for a in st["announcements"]] == [
        ("d1", True, "Announced"), ("d2", False, "NotReported")]
    r3 = compiled(nodestates=reported(r, "d1", False, "NoRealServer"))
    assert r3.vs_status[("team-a", "web")]["announcedBy"] == ""


# --------------------------------------------------------------------------
# Graceful drain
# --------------------------------------------------------------------------

def as_current(r) -> list[dict]:
    return [{**b, "metadata": {**b["metadata"], "uid": "u-" + n, "resourceVersion": "1"}}
            for n, b in r.nodestates.items()]


def without_d2_label() -> list[dict]:
    return [NODES[0], node("d2", "10.0.0.31", False, "fd00::31"), *NODES[2:]]


def later(seconds: int) -> str:
    from datetime import datetime, timedelta, timezone
    t = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc) + timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_director_that_leaves_is_drained_first_then_removed_after_the_grace():
    before = compiled()
    # d2's director label is removed: its NodeState stays, drained, with the start time.
    r = compiled(nodes=without_d2_label(), nodestates=as_current(before))
    kept = r.nodestates["d2-team-a-web"]
    assert kept["metadata"]["annotations"][B.ANNOTATION_DRAIN_STARTED] == T0
    spec = parse_node_spec(kept["spec"])[0]
    assert spec.services and spec.director_addresses  # services and the VIP stay
    assert combined(spec)[0].drain is True  # nothing announced from d2
    grace = 9 + B.DRAIN_MARGIN
    assert r.recheck_after == grace
    w = plan_writes(r, {"nodestates": as_current(before)}, NS)
    assert [b["metadata"]["name"] for b in w.replace] == ["d2-team-a-web"] and w.delete == []
    # A pass later (an operator restarted meanwhile has only the objects): the same, less time left.
    cur = as_current(r)
    r2 = compiled(nodes=without_d2_label(), nodestates=cur, now=later(grace - 1))
    assert r2.nodestates["d2-team-a-web"] == r.nodestates["d2-team-a-web"]
    assert r2.recheck_after == 1
    assert not plan_writes(r2, {"nodestates": cur}, NS).replace
    # Past the grace: deleted.
    r3 = compiled(nodes=without_d2_label(), nodestates=cur, now=later(grace))
    assert "d2-team-a-web" not in r3.nodestates and r3.recheck_after is None
    assert [n for n, _ in plan_writes(r3, {"nodestates": cur}, NS).delete] == ["d2-team-a-web"]


def test_the_grace_follows_the_longest_hold_time():
    before = compiled(peers=[peer(holdTime=30)])
    r = compiled(peers=[peer(holdTime=30)], nodes=without_d2_label(), nodestates=as_current(before))
    assert r.recheck_after == 30 + B.DRAIN_MARGIN


def test_a_director_still_announcing_another_vip_withdraws_only_this_one():
    """drain: true is per node: it would withdraw the other VirtualService's VIP too."""
    api = web(name="api", address="192.168.0.31", scheduler="mh",
              directorSelector={"matchLabels": {"kubernetes.io/hostname": "d2"}})
    before = compiled([web(scheduler="mh"), api])
    r = compiled([web(scheduler="mh"), api], nodes=without_d2_label(), nodestates=as_current(before))
    kept = parse_node_spec(r.nodestates["d2-team-a-web"]["spec"])[0]
    assert kept.services and kept.bgp[0].vips == () and not kept.bgp[0].drain
    merged = combined(parse_node_spec(r.nodestates["d2-team-a-api"]["spec"])[0])[0]
    assert merged.vips == ("192.168.0.31",) and not merged.drain


def test_only_announcing_nodestates_are_kept_and_a_renamed_one_goes_at_once():
    plain_before = compiled([web(labels=None)])
    r = compiled([web(labels=None)], nodes=without_d2_label(), nodestates=as_current(plain_before))
    assert "d2-team-a-web" not in r.nodestates and r.recheck_after is None
    # Same director, same VirtualService, another NodeState name (a reshard): no drain.
    before = compiled()
    stale = [{**b, "metadata": {**b["metadata"], "name": b["metadata"]["name"] + ".0-of-2"}}
             for b in as_current(before)]
    r2 = compiled(nodestates=stale)
    assert not any(n.endswith("-of-2") for n in r2.nodestates)


def test_a_drain_survives_its_virtualservice_being_deleted():
    before = compiled()
    r = compile_cluster([], [], POOLS, NODES, nodestates=as_current(before), now=T0, bgppeers=[peer()])
    assert sorted(r.nodestates) == ["d1-team-a-web", "d2-team-a-web"]
    assert all(combined(parse_node_spec(b["spec"])[0])[0].drain for b in r.nodestates.values())


# --------------------------------------------------------------------------
# The shell's wiring
# --------------------------------------------------------------------------

def test_bgppeers_are_watched_and_a_change_needs_a_full_pass():
    assert "bgppeers" in KINDS and "bgppeers" in {k.plural for k in operator_kinds(NS)}
    p = peer()
    assert scope_of_change("bgppeers", ("", "tor"), None, p) is None
    assert scope_of_change("bgppeers", ("", "tor"), p, {**p, "spec": {**p["spec"], "bfd": True}}) is None
    assert scope_of_change("bgppeers", ("", "tor"), p, {**p, "status": {"nodeCount": 2}}) == set()


def test_bgppeer_statuses_are_written_when_they_differ():
    r = compiled()
    w = plan_writes(r, {"bgppeers": [peer()]}, NS)
    assert [(pl, n) for pl, _, n, _ in w.status] == [("bgppeers", "tor")]
    w2 = plan_writes(r, {"bgppeers": [peer(status=r.peer_status["tor"])]}, NS)
    assert not [s for s in w2.status if s[0] == "bgppeers"]


def test_the_example_compiles_to_three_announcing_directors():
    """examples/bgp-ecmp: its BGPPeer, pool, VirtualService and RealServers
    give each director of the group the bgp section (none before: no such kind)."""
    from pathlib import Path

    import yaml
    root = Path(__file__).resolve().parents[2] / "examples" / "bgp-ecmp"
    docs = [d for f in sorted(root.glob("*.yaml")) if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind: dict[str, list] = {}
    for d in docs:
        d["metadata"].setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        by_kind.setdefault(d["kind"], []).append(d)
    group = {"lvs.kube-lvs.io/director-group": "ecmp"}
    nodes = [{**node(f"dir-{i}", f"10.40.0.{i}"), "metadata": {"name": f"dir-{i}", "labels": group}}
             for i in (1, 2, 3)]
    r = compile_cluster(by_kind["VirtualService"], by_kind["RealServer"], by_kind["VIPPool"], nodes,
                        bgppeers=by_kind["BGPPeer"])
    check_specs_parse(r)
    got = bgp_of(r)
    assert sorted(got) == ["dir-1", "dir-2", "dir-3"]
    assert {s.router_id for (s,) in got.values()} == {"10.40.0.1", "10.40.0.2", "10.40.0.3"}
    assert {s.vips for (s,) in got.values()} == {("192.168.40.100",)}


@pytest.mark.parametrize("labels, spec_scheduler, want", [
    ({"lvs.kube-lvs.io/failover": "active-active"}, None, "mh"),  # ECMP: every director picks the same server
    ({"lvs.kube-lvs.io/failover": "active-active"}, "rr", "rr"),  # a declared scheduler wins
    ({"lvs.kube-lvs.io/failover": "active-standby"}, None, "wlc"),
    ({}, None, "wlc"),
])
def test_the_default_scheduler_is_mh_in_active_active_mode(labels, spec_scheduler, want):
    """Before: the CRD defaulted every VirtualService to wlc, so an
    active-active one got wlc unless its author knew to ask for mh."""
    from lvs_operator.crmodel import VirtualService
    spec = {"address": "192.0.2.10", "port": 80, "method": "dr", "directorSelector": {}}
    if spec_scheduler:
        spec["scheduler"] = spec_scheduler
    vs = VirtualService.of({"metadata": {"name": "web", "namespace": "t", "labels": labels}, "spec": spec})
    errors: list = []
    svc = vs.to_service(errors)
    assert not errors and svc is not None and svc.scheduler == want
