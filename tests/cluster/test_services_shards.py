"""A big Service-backed VirtualService on the real API server (issue 19's
scale): its NodeStates are shards, and one endpoint change writes one
NodeState per director, counted by resourceVersion.

A Service without a selector with 1,500 endpoints in EndpointSlices of 100
(as kube-controller-manager cuts them), two directors, the operator as its
ServiceAccount. Before sharding the same change rewrote each director's one
NodeState holding all 1,500 dests (and beyond 5,000 endpoints the service
was capped); this test then fails on the shard names it waits for.
"""
from __future__ import annotations

import time
import uuid

import pytest

from lvs_model import channel as C
from lvs_operator import shards as S

from test_operator import OPNS, SA, Operator, ns, wait_for
from test_services import DIRECTORS, _endpoint, _node, _service, _slice

RUN = "b" + uuid.uuid4().hex[:4]
NSA = f"lvs-big-{RUN}"
DIRECTOR_NODES = [f"lvs-big-d{i}-{RUN}" for i in range(2)]
E = 1500
PER_SLICE = 100


def _address(k: int) -> str:
    return f"10.9.{k // 256}.{k % 256}"


def _slices(terminating: int | None = None) -> list[dict]:
    out = []
    for s in range(E // PER_SLICE):
        eps = [_endpoint(_address(k), ready=k != terminating, serving=True if k == terminating else None,
                         terminating=True if k == terminating else None)
               for k in range(s * PER_SLICE, (s + 1) * PER_SLICE)]
        out.append({**_slice(f"big-{s}", "big", eps, namespace=NSA)})
    return out


@pytest.fixture(scope="module")
def big(kube_lvs, tmp_path_factory, request):
    from kubernetes import client
    cp = kube_lvs
    cp.apply([ns(NSA), *(_node(n, f"10.78.0.{30 + i}", director=True) for i, n in enumerate(DIRECTOR_NODES)),
              {"apiVersion": C.API_VERSION, "kind": "VIPPool", "metadata": {"name": f"lvs-big-{RUN}"},
               "spec": {"addresses": ["192.168.78.0/29"], "namespaces": [NSA]}}])
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, SA), tmp_path_factory.mktemp("operator-big"), "op-big")
    wait_for(op.healthy, 60, "the operator's liveness endpoint")
    api = client.CustomObjectsApi(cp.api_client())
    yield cp, api
    op.stop()
    if request.session.testsfailed:
        print(f"\n----- {op.log} (tail) -----\n" + "\n".join(op.text().splitlines()[-60:]))
    cp.kubectl("delete", "namespace", NSA, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", *DIRECTOR_NODES, "--ignore-not-found", check=False)
    cp.kubectl("delete", "vippools.lvs.kube-lvs.io", f"lvs-big-{RUN}", "--ignore-not-found", check=False)


def _nodestates(api) -> dict[str, dict]:
    items = api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                              label_selector=f"{C.LABEL_VS_NAMESPACE}={NSA}")["items"]
    return {o["metadata"]["name"]: o for o in items}


def _weights(objs: dict[str, dict], node: str) -> dict[str, int]:
    return {d["address"]: d["weight"] for o in objs.values() if o["spec"].get("node") == node
            for s in o["spec"]["services"] for d in s.get("dests", [])}


def test_one_endpoint_change_of_a_big_service_writes_one_nodestate_per_director(big):
    cp, api = big
    k = S.shard_count(E)
    assert k == 8
    cp.apply([_service("big", namespace=NSA), *_slices(),
              {"apiVersion": C.API_VERSION, "kind": "VirtualService", "metadata": {"name": "big", "namespace": NSA},
               "spec": {"address": "192.168.78.1", "port": 80, "protocol": "tcp", "scheduler": "rr",
                        "natReturn": "snat", "directorSelector": DIRECTORS,
                        "backend": {"service": "big", "portName": "http"}}}])
    want = {f"{C.nodestate_name(n, NSA, 'big')}.{i}-of-{k}" for n in DIRECTOR_NODES for i in range(k)}

    def synced():
        objs = _nodestates(api)
        return set(objs) == want and all(len(_weights(objs, n)) == E for n in DIRECTOR_NODES)
    wait_for(synced, 180, f"{k} shards per director holding all {E} dests")
    objs = _nodestates(api)
    assert all(o["metadata"]["annotations"][S.ANNOTATION_SHARD].endswith(f"/{k}") for o in objs.values())
    assert max(len(o["spec"]["services"][0]["dests"]) for o in objs.values()) < E // 2  # spread, not one

    time.sleep(2)  # writes of the first sync settle
    for changed in (737, 12):
        before = {n: o["metadata"]["resourceVersion"] for n, o in _nodestates(api).items()}
        cp.apply(_slices(terminating=changed)[changed // PER_SLICE])
        wait_for(lambda: all(_weights(_nodestates(api), n).get(_address(changed)) == 0 for n in DIRECTOR_NODES),
                 60, f"weight 0 for {_address(changed)} on both directors")
        time.sleep(1.5)  # let any other (wrong) write land
        after = _nodestates(api)
        written = sorted(n for n, o in after.items() if o["metadata"]["resourceVersion"] != before.get(n))
        assert len(written) == len(DIRECTOR_NODES), written
        assert {after[n]["spec"]["node"] for n in written} == set(DIRECTOR_NODES)
        bucket = S.bucket(_address(changed), 8080, k)
        assert all(n.endswith(f".{bucket}-of-{k}") for n in written), (written, bucket)
        cp.apply(_slices()[changed // PER_SLICE])  # back to ready for the next round
        wait_for(lambda: all(_weights(_nodestates(api), n).get(_address(changed)) == 1 for n in DIRECTOR_NODES),
                 60, "weight 1 again")
