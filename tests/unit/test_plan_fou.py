"""GUE backends: the backend VIP carries the GUE port, and the planner opens
it as a FOU receive port, records it, and closes only the ports it opened.

Before this change a GUE backend VIP had no port and the agent never opened
one, so every GUE packet met a closed UDP port (the kernel tier's traffic
test shows it); each test here fails on that code (no tunnelPort field, no
AddFouPort op).
"""
from __future__ import annotations

import pytest

from lvs_agent import fou as F
from lvs_agent import ops as O
from lvs_agent.object_cache import additive
from lvs_agent.plan import Plan, claim, plan, settle
from lvs_agent.state import LinkState, Observed, Ownership
from lvs_model.nodespec import BackendVip, NodeSpec, dump_node_spec, parse_node_spec

from test_plan import simulate

GUE = NodeSpec(backend_vips=(BackendVip("192.168.1.3", "tun", "gue", 6080),))
KEY = "fou:ipv4:6080:gue"


def kernel_apply(kernel: Observed, ops: list[O.Op]) -> list[tuple[O.Op, str | None]]:
    """test_plan's kernel simulation, plus FOU ports (EEXIST on a taken port)."""
    out = []
    for op in ops:
        match op:
            case O.AddFouPort(f, port):
                taken = any(F.is_key(k) and F.parse_key(k)[:2] == (f, port) for k in kernel.links)
                if not taken:
                    kernel.links[F.key(f, port)] = LinkState("fou", True)
                out.append((op, "EEXIST: File exists" if taken else None))
            case O.DelFouPort(f, port):
                gone = [k for k in kernel.links if F.is_key(k) and F.parse_key(k)[:2] == (f, port)]
                for k in gone:
                    del kernel.links[k]
                out.append((op, None if gone else "EINVAL: Invalid argument"))
            case _:
                out += simulate(kernel, [op])
    return out


def reconcile(spec: NodeSpec, kernel: Observed, owned: Ownership) -> tuple[Plan, Ownership]:
    p = plan(spec, kernel, owned, "eth0")
    claimed = claim(owned, p, kernel, spec, "eth0")
    return p, settle(claimed, kernel_apply(kernel, p.ops))


def base_kernel() -> Observed:
    k = Observed(links={"eth0": LinkState("veth", True), "tunl0": LinkState("ipip", False)})
    k.sysctls = {n: "0" for n in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.tunl0.rp_filter",
                                   "net.ipv4.conf.eth0.rp_filter", "net.ipv4.conf.eth0.arp_ignore",
                                   "net.ipv4.conf.eth0.arp_announce")}
    return k


def test_the_node_spec_carries_the_gue_port_both_ways():
    doc = {"backendVips": [{"address": "192.168.1.3", "method": "tun", "tunnelType": "gue", "tunnelPort": 6080}]}
    spec, errors = parse_node_spec(doc)
    assert not errors and spec == GUE
    assert dump_node_spec(spec)["backendVips"] == doc["backendVips"]


@pytest.mark.parametrize("vip", [{"method": "tun", "tunnelPort": 6080},
                                 {"method": "dr", "tunnelType": "gue", "tunnelPort": 6080}])
def test_a_port_without_gue_is_refused_with_its_field(vip):
    _, errors = parse_node_spec({"backendVips": [{"address": "192.168.1.3", **vip}]})
    assert [e.path for e in errors] == ["backendVips[0].tunnelPort"]


def test_ipv6_tunnels_land_on_ipv6_devices():
    # IPVS puts an ip6ip6 packet in an IPv6 GUE tunnel: the ip6_tunnel device
    # receives it; IPv6 GRE is ip6_gre's (before: tunl0 and gre0, IPv4's).
    assert BackendVip("fd00:2::100", "tun", "gue", 6080).device == "ip6tnl0"
    assert BackendVip("fd00:2::100", "tun", "gre").device == "ip6gre0"
    assert BackendVip("192.168.1.3", "tun", "gre").device == "gre0"
    assert F.wanted(NodeSpec(backend_vips=(BackendVip("fd00:2::100", "tun", "gue", 6080),))) \
        == {"fou:ipv6:6080:gue"}


def test_gue_backend_opens_its_port_records_it_and_closes_it():
    kernel, owned = base_kernel(), Ownership()
    p, owned = reconcile(GUE, kernel, owned)
    assert O.AddFouPort("ipv4", 6080) in p.ops
    assert KEY in kernel.links and owned.links[KEY] == "created"
    assert ("tunl0", "192.168.1.3") in kernel.addresses
    assert plan(GUE, kernel, owned, "eth0").ops == []  # converged
    p, owned = reconcile(NodeSpec(), kernel, owned)
    assert O.DelFouPort("ipv4", 6080) in p.ops
    assert KEY not in kernel.links and KEY not in owned.links


