"""A large VirtualService's NodeStates in shards (operator/lvs_operator/shards.py,
the compiler's step 5) and the agent's merge of them (agent/lvs_agent/nodestate.py).

Before sharding, one NodeState per (director, VirtualService) carried every
dest: a change to one endpoint of a 10k-endpoint service rewrote the whole
object (about 2 MB with its status, over etcd's limit), and two objects
declaring one service were a conflict to the agent. Each test below fails on
that code (said per test).
"""
from __future__ import annotations

import copy

from lvs_agent.nodestate import StatusInputs, build_status, merge, owners_of, stale_statuses
from lvs_model import channel as C
from lvs_operator import shards as S
from lvs_operator.compiler import compile_cluster

NS = "web"
POOL = {"metadata": {"name": "p"}, "spec": {"addresses": ["192.168.0.0/24"], "namespaces": [NS]}}
NODES = [{"metadata": {"name": n, "labels": {"director": "true"}}, "status": {"addresses": []}}
         for n in ("d1", "d2")]


def vs(name="big", address="192.168.0.30", **spec):
    return {"metadata": {"namespace": NS, "name": name, "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"address": address, "port": 80, "protocol": "tcp", "scheduler": "rr", "method": "nat",
                     "directorSelector": {"matchLabels": {"director": "true"}}, **spec}}


def address(i: int) -> str:
    return f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"


def rs(i: int, weight: int = 1, vs_name: str = "big") -> dict:
    return {"metadata": {"namespace": NS, "name": f"{vs_name}-{i}", "uid": f"rs-{vs_name}-{i}", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"virtualService": vs_name, "address": address(i), "port": 8080, "weight": weight}}


def compiled(n: int, weights: dict[int, int] | None = None, nodestates=(), vss=None) -> dict:
    weights = weights or {}
    return compile_cluster(vss or [vs()], [rs(i, weights.get(i, 1)) for i in range(n)], [POOL], NODES, [],
                           nodestates).nodestates


def as_agent_objects(bodies: dict, node: str) -> dict:
    """The NodeStates of ``node`` as the agent's watch holds them."""
    return {name: {**copy.deepcopy(b), "metadata": {**b["metadata"], "generation": 1}}
            for name, b in bodies.items() if b["spec"].get("node") == node}


def test_small_services_keep_one_nodestate_exactly_as_before():
    """Up to UNSHARDED_MAX dests: one NodeState per director with the plain
    name and no shard annotation, so an upgrade rewrites nothing. Holds on
    the code before too; it guards the threshold."""
    bodies = compiled(S.UNSHARDED_MAX)
    assert sorted(bodies) == [f"d1-{NS}-big", f"d2-{NS}-big"]
    assert bodies[f"d1-{NS}-big"]["metadata"]["annotations"] == {C.ANNOTATION_VIRTUALSERVICE: f"{NS}/big"}
    assert len(bodies[f"d1-{NS}-big"]["spec"]["services"][0]["dests"]) == S.UNSHARDED_MAX


def test_a_big_service_is_split_and_one_endpoint_change_rewrites_one_shard_per_director():
    """5,000 dests: k shards per director, stable names; turning one dest to
    weight 0 changes exactly one NodeState per director (before: the one
    NodeState with all 5,000 dests, rewritten whole)."""
    n = 5000
    before = compiled(n)
    k = S.shard_count(n)
    assert k == 32 and len(before) == 2 * k
    assert f"d1-{NS}-big.0-of-32" in before and before[f"d1-{NS}-big.0-of-32"]["metadata"]["annotations"][
        S.ANNOTATION_SHARD] == "0/32"
    assert compiled(n) == before  # deterministic
    after = compiled(n, {1234: 0}, nodestates=list(before.values()))
    assert after.keys() == before.keys()
    changed = sorted(name for name in before if before[name] != after[name])
    assert len(changed) == 2 and {after[c]["spec"]["node"] for c in changed} == {"d1", "d2"}
    for c in changed:
        assert {d["address"]: d["weight"] for d in after[c]["spec"]["services"][0]["dests"]}[address(1234)] == 0
    assert changed[0].rpartition(".")[2] == changed[1].rpartition(".")[2]  # the same bucket on both directors


