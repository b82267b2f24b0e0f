"""The planner, against a pure simulation of the kernel.

The simulator applies ops the way the kernel would (EEXIST, ENOENT), so the
properties checked here are the ones the engine relies on: a plan converges,
planning again yields nothing, foreign objects are never touched.
"""
from __future__ import annotations

import copy
from dataclasses import replace

from hypothesis import given, settings, strategies as st

from lvs_agent import ops as O
from lvs_agent.plan import claim, plan, settle
from lvs_agent.state import LinkState, Observed, Ownership
from lvs_model.nodespec import (
    BackendVip, Dest, DestKey, LocalAddress, NodeSpec, Service, effective_sysctls,
    local_addresses,
)


def simulate(kernel: Observed, ops: list[O.Op]) -> list[tuple[O.Op, str | None]]:
    """Apply ops to an Observed as the kernel would; returns per-op results."""
    out = []
    for op in ops:
        err = None
        match op:
            case O.AddService(s):
                if s.key in kernel.services:
                    err = "EEXIST: service exists"
                else:
                    kernel.services[s.key] = replace(s, dests=(), name="")
            case O.SetService(s):
                cur = kernel.services.get(s.key)
                if cur is None:
                    err = "ENOENT"
                else:
                    kernel.services[s.key] = replace(s, dests=cur.dests, name="")
            case O.DelService(k):
                err = None if kernel.services.pop(k, None) else "ENOENT"
            case O.AddDest(s, d) | O.SetDest(s, d):
                cur = kernel.services.get(s.key)
                if cur is None:
                    err = "ENOENT"
                else:
                    exists = any(x.key == d.key for x in cur.dests)
                    if isinstance(op, O.AddDest) and exists:
                        err = "EEXIST"
                    elif isinstance(op, O.SetDest) and not exists:
                        err = "ENOENT"
                    else:
                        dests = tuple(x for x in cur.dests if x.key != d.key) + (d,)
                        kernel.services[s.key] = replace(cur, dests=dests)
            case O.DelDest(k, dk):
                cur = kernel.services.get(k)
                if cur is None or not any(x.key == dk for x in cur.dests):
                    err = "ENOENT"
                else:
                    kernel.services[k] = replace(cur, dests=tuple(x for x in cur.dests if x.key != dk))
            case O.AddLink(n, kind):
                if n in kernel.links:
                    err = "EEXIST"
                else:
                    kernel.links[n] = LinkState(kind, False)
            case O.SetLinkUp(n, up):
                kernel.links[n] = LinkState(kernel.links[n].kind, up)
            case O.DelLink(n):
                kernel.links.pop(n)
                kernel.addresses = {(d, a) for d, a in kernel.addresses if d != n}
            case O.AddAddress(dev, a, _):
                kernel.addresses.add((dev, a))
            case O.DelAddress(dev, a, _):
                kernel.addresses.discard((dev, a))
            case O.SetSysctl(n, v, _):
                kernel.sysctls[n] = v
        out.append((op, err))
    return out


def reconcile(spec: NodeSpec, kernel: Observed, owned: Ownership, uplink: str = "eth0"):
    for name in list(effective_sysctls(spec, uplink)) + list(owned.sysctls):
        kernel.sysctls.setdefault(name, "0")
    p = plan(spec, kernel, owned, uplink)
    claimed = claim(owned, p, kernel, spec, uplink)
    results = simulate(kernel, p.ops)
    return p, settle(claimed, results)


def nat_service(port=80, dests=("10.0.0.51", "10.0.0.52"), **kw) -> Service:
    return Service(address="192.168.0.30", port=port, scheduler="rr",
                   dests=tuple(Dest(a, port) for a in dests), **kw)


def foreign_kernel() -> Observed:
    k = Observed()
    k.links = {"eth0": LinkState("veth", True), "lo": LinkState("", True)}
    k.addresses = {("eth0", "192.168.0.30")}
    k.services[Service(address="10.96.0.1", port=443).key] = Service(
        address="10.96.0.1", port=443, dests=(Dest("172.18.0.2", 6443, method="nat"),))
    return k


def test_empty_kernel_gets_everything_in_order():
    spec = NodeSpec(services=(nat_service(),), director_addresses=(LocalAddress("192.168.0.31"),))
    p = plan(spec, Observed(), Ownership())
    kinds = [type(o).__name__ for o in p.ops]
    assert kinds.index("AddLink") < kinds.index("AddAddress") < kinds.index("AddService") < kinds.index("AddDest")
    assert kinds.count("AddDest") == 2


