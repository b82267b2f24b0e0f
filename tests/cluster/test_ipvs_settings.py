"""IPVSSettings on the real API server: the CRD's validation (server-side dry
run, each rejection naming its field, the operator's model agreeing), and
the operator, as its own ServiceAccount with the RBAC of deploy/, compiling
IPVSSettings into one NodeState per (node, settings): oldest wins per node,
the loser's Conflict condition names the node, an edit rewrites the
NodeStates, a delete garbage-collects them and hands the node on.

Before IPVSSettings existed the kind was unknown to the API server (404 on
every request here) and the operator wrote no such NodeState.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest

from lvs_model import channel as C
from lvs_model.errors import FieldError
from lvs_model.nodespec import MAX_IPVS_TIMEOUT
from lvs_operator.crmodel import IPVSSettings

from test_operator import ROOT, Operator, node, wait_for

RUN = "r" + uuid.uuid4().hex[:4]  # a letter first: YAML never reads it as a number
LABEL = "lvs-settings-test.kube-lvs.io/group"
GROUP_SEL = {"matchLabels": {LABEL: RUN}}
N1, N2 = f"lvs-set-{RUN}-1", f"lvs-set-{RUN}-2"
OPNS = C.DEFAULT_NAMESPACE

GOOD = {"nodeSelector": GROUP_SEL, "timeouts": {"tcp": 900, "tcpFin": 30, "udp": 60}, "connReuseMode": 0,
        "expireNodestConn": False, "expireQuiescentTemplate": True, "sloppyTcp": True, "sloppySctp": False,
        "conntrack": False}

# (id, spec, field named in the error, message fragment)
CASES = [
    ("no-node-selector", {"timeouts": {"tcp": 900}}, "spec.nodeSelector", "Required value"),
    ("conn-reuse-mode-4", {**GOOD, "connReuseMode": 4}, "spec.connReuseMode", "less than or equal to 3"),
    ("tcp-negative", {**GOOD, "timeouts": {"tcp": -1}}, "spec.timeouts.tcp", "greater than or equal to 0"),
    ("udp-too-long", {**GOOD, "timeouts": {"udp": MAX_IPVS_TIMEOUT + 1}}, "spec.timeouts.udp",
     "less than or equal to"),
    ("sloppy-not-bool", {**GOOD, "sloppyTcp": "yes"}, "spec.sloppyTcp", "must be of type boolean"),
]


def _settings(name, spec):
    return {"apiVersion": C.API_VERSION, "kind": C.IPVSSETTINGS_KIND, "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def api(control_plane):
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(ROOT / "deploy"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          f"crd/{C.IPVSSETTINGS_PLURAL}.{C.GROUP}", f"crd/{C.NODESTATE_PLURAL}.{C.GROUP}")
    from kubernetes import client
    return client.CustomObjectsApi(control_plane.api_client())


def _model_errors(spec) -> list[FieldError]:
    errors: list[FieldError] = []
    IPVSSettings.of({"metadata": {"name": "case"}, "spec": spec}).node_fields(errors)
    return errors


def test_a_full_ipvssettings_is_accepted_and_the_model_agrees(api):
    created = api.create_cluster_custom_object(C.GROUP, C.VERSION, C.IPVSSETTINGS_PLURAL,
                                               _settings("case", GOOD), dry_run="All")
    assert created["spec"] == GOOD
    assert _model_errors(created["spec"]) == []


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rejected_by_the_api_server_naming_the_field(api, case):
    from kubernetes.client.exceptions import ApiException
    name, spec, field, fragment = case
    with pytest.raises(ApiException) as exc:
        api.create_cluster_custom_object(C.GROUP, C.VERSION, C.IPVSSETTINGS_PLURAL, _settings("case", spec),
                                         dry_run="All")
    assert exc.value.status == 422, exc.value.body
    message = json.loads(exc.value.body)["message"]
    assert field in message and fragment in message, message
    assert any(e.path == field for e in _model_errors(spec)), f"{name}: the operator's model accepts it"


def test_a_nodestate_timeout_out_of_range_is_rejected(api):
    from kubernetes.client.exceptions import ApiException
    body = {"apiVersion": C.API_VERSION, "kind": C.NODESTATE_KIND, "metadata": {"name": "case"},
            "spec": {"node": "n", "timeouts": {"tcpFin": MAX_IPVS_TIMEOUT + 1}}}
    with pytest.raises(ApiException) as exc:
        api.create_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL, body, dry_run="All")
    assert exc.value.status == 422 and "spec.timeouts.tcpFin" in json.loads(exc.value.body)["message"]


# --------------------------------------------------------------------------
# The operator, as its ServiceAccount
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def operator(control_plane, api, tmp_path_factory):
    cp = control_plane
    nodes = [node(N1, "10.30.0.1"), node(N2, "10.30.0.2")]
    for n in nodes:
        n["metadata"]["labels"][LABEL] = RUN
    cp.apply(nodes)
    op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, "kube-lvs-operator"),
                  tmp_path_factory.mktemp("operator-settings"), f"op-settings-{RUN}")
    wait_for(op.healthy, 60, "the operator's liveness endpoint")
    yield op
    op.stop()
    for name in (f"old-{RUN}", f"young-{RUN}"):
        cp.kubectl("delete", C.IPVSSETTINGS_PLURAL + "." + C.GROUP, name, "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", N1, N2, "--ignore-not-found", check=False)


def _states(api, name):
    items = api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                              label_selector=f"{C.LABEL_IPVSSETTINGS}={name}")["items"]
    return {o["metadata"]["name"]: o for o in items}


def _conditions(api, name):
    obj = api.get_cluster_custom_object(C.GROUP, C.VERSION, C.IPVSSETTINGS_PLURAL, name)
    return obj.get("status") or {}, {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_the_operator_compiles_settings_oldest_wins_edits_and_collects(control_plane, api, operator):
    old, young = f"old-{RUN}", f"young-{RUN}"
    control_plane.apply([_settings(old, {"nodeSelector": {"matchLabels": {"lvs-settings-test.kube-lvs.io/pick": "none",
                                                                         LABEL: RUN}},
                                         "timeouts": {"tcp": 600}})])
    # Selects nothing yet (no node has hostname-x): NoNodes, no NodeState.
    wait_for(lambda: _conditions(api, old)[1].get("Programmed", {}).get("reason") == "NoNodes", 60,
             "old to say NoNodes")
    assert _states(api, old) == {}
    control_plane.apply([_settings(old, {"nodeSelector": {"matchLabels": {"lvs-settings-test.kube-lvs.io/pick": "1",
                                                                         LABEL: RUN}},
                                         "timeouts": {"tcp": 600}, "expireNodestConn": False})])
    control_plane.kubectl("label", "node", N1, "lvs-settings-test.kube-lvs.io/pick=1", "--overwrite")
    time.sleep(1.1)  # creationTimestamp has whole seconds: young is younger
    control_plane.apply([_settings(young, {"nodeSelector": GROUP_SEL, "timeouts": {"tcp": 60, "udp": 20}})])

    want_old = {f"{N1}.ipvssettings.{old}": {"node": N1, "services": [], "timeouts": {"tcp": 600},
                                             "sysctls": {"net.ipv4.vs.expire_nodest_conn": "0"}}}
    want_young = {f"{N2}.ipvssettings.{young}": {"node": N2, "services": [], "timeouts": {"tcp": 60, "udp": 20}}}
    wait_for(lambda: {n: o["spec"] for n, o in _states(api, old).items()} == want_old, 60, "old's NodeState")
    wait_for(lambda: {n: o["spec"] for n, o in _states(api, young).items()} == want_young, 60, "young's NodeState")
    st = _states(api, old)[f"{N1}.ipvssettings.{old}"]
    assert st["metadata"]["labels"][C.LABEL_NODE] == N1
    assert st["metadata"]["labels"][C.LABEL_MANAGED_BY] == C.MANAGED_BY
    status, conds = wait_for(lambda: (s := _conditions(api, young))[1].get("Conflict", {}).get("status") == "True"
                             and s, 60, "young's Conflict")
    assert N1 in conds["Conflict"]["message"] and old in conds["Conflict"]["message"]
    assert status["nodes"] == [N2]

    # An agent's report (as lvs-agent writes it) makes it Programmed.
    name = f"{N1}.ipvssettings.{old}"
    obj = api.get_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL, name)
    gen = obj["metadata"]["generation"]
    api.patch_namespaced_custom_object_status(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL, name, {"status": {
        "observedGeneration": gen, "conditions": [{
            "type": "Programmed", "status": "True", "reason": "Applied", "message": "ok",
            "observedGeneration": gen, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    wait_for(lambda: _conditions(api, old)[1].get("Programmed", {}).get("status") == "True", 60, "old Programmed")

    # An edit rewrites the NodeState in place.
    control_plane.apply([_settings(old, {"nodeSelector": {"matchLabels": {"lvs-settings-test.kube-lvs.io/pick": "1",
                                                                         LABEL: RUN}},
                                         "timeouts": {"tcp": 300}})])
    wait_for(lambda: _states(api, old).get(name, {}).get("spec", {}).get("timeouts") == {"tcp": 300}
             and "sysctls" not in _states(api, old)[name]["spec"], 60, "old's edit")

    # Deleting the older one collects its NodeState and hands N1 to young.
    control_plane.kubectl("delete", C.IPVSSETTINGS_PLURAL + "." + C.GROUP, old)
    wait_for(lambda: _states(api, old) == {}, 60, "old's NodeState collected")
    wait_for(lambda: sorted(_states(api, young)) == sorted([f"{N1}.ipvssettings.{young}",
                                                            f"{N2}.ipvssettings.{young}"]), 60, "young on both")
    wait_for(lambda: _conditions(api, young)[1].get("Conflict", {}).get("status") == "False", 60,
             "young's Conflict cleared")


def test_the_operator_reads_ipvssettings_and_writes_only_their_status(control_plane, api):
    """deploy/'s RBAC both ways for the new kind (before it: no rule, every
    "yes" here was a "no" and the operator's caches never listed)."""
    def can(*args):
        r = control_plane.kubectl("auth", "can-i", *args,
                                  f"--as=system:serviceaccount:{OPNS}:kube-lvs-operator", check=False)
        return r.stdout.strip() == "yes"
    kind = f"{C.IPVSSETTINGS_PLURAL}.{C.GROUP}"
    assert can("list", kind) and can("watch", kind) and can("get", kind)
    assert can("patch", kind, "--subresource=status")
    assert not can("update", kind) and not can("patch", kind)  # the admins' spec
    assert not can("create", kind) and not can("delete", kind)
