"""Incremental reconcile, pure parts: which services to re-plan or why not
(incremental.delta), and that re-planning only those gives the kernel and the
ownership record a full reconcile would, never touching anything else."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from lvs_agent import ops as O
from lvs_agent.incremental import (advance, delta, merge_owned, node_side, remember as remember_spec,
                                   restrict_owned, retry_after, same_service)
from lvs_agent.plan import Plan, claim_services, plan_services, settle
from lvs_agent.state import Observed, Ownership
from lvs_model.nodespec import BackendVip, effective_sysctls, Dest, DestKey, LocalAddress, NodeSpec, ReplyRoute, Service

from test_plan import foreign_kernel, nat_service, reconcile, simulate

SIG = (1, 2, 3)
UPLINK = "eth0"


def remember(spec: NodeSpec, retry=frozenset()):
    return remember_spec(spec, UPLINK, SIG, frozenset(retry))


def changed_services(old, new) -> frozenset:
    """The keys delta re-plans between two service lists (nothing else differs)."""
    d = delta(remember(NodeSpec(services=tuple(old))), NodeSpec(services=tuple(new)), SIG)
    assert not d.full, d.full
    return d.keys


def base() -> NodeSpec:
    return NodeSpec(node="n1", services=(nat_service(80), nat_service(81), nat_service(82)),
                    director_addresses=(LocalAddress("192.168.0.30"),))


def reweighted(spec: NodeSpec, i: int, weight: int) -> NodeSpec:
    svcs = list(spec.services)
    s = svcs[i]
    svcs[i] = replace(s, dests=(replace(s.dests[0], weight=weight),) + s.dests[1:])
    return replace(spec, services=tuple(svcs))


# ---- which services changed -------------------------------------------------------

def test_changed_services_added_removed_and_different():
    a, b, c = nat_service(80), nat_service(81), nat_service(82)
    b2 = replace(b, scheduler="wlc")
    assert changed_services([a, b], [a, b]) == frozenset()
    assert changed_services([a, b], [b, a]) == frozenset()  # order is not a change
    assert changed_services([a], [a, c]) == {c.key}
    assert changed_services([a, c], [a]) == {c.key}
    assert changed_services([a, c], [c]) == {a.key}
    assert changed_services([a, b], [a, b2]) == {b.key}
    assert changed_services([a, b, c], [b2, c, a]) == {b.key}  # moved and changed
    assert changed_services([a, b], [copy.deepcopy(a), b]) == frozenset()  # equal, not identical
    assert changed_services([a], [b]) == {a.key, b.key}


def test_same_service_is_dataclass_equality():
    a = nat_service(80)
    variants = [copy.deepcopy(a), replace(a, scheduler="wlc"), replace(a, dests=a.dests[:1]),
                replace(a, dests=(replace(a.dests[0], weight=9),) + a.dests[1:]),
                replace(a, dests=(replace(a.dests[0], tunnel_csum="remcsum"),) + a.dests[1:]),
                replace(a, health=replace(a.health, interval=1.0)), replace(a, name="x/y")]
    for v in variants:
        assert same_service(a, v) == (a == v) and same_service(v, a) == (v == a)


def test_unchanged_shared_services_cost_no_key(monkeypatch):
    """The agent reuses the parse of unchanged objects: for those, delta must
    not build a ServiceKey (10k of them is most of its time)."""
    svcs = tuple(nat_service(p) for p in range(1000, 1100))
    mem = remember(NodeSpec(services=svcs))
    new = svcs[:40] + (replace(svcs[40], scheduler="wlc"),) + svcs[41:]
    built = []
    key = Service.key
    monkeypatch.setattr(Service, "key", property(lambda s: built.append(1) or key.fget(s)))
    d = delta(mem, NodeSpec(services=new), SIG)
    assert d.keys == {svcs[40].key} and d.want == (new[40],)
    assert len(built) <= 4, len(built)


@pytest.mark.parametrize("field", ["name", "health", "persistence_timeout", "one_packet"])
def test_any_service_field_is_a_change(field):
    s = nat_service(80)
    changed = {"name": "ns/x", "health": replace(s.health, type="tcp"),
               "persistence_timeout": 60, "one_packet": True}[field]
    assert changed_services([s], [replace(s, **{field: changed})]) == {s.key}


# ---- delta: when incremental, which keys ----------------------------------------

def test_no_memory_is_full():
    assert delta(None, base(), SIG).full


def test_same_spec_is_nothing_to_do():
    d = delta(remember(base()), base(), SIG)
    assert not d.full and d.keys == frozenset()


def test_one_weight_is_one_key():
    spec = base()
    d = delta(remember(spec), reweighted(spec, 1, 5), SIG)
    assert not d.full and d.keys == {spec.services[1].key}


def test_added_and_removed_services_are_keys():
    spec = base()
    new = replace(spec, services=spec.services[1:] + (nat_service(90),))
    d = delta(remember(spec), new, SIG)
    assert d.keys == {spec.services[0].key, nat_service(90).key}


def test_retry_keys_are_replanned_with_the_changes():
    spec = base()
    stuck = spec.services[2].key
    d = delta(remember(spec, {stuck}), reweighted(spec, 0, 4), SIG)
    assert d.keys == {spec.services[0].key, stuck}
    assert delta(remember(spec, {stuck}), spec, SIG).keys == {stuck}


@pytest.mark.parametrize("sig", [None, (9, 9, 9)])
def test_ownership_file_changed_is_full(sig):
    assert "ownership" in delta(remember(base()), reweighted(base(), 0, 2), sig).full


@pytest.mark.parametrize("change", [
    {"director_addresses": (LocalAddress("192.168.0.99"),)},
    {"director_addresses": ()},
    {"backend_vips": (BackendVip("192.168.1.3", "tun"),)},
    {"uplink": "eth1"},
    {"sysctls": (("net.ipv4.vs.conn_reuse_mode", "0"),)},
    {"reply_routes": (ReplyRoute("10.0.0.51", 80, "tcp", ("10.0.0.1",)),)},
    {"node": "n2"},
])
def test_non_service_change_replans_the_node_side(change):
    spec = base()
    new = replace(reweighted(spec, 0, 3), **change)
    d = delta(remember(spec), new, SIG)
    assert not d.full and "non-service" in d.node and d.keys == {spec.services[0].key}


def test_duplicate_service_key_is_full():
    spec = base()
    new = replace(spec, services=spec.services + (spec.services[0],))
    assert "twice" in delta(remember(spec), new, SIG).full


@pytest.mark.parametrize("old_snat,new_snat", [(True, False), (False, True), (True, True)])
def test_changed_snat_service_replans_the_node_side(old_snat, new_snat):
    spec = base()
    old = replace(spec, services=(replace(spec.services[0], snat=old_snat),) + spec.services[1:])
    new = replace(reweighted(old, 0, 7), services=(replace(reweighted(old, 0, 7).services[0], snat=new_snat),)
                  + spec.services[1:])
    d = delta(remember(old), new, SIG)
    assert not d.full and "SNAT" in d.node


def test_unchanged_snat_service_does_not_force_full():
    spec = base()
    spec = replace(spec, services=(replace(spec.services[0], snat=True),) + spec.services[1:])
    d = delta(remember(spec), reweighted(spec, 2, 9), SIG)
    assert not d.full and not d.node and d.keys == {spec.services[2].key}


def test_service_change_that_changes_sysctls_replans_the_node_side():
    # Only DR dests: no ip_forward. The first NAT dest needs it: full.
    dr = replace(nat_service(80), dests=(Dest("10.0.0.51", 80, method="dr"),))
    spec = NodeSpec(services=(dr,))
    new = NodeSpec(services=(replace(dr, dests=(Dest("10.0.0.51", 80, method="nat"),)),))
    assert "besides IPVS" in delta(remember(spec), new, SIG).node
    # The first service ever (expire_nodest_conn) and the last one gone: the node side too.
    assert delta(remember(NodeSpec()), NodeSpec(services=(dr,)), SIG).node
    assert delta(remember(spec), NodeSpec(), SIG).node
    assert not delta(remember(spec), replace(spec, services=(replace(dr, scheduler="wlc"),)), SIG).node


def test_memory_keeps_its_uplink():
    spec = NodeSpec(services=(nat_service(80),), backend_vips=(BackendVip("192.168.1.3", "dr"),))
    mem = remember_spec(spec, "eth1", SIG, frozenset())
    new = reweighted(spec, 0, 2)
    d = delta(mem, new, SIG)
    assert not d.full and d.keys == {spec.services[0].key}
    assert advance(mem, d, new, SIG, frozenset()).uplink == "eth1"


def test_duplicate_key_in_a_full_spec_is_not_remembered():
    assert remember(NodeSpec(services=(nat_service(80), nat_service(80)))) is None


def test_duplicate_of_an_unchanged_service_is_full():
    spec = base()
    new = replace(spec, services=spec.services + (replace(spec.services[1], scheduler="sh"),))
    assert "twice" in delta(remember(spec), new, SIG).full


# ---- retry_after ------------------------------------------------------------------

def test_retry_after_collects_problems_and_failed_ipvs_ops():
    a, b = nat_service(80), nat_service(81)
    p = Plan(problems={a.key: "foreign"})
    results = [(O.SetDest(b, b.dests[0]), "ENOENT: gone"), (O.DelService(nat_service(82).key), None)]
    assert retry_after(p, results) == {a.key, b.key}
    assert retry_after(Plan(), [(O.DelService(a.key), "EBUSY: x")]) == {a.key}
    assert retry_after(Plan(), []) == frozenset()


def test_failed_non_ipvs_op_forgets_the_memory():
    assert retry_after(Plan(), [(O.SetSysctl("net.ipv4.ip_forward", "1"), "EACCES: no")]) is None
    assert retry_after(Plan(), [(O.AddLink("lvs0", "dummy"), None)]) == frozenset()


# ---- restrict / merge -----------------------------------------------------------------

def owned_three() -> Ownership:
    ks = [nat_service(p).key for p in (80, 81, 82)]
    return Ownership(services=set(ks), dests={k: {DestKey("10.0.0.51", 80)} for k in ks},
                     addresses={("lvs0", "192.168.0.30")}, links={"lvs0": "created"},
                     sysctls={"net.ipv4.ip_forward": "0"})


def test_restrict_keeps_only_those_ipvs_records():
    own = owned_three()
    k = nat_service(81).key
    part = restrict_owned(own, {k, nat_service(99).key})
    assert part == Ownership(services={k}, dests={k: {DestKey("10.0.0.51", 80)}})
    part.dests[k].add(DestKey("x", 1))
    assert DestKey("x", 1) not in own.dests[k]  # a copy


def test_merge_of_restricted_is_identity_and_replaces_only_keys():
    own = owned_three()
    before = copy.deepcopy(own)
    k81, k82, k99 = nat_service(81).key, nat_service(82).key, nat_service(99).key
    keys = {k81, k82, k99}
    assert merge_owned(own, restrict_owned(own, keys), keys) == own
    part = Ownership(services={k99}, dests={k99: {DestKey("10.0.0.9", 80)}, k81: {DestKey("10.0.0.7", 80)}})
    m = merge_owned(own, part, keys)
    assert m.services == {nat_service(80).key, k99}
    assert m.dests == {nat_service(80).key: {DestKey("10.0.0.51", 80)}, k99: {DestKey("10.0.0.9", 80)},
                       k81: {DestKey("10.0.0.7", 80)}}
    assert (m.addresses, m.links, m.sysctls) == (own.addresses, own.links, own.sysctls)
    assert own == before  # inputs untouched


# ---- property: incremental == full on a simulated kernel ------------------------------

def reconcile_services(spec: NodeSpec, kernel: Observed, owned: Ownership, keys, node: bool = False):
    """What Engine._reconcile_services does, on the simulated kernel (``node``:
    with the node side read and planned whole)."""
    want = tuple(s for s in spec.services if s.key in keys)
    if node:
        from lvs_agent.plan import claim, plan
        for name in effective_sysctls(spec, UPLINK):  # the simulated kernel has every sysctl
            kernel.sysctls.setdefault(name, "0")
        part = restrict_owned(owned, keys, node=True)
        obs = replace(kernel, services={k: s for k, s in kernel.services.items() if k in keys})
        p = plan(spec, obs, part, UPLINK, services=want)
        claimed = claim(part, p, obs, spec, UPLINK, services=want)
        results = simulate(kernel, p.ops)
        return p, results, merge_owned(owned, settle(claimed, results), keys, node=True)
    obs = Observed(services={k: s for k, s in kernel.services.items() if k in keys})
    part = restrict_owned(owned, keys)
    p = plan_services(want, obs.services, part)
    claimed = claim_services(part, p, obs, want)
    results = simulate(kernel, p.ops)
    return p, results, merge_owned(owned, settle(claimed, results), keys)


dest_st = st.builds(Dest, st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3"]), st.just(80),
                    st.integers(0, 3), st.sampled_from(["nat", "dr"]))
svc_st = st.builds(
    lambda port, sched, snat, dests: Service(address="192.168.0.30", port=port, scheduler=sched, snat=snat,
                                             dests=tuple({d.key: d for d in dests}.values())),
    st.sampled_from([80, 81, 82, 443]), st.sampled_from(["rr", "wlc"]), st.sampled_from([False, False, True]),
    st.lists(dest_st, max_size=3))
services_st = st.lists(svc_st, max_size=4).map(lambda ss: tuple({s.key: s for s in ss}.values()))


@settings(max_examples=300, deadline=None)
@given(st.lists(services_st, min_size=2, max_size=5))
def test_incremental_gives_what_full_gives_and_touches_only_changed_keys(seq):
    # One world reconciles fully every time, the other incrementally when delta allows.
    full_k, inc_k = foreign_kernel(), foreign_kernel()
    # A foreign service holding a key the specs may ask for (port 443).
    for k in (full_k, inc_k):
        held = Service(address="192.168.0.30", port=443, scheduler="sh", dests=(Dest("10.9.9.9", 443),))
        k.services[held.key] = held
    foreign = dict(inc_k.services)
    full_own = inc_own = Ownership()
    mem = None
    for services in seq:
        spec = NodeSpec(services=services)
        _, full_own = reconcile(spec, full_k, full_own, UPLINK)
        d = delta(mem, spec, SIG)
        if d.full:
            p, inc_own = reconcile(spec, inc_k, inc_own, UPLINK)
            results = [(op, None) for op in p.ops]  # the simulated kernel refuses nothing here
        else:
            # Without `node`, the counts decided that nothing beyond IPVS changes: check
            # that against the real derivations.
            assert d.node or node_side(spec, UPLINK) == node_side(mem.spec, UPLINK)
            assert d.want == tuple(sorted((s for s in spec.services if s.key in d.keys), key=lambda s: s.key))
            p, results, inc_own = reconcile_services(spec, inc_k, inc_own, d.keys, node=bool(d.node))
            assert {O.service_key(op) for op in p.ops} - {None} <= d.keys  # None: node-side ops
            assert d.node or all(O.service_key(op) for op in p.ops)
        assert inc_k == full_k  # services, sysctls, addresses, links ...
        assert inc_own == full_own
        for k, s in foreign.items():
            assert inc_k.services[k] == s
        retry = retry_after(p, results)
        assert retry is not None
        mem = remember_spec(spec, UPLINK, SIG, retry) if d.full else advance(mem, d, spec, SIG, retry)
        assert mem.index == {s.key: s for s in spec.services}
        assert {k for k in retry} == {k for k in p.problems}


def test_foreign_key_is_retried_until_it_is_free():
    kernel, owned = foreign_kernel(), Ownership()
    foreign_key = next(iter(kernel.services))
    ours = Service(address=foreign_key.address, port=foreign_key.port, scheduler="rr",
                   dests=(Dest("10.0.0.5", 443),))
    spec = NodeSpec(services=(nat_service(80), ours))
    p, owned = reconcile(spec, kernel, owned, UPLINK)
    mem = remember(spec, retry_after(p, []))
    assert mem is not None
    assert mem.retry == {foreign_key}
    # The foreign service goes; the spec does not change: the key is re-planned.
    del kernel.services[foreign_key]
    d = delta(mem, spec, SIG)
    assert d.keys == {foreign_key}
    p, results, owned = reconcile_services(spec, kernel, owned, d.keys)
    assert [type(op) for op in p.ops] == [O.AddService, O.AddDest]
    assert foreign_key in owned.services and retry_after(p, results) == frozenset()


# ---- the sweep: unchanged services re-checked a slice at a time ------------------------

def test_checked_keys_are_replanned_without_forcing_full():
    spec = base()
    spec = replace(spec, services=(replace(spec.services[0], snat=True),) + spec.services[1:])
    snat_key, other = spec.services[0].key, spec.services[1].key
    d = delta(remember(spec), spec, SIG, [snat_key, other])
    assert not d.full and d.keys == {snat_key, other}  # an unchanged SNAT service: no full
    assert [s.key for s in d.want] == sorted([snat_key, other])
    stray = nat_service(99).key  # owned, no longer desired: checked, nothing to want
    d = delta(remember(spec), reweighted(spec, 2, 7), SIG, [stray])
    assert d.keys == {stray, spec.services[2].key} and [s.key for s in d.want] == [spec.services[2].key]


def test_restrict_and_merge_with_the_node_side():
    own = owned_three()
    k = nat_service(81).key
    part = restrict_owned(own, {k}, node=True)
    assert part == Ownership(services={k}, dests={k: {DestKey("10.0.0.51", 80)}}, addresses=own.addresses,
                             links=own.links, sysctls=own.sysctls)
    part.addresses.add(("lo", "10.9.9.9"))
    assert ("lo", "10.9.9.9") not in own.addresses  # a copy
    m = merge_owned(own, part, {k}, node=True)
    assert ("lo", "10.9.9.9") in m.addresses and m.services == own.services
    assert ("lo", "10.9.9.9") not in merge_owned(own, part, {k}).addresses  # without node: kept


def sweep_round(spec: NodeSpec, kernel: Observed, owned: Ownership, slice_size: int) -> Ownership:
    """What Engine._sweep_slice + _reconcile_services do over one round, on the
    simulated kernel: desired keys then owned strays, the first slice with
    the node side."""
    from lvs_agent.plan import claim, plan
    index = [s.key for s in spec.services]
    order = index + [k for k in owned.services if k not in set(index)]
    for i in range(0, max(1, len(order)), slice_size):
        keys = set(order[i:i + slice_size])
        want = tuple(sorted((s for s in spec.services if s.key in keys), key=lambda s: s.key))
        if i == 0:
            part = restrict_owned(owned, keys, node=True)
            obs = replace(kernel, services={k: s for k, s in kernel.services.items() if k in keys})
            p = plan(spec, obs, part, UPLINK, services=want)
            claimed = claim(part, p, obs, spec, UPLINK, services=want)
            owned = merge_owned(owned, settle(claimed, simulate(kernel, p.ops)), keys, node=True)
        else:
            p, results, owned = reconcile_services(spec, kernel, owned, keys)
    return owned


drift_st = st.lists(st.tuples(st.sampled_from(["del_service", "del_dest", "weight", "address", "sysctl",
                                               "stray"]), st.integers(0, 3)), max_size=4)


@settings(max_examples=200, deadline=None)
@given(services_st, drift_st, st.integers(1, 3))
def test_a_sweep_round_repairs_what_a_full_reconcile_repairs(services, drift, slice_size):
    from test_plan import simulate as _  # noqa: F401 - same simulated kernel
    spec = NodeSpec(services=services, director_addresses=(LocalAddress("192.168.0.30", device="lvs0"),))
    worlds = []
    for _w in range(2):
        k = foreign_kernel()
        _, own = reconcile(spec, k, Ownership(), UPLINK)
        # Drift: by hand, in both worlds alike.
        for what, i in drift:
            ours = sorted(own.services)
            if what == "del_service" and ours:
                k.services.pop(ours[i % len(ours)], None)
            elif what in ("del_dest", "weight") and ours:
                key = ours[i % len(ours)]
                s = k.services.get(key)
                if s is not None and s.dests:
                    d0 = s.dests[0]
                    rest = s.dests[1:] if what == "del_dest" else (replace(d0, weight=d0.weight + 5),) + s.dests[1:]
                    k.services[key] = replace(s, dests=rest)
            elif what == "address":
                k.addresses = {a for a in k.addresses if a[1] != "192.168.0.30" or a[0] != "lvs0"}
            elif what == "sysctl":
                for name in list(k.sysctls)[:1]:
                    k.sysctls[name] = "7"
            elif what == "stray":  # a service of ours the spec no longer has (a crash mid-change)
                stray = Service(address="192.168.0.30", port=9000 + i, scheduler="rr")
                k.services[stray.key] = stray
                own.services.add(stray.key)
                own.dests[stray.key] = set()
        worlds.append((k, own))
    (full_k, full_own), (sw_k, sw_own) = worlds
    _, full_own = reconcile(spec, full_k, full_own, UPLINK)
    sw_own = sweep_round(spec, sw_k, sw_own, slice_size)
    assert sw_k == full_k
    assert sw_own == full_own


@pytest.mark.parametrize("order", ["as in the spec", "newest first, as the kernel lists them"])
def test_plan_services_reads_an_unchanged_service_in_either_order_and_a_change_in_any(order):
    """The kernel lists a service's dests newest first: the same dests in the
    spec's order or reversed are unchanged (no op), while a weight changed,
    a dest missing or a stranger among them is planned in both orders."""
    svc = nat_service(80)
    flip = (lambda ds: ds) if order == "as in the spec" else (lambda ds: ds[::-1])
    owned = Ownership(services={svc.key}, dests={svc.key: {d.key for d in svc.dests}})

    def ops(have_dests) -> list:
        return plan_services([svc], {svc.key: replace(svc, dests=flip(tuple(have_dests)))}, owned).ops

    assert ops(svc.dests) == []
    heavier = replace(svc.dests[0], weight=svc.dests[0].weight + 1)
    assert ops((heavier,) + svc.dests[1:]) == [O.SetDest(svc, svc.dests[0])]
    assert ops(svc.dests[1:]) == [O.AddDest(svc, svc.dests[0])]
    stranger = Dest("10.9.9.9", 80)
    owned.dests[svc.key].add(stranger.key)
    assert ops(svc.dests + (stranger,)) == [O.DelDest(svc.key, stranger.key)]
