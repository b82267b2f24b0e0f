"""NAT reply path, planned purely: policy routes on backends, SNAT on directors.

plan/claim/settle over Observed/Ownership, no kernel: what gets added, what is
recorded before applying, what is removed (only our own), what is left alone.
"""
from dataclasses import replace

from lvs_agent import ops as O
from lvs_agent.plan import (NFT_FAMILY, NFT_TABLE, REPLY_RULE_PRIORITY, REPLY_RULE_PRIORITY_ANY,
                            REPLY_TABLE_BASE, claim, plan, reply_routing, settle, snat_table)
from lvs_agent.state import NftTable, Observed, Ownership, RouteKey, RuleKey
from lvs_model.nodespec import effective_sysctls, parse_node_spec

T = REPLY_TABLE_BASE
P = REPLY_RULE_PRIORITY
TKEY = (NFT_FAMILY, NFT_TABLE)


def spec(doc):
    s, errors = parse_node_spec(doc)
    assert not errors, errors
    return s


BACKEND = {"replyRoutes": [
    {"address": "10.0.0.51", "port": 8080, "protocol": "tcp", "via": ["10.0.0.30"]},
    {"address": "10.0.0.51", "port": 53, "protocol": "udp", "via": ["10.0.0.30"]},
    {"address": "10.0.0.52", "port": 0, "protocol": "", "via": ["10.0.0.31", "10.0.0.30"]},
    {"address": "fd00:1::51", "port": 80, "protocol": "tcp", "via": ["fd00:1::30"]},
]}


def director(snat=True, dests=("10.0.0.51", "10.0.0.52"), **extra):
    return {"services": [{"address": "192.168.0.30", "port": 80, "snat": snat, "scheduler": "rr",
                          "dests": [{"address": d, "port": 8080} for d in dests], **extra}]}


def ops_of(p, *types):
    return [op for op in p.ops if isinstance(op, types)]


def converge(desired, obs, owned):
    """Plan, claim, 'apply' every op to obs (as the kernel would), settle."""
    p = plan(desired, obs, owned)
    owned = claim(owned, p, obs, desired)
    for op in p.ops:
        match op:
            case O.AddRule(r):
                obs.rules.add(r)
            case O.DelRule(r):
                obs.rules.discard(r)
            case O.AddRoute(r):
                obs.routes.add(r)
            case O.DelRoute(r):
                obs.routes.discard(r)
            case O.ReplaceNftTable(f, n, _, _):
                obs.nft_tables[(f, n)] = snat_table(desired)[1]
            case O.DelNftTable(f, n):
                obs.nft_tables.pop((f, n), None)
            case O.SetSysctl(n, v, _):
                obs.sysctls[n] = v
            case O.AddService(s):
                obs.services[s.key] = s
            case O.DelService(k):
                obs.services.pop(k, None)
    return p, settle(owned, [(op, None) for op in p.ops])


# ---------------------------------------------------------------- policy routes

def test_reply_routing_tables_rules_routes():
    rules, routes = reply_routing(spec(BACKEND))
    # One table per distinct director set, sorted; one default route per director.
    assert routes == {
        RouteKey("ipv4", T, "10.0.0.30", 1),
        RouteKey("ipv4", T + 1, "10.0.0.31", 1), RouteKey("ipv4", T + 1, "10.0.0.30", 2),
        RouteKey("ipv6", T + 2, "fd00:1::30", 1),
    }
    assert rules == {
        RuleKey("ipv4", P, "10.0.0.51", "tcp", 8080, T),
        RuleKey("ipv4", P, "10.0.0.51", "udp", 53, T),
        RuleKey("ipv4", REPLY_RULE_PRIORITY_ANY, "10.0.0.52", "", 0, T + 1),
        RuleKey("ipv6", P, "fd00:1::51", "tcp", 80, T + 2),
    }


def test_backend_adds_routes_before_rules_and_claims_them_first():
    desired = spec(BACKEND)
    obs, owned = Observed(), Ownership()
    p = plan(desired, obs, owned)
    kinds = [type(op).__name__ for op in p.ops]
    assert kinds == ["AddRoute"] * 4 + ["AddRule"] * 4
    claimed = claim(owned, p, obs, desired)
    rules, routes = reply_routing(desired)
    assert claimed.rules == rules and claimed.routes == routes
    # Nothing IPVS, no nft, no sysctl for a pure backend.
    assert not ops_of(p, O.ReplaceNftTable, O.SetSysctl, O.AddService)


