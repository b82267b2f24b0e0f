"""A tenant's attempts to reach past its VIP pool, on the real API server (issue 16).

The tenant is a ServiceAccount with edit rights on VirtualServices and
RealServers in its own namespace, nothing else, and every attempt is made as it
(the built kubectl with ``--as``). The admin's VIPPool sets the tenant limits.
The operator runs as its own ServiceAccount. Each row of ATTEMPTS is one
attack from the issue; it ends one of two ways:

- refused by the API server (RBAC, schema or CEL), the message naming the
  field and the fix;
- accepted, and not programmed: a condition says why, and no NodeState holds
  anything of it. NodeStates are all an agent reads, so no node's kernel,
  routes, sysctls or health probes can change (the agent's own refusal of a
  hand-written bad NodeState is the NODESTATE_ATTEMPTS table below, and the
  allowlist's unit table).

A control row (an allowed real server) is programmed, so "not programmed"
is the limits' doing and not a broken operator.
"""
from __future__ import annotations

import json
import uuid

import pytest
import yaml

from lvs_model import channel as C
from test_operator import OPNS, SA, Operator, wait_for

RUN = uuid.uuid4().hex[:4]
TENANT_NS = f"lvs-tenant-{RUN}"
OTHER_NS = f"lvs-other-{RUN}"
TENANT = f"system:serviceaccount:{TENANT_NS}:tenant"
DIRECTOR, BACKEND, INFRA = f"sec-d1-{RUN}", f"sec-b1-{RUN}", f"sec-infra-{RUN}"
ROLE_LABEL = "lvs-sec.kube-lvs.io/role"
POOL = {"addresses": ["192.168.50.0/24"], "namespaces": [TENANT_NS],
        "realServerAddresses": ["10.50.1.0/24"],
        "backendNodeSelector": {"matchLabels": {ROLE_LABEL: "backend"}},
        "directorNodeSelector": {"matchLabels": {ROLE_LABEL: "director"}}}


def node(name, ip, role):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {ROLE_LABEL: role}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def obj(kind, name, spec, namespace=TENANT_NS):
    meta = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": C.API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def vs(name, **spec):
    base = {"address": "192.168.50.10", "port": 80, "method": "dr", "directorSelector": {},
            "healthCheck": {"type": "tcp", "interval": 2, "timeout": 1}}
    return obj("VirtualService", name, {**base, **spec})


def rs(name, address, virtual_service="web", **spec):
    return obj("RealServer", name, {"virtualService": virtual_service, "address": address, **spec})


def nodestate(name, **spec):
    return obj("NodeState", name, {"node": BACKEND, **spec}, namespace=OPNS)


class Tenant:
    def __init__(self, cp):
        self.cp = cp

    def apply(self, o: dict):
        return self.cp.kubectl("apply", "-f", "-", f"--as={TENANT}", "--as-group=system:serviceaccounts",
                               f"--as-group=system:serviceaccounts:{TENANT_NS}", "--as-group=system:authenticated",
                               input=yaml.safe_dump(o), check=False)