def test_shards_merge_back_to_the_unsharded_service_on_the_agent():
    """The agent merges a director's shards into one service equal to the
    unsharded one (same attributes, same dests), with no error. Before: every
    shard after the first was refused ("already programmed by")."""
    n = 3000
    bodies = compiled(n)
    objs = as_agent_objects(bodies, "d1")
    assert len(objs) == S.shard_count(n) == 16
    m = merge(objs, "d1")
    assert m.errors == {}
    (svc,) = m.spec.services
    flat = merge({"one": {"metadata": {"name": "one"}, "spec": {
        **objs[min(objs)]["spec"],
        "services": [{**objs[min(objs)]["spec"]["services"][0],
                      "dests": [d for o in objs.values() for d in o["spec"]["services"][0]["dests"]]}]}}}, "d1")
    (want,) = flat.spec.services
    assert sorted(svc.dests, key=lambda d: d.key) == sorted(want.dests, key=lambda d: d.key) and len(svc.dests) == n
    assert svc == type(svc)(**{**want.__dict__, "dests": svc.dests})
    assert owners_of(m.owner, svc.key) == tuple(sorted(objs)) and m.owner[svc.key] == min(objs)


def test_a_changed_shard_takes_the_fast_path_and_equals_a_full_merge():
    """One shard rewritten: the agent swaps the service rebuilt from its
    shards into the last merge (no full merge of every object), and the
    result is what a full merge gives. Before: a non-first shard could not
    be merged at all."""
    n = 3000
    objs = as_agent_objects(compiled(n), "d1")
    assert len(objs) == 16
    first = merge(objs, "d1")
    after = as_agent_objects(compiled(n, {77: 0}), "d1")
    (name,) = [x for x in objs if objs[x]["spec"] != after[x]["spec"]]
    objs2 = {**objs, name: after[name]}
    fast = merge(objs2, "d1", first, {name})
    full = merge(objs2, "d1")
    assert fast.owner is first.owner  # the fast path: no new owner map
    assert fast.spec == full.spec and fast.errors == full.errors == {}
    assert {d.address: d.weight for d in fast.spec.services[0].dests}[address(77)] == 0


def test_shards_whose_attributes_disagree_are_an_error_on_the_status_not_a_crash():
    """A shard with another scheduler (as while the operator rewrites the
    shards one by one): the first shard's attributes hold, every shard's dests
    stay programmed, and the disagreeing shard's status says what differs.
    Before: the second shard was refused and its dests dropped."""
    objs = as_agent_objects(compiled(3000), "d1")
    names = sorted(objs)
    odd = names[3]
    objs[odd]["spec"]["services"][0]["scheduler"] = "wlc"
    m = merge(objs, "d1")
    (svc,) = m.spec.services
    assert svc.scheduler == "rr" and len(svc.dests) == 3000
    assert list(m.errors) == [odd] and "scheduler" in str(m.errors[odd][0]) and names[0] in str(m.errors[odd][0])
    st = build_status(odd, objs[odd], m, m.spec, {}, {}, set(), {}, "T")
    assert st["conditions"][0]["status"] == "False" and "scheduler" in st["conditions"][0]["message"]
    ok = build_status(names[1], objs[names[1]], m, m.spec, {}, {}, set(), {}, "T")
    assert ok["conditions"][0]["status"] == "True"


def test_two_objects_of_different_virtualservices_declaring_one_service_still_conflict():
    """Only objects naming the same VirtualService are shards: another one
    declaring the same service is refused as before (the shards of the
    first are not: before sharding there was one object)."""
    objs = as_agent_objects(compiled(3000), "d1")
    assert len(objs) == 16
    name = sorted(objs)[0]
    objs["zz-other"] = {**copy.deepcopy(objs[name]), "metadata": {
        "name": "zz-other", "generation": 1, "annotations": {C.ANNOTATION_VIRTUALSERVICE: f"{NS}/other"}}}
    m = merge(objs, "d1")
    assert list(m.errors) == ["zz-other"] and "already programmed by" in str(m.errors["zz-other"][0])


