"""The agent's lean status writer against a real API server: it writes what
the kubernetes client would, through the client's own TLS and auth, and a
refused write names the HTTP status."""
from __future__ import annotations


import pytest

from lvs_agent.status_patch import PatchError, StatusPatcher
from lvs_model.channel import GROUP, NODESTATE_PLURAL, VERSION



@pytest.fixture
def api(nodestate_api):
    return nodestate_api


def test_status_patch_writes_the_status_only_and_names_a_refusal(api, kube_namespace):
    ns = kube_namespace
    api.create_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeState", "metadata": {"name": "o1"},
        "spec": {"node": "n1", "services": []}})
    p = StatusPatcher(api.api_client)
    status = {"observedGeneration": 1, "conditions": [{
        "type": "Programmed", "status": "True", "reason": "Applied", "message": "all services programmed",
        "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": 1}]}
    p.patch(ns, "o1", {"status": status, "spec": {"node": "n2"}})  # the status subresource ignores spec
    got = api.get_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, "o1")
    assert got["status"]["conditions"][0]["reason"] == "Applied" and got["spec"]["node"] == "n1"
    p.patch(ns, "o1", {"status": {"observedGeneration": 2}})  # a merge patch: the rest stays
    got = api.get_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, "o1")
    assert got["status"]["observedGeneration"] == 2 and got["status"]["conditions"]
    with pytest.raises(PatchError) as e:
        p.patch(ns, "gone", {"status": status})
    assert e.value.status == 404 and "not found" in str(e.value)
