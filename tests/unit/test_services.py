"""VirtualServices backed by a Service (operator/lvs_operator/services.py):
EndpointSlices in, derived RealServer bodies out, and what the compiler makes
of them. Each test fails on the code before issue 19 (no spec.backend: the
module did not exist, and the model rejected nothing about backends)."""
from __future__ import annotations

import json

from lvs_model import channel as C
from lvs_operator.compiler import compile_cluster
from lvs_operator.crmodel import VirtualService
from lvs_operator.owned import plan_owned
from lvs_operator.services import MAX_ENDPOINTS, backed_by, derive_realservers, endpoint_weight, is_derived

NS = "web"
SELECT = {"matchLabels": {"director": "true"}}


def vs(name="http", uid="vs-uid", **spec):
    spec = {"address": "192.168.0.30", "port": 80, "protocol": "tcp", "directorSelector": SELECT,
            "backend": {"service": "app", "portName": "http"}, **spec}
    return {"metadata": {"namespace": NS, "name": name, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z",
                         "resourceVersion": "1"}, "spec": spec}


def service(ports=({"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},)):
    return {"metadata": {"namespace": NS, "name": "app"}, "spec": {"ports": list(ports)}}


def ep(address, ready=None, serving=None, terminating=None, node=None, pod=None):
    cond = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    out = {"addresses": [address], "conditions": cond}
    if node:
        out["nodeName"] = node
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": NS}
    return out


def eslice(name, endpoints, ports=({"name": "http", "port": 8080, "protocol": "TCP"},), family="IPv4",
           service_name="app"):
    return {"metadata": {"namespace": NS, "name": name, "labels": {C.LABEL_SERVICE_NAME: service_name}},
            "addressType": family, "endpoints": list(endpoints), "ports": list(ports)}


def specs(derived):
    return {n: b["spec"] for (_, n), b in derived.realservers.items()}


def test_endpoint_conditions_map_to_weights():
    """ready -> the backend weight; terminating and serving -> 0 (drain);
    not ready, or terminating and not serving -> no real server. Unset
    conditions as the API documents them."""
    assert endpoint_weight(ep("10.0.0.1"), 3) == 3  # nothing set: ready
    assert endpoint_weight(ep("10.0.0.1", ready=True), 3) == 3
    assert endpoint_weight(ep("10.0.0.1", ready=False, serving=True, terminating=True), 3) == 0
    assert endpoint_weight(ep("10.0.0.1", ready=False, serving=False, terminating=True), 3) is None
    assert endpoint_weight(ep("10.0.0.1", ready=False), 3) is None
    assert endpoint_weight(ep("10.0.0.1", ready=False, terminating=False), 3) is None


def test_slices_become_owned_realservers_with_target_ports():
    d = derive_realservers(
        [vs()], [service()],
        [eslice("app-a", [ep("10.0.0.52", ready=True, node="n2", pod="app-2"), ep("10.0.0.51", ready=True)]),
         eslice("app-b", [ep("10.0.0.53", ready=False, serving=True, terminating=True),
                          ep("10.0.0.54", ready=False)]),
         eslice("other", [ep("10.0.0.99")], service_name="other"),
         eslice("v6", [ep("fd00::1")], family="IPv6")], [])
    assert specs(d) == {
        "http-10-0-0-51-8080": {"virtualService": "http", "address": "10.0.0.51", "port": 8080, "weight": 1},
        "http-10-0-0-52-8080": {"virtualService": "http", "address": "10.0.0.52", "port": 8080, "weight": 1},
        "http-10-0-0-53-8080": {"virtualService": "http", "address": "10.0.0.53", "port": 8080, "weight": 0},
    }
    body = d.realservers[(NS, "http-10-0-0-52-8080")]
    meta = body["metadata"]
    assert is_derived(body)
    assert meta["labels"][C.LABEL_DERIVED_FROM] == "service"
    assert meta["ownerReferences"] == [{"apiVersion": C.API_VERSION, "kind": "VirtualService", "name": "http",
                                        "uid": "vs-uid", "controller": True, "blockOwnerDeletion": False}]
    assert meta["annotations"] == {C.ANNOTATION_SERVICE: "app", f"{C.GROUP}/target": "Pod/app-2"}
    assert "nodeName" not in body["spec"]  # only policy-route needs the node's agent


def test_port_by_number_weight_and_policy_route_node():
    svc = service([{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "admin", "port": 81, "protocol": "TCP"}])
    slices = [eslice("a", [ep("10.0.0.51", node="n1")], ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
                                                             {"name": "admin", "port": 9090, "protocol": "TCP"}])]
    d = derive_realservers([vs(backend={"service": "app", "port": 81, "weight": 7}, natReturn="policy-route")],
                           [svc], slices, [])
    assert specs(d) == {"http-10-0-0-51-9090": {"virtualService": "http", "address": "10.0.0.51", "port": 9090,
                                                "weight": 7, "nodeName": "n1"}}
    # two ports and none named: which one is unknowable, so nothing
    assert not derive_realservers([vs(backend={"service": "app"})], [svc], slices, []).realservers
    # one port: taken without naming it
    assert len(derive_realservers([vs(backend={"service": "app"})], [service()],
                                  [eslice("a", [ep("10.0.0.51")])], []).realservers) == 1


def test_hand_written_realserver_wins_over_the_endpoint():
    """A user's RealServer with the endpoint's address:port keeps it: no
    derived twin (the compiler would otherwise call one of them Duplicate)."""
    mine = {"metadata": {"namespace": NS, "name": "pinned"},
            "spec": {"virtualService": "http", "address": "10.0.0.51", "port": 8080, "weight": 9}}
    d = derive_realservers([vs()], [service()], [eslice("a", [ep("10.0.0.51"), ep("10.0.0.52")])], [mine])
    assert sorted(specs(d)) == ["http-10-0-0-52-8080"]
    # and the derived write plan never touches the user's object
    w = plan_owned("realservers", d.realservers, [mine], is_derived)
    assert [b["metadata"]["name"] for b in w.create] == ["http-10-0-0-52-8080"] and not w.delete and not w.replace


def test_plan_owned_updates_weight_and_deletes_gone_endpoints_only():
    d1 = derive_realservers([vs()], [service()], [eslice("a", [ep("10.0.0.51"), ep("10.0.0.52")])], [])
    current = [dict(b, metadata={**b["metadata"], "uid": f"u{i}", "resourceVersion": "5"})
               for i, b in enumerate(d1.realservers.values())]
    d2 = derive_realservers([vs()], [service()], [eslice("a", [ep("10.0.0.52", ready=False, serving=True,
                                                                 terminating=True)])], current)
    w = plan_owned("realservers", d2.realservers, current, is_derived)
    assert not w.create
    assert [(b["metadata"]["name"], b["spec"]["weight"], b["metadata"]["resourceVersion"]) for b in w.replace] == \
        [("http-10-0-0-52-8080", 0, "5")]
    assert w.delete == [(NS, "http-10-0-0-51-8080", "u0")]
    assert not plan_owned("realservers", d1.realservers, current, is_derived)  # unchanged: no write


def test_compiler_makes_dests_of_derived_realservers():
    d = derive_realservers([vs()], [service()], [eslice("a", [ep("10.0.0.51"), ep(
        "10.0.0.52", ready=False, serving=True, terminating=True)])], [])
    pool = {"metadata": {"name": "p"}, "spec": {"addresses": ["192.168.0.0/24"], "namespaces": [NS]}}
    node = {"metadata": {"name": "d1", "labels": {"director": "true"}}, "status": {"addresses": []}}
    r = compile_cluster([vs()], list(d.realservers.values()), [pool], [node], [])
    dests = r.nodestates[f"d1-{NS}-http"]["spec"]["services"][0]["dests"]
    assert [(x["address"], x["port"], x["weight"]) for x in dests] == [("10.0.0.51", 8080, 1), ("10.0.0.52", 8080, 0)]


def test_backend_needs_nat_and_a_service():
    for spec, path in (({"method": "dr"}, "spec.backend"), ({"backend": {"port": 80}}, "spec.backend.service"),
                       ({"backend": {"service": "a", "port": 80, "portName": "x"}}, "spec.backend"),
                       ({"backend": {"service": "a", "weight": 70000}}, "spec.backend.weight")):
        errors = []
        assert VirtualService.of(vs(**spec)).to_service(errors) is None
        assert path in [e.path for e in errors], (spec, errors)
    assert not derive_realservers([vs(method="dr")], [service()], [eslice("a", [ep("10.0.0.51")])], []).realservers


def test_backed_by_finds_the_virtualservices_of_a_service():
    assert backed_by([vs("a"), vs("b", backend={"service": "other"})], (NS, "app")) == {(NS, "a")}
    assert backed_by([vs("a")], ("elsewhere", "app")) == set()


def test_a_service_past_the_cap_takes_the_lowest_addresses_and_says_which_limit(monkeypatch):
    """Past MAX_ENDPOINTS (the Pods of the largest supported cluster), a
    Warning event names that limit, once, and the lowest addresses are taken.
    Before: the cap was 5,000 and named etcd's object size."""
    assert MAX_ENDPOINTS == 150_000
    monkeypatch.setattr("lvs_operator.services.MAX_ENDPOINTS", 40)
    eps = [ep(f"10.0.{i // 256}.{i % 256}") for i in range(50)]
    d = derive_realservers([vs()], [service()], [eslice("a", eps)], [])
    assert sorted(b["spec"]["address"] for b in d.realservers.values()) == sorted(f"10.0.0.{i}" for i in range(40))
    assert [e.reason for e in d.events] == ["TooManyEndpoints"] and "largest cluster" in d.events[0].message


def test_ten_thousand_endpoints_are_taken_and_each_nodestate_stays_under_etcd_limit():
    """10,010 endpoints (over the old 5,000 cap) all become real servers; the
    director's NodeStates are shards, each with its spec plus the agent's
    per-dest status under etcd's 1.5 MiB request limit (one object with every
    dest was about 2 MB at this size)."""
    n = 10_010
    eps = [ep(f"10.{1 + i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(n)]
    d = derive_realservers([vs()], [service()], [eslice("a", eps)], [])
    assert len(d.realservers) == n and not d.events
    pool = {"metadata": {"name": "p"}, "spec": {"addresses": ["192.168.0.0/24"], "namespaces": [NS]}}
    node = {"metadata": {"name": "d1", "labels": {"director": "true"}}, "status": {"addresses": []}}
    bodies = compile_cluster([vs()], list(d.realservers.values()), [pool], [node], []).nodestates
    assert len(bodies) > 1 and sum(len(b["spec"]["services"][0]["dests"]) for b in bodies.values()) == n
    for body in bodies.values():
        status = {"dests": [{"service": "tcp:192.168.0.30:80", "address": x["address"], "port": 8080,
                             "health": "Healthy", "weight": 1, "activeConns": 12345, "inactiveConns": 12345}
                            for x in body["spec"]["services"][0]["dests"]]}
        size = len(json.dumps({**body, "status": status}, separators=(",", ":")))
        assert size < 256 * 1024, size  # a small write: a few hundred dests
