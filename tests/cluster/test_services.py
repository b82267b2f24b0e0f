"""Kubernetes Services as real servers, and LoadBalancer Services (issue 19),
on the real API server and kube-controller-manager, the operator running as
its own ServiceAccount with the RBAC (and admission policy) of deploy/.

- A Service without a selector, its EndpointSlices written by the test:
  ready endpoints become derived RealServers (owned by the VirtualService,
  labelled), a terminating-but-serving one gets weight 0, a removed one goes;
  each change rewrites only the directors' NodeState of that service; a
  hand-written RealServer for an endpoint's address wins; the API server
  refuses the operator any write to a hand-made RealServer; deleting the
  VirtualService takes its derived RealServers (garbage collection).
- A Service with a selector over Pod objects whose status the test sets
  (podIP, Ready; no kubelet here), so kube-controller-manager's own
  EndpointSlice controller writes the slices: ready, not ready, terminating
  (deleted with a grace period: it stays terminating, nobody finishes it).
- type LoadBalancer of class lvs.kube-lvs.io/lvs: a VIP from the pool open to
  its namespace in status.loadBalancer.ingress, a VirtualService per port
  owned by the Service, released when the Service leaves LoadBalancer or is
  deleted; another class is left untouched; a namespace without a pool gets
  a NoPool Event on the Service.

Before issue 19 none of this existed: spec.backend was pruned by the API
server, no RealServer was derived and no Service got an address.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from lvs_model import channel as C

from test_operator import OPNS, ROOT, SA, Operator, ns, wait_for

RUN = "s" + uuid.uuid4().hex[:4]
NSA, NSB = f"lvs-svc-{RUN}", f"lvs-svc-nopool-{RUN}"
DIRECTOR, WORKER = f"lvs-svc-d-{RUN}", f"lvs-svc-w-{RUN}"
DIRECTORS = {"matchLabels": {f"{C.GROUP}/director": "true"}}


def _node(name, ip, director=False):
    labels = {f"{C.GROUP}/director": "true"} if director else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def _service(name, namespace=NSA, selector=None, **spec):
    body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}], **spec}}
    if selector:
        body["spec"]["selector"] = selector
    return body


def _endpoint(ip, ready=True, serving=None, terminating=None):
    cond = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {"addresses": [ip], "conditions": cond}


def _slice(name, service, endpoints, namespace=NSA):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": namespace, "labels": {C.LABEL_SERVICE_NAME: service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}


def _vs(name, address, service, **spec):
    return {"apiVersion": C.API_VERSION, "kind": "VirtualService", "metadata": {"name": name, "namespace": NSA},
            "spec": {"address": address, "port": 80, "protocol": "tcp", "scheduler": "rr",
                     "natReturn": "snat", "directorSelector": DIRECTORS,
                     "backend": {"service": service, "portName": "http"}, **spec}}


class Env:
    def __init__(self, cp):
        from kubernetes import client
        admin = cp.api_client()
        self.cp, self.api, self.core = cp, client.CustomObjectsApi(admin), client.CoreV1Api(admin)

    def realservers(self, namespace=NSA, vs=None) -> dict[str, dict]:
        items = self.api.list_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.REALSERVER_PLURAL)["items"]
        return {o["metadata"]["name"]: o for o in items if vs is None or o["spec"]["virtualService"] == vs}

    def weights(self, vs) -> dict[tuple[str, int], int]:
        return {(o["spec"]["address"], o["spec"]["port"]): o["spec"].get("weight", 1)
                for o in self.realservers(vs=vs).values()}

    def dests(self, vs) -> dict[tuple[str, int], int] | None:
        try:
            o = self.api.get_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                                      C.nodestate_name(DIRECTOR, NSA, vs))
        except Exception:
            return None
        return {(d["address"], d["port"]): d["weight"] for s in o["spec"]["services"] for d in s.get("dests", [])}

    def nodestate_rvs(self) -> dict[str, str]:
        items = self.api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL)["items"]
        return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}

    def service(self, name, namespace=NSA) -> dict:
        return self.cp.kubectl_json("get", "service", name, "-n", namespace)

    def ingress(self, name, namespace=NSA) -> list:
        return ((self.service(name, namespace).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []

    def virtualservice(self, name, namespace=NSA) -> dict | None:
        try:
            return self.api.get_namespaced_custom_object(C.GROUP, C.VERSION, namespace, C.VIRTUALSERVICE_PLURAL, name)
        except Exception:
            return None


@pytest.fixture(scope="module")
def env(kube_lvs, tmp_path_factory, request):
    cp = kube_lvs
    cp.apply([_node(DIRECTOR, "10.77.0.30", director=True), ns(NSA), ns(NSB),
              {"apiVersion": C.API_VERSION, "kind": "VIPPool", "metadata": {"name": f"lvs-svc-{RUN}"},
               "spec": {"addresses": ["192.168.77.0/29"], "namespaces": [NSA]}}])
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, SA), tmp_path_factory.mktemp("operator-svc"), "op-svc")
    wait_for(op.healthy, 60, "the operator's liveness endpoint")
    yield Env(cp)
    op.stop()
    if request.session.testsfailed:
        print(f"\n----- {op.log} (tail) -----\n" + "\n".join(op.text().splitlines()[-60:]))
    cp.kubectl("delete", "namespace", NSA, NSB, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", DIRECTOR, WORKER, "--ignore-not-found", check=False)
    cp.kubectl("delete", "vippools.lvs.kube-lvs.io", f"lvs-svc-{RUN}", "--ignore-not-found", check=False)


def test_selectorless_service_endpointslices_drive_the_realservers(env):
    env.cp.apply([_service("ext"), _slice("ext-1", "ext", [_endpoint("10.1.0.1"), _endpoint("10.1.0.2")]),
                  _vs("ext", "192.168.77.6", "ext")])
    want = {("10.1.0.1", 8080): 1, ("10.1.0.2", 8080): 1}
    wait_for(lambda: env.dests("ext") == want, 40, "the director's NodeState with both endpoints")
    assert env.weights("ext") == want
    vs_uid = env.virtualservice("ext")["metadata"]["uid"]
    for o in env.realservers(vs="ext").values():
        m = o["metadata"]
        assert m["labels"][C.LABEL_DERIVED_FROM] == "service" and m["annotations"][C.ANNOTATION_SERVICE] == "ext"
        assert [(r["kind"], r["name"], r["uid"]) for r in m["ownerReferences"]] == [("VirtualService", "ext", vs_uid)]

    # terminating but serving: weight 0 (drain), and only this service's NodeState is rewritten
    before = env.nodestate_rvs()
    env.cp.apply(_slice("ext-1", "ext", [_endpoint("10.1.0.1"),
                                         _endpoint("10.1.0.2", ready=False, serving=True, terminating=True)]))
    wait_for(lambda: env.dests("ext") == {("10.1.0.1", 8080): 1, ("10.1.0.2", 8080): 0}, 30,
             "weight 0 for the terminating endpoint")
    assert env.weights("ext")[("10.1.0.2", 8080)] == 0
    time.sleep(1.5)  # let any other (wrong) write land
    after = env.nodestate_rvs()
    assert sorted(n for n in after if after[n] != before.get(n)) == [C.nodestate_name(DIRECTOR, NSA, "ext")]

    # removed from the slice: gone (the agent drains it from here on)
    env.cp.apply(_slice("ext-1", "ext", [_endpoint("10.1.0.1")]))
    wait_for(lambda: env.dests("ext") == {("10.1.0.1", 8080): 1}, 30, "the removed endpoint to leave")
    assert env.weights("ext") == {("10.1.0.1", 8080): 1}

    # a hand-written RealServer for the same address:port wins: its weight, no derived twin
    env.cp.apply({"apiVersion": C.API_VERSION, "kind": "RealServer", "metadata": {"name": "pinned", "namespace": NSA},
                  "spec": {"virtualService": "ext", "address": "10.1.0.1", "port": 8080, "weight": 9}})
    wait_for(lambda: env.dests("ext") == {("10.1.0.1", 8080): 9}, 30, "the hand-written RealServer's weight")
    assert sorted(env.realservers(vs="ext")) == ["pinned"]


def test_the_operator_may_not_write_a_hand_made_realserver(env):
    """RBAC lets the operator write RealServers (it derives some); the
    admission policy keeps it off every other one."""
    sa = f"--as=system:serviceaccount:{OPNS}:{SA}"
    denied = env.cp.kubectl("delete", f"realservers.{C.GROUP}", "pinned", "-n", NSA, sa, check=False)
    assert denied.returncode != 0 and "kube-lvs-operator-derived-only" in denied.stderr, denied.stderr
    obj = env.cp.kubectl_json("get", f"realservers.{C.GROUP}", "pinned", "-n", NSA)
    obj["metadata"].setdefault("labels", {})[C.LABEL_DERIVED_FROM] = "service"  # claiming it is no way in
    denied = env.cp.kubectl("replace", "-f", "-", sa, input=json.dumps(obj), check=False)
    assert denied.returncode != 0 and "kube-lvs-operator-derived-only" in denied.stderr, denied.stderr
    assert "pinned" in env.realservers()


def test_deleting_the_virtualservice_takes_its_derived_realservers(env):
    env.cp.kubectl("delete", "realservers.lvs.kube-lvs.io", "pinned", "-n", NSA)
    wait_for(lambda: env.weights("ext") == {("10.1.0.1", 8080): 1}, 30, "the derived RealServer back")
    env.cp.kubectl("delete", "virtualservices.lvs.kube-lvs.io", "ext", "-n", NSA)
    wait_for(lambda: not env.realservers(vs="ext") and env.dests("ext") is None, 60,
             "its derived RealServers and NodeState to go")


def _pod(name, ip=None):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NSA, "labels": {"app": "web"}},
            "spec": {"nodeName": WORKER, "containers": [{"name": "web", "image": "example.invalid/web:1",
                                                        "ports": [{"containerPort": 8080}]}]}}


def _set_pod_status(env, name, ip, ready):
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"},
                             {"type": "ContainersReady", "status": "True" if ready else "False"}]}
    env.cp.kubectl("patch", "pod", name, "-n", NSA, "--subresource=status", "--type=merge",
                   "-p", json.dumps({"status": status}))


def test_pods_through_kube_controller_managers_endpointslice_controller(env):
    """The Node is made here, just before its Pods: without a kubelet the node
    lifecycle controller marks its pods not ready once the node's startup
    grace period has passed without a heartbeat."""
    env.cp.apply([_node(WORKER, "10.77.0.51"), _service("web", selector={"app": "web"}),
                  _vs("web", "192.168.77.5", "web"), _pod("web-1"), _pod("web-2")])
    _set_pod_status(env, "web-1", "10.2.0.1", True)
    _set_pod_status(env, "web-2", "10.2.0.2", True)
    wait_for(lambda: env.dests("web") == {("10.2.0.1", 8080): 1, ("10.2.0.2", 8080): 1}, 40,
             "both ready pods as real servers")
    slices = env.cp.kubectl_json("get", "endpointslices", "-n", NSA, "-l", f"{C.LABEL_SERVICE_NAME}=web")["items"]
    assert slices and all(s["metadata"]["labels"].get("endpointslice.kubernetes.io/managed-by")
                          == "endpointslice-controller.k8s.io" for s in slices)
    targets = {o["metadata"]["annotations"].get(f"{C.GROUP}/target") for o in env.realservers(vs="web").values()}
    assert targets == {"Pod/web-1", "Pod/web-2"}

    _set_pod_status(env, "web-2", "10.2.0.2", False)  # not ready: no real server
    wait_for(lambda: env.dests("web") == {("10.2.0.1", 8080): 1}, 30, "the not-ready pod to leave")

    # deleted with a grace period: terminating, still serving (Ready) -> weight 0
    env.cp.kubectl("delete", "pod", "web-1", "-n", NSA, "--grace-period=600", "--wait=false")
    wait_for(lambda: env.dests("web") == {("10.2.0.1", 8080): 0}, 30, "weight 0 for the terminating pod")
    env.cp.kubectl("delete", "pod", "web-1", "web-2", "-n", NSA, "--grace-period=0", "--force", check=False)
    wait_for(lambda: env.dests("web") == {}, 30, "no real server once the pods are gone")
    assert env.realservers(vs="web") == {}


def test_loadbalancer_service_of_our_class_gets_a_vip_and_others_stay_untouched(env):
    env.cp.apply([
        _service("lb", type="LoadBalancer", loadBalancerClass=C.LOADBALANCER_CLASS),
        _slice("lb-1", "lb", [_endpoint("10.3.0.1")]),
        _service("other", type="LoadBalancer", loadBalancerClass="example.com/other"),
        _service("lonely", namespace=NSB, type="LoadBalancer", loadBalancerClass=C.LOADBALANCER_CLASS),
    ])
    # .0 is the network address; .5 and .6 are hand-made VirtualServices' (ext is gone, web stays)
    assert wait_for(lambda: env.ingress("lb"), 40, "an ingress IP") == [{"ip": "192.168.77.1", "ipMode": "Proxy"}]
    svc = env.service("lb")
    vs = env.virtualservice("lb-http")
    assert vs["spec"]["address"] == "192.168.77.1" and vs["spec"]["backend"]["service"] == "lb"
    assert [(r["kind"], r["uid"]) for r in vs["metadata"]["ownerReferences"]] == [("Service", svc["metadata"]["uid"])]
    wait_for(lambda: env.dests("lb-http") == {("10.3.0.1", 8080): 1}, 30, "the LoadBalancer's real server")
    cond = {c["type"]: c for c in svc["status"].get("conditions") or []}[f"{C.GROUP}/Allocated"]
    assert cond["status"] == "True" and "192.168.77.1" in cond["message"]

    def nopool_event():
        evs = env.api.list_namespaced_custom_object("events.k8s.io", "v1", NSB, "events")["items"]
        return [e for e in evs if e["regarding"].get("kind") == "Service" and e["regarding"]["name"] == "lonely"]
    ev = wait_for(nopool_event, 30, "a NoPool event on the Service without a pool")[0]
    assert ev["reason"] == "NoPool" and ev["type"] == "Warning" and NSB in ev["note"] and "VIPPool" in ev["note"]
    assert env.ingress("lonely", NSB) == []

    other = env.service("other")  # processed meanwhile (lb and lonely were), never touched
    assert not (other.get("status") or {}).get("loadBalancer") and not (other["status"].get("conditions"))
    assert env.virtualservice("other-http") is None


def test_loadbalancer_released_on_type_change_and_on_delete(env):
    env.cp.apply(_service("lb2", type="LoadBalancer", loadBalancerClass=C.LOADBALANCER_CLASS))
    assert wait_for(lambda: env.ingress("lb2"), 40, "lb2's ingress")[0]["ip"] == "192.168.77.2"
    env.cp.kubectl("patch", "service", "lb2", "-n", NSA, "--type=merge", "-p", json.dumps(
        {"spec": {"type": "ClusterIP", "loadBalancerClass": None, "allocateLoadBalancerNodePorts": None}}))
    wait_for(lambda: env.virtualservice("lb2-http") is None and not env.ingress("lb2"), 40,
             "lb2's VirtualService and ingress released")
    conds = [c["type"] for c in env.service("lb2")["status"].get("conditions") or []]
    assert f"{C.GROUP}/Allocated" not in conds

    env.cp.kubectl("delete", "service", "lb", "-n", NSA)
    wait_for(lambda: env.virtualservice("lb-http") is None and env.dests("lb-http") is None
             and not env.realservers(vs="lb-http"), 60, "everything of lb released")
    # the freed VIP goes to the next Service asking
    env.cp.apply(_service("lb3", type="LoadBalancer", loadBalancerClass=C.LOADBALANCER_CLASS))
    assert wait_for(lambda: env.ingress("lb3"), 40, "lb3's ingress")[0]["ip"] == "192.168.77.1"


def test_the_examples_apply(env):
    """examples/service-backed and examples/loadbalancer pass the real API
    server's schema and CEL (spec.backend was unknown before issue 19)."""
    for example in ("service-backed", "loadbalancer"):
        out = env.cp.kubectl("apply", "-k", str(ROOT / "examples" / example)).stdout
        assert "vippool.lvs.kube-lvs.io/" in out, out
    assert wait_for(lambda: env.ingress("api", "shop"), 40, "the example LoadBalancer's ingress") == \
        [{"ip": "192.168.0.50", "ipMode": "Proxy"}]
    for example in ("loadbalancer", "service-backed"):
        env.cp.kubectl("delete", "-k", str(ROOT / "examples" / example), "--wait=false", "--ignore-not-found")