def test_a_port_opened_by_hand_is_used_and_never_closed():
    kernel, owned = base_kernel(), Ownership()
    kernel.links[KEY] = LinkState("fou", True)
    p, owned = reconcile(GUE, kernel, owned)
    assert not any(isinstance(op, O.AddFouPort) for op in p.ops) and KEY not in owned.links
    p, owned = reconcile(NodeSpec(), kernel, owned)
    assert not any(isinstance(op, O.DelFouPort) for op in p.ops) and KEY in kernel.links


def test_a_port_taken_by_another_fou_type_is_not_ours():
    kernel, owned = base_kernel(), Ownership()
    kernel.links["fou:ipv4:6080:direct"] = LinkState("fou", True)
    p, owned = reconcile(GUE, kernel, owned)
    assert O.AddFouPort("ipv4", 6080) in p.ops  # tried: the kernel says EEXIST
    assert KEY not in owned.links
    reconcile(NodeSpec(), kernel, owned)
    assert "fou:ipv4:6080:direct" in kernel.links


def test_a_port_closed_by_hand_is_opened_again():
    kernel, owned = base_kernel(), Ownership()
    _, owned = reconcile(GUE, kernel, owned)
    del kernel.links[KEY]
    p, owned = reconcile(GUE, kernel, owned)
    assert O.AddFouPort("ipv4", 6080) in p.ops and owned.links[KEY] == "created"


def test_the_record_keeps_the_port_across_a_restart():
    kernel, owned = base_kernel(), Ownership()
    _, owned = reconcile(GUE, kernel, owned)
    owned = Ownership.from_json(owned.to_json())
    p, _ = reconcile(NodeSpec(), kernel, owned)
    assert O.DelFouPort("ipv4", 6080) in p.ops


GRE_CSUM = NodeSpec(backend_vips=(BackendVip("192.168.1.3", "tun", "gre", 0, "csum"),))


def test_gre_checksums_travel_and_are_expected_only_while_wanted():
    """IPVS's checksummed GRE is dropped by a gre0 without icsum: the
    backend VIP carries the checksum, the planner sets icsum on gre0 (after
    bringing it up) and takes it back when the VIP goes (before: no field, no op)."""
    doc = {"backendVips": [{"address": "192.168.1.3", "method": "tun", "tunnelType": "gre",
                            "tunnelChecksum": "csum"}]}
    spec, errors = parse_node_spec(doc)
    assert not errors and spec == GRE_CSUM and dump_node_spec(spec)["backendVips"] == doc["backendVips"]
    kernel = Observed(links={"eth0": LinkState("veth", True), "gre0": LinkState("gre", False)})
    p = plan(GRE_CSUM, kernel, Ownership(), "eth0")
    kinds = [type(op).__name__ for op in p.ops]
    assert kinds.index("SetLinkUp") < kinds.index("AddGreCsum")
    claimed = claim(Ownership(), p, kernel, GRE_CSUM, "eth0")
    assert claimed.links["gre-csum:gre0"] == "created"
    kernel.links["gre-csum:gre0"] = LinkState("gre", True)
    assert not any(isinstance(op, O.AddGreCsum) for op in plan(GRE_CSUM, kernel, claimed, "eth0").ops)
    assert O.DelGreCsum("gre0") in plan(NodeSpec(), kernel, claimed, "eth0").ops
    # Set by somebody else: never taken back.
    assert O.DelGreCsum("gre0") not in plan(NodeSpec(), kernel, Ownership(), "eth0").ops


def test_a_checksum_only_for_gre():
    _, errors = parse_node_spec({"backendVips": [{"address": "192.168.1.3", "method": "tun",
                                                  "tunnelType": "gue", "tunnelPort": 1, "tunnelChecksum": "csum"}]})
    assert [e.path for e in errors] == ["backendVips[0].tunnelChecksum"]


def test_a_pass_from_the_cache_alone_never_closes_a_port():
    p = Plan([O.AddFouPort("ipv4", 6081), O.DelFouPort("ipv4", 6080), O.DelGreCsum("gre0")])
    assert additive(p).ops == [O.AddFouPort("ipv4", 6081)]


def test_the_compiler_hands_the_gre_checksum_to_the_backend():
    from lvs_operator.compiler import compile_cluster
    from test_compiler import NODES, POOLS, rs, vs
    r = compile_cluster(
        [vs("tun", address="192.168.1.3", port=80, scheduler="wlc", method="tun")],
        [rs("rs1", "tun", "192.168.1.10", nodeName="b1", tunnel={"type": "gre", "checksum": "csum"}),
         rs("rs2", "tun", "192.168.1.11", nodeName="b2", tunnel={"type": "gre"})],
        POOLS, NODES)
    assert r.nodestates["b1-team-a-tun"]["spec"]["backendVips"] == [
        {"address": "192.168.1.3", "method": "tun", "tunnelType": "gre", "tunnelChecksum": "csum"}]
    assert r.nodestates["b2-team-a-tun"]["spec"]["backendVips"] == [
        {"address": "192.168.1.3", "method": "tun", "tunnelType": "gre"}]
