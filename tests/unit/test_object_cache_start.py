"""The object cache at start and stop, each race driven in its bad order
(no sleeps): the cache only ever seeds the objects before the first list, a
pass from the cache alone adds and updates only, and the cache is written on
the way out."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace

from lvs_agent import ops as O
from lvs_agent.main import Agent
from lvs_agent.store import CACHE_EVERY
from lvs_agent.object_cache import ObjectCache, additive, reconcile_from_cache
from lvs_agent.plan import Plan, plan, settle
from lvs_agent.state import Observed, Ownership
from lvs_model.nodespec import Dest, NodeSpec, Service


def obj(name: str, vip: str, rv: str = "1") -> dict:
    return {"metadata": {"name": name, "resourceVersion": rv},
            "spec": {"services": [{"address": vip, "port": 80, "scheduler": "rr",
                                   "dests": [{"address": "10.1.0.1", "port": 80}]}]}}


class ListingApi:
    """The API server's list: ``items`` at resourceVersion ``rv``."""

    def __init__(self, items: list[dict], rv: str = "9"):
        self.items, self.rv = items, rv

    def list_namespaced_custom_object(self, *a, **kw):
        return {"items": [json.loads(json.dumps(o)) for o in self.items], "metadata": {"resourceVersion": self.rv}}


class KernelEngine:
    """An engine over an in-memory kernel with the real planner: the full
    reconcile (``reconcile``) and the pieces reconcile_from_cache uses."""

    netns = None

    def __init__(self, kernel: Observed, owned: Ownership):
        self.kernel, self.owned, self._lock = kernel, owned, threading.RLock()
        self.applied: list[O.Op] = []
        self.full_reconciles = 0

    def plan(self, spec: NodeSpec):
        return plan(spec, self.kernel, self.owned, ""), self.kernel, self.owned, ""

    def _claim_apply_settle(self, p: Plan, owned: Ownership, claimed: Ownership) -> list:
        self.applied += p.ops
        for op in p.ops:
            match op:
                case O.AddService(s) | O.SetService(s):
                    self.kernel.services[s.key] = s
                case O.DelService(k):
                    del self.kernel.services[k]
        results = [(op, None) for op in p.ops]
        self.owned = settle(claimed, results)
        return results

    def reconcile(self, spec: NodeSpec, incremental: bool = False, sweep: int = 0):
        self.full_reconciles += not incremental
        p, *_ = self.plan(spec)
        self._claim_apply_settle(p, self.owned, self.owned)
        return SimpleNamespace(ops=p.ops, failed=[], service_errors={}, problems={})

    def connections(self, pause=None):
        return {}


def agent(tmp_path, api=None, engine=None) -> Agent:
    return Agent("n1", "kube-lvs-system", engine, api, tmp_path / "cache.json", resync=30.0)


def test_a_cache_load_after_the_first_list_changes_nothing(tmp_path):
    """The list finished before the start's cache load (a slow start, a fast
    API server). Before: the load replaced the listed objects with the older
    cache, and "a" (deleted meanwhile) stayed programmed: the watch resumed
    from the list's version and never said it again."""
    ObjectCache(tmp_path / "cache.json").save({"a": obj("a", "10.0.0.1"), "b": obj("b", "10.0.0.2")})
    a = agent(tmp_path, ListingApi([obj("b", "10.0.0.2", rv="7")]))
    read = a.store.cache.load()  # the start's load read the file: the list had not finished
    a.store.relist()  # now it has (and rewrote the file)
    a.store.cache.load = lambda: read
    a.store.load_cache()  # the load goes on with what it read
    assert set(a.objects) == {"b"} and a.objects["b"]["metadata"]["resourceVersion"] == "7"
    assert a.synced and not a.from_cache


def test_the_cache_seeds_before_the_first_list_and_the_list_replaces_it(tmp_path):
    ObjectCache(tmp_path / "cache.json").save({"a": obj("a", "10.0.0.1"), "b": obj("b", "10.0.0.2")})
    a = agent(tmp_path, ListingApi([obj("b", "10.0.0.5", rv="7")]))
    a.store.load_cache()
    assert set(a.objects) == {"a", "b"} and a.synced and a.from_cache
    a.store.take_dirty()
    a.store.relist()
    assert set(a.objects) == {"b"} and not a.from_cache
    assert a.objects["b"]["spec"]["services"][0]["address"] == "10.0.0.5"
    assert {"a", "b"} <= a.store.take_dirty()  # the gone one and the changed one are re-planned


