"""The agent's list+watch against a real API server: a watch the server ends
is resumed from its resourceVersion, not relisted (a relist of 10k objects is
minutes in the lab VM), and a relist keeps the objects it finds unchanged
(their dicts, so their parses) and marks only the ones that changed."""
from __future__ import annotations

import threading
import time

import pytest

from lvs_agent.main import Agent
from lvs_model.channel import GROUP, LABEL_NODE, NODESTATE_PLURAL, VERSION, label_value



def nodestate(name: str, vip: str, weight: int = 1) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NodeState",
            "metadata": {"name": name, "labels": {LABEL_NODE: label_value("n1")}},
            "spec": {"node": "n1", "services": [{"address": vip, "port": 80, "scheduler": "rr",
                                                 "dests": [{"address": "10.1.0.1", "port": 80, "weight": weight}]}]}}


@pytest.fixture
def api(nodestate_api):
    return nodestate_api


def wait(what: str, cond, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_watch_is_resumed_not_relisted_and_a_relist_keeps_unchanged_objects(api, kube_namespace, tmp_path):
    ns = kube_namespace
    for i in range(3):
        api.create_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, nodestate(f"o{i}", f"10.0.0.{i + 1}"))
    lists = {"list": 0, "watch": 0}
    real_list = api.list_namespaced_custom_object

    def counted(*a, **kw):
        lists["watch" if kw.get("watch") else "list"] += 1
        return real_list(*a, **kw)
    api.list_namespaced_custom_object = counted
    a = Agent("n1", ns, object(), api, tmp_path / "cache.json")  # no reconcile here: no engine
    a.store.informer.watch_seconds = 2
    t = threading.Thread(target=a.store.run, daemon=True)
    t.start()
    try:
        wait("the first list", lambda: a.synced and len(a.objects) == 3)
        first = dict(a.objects)
        assert a.store.take_dirty() is None  # the first list: every status
        wait("three watches ended by the server", lambda: lists["watch"] >= 3, 20)
        api.create_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, nodestate("o3", "10.0.0.4"))
        wait("the new object", lambda: "o3" in a.objects)
        assert lists["list"] == 1  # resumed each time, never listed again
        assert all(a.objects[n] is first[n] for n in first)
        assert a.store.take_dirty() == {"o3"}

        # A relist (what an expired watch or an error leads to): o1 changed meanwhile,
        # o2 only in status; the rest keep their dicts, only o1 is marked.
        a.stopping = True  # the watch thread ends at its next event (not applied) or expiry
        o1 = api.get_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, "o1")
        o1["spec"]["services"][0]["dests"][0]["weight"] = 9
        api.replace_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, "o1", o1)
        t.join(10)
        assert not t.is_alive()
        api.patch_namespaced_custom_object_status(GROUP, VERSION, ns, NODESTATE_PLURAL, "o2",
                                                  {"status": {"observedGeneration": 1}})
        api.delete_namespaced_custom_object(GROUP, VERSION, ns, NODESTATE_PLURAL, "o3")
        before = dict(a.objects)
        a.store.take_dirty()
        a.store.relist()
        assert sorted(a.objects) == ["o0", "o1", "o2"]
        assert a.objects["o0"] is before["o0"]
        assert a.objects["o2"] is not before["o2"] and a.objects["o2"]["spec"] is before["o2"]["spec"]
        assert a.objects["o1"]["spec"]["services"][0]["dests"][0]["weight"] == 9
        assert a.store.take_dirty() == {"o1", "o3"}
    finally:
        a.stopping = True