def test_each_shard_reports_its_dests_and_the_realservers_get_them():
    """Each shard's status lists its own dests; the operator folds every
    shard's report into the VirtualService (directors ready) and into each
    RealServer's health, whatever shard its dest is in. Before: the operator
    read one NodeState per director."""
    n = 3000
    bodies = compiled(n)
    current = []
    for node in ("d1", "d2"):
        objs = as_agent_objects(bodies, node)
        m = merge(objs, node)
        key = m.spec.services[0].key
        verdicts = {}
        for name, o in objs.items():
            st = build_status(name, o, m, m.spec, {}, verdicts, {key}, {}, "T")
            assert {d["address"] for d in st["dests"]} == {d["address"] for d in o["spec"]["services"][0]["dests"]}
            current.append({**o, "status": st})
    r = compile_cluster([vs()], [rs(i) for i in range(n)], [POOL], NODES, [], current)
    assert r.vs_status[(NS, "big")]["directors"] == "2/2"
    for i in (0, 1234, n - 1):
        status = r.rs_status[(NS, f"big-{i}")]
        assert [p["node"] for p in status["directors"]] == ["d1", "d2"], status
    # one shard not reported yet: that director is not ready
    current[5] = {k: v for k, v in current[5].items() if k != "status"}
    r = compile_cluster([vs()], [rs(i) for i in range(n)], [POOL], NODES, [], current)
    assert r.vs_status[(NS, "big")]["directors"] == "1/2"


def test_the_shard_count_holds_through_a_surge_and_a_new_count_overlaps_the_old():
    """k grows when the service outgrows it and holds while a rolling
    update's surge shrinks it back; at a new k the new shards carry new names
    and the agent merges old and new (both present until the old are deleted)
    without an error. Before: no shards."""
    assert S.shard_count(1000) == 1 and S.shard_count(1001) == 8
    assert S.shard_count(2100, 8) == 16 and S.shard_count(1900, 16) == 16 and S.shard_count(400, 16) == 1
    grown = compiled(2100, nodestates=list(compiled(1900).values()))
    assert len(grown) == 2 * 16
    kept = compiled(1900, nodestates=list(grown.values()))
    assert kept.keys() == grown.keys()  # the surge ends: still 16
    old, new = as_agent_objects(compiled(1900), "d1"), as_agent_objects(kept, "d1")
    assert not old.keys() & new.keys()
    m = merge({**old, **new}, "d1")
    assert m.errors == {} and len(m.spec.services[0].dests) == 1900


def test_a_dest_always_lands_in_the_same_bucket():
    """The bucket is a hash of address and port that every process computes
    alike (never Python's salted hash), and doubling k splits a bucket in two."""
    assert [S.bucket("10.1.0.1", 8080, 16), S.bucket("10.1.0.1", 8080, 16)] == [S.bucket("10.1.0.1", 8080, 16)] * 2
    assert S.bucket("10.1.0.1", 8080, 32) % 16 == S.bucket("10.1.0.1", 8080, 16)
    assert S._digest("10.1.0.1", 8080) == int.from_bytes(
        __import__("hashlib").blake2b(b"10.1.0.1/8080", digest_size=4).digest(), "big")


def test_a_health_change_in_a_sharded_service_marks_its_shards_for_a_status():
    """A dest's health flips: every shard of its service is marked (each is
    rebuilt and compared; only the one listing the dest differs). Before: only
    the first shard was, and the dest's shard kept the old health."""
    objs = as_agent_objects(compiled(3000), "d1")
    assert len(objs) == 16
    m = merge(objs, "d1")
    key = m.spec.services[0].key
    dest = m.spec.services[0].dests[0].key
    prev = StatusInputs(m.owner)
    cur = StatusInputs(m.owner, health={(key, dest): "Unhealthy"})
    assert stale_statuses(prev, cur) == set(objs)
