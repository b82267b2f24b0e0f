"""This node's NodeStates (lvs_agent.store): what a list and each watch
event keep, mark and forget; the cache file seeds only before the first list
and is written at most every CACHE_EVERY, flushed on the way out."""
from __future__ import annotations

import json

from lvs_agent.store import CACHE_EVERY, NodeStates, only_status_changed


def obj(name, rv, vip="10.0.0.1", status=None, labels=None):
    o = {"metadata": {"name": name, "resourceVersion": rv, "labels": labels or {"n": "1"}},
         "spec": {"services": [{"address": vip, "port": 80}]}}
    if status is not None:
        o["status"] = status
    return o


class Api:
    def __init__(self, items, rv="10"):
        self.items, self.rv, self.kw = items, rv, []

    def list_namespaced_custom_object(self, *a, **kw):
        self.kw.append(kw)
        return {"items": [json.loads(json.dumps(o)) for o in self.items], "metadata": {"resourceVersion": self.rv}}


def store(tmp_path, api):
    seen = {"wake": 0, "forget": []}
    s = NodeStates(api, "ns", "n1", tmp_path / "cache.json", wake=lambda: seen.__setitem__("wake", seen["wake"] + 1),
                   forget=seen["forget"].append, stopped=lambda: False)
    return s, seen


def test_the_first_list_marks_everything_then_only_what_changed(tmp_path):
    api = Api([obj("a", "1"), obj("b", "1"), obj("c", "1")])
    s, seen = store(tmp_path, api)
    assert s.relist() == "10" and s.synced and not s.from_cache
    assert "labelSelector" not in api.kw[0] and api.kw[0]["label_selector"].endswith("n1")
    assert s.take_dirty() is None and seen["forget"] == [None, "a", "b", "c"] and seen["wake"] == 1
    before = dict(s.objects)
    api.items = [obj("a", "1"), obj("b", "2", status={"x": 1}), obj("c", "2", vip="10.0.0.9"), obj("d", "1")]
    s.relist()
    assert s.objects["a"] is before["a"]  # unchanged: the same dict (and so the same parse)
    assert s.objects["b"] is not before["b"] and s.objects["b"]["spec"] is before["b"]["spec"]  # status only
    assert s.take_dirty() == {"c", "d"} and seen["forget"][4:] == ["c", "d"]
    api.items = [obj("a", "1")]
    s.relist()
    assert set(s.objects) == {"a"} and s.take_dirty() == {"b", "c", "d"}  # the gone ones


def test_events_mark_and_forget_and_a_status_echo_keeps_the_spec(tmp_path):
    s, seen = store(tmp_path, Api([obj("a", "1")]))
    s.relist()
    s.take_dirty()
    seen["forget"].clear()
    spec = s.objects["a"]["spec"]
    s._event({"type": "MODIFIED", "object": obj("a", "2", status={"ok": True})})
    assert s.objects["a"]["spec"] is spec and s.take_dirty() == set() and not s.cache_dirty
    s._event({"type": "MODIFIED", "object": obj("a", "3", vip="10.0.0.2")})
    assert s.take_dirty() == {"a"} and s.cache_dirty and seen["forget"] == []  # a change: sent still counts
    s._event({"type": "DELETED", "object": obj("a", "4", vip="10.0.0.2")})
    s._event({"type": "ADDED", "object": obj("b", "5")})
    assert set(s.objects) == {"b"} and s.take_dirty() == {"a", "b"} and seen["forget"] == ["a", "b"]


def test_touch_none_marks_everything_until_taken(tmp_path):
    s, _ = store(tmp_path, Api([]))
    s.take_dirty()
    s.touch("a")
    s.touch()
    s.touch("b")
    assert s.take_dirty() is None and s.take_dirty() == set()


def test_the_cache_seeds_only_before_the_first_list(tmp_path):
    (tmp_path / "cache.json").write_text(json.dumps({"old": obj("old", "1")}))
    s, _ = store(tmp_path, Api([obj("new", "2")]))
    s.load_cache()
    assert set(s.objects) == {"old"} and s.synced and s.from_cache
    s.relist()
    assert set(s.objects) == {"new"} and not s.from_cache
    (tmp_path / "cache.json").write_text(json.dumps({"old": obj("old", "1")}))
    s.load_cache()  # too late: the list stands
    assert set(s.objects) == {"new"}


def test_cache_writes_are_spaced_and_flushed_on_the_way_out(tmp_path):
    s, _ = store(tmp_path, Api([obj("a", "1")]))
    s.relist()  # a list writes at once
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {"a"}
    s._event({"type": "ADDED", "object": obj("b", "2")})
    s.save_cache(now=False)
    assert s.cache_dirty and 0 < s.until_cache() <= CACHE_EVERY
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {"a"}
    s.save_cache_soon()
    s.flush_cache()  # joins the thread, writes what is left
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {"a", "b"} and not s.cache_dirty


def test_only_status_changed():
    a = obj("a", "1")
    assert only_status_changed(a, obj("a", "2", status={"x": 1}))
    assert not only_status_changed(None, a)
    assert not only_status_changed(a, obj("a", "2", vip="10.0.0.2"))
    assert not only_status_changed(a, obj("a", "2", labels={"n": "2"}))
