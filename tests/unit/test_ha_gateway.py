"""NAT with ``natReturn: gateway`` in a director group: the real servers'
default gateway moves with the VIP.

- the node spec carries it (``directorGroups[].gateway``/``gatewayDevice``,
  parsed, dumped, checked like a VIP) and the NodeState CRD declares it;
- the operator reads the ``lvs.kube-lvs.io/nat-gateway`` annotation and
  admits only an address a tenant may claim (in a VIPPool open to its
  namespace, not loopback/link-local, not a Node's, not another VIP's),
  with a status naming the annotation and the fix otherwise;
- the agent holds the gateway exactly when it holds the VIP, on the device
  of its route to the real servers (or the declared one), and announces it
  there after the pass that added it.

Each fails before the change: the node spec refused ``gateway`` as an
unknown key, the operator ignored the annotation, and the agent held no
address but the VIP.
"""
from __future__ import annotations

import pytest

from lvs_agent.ha_agent import gateway_addresses, gateways, held_spec
from lvs_model.nodespec import (Dest, DirectorGroup, LocalAddress, NodeSpec, Service, dump_node_spec,
                                parse_node_spec)
from lvs_operator.compiler import compile_cluster
from lvs_operator.ha_groups import ANNOTATION_NAT_GATEWAY, ANNOTATION_NAT_GATEWAY_DEVICE, gateway_denial

from test_compiler import NODES, pool, rs, vs
from test_ha_agent import Clock, run
from test_ha_agent import director as group_director
from test_ha_lease import FakeLeases

VIP, GW, RIP = "192.168.0.30", "192.168.0.254", "10.0.0.51"
HA = {"lvs.kube-lvs.io/failover": "active-standby"}
POOLS = [pool("lab", ["192.168.0.0/24", "2001:db8::/64"])]


# -- node spec ---------------------------------------------------------------

def test_node_spec_gateway_round_trip():
    doc = {"node": "d1", "directorGroups": [{"name": "g", "members": ["d1", "d2"], "vips": [VIP],
                                             "gateway": GW, "gatewayDevice": "eth1"}]}
    parsed, errors = parse_node_spec(doc)
    assert not errors
    (g,) = parsed.director_groups
    assert (g.gateway, g.gateway_device) == (GW, "eth1")
    assert dump_node_spec(parsed)["directorGroups"][0]["gateway"] == GW
    assert parse_node_spec(dump_node_spec(parsed))[0] == parsed


@pytest.mark.parametrize("bad", ["127.0.0.1", "169.254.1.1", "224.0.0.5", VIP, "nope"])
def test_node_spec_gateway_is_checked_like_a_vip(bad):
    _, errors = parse_node_spec({"directorGroups": [{"name": "g", "vips": [VIP], "gateway": bad}]})
    assert "directorGroups[0].gateway" in {e.path for e in errors}


def test_crd_declares_the_gateway_fields():
    """A structural schema prunes undeclared fields: the agents would never see the gateway."""
    from lvs_operator.crdgen import nodestate_spec
    props = nodestate_spec()["properties"]["directorGroups"]["items"]["properties"]
    assert {"gateway", "gatewayDevice"} <= set(props)


# -- operator: who may claim which address --------------------------------

def deny(address, vip=VIP, method="nat", nat_return="gateway", device="", taken=None, in_pool=True):
    return gateway_denial((address, device), vip, method, nat_return, "team-a", lambda a: in_pool,
                          {"10.0.0.30"}, taken or {})


def test_gateway_in_a_pool_is_allowed():
    assert deny(GW) is None
    assert deny("2001:db8::fe", vip="2001:db8::1") is None
    assert deny(GW, taken={GW: (VIP, "the NAT gateway of VirtualService team-a/web-443")}) is None  # same VIP