def test_second_plan_is_empty_and_foreign_service_untouched():
    kernel, owned = foreign_kernel(), Ownership()
    before = copy.deepcopy(kernel.services)
    spec = NodeSpec(services=(nat_service(),))
    _, owned = reconcile(spec, kernel, owned)
    p, owned = reconcile(spec, kernel, owned)
    assert p.ops == []
    foreign = next(k for k in before if k.address == "10.96.0.1")
    assert kernel.services[foreign] == before[foreign]
    assert foreign not in owned.services


def test_one_weight_change_is_one_op():
    kernel, owned = foreign_kernel(), Ownership()
    spec = NodeSpec(services=tuple(nat_service(port=p) for p in range(1000, 1100)))
    _, owned = reconcile(spec, kernel, owned)
    svcs = list(spec.services)
    svcs[42] = replace(svcs[42], dests=(replace(svcs[42].dests[0], weight=0), svcs[42].dests[1]))
    p = plan(replace(spec, services=tuple(svcs)), kernel, owned, "eth0")
    assert p.ops == [O.SetDest(svcs[42], svcs[42].dests[0])]


def test_existing_foreign_service_with_same_key_is_a_problem_not_a_takeover():
    kernel = foreign_kernel()
    spec = NodeSpec(services=(Service(address="10.96.0.1", port=443, dests=(Dest("1.1.1.1", 443),)),))
    p = plan(spec, kernel, Ownership())
    assert p.ops == [] or all(not isinstance(o, (O.SetService, O.AddDest, O.DelService)) for o in p.ops)
    assert "not created by kube-lvs" in next(iter(p.problems.values()))


def test_drift_is_repaired_against_the_kernel():
    kernel, owned = foreign_kernel(), Ownership()
    spec = NodeSpec(services=(nat_service(),))
    _, owned = reconcile(spec, kernel, owned)
    k = spec.services[0].key
    # By hand: a dest deleted, the scheduler changed.
    cur = kernel.services[k]
    kernel.services[k] = replace(cur, scheduler="wlc", dests=cur.dests[:1])
    p, owned = reconcile(spec, kernel, owned)
    assert {type(o) for o in p.ops} == {O.SetService, O.AddDest}
    assert kernel.services[k].scheduler == "rr" and len(kernel.services[k].dests) == 2
    # By hand: our whole service deleted.
    del kernel.services[k]
    p, owned = reconcile(spec, kernel, owned)
    assert [type(o) for o in p.ops] == [O.AddService, O.AddDest, O.AddDest]


def test_foreign_dest_inside_our_service_is_left_alone():
    kernel, owned = foreign_kernel(), Ownership()
    spec = NodeSpec(services=(nat_service(),))
    _, owned = reconcile(spec, kernel, owned)
    k = spec.services[0].key
    kernel.services[k] = replace(kernel.services[k], dests=kernel.services[k].dests + (Dest("10.0.0.99", 80),))
    assert plan(spec, kernel, owned, "eth0").ops == []


def test_removed_service_goes_and_only_ours():
    kernel, owned = foreign_kernel(), Ownership()
    spec = NodeSpec(services=(nat_service(), nat_service(port=81)))
    _, owned = reconcile(spec, kernel, owned)
    p, owned = reconcile(replace(spec, services=spec.services[:1]), kernel, owned)
    assert p.ops == [O.DelService(spec.services[1].key)]
    assert spec.services[1].key not in owned.services
    assert len(kernel.services) == 2  # ours + the foreign one
    p, owned = reconcile(NodeSpec(), kernel, owned)
    assert list(kernel.services) == [k for k in foreign_kernel().services]


def test_failed_create_is_not_owned():
    kernel, owned = Observed(), Ownership()
    spec = NodeSpec(services=(nat_service(),))
    p = plan(spec, kernel, owned)
    claimed = claim(owned, p, kernel, spec)
    assert spec.services[0].key in claimed.services
    # Somebody else created it between observe and apply.
    results = [(op, "EEXIST: File exists" if isinstance(op, O.AddService) else "ENOENT") for op in p.ops]
    settled = settle(claimed, results)
    assert spec.services[0].key not in settled.services


def test_backend_side_is_put_back_as_it_was():
    kernel = Observed(links={"eth0": LinkState("veth", True), "tunl0": LinkState("ipip", False)})
    kernel.sysctls = {"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.eth0.arp_ignore": "0"}
    owned = Ownership()
    spec = NodeSpec(backend_vips=(BackendVip("192.168.1.3", "tun"),))
    p, owned = reconcile(spec, kernel, owned)
    assert ("tunl0", "192.168.1.3") in kernel.addresses and kernel.links["tunl0"].up
    assert kernel.sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    assert plan(spec, kernel, owned, "eth0").ops == []
    p, owned = reconcile(NodeSpec(), kernel, owned)
    assert kernel.addresses == set() and not kernel.links["tunl0"].up
    assert kernel.sysctls["net.ipv4.conf.all.rp_filter"] == "1"
    assert kernel.sysctls["net.ipv4.conf.eth0.arp_ignore"] == "0"
    assert owned.to_json() == Ownership().to_json()


