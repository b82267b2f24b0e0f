"""Active-active through the real API server: the BGPPeer CRD's validation
(kubectl, each rejection naming its field, the operator's model agreeing),
the operator (as its own ServiceAccount with deploy/'s RBAC) compiling a
VirtualService labelled ``failover: active-active`` into NodeStates whose
``bgp`` section survives the NodeState schema, an agent's report reaching
``announcedBy``, and the drain of a director whose label is removed: drained
first (annotation, ``bgp.drain``), deleted after the grace.

Fails before the change: the BGPPeer kind was unknown (kubectl: no such
resource), the NodeState schema pruned ``bgp`` and the operator deleted a
leaving director's NodeState at once.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from lvs_model import channel as C
from lvs_operator.bgp_peers import ANNOTATION_DRAIN_STARTED, DRAIN_MARGIN, PeerCR

from test_operator import OPNS, ROOT, SA, Operator, ns, pool, rs, vs, wait_for

RUN = "g" + uuid.uuid4().hex[:4]  # a letter first: YAML never reads a label value like 85e1 as a number
NS = f"lvs-bgp-{RUN}"
ROLE = "lvs-test.kube-lvs.io/bgp-director"
SELECT = {"matchLabels": {ROLE: RUN}}
D1, D2 = f"lvs-bgp-d1-{RUN}", f"lvs-bgp-d2-{RUN}"
PEER = f"tor-{RUN}"
HOLD = 3  # the shortest hold time BGP allows: the drain's grace is HOLD + DRAIN_MARGIN
KIND = f"bgppeers.{C.GROUP}"

GOOD = {"peerAddress": "10.80.0.254", "peerASN": 65000, "myASN": 65001, "port": 179, "holdTime": 9,
        "keepaliveTime": 3, "passwordSecretKey": "tor1", "bfd": True, "nodeSelector": SELECT}
# (id, spec, field named in kubectl's error, message fragment)
CASES = [
    ("hold-0", {**GOOD, "holdTime": 0, "keepaliveTime": None}, "spec.holdTime", "0 (never time out) is refused"),
    ("hold-2", {**GOOD, "holdTime": 2, "keepaliveTime": 1}, "spec.holdTime", "at least 3 seconds"),
    ("keepalive-not-below-hold", {**GOOD, "keepaliveTime": 9}, "spec.keepaliveTime", "below spec.holdTime"),
    ("keepalive-default-hold", {**GOOD, "holdTime": None, "keepaliveTime": 10}, "spec.keepaliveTime",
     "below spec.holdTime"),
    ("peer-asn-0", {**GOOD, "peerASN": 0}, "spec.peerASN", "must be an AS number"),
    ("my-asn-too-big", {**GOOD, "myASN": 2**32}, "spec.myASN", "must be an AS number"),
    ("loopback-peer", {**GOOD, "peerAddress": "127.0.0.1"}, "spec.peerAddress", "unicast address of one host"),
    ("password-path", {**GOOD, "passwordSecretKey": "../shadow"}, "spec.passwordSecretKey", "should match"),
    ("no-my-asn", {k: v for k, v in GOOD.items() if k != "myASN"}, "spec.myASN", "Required value"),
]


def peer(name, spec):
    return {"apiVersion": C.API_VERSION, "kind": "BGPPeer", "metadata": {"name": name},
            "spec": {k: v for k, v in spec.items() if v is not None}}


def director(name, ip):
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {ROLE: RUN}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


@pytest.fixture(scope="module")
def cp(kube_lvs):
    kube_lvs.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{KIND}")
    return kube_lvs


def test_a_full_bgppeer_is_accepted_and_the_model_agrees(cp):
    out = cp.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(peer("ok", GOOD)))
    created = json.loads(out.stdout)
    assert created["spec"] == GOOD
    errors: list = []
    assert PeerCR.of(created).peer(errors) is not None and errors == []


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_kubectl_refuses_a_bad_bgppeer_naming_the_field(cp, case):
    name, spec, field, fragment = case
    r = cp.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(peer("bad", spec)), check=False)
    assert r.returncode != 0
    assert field in r.stderr and fragment in r.stderr, r.stderr
    errors: list = []
    if PeerCR.of(peer("bad", spec)).peer(errors) is not None:
        assert errors, f"{name}: the operator's model accepts it"


def test_the_example_applies(cp):
    out = cp.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples" / "bgp-ecmp" / "bgppeer.yaml")).stdout
    assert "bgppeer.lvs.kube-lvs.io/tor" in out, out


def test_the_operator_reads_bgppeers_and_the_agent_does_not(cp):
    def can(sa, *args):
        r = cp.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{OPNS}:{sa}", check=False)
        return r.stdout.strip() == "yes"
    assert can(SA, "list", KIND) and can(SA, "watch", KIND) and can(SA, "patch", KIND, "--subresource=status")
    assert not can(SA, "update", KIND) and not can(SA, "create", KIND) and not can(SA, "delete", KIND)
    assert not can(SA, "get", "secrets", "-n", OPNS)  # the passwords stay with the agents' pods
    agent = "kube-lvs-agent"
    assert not can(agent, "list", KIND) and not can(agent, "get", KIND)  # it gets its peers in NodeStates


# --------------------------------------------------------------------------
# The operator, as its ServiceAccount
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api(cp, tmp_path_factory):
    cp.apply([director(D1, "10.80.0.1"), director(D2, "10.80.0.2"), ns(NS)])
    from kubernetes import client
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, SA), tmp_path_factory.mktemp("operator"), f"bgp-{RUN}")
    yield client.CustomObjectsApi(cp.api_client())
    op.stop()
    cp.kubectl("delete", "namespace", NS, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", KIND, PEER, "--ignore-not-found", check=False)
    cp.kubectl("delete", "vippools." + C.GROUP, f"lvs-bgp-{RUN}", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", D1, D2, "--ignore-not-found", check=False)


def nodestates(api) -> dict[str, dict]:
    items = api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                              label_selector=f"{C.LABEL_VS_NAMESPACE}={NS},"
                                                             f"{C.LABEL_VS_NAME}=web")["items"]
    return {o["spec"]["node"]: o for o in items}


def vs_status(api) -> dict:
    return api.get_namespaced_custom_object(C.GROUP, C.VERSION, NS, C.VIRTUALSERVICE_PLURAL, "web").get("status") or {}


def test_active_active_compiles_the_bgp_section_reports_and_drains(cp, api):
    web = vs(NS, "web", address="192.168.80.1", port=80, method="dr", scheduler="mh", directorSelector=SELECT)
    web["metadata"]["labels"] = {"lvs.kube-lvs.io/failover": "active-active"}
    cp.apply([peer(PEER, {**GOOD, "holdTime": HOLD, "keepaliveTime": 1}),
              pool(f"lvs-bgp-{RUN}", ["192.168.80.0/24"], [NS]), web, rs(NS, "web-1", "web", "10.80.0.51")])
    got = wait_for(lambda: (lambda s: s if set(s) == {D1, D2} else None)(nodestates(api)), 60,
                   "the active-active VirtualService's NodeStates")
    for node_name, ip in ((D1, "10.80.0.1"), (D2, "10.80.0.2")):  # as stored: the schema kept the section
        assert got[node_name]["spec"]["bgp"] == {
            "routerId": ip, "vips": ["192.168.80.1"],
            "peers": [{"address": "10.80.0.254", "asn": 65000, "localAsn": 65001, "holdTime": HOLD,
                       "keepaliveTime": 1, "passwordFile": "tor1", "bfd": True}]}
    bgp = wait_for(lambda: next((c for c in vs_status(api).get("conditions") or () if c["type"] == "BGP"), None),
                   60, "the BGP condition")
    assert (bgp["status"], bgp["reason"]) == ("True", "Peered")
    wait_for(lambda: (api.get_cluster_custom_object(C.GROUP, C.VERSION, "bgppeers", PEER).get("status") or {}).get(
        "nodes") == sorted([D1, D2]), 60, "the BGPPeer's nodes")

    # D1's agent reports the VIP announced (status.bgp, as lvs-agent writes it): announcedBy names D1.
    o = got[D1]
    gen = o["metadata"]["generation"]
    api.patch_namespaced_custom_object_status(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL, o["metadata"]["name"], {
        "status": {"observedGeneration": gen, "bgp": {
            "vips": [{"address": "192.168.80.1", "announced": True, "reason": "Announced", "message": "1 up"}],
            "peers": [{"address": "10.80.0.254", "asn": 65000, "state": "Established", "info": "", "since": ""}]}}})
    wait_for(lambda: vs_status(api).get("announcedBy") == D1, 60, "announcedBy")

    # D2 leaves (label removed): its NodeState is drained first, services kept, then deleted.
    name2 = got[D2]["metadata"]["name"]
    cp.kubectl("label", "node", D2, f"{ROLE}-")
    left = time.monotonic()
    drained = wait_for(lambda: (lambda o: o if ANNOTATION_DRAIN_STARTED in o["metadata"].get("annotations", {})
                                else None)(nodestates(api)[D2]), 30, "D2's NodeState drained")
    assert drained["metadata"]["name"] == name2
    assert drained["spec"]["bgp"]["drain"] is True and drained["spec"]["services"]
    wait_for(lambda: D2 not in nodestates(api), 60, "D2's NodeState deleted after the grace")
    assert time.monotonic() - left >= HOLD + DRAIN_MARGIN - 1  # the annotation's time has whole seconds
    assert set(nodestates(api)) == {D1}