def test_backend_converges_and_removes_only_its_own():
    desired = spec(BACKEND)
    foreign_rule = RuleKey("ipv4", 100, "10.0.0.51", "", 0, 100)
    foreign_in_range = RuleKey("ipv4", P, "10.9.9.9", "tcp", 1, T)  # same priority, not ours
    foreign_route = RouteKey("ipv4", T + 7, "10.0.0.99", 1)
    obs = Observed(rules={foreign_rule, foreign_in_range}, routes={foreign_route})
    p, owned = converge(desired, obs, Ownership())
    assert plan(desired, obs, owned).ops == []
    assert foreign_rule not in owned.rules and foreign_in_range not in owned.rules
    # Spec gone: our rules first, then our routes; foreign ones untouched.
    p, owned = converge(spec({}), obs, owned)
    kinds = [type(op).__name__ for op in p.ops]
    assert kinds == ["DelRule"] * 4 + ["DelRoute"] * 4
    assert obs.rules == {foreign_rule, foreign_in_range} and obs.routes == {foreign_route}
    assert owned.rules == set() and owned.routes == set()


def test_backend_present_foreign_identical_rule_is_not_claimed_nor_deleted():
    desired = spec({"replyRoutes": BACKEND["replyRoutes"][:1]})
    rules, routes = reply_routing(desired)
    obs = Observed(rules=set(rules))  # someone made exactly our rule by hand
    p, owned = converge(desired, obs, Ownership())
    assert ops_of(p, O.AddRule) == [] and owned.rules == set()
    p, owned = converge(spec({}), obs, owned)
    assert ops_of(p, O.DelRule) == [] and obs.rules == rules


def test_backend_via_change_moves_rules():
    one = spec({"replyRoutes": [{"address": "10.0.0.51", "port": 80, "via": ["10.0.0.30"]}]})
    two = spec({"replyRoutes": [{"address": "10.0.0.51", "port": 80, "via": ["10.0.0.29"]}]})
    obs = Observed()
    _, owned = converge(one, obs, Ownership())
    p, owned = converge(two, obs, owned)
    assert ops_of(p, O.AddRoute) == [O.AddRoute(RouteKey("ipv4", T, "10.0.0.29", 1))]
    assert ops_of(p, O.DelRoute) == [O.DelRoute(RouteKey("ipv4", T, "10.0.0.30", 1))]
    assert ops_of(p, O.AddRule, O.DelRule) == []  # same rule, same table
    assert owned.routes == {RouteKey("ipv4", T, "10.0.0.29", 1)}


def test_backend_failed_add_is_not_owned_lost_ack_is():
    desired = spec({"replyRoutes": BACKEND["replyRoutes"][:1]})
    obs, owned = Observed(), Ownership()
    p = plan(desired, obs, owned)
    claimed = claim(owned, p, obs, desired)
    results = [(op, "EEXIST: File exists" if isinstance(op, O.AddRoute) else "EIO: lost")
               for op in p.ops]
    settled = settle(claimed, results)
    assert settled.routes == set()
    assert settled.rules == claimed.rules  # outcome unknown: stays claimed


def test_ownership_json_round_trip():
    desired = spec(BACKEND)
    _, owned = converge(desired, Observed(), Ownership())
    owned.nft_tables.add(TKEY)
    assert Ownership.from_json(owned.to_json()) == owned
    assert Ownership.from_json({"version": 1}) == Ownership()  # records from before reply paths


# ---------------------------------------------------------------- SNAT

def test_snat_table_text_and_shape():
    body, shape = snat_table(spec(director()))
    assert body.startswith("table inet kube-lvs {\n\tchain postrouting {\n"
                           "\t\ttype nat hook postrouting priority srcnat; policy accept;\n")
    assert ("meta l4proto tcp ct direction original ct original ip daddr 192.168.0.30 "
            "ct original proto-dst 80 ip daddr . tcp dport { 10.0.0.51 . 8080, 10.0.0.52 . 8080 } "
            "masquerade comment") in body
    assert shape.chains == (("postrouting", "nat", "postrouting", 100),)
    assert len(shape.rules) == 1 and shape.rules[0][1].endswith(" tcp:192.168.0.30:80")
    # Any change of the dests changes the comment: drift is seen by comparing comments.
    _, shape2 = snat_table(spec(director(dests=("10.0.0.51",))))
    assert shape2 != shape