@pytest.fixture(scope="module")
def env(kube_lvs, tmp_path_factory, request):
    cp = kube_lvs
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "lvs-tenant", "namespace": TENANT_NS},
            "rules": [{"apiGroups": [C.GROUP], "resources": ["virtualservices", "realservers"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "lvs-tenant", "namespace": TENANT_NS},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lvs-tenant"},
               "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": TENANT_NS}]}
    cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in (TENANT_NS, OTHER_NS)])
    cp.apply([{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": TENANT_NS}},
              role, binding, node(DIRECTOR, "10.50.0.30", "director"), node(BACKEND, "10.50.1.51", "backend"),
              node(INFRA, "10.50.0.99", "infra"), obj("VIPPool", f"sec-{RUN}", POOL, namespace="")])
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, SA), tmp_path_factory.mktemp("sec-operator"), f"sec-{RUN}")
    from kubernetes import client
    api = client.CustomObjectsApi(cp.api_client())

    def leader():
        lease = api.get_namespaced_custom_object("coordination.k8s.io", "v1", OPNS, "leases", "kube-lvs-operator")
        return (lease.get("spec") or {}).get("holderIdentity") == op.identity
    wait_for(leader, 60, "the test's operator to lead")
    t = Tenant(cp)
    # The tenant's service and the control row: an allowed real server on an allowed backend node.
    for o in (vs("web"), rs("allowed", "10.50.1.51", nodeName=BACKEND)):
        r = t.apply(o)
        assert r.returncode == 0, r.stderr
    yield cp, api, t
    op.stop()
    if request.session.testsfailed:
        print(f"\n----- {op.log} (tail) -----\n" + "\n".join(op.text().splitlines()[-40:]))
    cp.kubectl("delete", "namespace", TENANT_NS, OTHER_NS, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", DIRECTOR, BACKEND, INFRA, "--ignore-not-found", check=False)
    cp.kubectl("delete", "vippool", f"sec-{RUN}", "--ignore-not-found", check=False)


def tenant_nodestates(api) -> dict[str, dict]:
    items = api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                              label_selector=f"{C.LABEL_VS_NAMESPACE}={TENANT_NS}")["items"]
    return {o["metadata"]["name"]: o["spec"] for o in items}


def conditions(api, plural, name) -> dict[str, dict]:
    o = api.get_namespaced_custom_object(C.GROUP, C.VERSION, TENANT_NS, plural, name)
    return {c["type"]: c for c in (o.get("status") or {}).get("conditions") or []}


# (id, object the tenant applies, refused by the API server with these fragments)
REFUSED = [
    ("write a NodeState directly", nodestate("evil", sysctls={"net.ipv4.ip_forward": "1"}),
     ["forbidden", "nodestates"]),
    ("write a VIPPool", obj("VIPPool", f"mine-{RUN}", {**POOL, "addresses": ["0.0.0.0/0"]}, namespace=""),
     ["forbidden", "vippools"]),
    ("a VirtualService in another namespace", {**vs("x"), "metadata": {"name": "x", "namespace": OTHER_NS}},
     ["forbidden", OTHER_NS]),
    ("cloud metadata as a real server", rs("meta", "169.254.169.254"),
     ["spec.address", "link-local", "169.254.0.0/16"]),
    ("loopback as a real server", rs("lo", "127.0.0.1"), ["spec.address", "loopback"]),
    ("a multicast VIP", vs("mcast", address="224.0.0.81"), ["spec.address", "multicast"]),
    ("a 0.1 s health-check interval", vs("fast", healthCheck={"type": "tcp", "interval": 0.1, "timeout": 0.05}),
     ["spec.healthCheck.interval", "greater than or equal to 1"]),
]