def test_director_vip_device_is_created_and_removed():
    kernel, owned = Observed(links={"eth0": LinkState("veth", True)}), Ownership()
    spec = NodeSpec(services=(nat_service(),), director_addresses=(LocalAddress("192.168.7.1"),))
    _, owned = reconcile(spec, kernel, owned)
    assert "kube-lvs0" in kernel.links and ("kube-lvs0", "192.168.7.1") in kernel.addresses
    _, owned = reconcile(NodeSpec(), kernel, owned)
    assert "kube-lvs0" not in kernel.links and owned.links == {}


def test_address_already_on_another_device_is_not_duplicated():
    kernel = foreign_kernel()  # 192.168.0.30 sits on eth0, as in the seed's NAT director
    spec = NodeSpec(director_addresses=(LocalAddress("192.168.0.30"),))
    p = plan(spec, kernel, Ownership())
    assert not any(isinstance(o, O.AddAddress) for o in p.ops)


def test_ownership_survives_json(tmp_path):
    from lvs_agent.state import OwnershipStore
    kernel, owned = foreign_kernel(), Ownership()
    spec = NodeSpec(services=(nat_service(),), backend_vips=(BackendVip("192.168.1.3", "dr"),))
    _, owned = reconcile(spec, kernel, owned)
    store = OwnershipStore(tmp_path / "own.json")
    store.save(owned)
    assert store.load().to_json() == owned.to_json()
    assert plan(spec, kernel, store.load(), "eth0").ops == []


# ---- property: any sequence of specs converges in one plan ------------------

addresses = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
dest_st = st.builds(Dest, addresses, st.just(80), st.integers(0, 3), st.sampled_from(["nat", "dr", "tun"]),
                    upper_threshold=st.integers(0, 2))
svc_st = st.builds(
    lambda port, sched, timeout, dests: Service(
        address="192.168.0.30", port=port, scheduler=sched, persistence_timeout=timeout,
        dests=tuple({d.key: d for d in dests}.values())),
    st.sampled_from([80, 81, 82]), st.sampled_from(["rr", "wlc", "sh"]), st.sampled_from([0, 60]),
    st.lists(dest_st, max_size=4))
spec_st = st.builds(
    lambda svcs, vips: NodeSpec(services=tuple({s.key: s for s in svcs}.values()),
                                backend_vips=tuple(dict.fromkeys(vips))),
    st.lists(svc_st, max_size=3),
    st.lists(st.builds(BackendVip, st.sampled_from(["192.168.1.3", "192.168.1.4"]), st.sampled_from(["dr", "tun"])),
             max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.lists(spec_st, min_size=1, max_size=4))
def test_any_sequence_converges_and_never_touches_foreign(specs):
    kernel, owned = foreign_kernel(), Ownership()
    kernel.links["tunl0"] = LinkState("ipip", False)
    foreign = dict(kernel.services)
    for spec in specs:
        _, owned = reconcile(spec, kernel, owned)
        assert plan(spec, kernel, owned, "eth0").ops == []
        want = {s.key: s for s in spec.services}
        for k, s in want.items():
            assert kernel.services[k].attrs() == s.attrs()
            assert {d.key: d for d in kernel.services[k].dests} == {d.key: d for d in s.dests}
        assert set(kernel.services) == set(want) | set(foreign)
        for k, s in foreign.items():
            assert kernel.services[k] == s
        assert {a for _, a in kernel.addresses} >= {a.address for a in local_addresses(spec)}
    _, owned = reconcile(NodeSpec(), kernel, owned)
    assert kernel.services == foreign
    assert owned.services == set()


def test_create_with_unknown_outcome_stays_claimed():
    kernel, owned = Observed(), Ownership()
    spec = NodeSpec(services=(nat_service(),))
    p = plan(spec, kernel, owned)
    claimed = claim(owned, p, kernel, spec)
    settled = settle(claimed, [(op, "EIO: no ack") for op in p.ops])
    assert spec.services[0].key in settled.services
    assert settled.dests[spec.services[0].key] == {d.key for d in spec.services[0].dests}


def test_uplink_fallback_skips_tunnels_and_dummies():
    from lvs_agent.rtnl import _pick_uplink
    links = {"lo": LinkState("", True), "tunl0": LinkState("ipip", True),
             "kube-lvs0": LinkState("dummy", True), "eth0": LinkState("veth", True)}
    assert _pick_uplink(links, {1: "lo", 2: "tunl0", 3: "kube-lvs0", 4: "eth0"}, []) == "eth0"
    assert _pick_uplink(links, {2: "tunl0", 4: "eth0"}, [2]) == "tunl0"  # a default route wins