def test_additive_keeps_adds_and_updates_only():
    svc = Service(address="10.0.0.1", port=80, scheduler="rr", dests=(Dest("10.1.0.1", 80),))
    keep = [O.AddLink("lvs0", "dummy"), O.SetLinkUp("lvs0"), O.SetSysctl("net.ipv4.ip_forward", "1"),
            O.AddAddress("lvs0", "10.0.0.1", 32), O.AddService(svc), O.SetService(svc),
            O.AddDest(svc, svc.dests[0]), O.SetDest(svc, svc.dests[0]),
            O.ReplaceNftTable("inet", "kube-lvs", "table ...", create=True)]
    drop = [O.DelService(svc.key), O.DelDest(svc.key, svc.dests[0].key), O.DelAddress("lvs0", "10.0.0.9", 32),
            O.DelLink("lvs1"), O.SetLinkUp("tunl0", False), O.SetSysctl("net.ipv4.ip_forward", "0", restore=True),
            O.ReplaceNftTable("inet", "kube-lvs", "table ...", create=False), O.DelNftTable("inet", "kube-lvs")]
    p = additive(Plan(drop[:4] + keep + drop[4:], {svc.key: "why"}))
    assert p.ops == keep and p.problems == {svc.key: "why"}


def owned_b_kernel() -> tuple[Observed, Ownership, Service]:
    """The kernel holds B, which the agent created after its last cache write."""
    b = Service(address="10.0.0.2", port=80, scheduler="rr")
    return Observed(services={b.key: b}), Ownership(services={b.key}, dests={b.key: set()}), b


def test_a_pass_from_the_cache_alone_never_removes_what_the_record_owns(tmp_path):
    """Before: the first pass was the engine's full reconcile of the cache's
    spec (A only), which deleted B, an owned service the API server still
    wants. Now it adds A and keeps B; the first full reconcile runs after
    the list, and removes only what the list no longer has."""
    kernel, owned, b = owned_b_kernel()
    eng = KernelEngine(kernel, owned)
    ObjectCache(tmp_path / "cache.json").save({"a": obj("a", "10.0.0.1")})
    a = agent(tmp_path, ListingApi([obj("a", "10.0.0.1"), obj("c", "10.0.0.3")]), eng)

    async def go():
        a.store.load_cache()
        await a.reconcile_once(full=True)
        assert eng.full_reconciles == 0 and a._last_full is None
        assert not any(isinstance(op, O.DelService) for op in eng.applied)
        assert b.key in kernel.services and b.key in eng.owned.services
        assert {s.address for s in kernel.services.values()} == {"10.0.0.1", "10.0.0.2"}
        a.store.relist()  # B's NodeState was deleted meanwhile: the list says so
        await a.reconcile_once(full=a._last_full is None)
        assert eng.full_reconciles == 1
        assert {s.address for s in kernel.services.values()} == {"10.0.0.1", "10.0.0.3"}
        a.status.stop()
    asyncio.run(go())


def test_reconcile_from_cache_reports_what_it_did(tmp_path):
    kernel, owned, b = owned_b_kernel()
    eng = KernelEngine(kernel, owned)
    a_svc = Service(address="10.0.0.1", port=80, scheduler="rr", dests=(Dest("10.1.0.1", 80),))
    r = reconcile_from_cache(eng, NodeSpec(services=(a_svc,)))
    assert [type(op).__name__ for op in r.ops if isinstance(op, O.IPVS_OPS)] == ["AddService", "AddDest"]
    assert r.programmed == [a_svc.key] and r.ok
    assert eng.owned.services == {a_svc.key, b.key}


def test_the_cache_is_written_on_the_way_out(tmp_path):
    """A watch event shortly after a cache write, then SIGTERM. Before: the
    write waited CACHE_EVERY seconds and the stop came first: a restart
    without the API server programmed the older objects."""
    a = agent(tmp_path, None, KernelEngine(Observed(), Ownership()))
    a.objects = {"o1": obj("o1", "10.0.0.1")}
    a.synced = True
    a.store.run = lambda: None  # no API server here
    a.store.save_cache()

    async def go():
        task = asyncio.create_task(a.run())
        await asyncio.sleep(0)
        a.store._event({"type": "ADDED", "object": obj("o2", "10.0.0.2")})
        a.store._event({"type": "DELETED", "object": obj("o1", "10.0.0.1")})
        assert a.store.cache_dirty and time.monotonic() - a.store.cache_saved < CACHE_EVERY
        a.stopping = True
        a.wake()
        await asyncio.wait_for(task, 10)
    asyncio.run(go())
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {"o2"}
