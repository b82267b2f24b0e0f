"""LoadBalancer Services of class lvs.kube-lvs.io/lvs (operator/lvs_operator/
loadbalancer.py): VIP allocation, derived VirtualServices, Service status,
release. Each test fails on the code before issue 19 (no such module; no
Service of any class got a VIP)."""
from __future__ import annotations

from lvs_model import channel as C
from lvs_operator.loadbalancer import CONDITION, plan_loadbalancers, pool_addresses, status_differs

NOW = "2026-01-01T00:00:00Z"


def svc(name, ns="web", cls=C.LOADBALANCER_CLASS, type_="LoadBalancer", created="2026-01-01T00:00:01Z",
        ports=({"name": "http", "port": 80, "protocol": "TCP"},), annotations=None, status=None):
    spec = {"type": type_, "ports": list(ports)}
    if cls:
        spec["loadBalancerClass"] = cls
    return {"metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", "creationTimestamp": created,
                         "generation": 1, "annotations": annotations or {}}, "spec": spec, "status": status or {}}


def pool(name, addresses, namespaces=("web",), **extra):
    return {"metadata": {"name": name}, "spec": {"addresses": list(addresses), "namespaces": list(namespaces),
                                                 **extra}}


def vs(name, address, ns="web", owner=None):
    m = {"namespace": ns, "name": name}
    if owner:
        m["labels"] = {C.LABEL_DERIVED_FROM: "loadbalancer", C.LABEL_MANAGED_BY: C.MANAGED_BY}
        m["annotations"] = {C.ANNOTATION_SERVICE: owner}
    return {"metadata": m, "spec": {"address": address, "port": 80}}


def cond(plan, ref):
    return next(c for c in plan.service_status[ref]["conditions"] if c["type"] == CONDITION)


def test_first_free_address_in_pool_order_and_one_virtualservice_per_port():
    pools = [pool("b", ["10.9.0.1"]), pool("a", ["192.168.5.0/29"])]  # by name: a first
    hand = vs("hand", "192.168.5.1")  # a hand-made VirtualService uses .1 (.0 is the network address)
    s = svc("app", ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}],
            annotations={C.ANNOTATION_LB_SCHEDULER: "mh"})
    p = plan_loadbalancers([s], [hand], pools, [], NOW)
    assert p.vips == {("web", "app"): "192.168.5.2"}
    assert sorted(p.virtualservices) == [("web", "app-dns"), ("web", "app-http")]
    body = p.virtualservices[("web", "app-dns")]
    assert body["spec"] == {"address": "192.168.5.2", "port": 53, "protocol": "udp", "scheduler": "mh",
                            "method": "nat", "natReturn": "snat",
                            "directorSelector": {"matchLabels": {f"{C.GROUP}/director": "true"}},
                            "backend": {"service": "app", "weight": 1, "portName": "dns"}}
    assert body["metadata"]["ownerReferences"][0]["kind"] == "Service"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-app"
    st = p.service_status[("web", "app")]
    assert st["loadBalancer"] == {"ingress": [{"ip": "192.168.5.2", "ipMode": "Proxy"}]}
    assert cond(p, ("web", "app"))["status"] == "True" and not p.events


def test_vip_is_kept_requested_honoured_and_exhaustion_reported():
    pools = [pool("a", ["192.168.5.10-192.168.5.11"], directorNodeSelector={"matchLabels": {"x": "y"}})]
    have = vs("old-http", "192.168.5.11", owner="old")
    old = svc("old", created="2026-01-01T00:00:05Z")  # younger, but it holds .11 already
    new = svc("new", created="2026-01-01T00:00:01Z")
    p = plan_loadbalancers([old, new], [have], pools, [], NOW)
    assert p.vips == {("web", "old"): "192.168.5.11", ("web", "new"): "192.168.5.10"}
    assert p.virtualservices[("web", "new-http")]["spec"]["directorSelector"] == {"matchLabels": {"x": "y"}}
    third = svc("third", created="2026-01-01T00:00:09Z")
    p = plan_loadbalancers([old, new, third], [have], pools, [], NOW)
    assert cond(p, ("web", "third"))["reason"] == "PoolExhausted"
    assert [(e.kind, e.name, e.reason) for e in p.events] == [("Service", "third", "PoolExhausted")]
    asks = svc("asks", annotations={C.ANNOTATION_LB_ADDRESS: "192.168.5.11"})
    p = plan_loadbalancers([asks], [], pools, [], NOW)
    assert p.vips == {("web", "asks"): "192.168.5.11"}
    p = plan_loadbalancers([old, asks], [have], pools, [], NOW)
    assert cond(p, ("web", "asks"))["reason"] == "AddressInUse"
    outside = svc("out", annotations={C.ANNOTATION_LB_ADDRESS: "10.1.1.1"})
    assert cond(plan_loadbalancers([outside], [], pools, [], NOW), ("web", "out"))["reason"] == "AddressNotAllowed"