@pytest.mark.parametrize("address,kw,reason,words", [
    ("127.0.0.1", {}, "Invalid", "unicast address of a host"),
    ("169.254.0.1", {}, "Invalid", "unicast address of a host"),
    ("0.0.0.0", {}, "Invalid", "unicast address of a host"),
    ("gw", {}, "Invalid", "not an IP address"),
    ("2001:db8::fe", {}, "Invalid", "VIP's family"),
    (VIP, {}, "Invalid", "the VIP itself"),
    ("10.0.0.30", {}, "Invalid", "a Node's own address"),
    (GW, {"method": "dr"}, "Invalid", "only applies to method nat"),
    (GW, {"nat_return": "snat"}, "Invalid", "natReturn snat"),
    (GW, {"device": "bad/dev"}, "Invalid", ANNOTATION_NAT_GATEWAY_DEVICE),
    (GW, {"taken": {GW: ("192.168.0.31", "the VIP of VirtualService team-b/x")}}, "Invalid", "team-b/x"),
    (GW, {"in_pool": False}, "NoPool", "no VIPPool open to namespace team-a"),
])
def test_gateway_a_tenant_may_not_claim_is_refused_with_the_fix(address, kw, reason, words):
    got = deny(address, **kw)
    assert got is not None and got[0] == reason and words in got[1]
    assert ANNOTATION_NAT_GATEWAY in got[1] or ANNOTATION_NAT_GATEWAY_DEVICE in got[1]


def web(name="web", address=VIP, port=80, gateway=GW, labels=HA, ts="2026-01-01T00:00:00Z", **notes):
    o = vs(name, address=address, port=port, method="nat", ts=ts)
    o["metadata"]["labels"] = dict(labels)
    o["metadata"]["annotations"] = {ANNOTATION_NAT_GATEWAY: gateway, **notes}
    return o


def compiled(*objs, pools=POOLS):
    return compile_cluster(list(objs), [rs(f"r-{o['metadata']['name']}", o["metadata"]["name"], RIP)
                                        for o in objs], pools, NODES)


def groups(r, vs_name="web"):
    return {b["spec"]["node"]: parse_node_spec(b["spec"])[0].director_groups for b in r.nodestates.values()
            if b["metadata"]["labels"].get("lvs.kube-lvs.io/virtualservice-name", vs_name) == vs_name
            and b["spec"].get("directorGroups")}


def accepted(r, name="web"):
    return next(c for c in r.vs_status[("team-a", name)]["conditions"] if c["type"] == "Accepted")


def test_annotated_group_carries_the_gateway_to_every_director():
    r = compiled(web(**{ANNOTATION_NAT_GATEWAY_DEVICE: "eth1"}))
    got = groups(r)
    assert set(got) == {"d1", "d2"}
    assert {(g.gateway, g.gateway_device) for gs in got.values() for g in gs} == {(GW, "eth1")}
    assert accepted(r)["status"] == "True"


def test_gateway_outside_every_pool_refuses_the_virtualservice():
    r = compiled(web(gateway="10.0.0.254"))
    acc = accepted(r)
    assert (acc["status"], acc["reason"]) == ("False", "NoPool")
    assert ANNOTATION_NAT_GATEWAY in acc["message"] and "administrator" in acc["message"]
    assert not r.nodestates


def test_a_nodes_address_is_refused_even_inside_a_pool():
    r = compiled(web(gateway="10.0.0.99"), pools=[pool("wide", ["192.168.0.0/24", "10.0.0.0/24"])])
    acc = accepted(r)
    assert (acc["status"], acc["reason"]) == ("False", "Invalid") and "Node's own address" in acc["message"]


def test_two_vips_cannot_share_a_gateway_the_older_keeps_it_ports_of_one_vip_can():
    old = web("old", ts="2026-01-01T00:00:00Z")
    new = web("new", address="192.168.0.31", ts="2026-01-02T00:00:00Z")
    tls = web("tls", port=443, ts="2026-01-03T00:00:00Z")
    r = compiled(old, new, tls)
    assert accepted(r, "old")["status"] == "True" and accepted(r, "tls")["status"] == "True"
    acc = accepted(r, "new")
    assert acc["status"] == "False" and "team-a/old" in acc["message"]


def test_without_the_failover_label_the_annotation_is_not_read():
    r = compiled(web(labels={}, gateway="10.0.0.254"))
    assert accepted(r)["status"] == "True" and not groups(r)


# -- agent: the gateway goes with the VIP ----------------------------------