@pytest.mark.parametrize("what,o,fragments", REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_by_the_api_server(env, what, o, fragments):
    cp, api, tenant = env
    r = tenant.apply(o)
    assert r.returncode != 0, f"{what}: accepted"
    for f in fragments:
        assert f in r.stderr, r.stderr


# (id, object the tenant applies, its plural, the condition type and reason saying why)
NOT_PROGRAMMED = [
    ("a real server outside the pool's ranges (the API server's service IP)", rs("apisrv", "10.96.0.1"),
     C.REALSERVER_PLURAL, "Accepted", "AddressNotAllowed", "spec.realServerAddresses"),
    ("nodeName on an infrastructure node", rs("infra", "10.50.1.60", nodeName=INFRA),
     C.REALSERVER_PLURAL, "Accepted", "NodeNotAllowed", f"spec.nodeName {INFRA}"),
    ("nodeName on a director", rs("ondirector", "10.50.1.61", nodeName=DIRECTOR),
     C.REALSERVER_PLURAL, "Accepted", "NodeNotAllowed", "backendNodeSelector"),
    ("a VIP that is a node's address", vs("nodeip", address="10.50.0.99"),
     C.VIRTUALSERVICE_PLURAL, "Accepted", "NoPool", "VIPPool"),
    ("directors picked on infrastructure nodes", vs("oninfra", address="192.168.50.11",
                                                    directorSelector={"matchLabels": {ROLE_LABEL: "infra"}}),
     C.VIRTUALSERVICE_PLURAL, "Programmed", "DirectorsNotAllowed", "spec.directorNodeSelector"),
]


@pytest.mark.parametrize("what,o,plural,ctype,reason,fragment", NOT_PROGRAMMED, ids=[r[0] for r in NOT_PROGRAMMED])
def test_accepted_but_not_programmed_and_says_why(env, what, o, plural, ctype, reason, fragment):
    cp, api, tenant = env
    r = tenant.apply(o)
    assert r.returncode == 0, r.stderr
    name = o["metadata"]["name"]
    cond = wait_for(lambda: (conditions(api, plural, name).get(ctype) or {}).get("reason") == reason
                    and conditions(api, plural, name)[ctype], 60, f"{name}'s {ctype} condition")
    assert cond["status"] == "False" and fragment in cond["message"], cond
    events = api.list_namespaced_custom_object("events.k8s.io", "v1", TENANT_NS, "events")["items"]
    assert any(e.get("reason") == reason and (e.get("regarding") or {}).get("name") == name for e in events), \
        f"no Warning event {reason} for {name}"
    # Nothing of it in any NodeState: no agent is asked to do anything for it.
    specs = tenant_nodestates(api)
    text = json.dumps(specs)
    spec = o["spec"]
    if o["kind"] == "RealServer":
        assert spec["address"] not in text
        assert not any(n.startswith(f"{INFRA}-") or n.startswith(f"{DIRECTOR}-") and s.get("backendVips")
                       for n, s in specs.items())
    else:
        assert spec["address"] not in text
    assert not [n for n in specs if n.startswith(f"{INFRA}-")], "nothing ever lands on the infrastructure node"


def test_the_control_row_is_programmed(env):
    """The allowed real server is a dest on the allowed director and gets its VIP on its backend node:
    the refusals above are the limits' doing."""
    cp, api, tenant = env
    specs = wait_for(lambda: (s := tenant_nodestates(api)).get(f"{DIRECTOR}-{TENANT_NS}-web") and s,
                     60, "the web VirtualService's NodeStates")
    director = specs[f"{DIRECTOR}-{TENANT_NS}-web"]
    assert [(d["address"], d["port"]) for d in director["services"][0]["dests"]] == [("10.50.1.51", 80)]
    assert specs[f"{BACKEND}-{TENANT_NS}-web"]["backendVips"] == [{"address": "192.168.50.10", "method": "dr"}]
    assert set(specs) == {f"{DIRECTOR}-{TENANT_NS}-web", f"{BACKEND}-{TENANT_NS}-web"}


# Whoever can write NodeStates (the operator's ServiceAccount, an admin of its
# namespace): the CRD refuses what the agent would refuse to write.
NODESTATE_ATTEMPTS = [
    ("kernel.core_pattern", nodestate("core", sysctls={"kernel.core_pattern": "|/tmp/x"}), "spec.sysctls"),
    ("a path out of /proc/sys/net", nodestate("path", sysctls={"net.ipv4.conf.x/../../../kernel.rp_filter": "0"}),
     "spec.sysctls"),
    ("a value that is not a number", nodestate("val", sysctls={"net.ipv4.ip_forward": "1\n2"}), "spec.sysctls"),
    ("uplink all", nodestate("all", uplink="all"), "spec.uplink"),
    ("a device path", nodestate("dev", directorAddresses=[{"address": "192.168.50.10", "device": "../x"}]),
     "spec.directorAddresses[0].device"),
]


@pytest.mark.parametrize("what,o,field", NODESTATE_ATTEMPTS, ids=[r[0] for r in NODESTATE_ATTEMPTS])
def test_a_bad_nodestate_is_refused_even_for_its_writers(env, what, o, field):
    cp, api, tenant = env
    kubeconfig = cp.kubeconfig_for_serviceaccount(OPNS, SA)
    r = cp.kubectl("create", "--dry-run=server", "-f", "-", kubeconfig=kubeconfig, input=yaml.safe_dump(o),
                   check=False)
    assert r.returncode != 0, f"{what}: accepted"
    assert field in r.stderr and "Invalid" in r.stderr, r.stderr