def test_as_the_default_load_balancer_a_service_without_a_class_is_ours_another_class_never():
    """--default-loadbalancer: the admin made kube-lvs the cluster's default,
    so a LoadBalancer Service that names no class gets a VIP; one of another
    class and a ClusterIP Service stay alone. Before there was no such option."""
    services = [svc("none", cls=None), svc("metallb", cls="metallb.io/metallb"), svc("cip", cls=None, type_="ClusterIP")]
    p = plan_loadbalancers(services, [], [pool("a", ["192.168.5.0/24"])], [], NOW, default_class=True)
    assert set(p.vips) == {("web", "none")}
    assert not plan_loadbalancers(services, [], [pool("a", ["192.168.5.0/24"])], [], NOW).vips


def test_other_classes_are_left_alone_and_no_pool_says_why_once():
    others = [svc("metallb", cls="metallb.io/metallb"), svc("none", cls=None), svc("cip", cls=None, type_="ClusterIP")]
    p = plan_loadbalancers(others, [], [pool("a", ["192.168.5.0/24"])], [], NOW)
    assert not p.service_status and not p.virtualservices and not p.events
    lonely = svc("app", ns="nopool")
    p = plan_loadbalancers([lonely], [], [pool("a", ["192.168.5.0/24"])], [], NOW)
    assert cond(p, ("nopool", "app"))["reason"] == "NoPool" and not p.virtualservices
    assert [(e.reason, e.namespace) for e in p.events] == [("NoPool", "nopool")]
    assert "VIPPool" in p.events[0].message and "nopool" in p.events[0].message
    again = svc("app", ns="nopool", status=p.service_status[("nopool", "app")])
    p2 = plan_loadbalancers([again], [], [pool("a", ["192.168.5.0/24"])], [], NOW)
    assert not p2.events and not status_differs(again, p2.service_status[("nopool", "app")])


def test_selector_pools_and_release_when_no_longer_ours():
    sel = pool("sel", ["192.168.6.0/30"], namespaces=(), namespaceSelector={"matchLabels": {"lb": "yes"}})
    nss = [{"metadata": {"name": "web", "labels": {"lb": "yes"}}}]
    assert plan_loadbalancers([svc("app")], [], [sel], nss, NOW).vips == {("web", "app"): "192.168.6.1"}
    # type changed to ClusterIP: nothing wanted (the reconciler deletes its VirtualServices),
    # and the status loses our ingress and condition but keeps another's
    mine = {"loadBalancer": {"ingress": [{"ip": "192.168.6.1"}, {"ip": "203.0.113.9"}]},
            "conditions": [{"type": CONDITION, "status": "True"}, {"type": "Other", "status": "True"}]}
    gone = svc("app", cls=None, type_="ClusterIP", status=mine)
    p = plan_loadbalancers([gone], [vs("app-http", "192.168.6.1", owner="app")], [sel], nss, NOW)
    assert not p.virtualservices
    assert p.service_status[("web", "app")] == {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]},
                                                "conditions": [{"type": "Other", "status": "True"}]}


def test_pool_addresses_skip_network_and_broadcast_and_stay_lazy():
    assert list(pool_addresses(pool("a", ["10.0.0.0/30", "10.0.1.5", "10.0.2.1-10.0.2.2"]))) == \
        ["10.0.0.1", "10.0.0.2", "10.0.1.5", "10.0.2.1", "10.0.2.2"]
    it = pool_addresses(pool("v6", ["2001:db8::/64"]))
    assert next(it) == "2001:db8::" and next(it) == "2001:db8::1"


def test_the_examples_validate_and_allocate():
    """examples/service-backed and examples/loadbalancer: the VirtualService
    is valid for the operator's model, and the LoadBalancer Service gets the
    pool's first address and a VirtualService per port."""
    from pathlib import Path

    import yaml

    from lvs_operator.crmodel import VirtualService
    root = Path(__file__).resolve().parents[2] / "examples"

    def docs(name):
        return [d for f in sorted((root / name).glob("*.yaml")) if f.name != "kustomization.yaml"
                for d in yaml.safe_load_all(f.read_text()) if d]
    backed = [d for d in docs("service-backed") if d["kind"] == "VirtualService"]
    errors = []
    assert len(backed) == 1 and VirtualService.of(backed[0]).to_service(errors) is not None, errors
    lb = docs("loadbalancer")
    svc = next(d for d in lb if d["kind"] == "Service")
    svc["metadata"].update(uid="u", creationTimestamp=NOW)
    p = plan_loadbalancers([svc], [], [d for d in lb if d["kind"] == "VIPPool"], [], NOW)
    assert p.vips == {("shop", "api"): "192.168.0.50"}
    assert sorted(n for _, n in p.virtualservices) == ["api-grpc", "api-http"]
    for body in p.virtualservices.values():
        assert VirtualService.of({**body, "metadata": {**body["metadata"], "uid": "x"}}).to_service([]) is not None