def test_snat_only_nat_dests_fwmark_ipv6_and_none():
    assert snat_table(spec(director(snat=False))) is None
    assert snat_table(spec({"services": []})) is None
    dr_only = {"services": [{"address": "192.168.0.30", "port": 80, "snat": True,
                             "dests": [{"address": "192.168.0.10", "method": "dr"}]}]}
    assert snat_table(spec(dr_only)) is None
    mixed = {"services": [
        {"fwmark": 7, "snat": True, "dests": [{"address": "10.0.0.51"}, {"address": "10.0.0.60", "method": "tun"}]},
        {"address": "fd00::30", "port": 443, "snat": True, "dests": [{"address": "fd00:1::51"}]},
    ]}
    body, shape = snat_table(spec(mixed))
    assert "meta mark 0x7 ct direction original ip daddr { 10.0.0.51 } masquerade" in body
    assert "10.0.0.60" not in body
    assert ("ct original ip6 daddr fd00::30 ct original proto-dst 443 "
            "ip6 daddr . tcp dport { fd00:1::51 . 443 } masquerade") in body
    assert len(shape.rules) == 2


def test_snat_sets_vs_conntrack():
    assert effective_sysctls(spec(director()), "")["net.ipv4.vs.conntrack"] == "1"
    assert "net.ipv4.vs.conntrack" not in effective_sysctls(spec(director(snat=False)), "")


def test_snat_create_before_services_converge_then_remove():
    desired = spec(director())
    obs = Observed()
    p, owned = converge(desired, obs, Ownership())
    kinds = [type(op).__name__ for op in p.ops]
    assert kinds.index("ReplaceNftTable") < kinds.index("AddService")
    assert kinds.index("SetSysctl") < kinds.index("AddService")
    (rep,) = ops_of(p, O.ReplaceNftTable)
    assert rep.create and owned.nft_tables == {TKEY}
    assert plan(desired, obs, owned).ops == []
    # A dest goes: the table is replaced (not created).
    smaller = spec(director(dests=("10.0.0.51",)))
    p, owned = converge(smaller, obs, owned)
    (rep,) = ops_of(p, O.ReplaceNftTable)
    assert not rep.create and "10.0.0.52" not in rep.ruleset
    # Drift: someone deleted a rule of ours -> replaced again.
    obs.nft_tables[TKEY] = replace(obs.nft_tables[TKEY], rules=())
    assert ops_of(plan(smaller, obs, owned), O.ReplaceNftTable)
    converge(smaller, obs, owned)
    # snat off: the table goes after the services are handled; conntrack restored.
    p, owned = converge(spec(director(snat=False)), obs, owned)
    assert ops_of(p, O.DelNftTable) == [O.DelNftTable(*TKEY)]
    assert TKEY not in obs.nft_tables and owned.nft_tables == set()


def test_snat_foreign_table_is_a_problem_not_touched():
    desired = spec(director())
    obs = Observed(nft_tables={TKEY: NftTable((("x", "filter", "input", 0),), ())})
    p = plan(desired, obs, Ownership())
    assert not ops_of(p, O.ReplaceNftTable, O.DelNftTable)
    (k,) = p.problems
    assert "not created by kube-lvs" in p.problems[k]
    assert ops_of(p, O.AddService)  # the IPVS service itself is still programmed
    # Not wanted and not ours: never deleted.
    assert not ops_of(plan(spec({}), obs, Ownership()), O.DelNftTable)


def test_snat_failed_create_is_dropped_failed_replace_kept():
    desired = spec(director())
    obs, owned = Observed(), Ownership()
    p = plan(desired, obs, owned)
    claimed = claim(owned, p, obs, desired)
    assert TKEY in claimed.nft_tables
    fail = [(op, "EINVAL: nft: syntax" if isinstance(op, O.ReplaceNftTable) else None) for op in p.ops]
    assert TKEY not in settle(claimed, fail).nft_tables
    body, _ = snat_table(desired)
    replace_op = O.ReplaceNftTable(NFT_FAMILY, NFT_TABLE, body, create=False)
    assert TKEY in settle(claimed, [(replace_op, "EINVAL: nft: x")]).nft_tables


def test_records_of_vanished_objects_are_forgotten():
    owned = Ownership(rules={RuleKey("ipv4", P, "10.0.0.51", "tcp", 80, T)},
                      routes={RouteKey("ipv4", T, "10.0.0.30", 1)}, nft_tables={TKEY})
    p = plan(spec({}), Observed(), owned)
    assert p.ops == []
    assert claim(owned, p, Observed(), spec({})) == Ownership()


def test_describe_new_ops():
    r = RuleKey("ipv4", P, "10.0.0.51", "tcp", 8080, T)
    assert O.describe(O.AddRule(r)) == f"add ipv4 rule pref {P} from 10.0.0.51 ipproto tcp sport 8080 lookup {T}"
    assert "route default via 10.0.0.30" in O.describe(O.DelRoute(RouteKey("ipv4", T, "10.0.0.30", 1)))
    body, _ = snat_table(spec(director()))
    assert O.describe(O.ReplaceNftTable("inet", "kube-lvs", body, True)) == "create nft table inet kube-lvs (1 rules)"