def spec(node="d1", declared="", vips=(VIP,)) -> NodeSpec:
    svc = Service(address=VIP, port=80, dests=(Dest(RIP, 80, method="nat"),))
    return NodeSpec(node=node, services=(svc,), director_addresses=tuple(LocalAddress(v) for v in vips),
                    director_groups=(DirectorGroup("g", ("d1", "d2"), tuple(vips), 7, gateway=GW,
                                                   gateway_device=declared),))


def test_gateway_follows_the_first_vip_with_a_real_server_to_route_to():
    assert gateways(spec()) == {VIP: (GW, "", RIP)}
    assert gateways(spec(node="d3")) == {}


def test_the_holder_holds_the_gateway_on_the_route_device_or_the_declared_one():
    assert gateway_addresses(spec(), {VIP}, {GW: "eth1"}) == (LocalAddress(GW, "eth1"),)
    assert gateway_addresses(spec(declared="inside"), {VIP}, {GW: "eth1"}) == (LocalAddress(GW, "inside"),)
    assert gateway_addresses(spec(), {VIP}, {}) == ()  # no device known yet: not held anywhere
    assert gateway_addresses(spec(), set(), {GW: "eth1"}) == ()


def test_held_spec_adds_the_gateway_only_with_the_vip():
    held = held_spec(spec(), {VIP}, {GW: "eth1"})
    assert set(held.director_addresses) == {LocalAddress(VIP), LocalAddress(GW, "eth1")}
    assert held_spec(spec(), set(), {GW: "eth1"}).director_addresses == ()


def director(api, node, clock, announced, routes, device=("eth1",)):
    """test_ha_agent's director with this module's spec; the route lookup
    records what it was asked and answers ``device[0]``."""
    c = group_director(api, node, clock, announced)
    c.route_lookup = lambda a: routes.append(a) or device[0]
    c.update(spec(node), "eth0")
    return c


def test_the_holder_announces_the_vip_on_the_uplink_and_the_gateway_on_the_inside_device_once():
    api, clock, announced, routes = FakeLeases(), Clock(), [], []
    d1, d2 = director(api, "d1", clock, announced, routes), director(api, "d2", clock, announced, routes)
    run(clock, d1, d2)
    holder, other = (d1, d2) if d1.held else (d2, d1)
    assert routes and set(routes) == {RIP}
    given = holder.filter(holder.spec)
    assert LocalAddress(GW, "eth1") in given.director_addresses
    assert LocalAddress(GW, "eth1") not in other.filter(other.spec).director_addresses
    holder.after_pass(), other.after_pass()
    name = holder.spec.node
    assert sorted(announced) == sorted([(name, "eth0", VIP), (name, "eth1", GW)])
    holder.filter(holder.spec), holder.after_pass()
    assert len(announced) == 2  # announced once, on the takeover


def test_the_gateway_moves_with_the_vip_when_the_holder_dies():
    api, clock, announced, routes = FakeLeases(), Clock(), [], []
    d1, d2 = director(api, "d1", clock, announced, routes), director(api, "d2", clock, announced, routes)
    run(clock, d1, d2)
    dead, alive = (d1, d2) if d1.held else (d2, d1)
    run(clock, alive, seconds=14)
    assert VIP in alive.held
    alive.filter(alive.spec), alive.after_pass()
    assert (alive.spec.node, "eth1", GW) in announced


def test_a_new_route_device_moves_the_gateway_wakes_the_agent_and_is_announced_there():
    api, clock, announced, woken = FakeLeases(), Clock(), [], []
    device = ["eth1"]
    d1 = director(api, "d1", clock, announced, [], device)
    d1.on_change = lambda: woken.append(clock.now)
    run(clock, d1)
    d1.filter(d1.spec), d1.after_pass()
    assert (VIP in d1.held, announced) == (True, [("d1", "eth0", VIP), ("d1", "eth1", GW)])
    woken.clear()
    device[0] = "eth2"  # the route to the real servers now leaves by another device
    d1.step()
    assert woken  # a pass, though what it holds did not change
    assert LocalAddress(GW, "eth2") in d1.filter(d1.spec).director_addresses
    d1.after_pass()
    assert announced[-1] == ("d1", "eth2", GW)
