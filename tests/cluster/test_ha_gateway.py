"""NAT gateway of a director group through the real API server: the operator
(as its own ServiceAccount) reads the ``lvs.kube-lvs.io/nat-gateway``
annotation, the NodeStates it writes keep ``directorGroups[].gateway``
(the CRD's structural schema would prune an undeclared field without a
word), and a gateway outside the namespace's VIPPools refuses the
VirtualService with a status that names the annotation.

Fails before the change: the NodeStates carried no gateway (the operator
ignored the annotation and the schema did not declare the field) and the
out-of-pool gateway was accepted.
"""
from __future__ import annotations

import uuid

import pytest

from lvs_model import channel as C

from test_operator import OPNS, SA, Operator, ns, pool, rs, vs, wait_for

RUN = uuid.uuid4().hex[:4]
NS = f"lvs-gw-{RUN}"
ROLE = "lvs-test.kube-lvs.io/gw-director"
SELECT = {"matchLabels": {ROLE: "true"}}
D1, D2 = f"lvs-gw-d1-{RUN}", f"lvs-gw-d2-{RUN}"
HA = {"lvs.kube-lvs.io/failover": "active-standby"}
NOTE = "lvs.kube-lvs.io/nat-gateway"


def director(name, ip):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {ROLE: "true"}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def grouped_vs(name, address, gateway):
    o = vs(NS, name, address=address, port=80, method="nat", directorSelector=SELECT)
    o["metadata"]["labels"] = dict(HA)
    o["metadata"]["annotations"] = {NOTE: gateway}
    return o


@pytest.fixture(scope="module")
def api(kube_lvs, tmp_path_factory):
    cp = kube_lvs
    cp.apply([director(D1, "10.70.0.30"), director(D2, "10.70.0.31"), ns(NS)])
    from kubernetes import client
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, SA), tmp_path_factory.mktemp("operator"), f"gw-{RUN}")
    yield client.CustomObjectsApi(cp.api_client()), cp
    op.stop()
    cp.kubectl("delete", "namespace", NS, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", D1, D2, "--ignore-not-found", check=False)


def nodestates(api, vs_name):
    items = api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                              label_selector=f"{C.LABEL_VS_NAMESPACE}={NS},"
                                                             f"{C.LABEL_VS_NAME}={vs_name}")["items"]
    return {o["spec"]["node"]: o for o in items}


def accepted(api, name):
    o = api.get_namespaced_custom_object(C.GROUP, C.VERSION, NS, C.VIRTUALSERVICE_PLURAL, name)
    return next((c for c in (o.get("status") or {}).get("conditions") or () if c["type"] == "Accepted"), None)


def test_gateway_reaches_every_director_and_one_outside_the_pool_is_refused(api):
    api, cp = api
    cp.apply([pool(f"lvs-gw-{RUN}", ["192.168.70.0/24"], [NS]),
              grouped_vs("web", "192.168.70.1", "192.168.70.254"), rs(NS, "web-1", "web", "10.70.0.51"),
              grouped_vs("outside", "192.168.70.2", "10.70.9.9")])
    got = wait_for(lambda: (lambda s: s if set(s) == {D1, D2} else None)(nodestates(api, "web")), 60,
                   "the grouped VirtualService's NodeStates")
    for o in got.values():  # as stored by the API server: the schema kept the field
        (g,) = o["spec"]["directorGroups"]
        assert g["gateway"] == "192.168.70.254" and sorted(g["members"]) == [D1, D2]
    acc = wait_for(lambda: (lambda c: c if c and c["status"] == "False" else None)(accepted(api, "outside")), 60,
                   "the out-of-pool gateway to be refused")
    assert acc["reason"] == "NoPool" and NOTE in acc["message"] and "10.70.9.9" in acc["message"]
    assert nodestates(api, "outside") == {}
