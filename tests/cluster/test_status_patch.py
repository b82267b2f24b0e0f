"""The lean status writer against a real API server: it writes what the
kubernetes client would, through the client's own TLS and auth, over one
kept-alive connection, and a refused write names the HTTP status."""
from __future__ import annotations

import json

import pytest

from lvs_model.channel import GROUP, NODESTATE_PLURAL, VERSION
from lvs_kube.status_patch import JSON_PATCH, PatchError, StatusPatcher


@pytest.fixture
def api(nodestate_api):
    return nodestate_api


def _status(message: str, generation: int = 1) -> dict:
    return {"observedGeneration": generation, "conditions": [{
        "type": "Programmed", "status": "True", "reason": "Applied", "message": message,
        "lastTransitionTime": "2026-12-01T00:00:00Z", "observedGeneration": generation}]}


def test_status_patch_writes_the_status_only_and_names_a_refusal(api, kube_namespace):
    ns, P = kube_namespace, NODESTATE_PLURAL
    api.create_namespaced_custom_object(GROUP, VERSION, ns, P, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeState", "metadata": {"name": "o1"},
        "spec": {"node": "n1", "services": []}})
    p = StatusPatcher(api.api_client)
    p.patch(P, ns, "o1", {"status": _status("all services programmed"), "spec": {"node": "n2"}})
    got = api.get_namespaced_custom_object(GROUP, VERSION, ns, P, "o1")
    assert got["status"]["conditions"][0]["reason"] == "Applied" and got["spec"]["node"] == "n1"  # status only
    p.patch(P, ns, "o1", {"status": {"observedGeneration": 2}})  # a merge patch: the rest stays
    got = api.get_namespaced_custom_object(GROUP, VERSION, ns, P, "o1")
    assert got["status"]["observedGeneration"] == 2 and got["status"]["conditions"]
    with pytest.raises(PatchError) as e:
        p.patch(P, ns, "gone", {"status": _status("x")})
    assert e.value.status == 404 and "not found" in str(e.value)


def test_many_writes_share_one_connection_and_return_the_object(api, kube_namespace):
    """The operator's JSON patch, answers small and large (the API server
    chunks a large body), 50 writes in a row on the connection a refusal left."""
    ns, P = kube_namespace, NODESTATE_PLURAL
    api.create_namespaced_custom_object(GROUP, VERSION, ns, P, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeState", "metadata": {"name": "o2"},
        "spec": {"node": "n1", "services": []}})
    p = StatusPatcher(api.api_client)
    for i in range(50):
        message = f"write {i} " + "x" * (20000 if i % 2 else 10)
        obj = json.loads(p.patch(P, ns, "o2", [{"op": "add", "path": "/status", "value": _status(message, i)}],
                                 JSON_PATCH))
        assert obj["metadata"]["name"] == "o2" and obj["status"]["conditions"][0]["message"] == message
    assert len(p._idle) == 1  # one connection carried them all
    got = api.get_namespaced_custom_object(GROUP, VERSION, ns, P, "o2")
    assert got["status"]["observedGeneration"] == 49
