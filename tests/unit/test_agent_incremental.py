"""The agent loop with an incremental engine: watch wake-ups reconcile
incrementally, resyncs fully; connection counts and statuses are refreshed
only where they may have changed (stale_statuses)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace

from lvs_agent.main import Agent
from lvs_agent.store import CACHE_EVERY
from lvs_agent.nodestate import StatusInputs, stale_statuses
from lvs_model.nodespec import DestKey, ServiceKey

K1 = ServiceKey("ipv4", "tcp", "10.0.0.1", 80)
K2 = ServiceKey("ipv4", "tcp", "10.0.0.2", 80)
D = DestKey("10.1.0.1", 80)


# ---- stale_statuses -------------------------------------------------------------------

def test_same_inputs_nothing_stale():
    a = StatusInputs({K1: "a", K2: "b"}, {K2: "boom"}, {"c": ["bad"]}, {(K1, D): "Healthy"})
    assert stale_statuses(a, StatusInputs(dict(a.owner), dict(a.errors), dict(a.merge_errors),
                                          dict(a.health))) == set()


def test_each_input_marks_its_owner():
    base = StatusInputs({K1: "a", K2: "b"})
    assert stale_statuses(base, StatusInputs({K1: "a", K2: "c"})) == {"b", "c"}  # changed hands
    assert stale_statuses(base, StatusInputs({K1: "a"})) == {"b"}  # service gone
    assert stale_statuses(base, StatusInputs(base.owner, {K1: "EEXIST"})) == {"a"}  # error appears
    assert stale_statuses(StatusInputs(base.owner, {K1: "x"}), base) == {"a"}  # and goes
    assert stale_statuses(base, StatusInputs(base.owner, merge_errors={"z": ["bad"]})) == {"z"}
    assert stale_statuses(base, StatusInputs(base.owner, health={(K2, D): "Unhealthy"})) == {"b"}
    # An error for a key nobody owns any more marks nobody.
    assert stale_statuses(StatusInputs({}, {K1: "x"}), StatusInputs()) == set()


# ---- the loop -------------------------------------------------------------------------

class FakeEngine:
    netns = None

    def __init__(self):
        self.calls: list[bool] = []
        self.sweeps: list[int] = []
        self.conn_reads = 0
        self.fail_for: set = set()
        self.during = None  # called inside reconcile (an event arriving meanwhile)

    def reconcile(self, spec, incremental: bool = False, sweep: int = 0):
        self.calls.append(incremental)
        self.sweeps.append(sweep)
        if self.during is not None:
            self.during()
        errs = {s.key: "EEXIST: File exists" for s in spec.services if s.address in self.fail_for}
        return SimpleNamespace(ops=[], failed=[], service_errors=errs, problems={})

    def connections(self, pause=None):
        self.conn_reads += 1
        return dict(getattr(self, "conns", {}))


class FakeApi:
    def __init__(self):
        self.patched: list[str] = []
        self.broken: set[str] = set()

    def patch_namespaced_custom_object_status(self, group, version, ns, plural, name, body):
        if name in self.broken:
            raise RuntimeError("API down")
        self.patched.append(name)


def obj(name: str, vip: str, weight: int = 1, generation: int = 1) -> dict:
    return {"metadata": {"name": name, "generation": generation},
            "spec": {"services": [{"address": vip, "port": 80, "scheduler": "rr",
                                   "dests": [{"address": "10.1.0.1", "port": 80, "weight": weight}]}]}}


async def settled(a: Agent, full: bool) -> None:
    """One pass, and its statuses built and written (the status threads)."""
    await a.reconcile_once(full=full)
    assert await asyncio.to_thread(a.status.wait_idle, 10)


def agent(tmp_path: Path) -> tuple[Agent, FakeEngine, FakeApi]:
    eng, api = FakeEngine(), FakeApi()
    a = Agent("n1", "kube-lvs-system", eng, api, tmp_path / "cache.json", resync=30.0,
              conn_status_interval=30.0)
    a.objects = {f"o{i}": obj(f"o{i}", f"10.0.0.{i}") for i in range(1, 4)}
    a._touch()
    return a, eng, api


def test_full_then_incremental_passes_touch_only_what_changed(tmp_path):
    a, eng, api = agent(tmp_path)

    async def go():
        await settled(a, full=True)
        assert eng.calls == [False] and eng.conn_reads == 1
        assert sorted(api.patched) == ["o1", "o2", "o3"]  # first statuses: all
        api.patched.clear()
        # A watch event changes o2: incremental, no table read, only o2's status.
        a.objects["o2"] = obj("o2", "10.0.0.2", weight=5, generation=2)
        a._touch("o2")
        await settled(a, full=False)
        assert eng.calls == [False, True] and eng.conn_reads == 1
        assert api.patched == ["o2"]
        api.patched.clear()
        # The engine now fails o3's service: o3's status, though nobody touched o3.
        eng.fail_for = {"10.0.0.3"}
        await settled(a, full=False)
        assert api.patched == ["o3"] and eng.conn_reads == 1
        st = a.objects["o3"]["status"]
        assert st["services"][0]["programmed"] is False and "EEXIST" in st["services"][0]["error"]
        api.patched.clear()
        # A resync: full, connection counts read, every status looked at (none changed).
        await settled(a, full=True)
        assert eng.calls[-1] is False and eng.conn_reads == 2 and api.patched == []
    asyncio.run(go())


def test_failed_status_write_is_retried_on_the_next_pass(tmp_path):
    a, eng, api = agent(tmp_path)

    async def go():
        api.broken = {"o1"}
        await settled(a, full=True)
        assert sorted(api.patched) == ["o2", "o3"]
        api.broken, api.patched = set(), []
        await settled(a, full=False)
        assert api.patched == ["o1"]
    asyncio.run(go())


def test_event_during_a_reconcile_is_not_lost(tmp_path):
    a, eng, api = agent(tmp_path)

    async def go():
        await settled(a, full=True)
        api.patched.clear()

        def event():  # the watch thread, while the engine works on the previous merge
            a.objects["o1"] = obj("o1", "10.0.0.1", generation=7)
            a._touch("o1")
            eng.during = None
        eng.during = event
        await settled(a, full=False)
        await settled(a, full=False)
        assert a.objects["o1"]["status"]["observedGeneration"] == 7
        assert api.patched == ["o1"]
    asyncio.run(go())


def test_connection_counts_refresh_at_most_every_interval(tmp_path):
    a, eng, _ = agent(tmp_path)
    a.reporter.conn_status_interval = 0.0

    async def go():
        await settled(a, full=True)
        await settled(a, full=False)
        assert eng.conn_reads == 2  # interval passed: read again, even incrementally
    asyncio.run(go())


def test_loop_first_pass_is_full_then_incremental_passes_sweep_with_the_clock(tmp_path):
    """After the full first pass, every pass is incremental, woken or not, and
    sweeps a slice sized so that all services (3 here, +1) are re-checked once
    per resync period: 2 s here, a pass every 0.5 s, so 1 service per pass."""
    a, eng, _ = agent(tmp_path)
    a.synced = True
    a.resync = 2.0

    async def go():
        task = asyncio.create_task(a.run())
        while len(eng.calls) < 4:
            await asyncio.sleep(0.01)
        a.wake()
        while len(eng.calls) < 6:
            await asyncio.sleep(0.01)
        a.stopping = True
        a.wake()
        await asyncio.wait_for(task, 5)
    a.store.run = lambda: None  # no API server here
    asyncio.run(go())
    assert eng.calls[0] is False and all(eng.calls[1:])
    assert eng.sweeps[0] == 0 and all(1 <= n <= 2 for n in eng.sweeps[1:4]), eng.sweeps


def test_merge_reuses_the_parse_of_unchanged_objects():
    from lvs_agent.nodestate import merge
    objects = {f"o{i}": obj(f"o{i}", f"10.0.0.{i}") for i in range(1, 4)}
    first = merge(objects, "n1")
    objects = {**objects, "o2": obj("o2", "10.0.0.2", weight=4, generation=2)}  # as the watch replaces it
    second = merge(objects, "n1", first.parsed)
    assert second.parsed["o1"] is first.parsed["o1"] and second.parsed["o3"] is first.parsed["o3"]
    assert second.parsed["o2"] is not first.parsed["o2"]
    same = [a is b for a, b in zip(first.spec.services, second.spec.services)]
    assert same == [True, False, True]
    assert second.spec == merge(objects, "n1").spec  # reuse changes nothing else
    # A clash is still found with reused parses.
    objects["o4"] = obj("o4", "10.0.0.1")
    third = merge(objects, "n1", second.parsed)
    assert "already programmed by o1" in str(third.errors["o4"][0])


def test_effective_spec_keeps_services_without_failed_servers():
    from dataclasses import replace as dc_replace

    from lvs_agent.verdicts import UNHEALTHY, DestHealth, effective_spec
    from lvs_agent.nodestate import merge
    doc = obj("o1", "10.0.0.1")
    doc["spec"]["services"][0]["healthCheck"] = {"type": "tcp"}
    doc2 = obj("o2", "10.0.0.2")
    doc2["spec"]["services"][0]["healthCheck"] = {"type": "tcp"}
    spec = merge({"o1": doc, "o2": doc2}, "n1").spec
    assert effective_spec(spec, {}) is spec
    s1, s2 = spec.services
    verdicts = {(s1.key, s1.dests[0].key): DestHealth(UNHEALTHY), (s2.key, s2.dests[0].key): DestHealth()}
    eff = effective_spec(spec, verdicts)
    assert eff.services[0].dests[0].weight == 0 and eff.services[1] is s2
    assert eff.services[0] == dc_replace(s1, dests=(dc_replace(s1.dests[0], weight=0),))


def test_only_status_changed():
    from lvs_agent.main import only_status_changed
    a = dict(obj("o1", "10.0.0.1"), status={"services": []})
    b = dict(obj("o1", "10.0.0.1"), status={"services": [{"programmed": True}]})
    b["metadata"] = dict(b["metadata"], resourceVersion="9", managedFields=[{"manager": "lvs-agent"}])
    assert only_status_changed(a, b)  # our own status write coming back
    assert not only_status_changed(None, b)  # new object
    assert not only_status_changed(a, obj("o1", "10.0.0.1", weight=3))  # spec
    c = dict(b, metadata=dict(b["metadata"], labels={"x": "y"}))
    assert not only_status_changed(a, c)  # labels


def test_cache_writes_are_spaced_but_never_lost(tmp_path):
    import json
    a, _, _ = agent(tmp_path)
    a.store.save_cache()
    assert set(json.loads((tmp_path / "cache.json").read_text())) == {"o1", "o2", "o3"}
    a.objects["o4"] = obj("o4", "10.0.0.4")
    a.store.save_cache(now=False)  # within CACHE_EVERY of the last write: deferred
    assert "o4" not in json.loads((tmp_path / "cache.json").read_text()) and a.store.cache_dirty
    a.store.cache_saved -= CACHE_EVERY
    a.store.save_cache(now=False)
    assert "o4" in json.loads((tmp_path / "cache.json").read_text()) and not a.store.cache_dirty


def test_moved_connection_counts_rebuild_only_their_objects(tmp_path):
    a, eng, api = agent(tmp_path)
    a.reporter.conn_status_interval = 0.0

    async def go():
        await settled(a, full=True)
        api.patched.clear()
        eng.conns = {(K2, "10.1.0.1", 80): (3, 1)}
        await settled(a, full=False)
        assert api.patched == ["o2"]
        assert a.objects["o2"]["status"]["dests"][0]["activeConns"] == 3
        api.patched.clear()
        await settled(a, full=False)  # read again, nothing moved: nothing written
        assert api.patched == [] and eng.conn_reads == 3
    asyncio.run(go())


def test_counts_held_back_by_the_interval_are_written_once_it_has_passed(tmp_path):
    """Counts that moved within conn_status_interval of the object's last write
    wait; the next read sees them unmoved, yet they are still written once the
    interval is over (CI saw them never reach the RealServer's status)."""
    a, eng, api = agent(tmp_path)

    async def go():
        await settled(a, full=True)
        api.patched.clear()
        a.reporter.conn_status_interval = 0.0  # the next read is due now ...
        a.reporter.last_write = {n: time.monotonic() for n in a.objects}
        a.reporter.conn_status_interval = 30.0  # ... but o2 was written just now
        a.reporter.conns_at = None
        eng.conns = {(K2, "10.1.0.1", 80): (0, 4)}
        await settled(a, full=False)
        assert api.patched == [] and eng.conn_reads == 2  # read, held back
        a.reporter.last_write["o2"] -= 31  # the interval is over; the counts did not move again
        await settled(a, full=False)
        assert api.patched == ["o2"] and eng.conn_reads == 2
        assert a.objects["o2"]["status"]["dests"][0]["inactiveConns"] == 4
        api.patched.clear()
        a.reporter.last_write["o2"] -= 31
        await settled(a, full=False)
        assert api.patched == []  # written once, owed no more
    asyncio.run(go())


def test_watch_event_wakes_without_writing_the_cache_and_the_cache_is_slim(tmp_path):
    import json
    a, _, _ = agent(tmp_path)
    o = obj("o9", "10.0.0.9")
    o["metadata"]["managedFields"] = [{"manager": "lvs-operator", "fieldsV1": {"f:spec": {}}}]
    a.store._event({"type": "ADDED", "object": o})
    assert a.store.cache_dirty and not a.store.cache_path.exists()  # the loop writes it, in its own thread
    a.store.save_cache_soon()
    a.store.cache_thread.join(5)
    cached = json.loads(a.store.cache_path.read_text())
    assert cached["o9"]["spec"] == o["spec"] and "managedFields" not in cached["o9"]["metadata"]
    assert a.objects["o9"]["metadata"]["managedFields"]  # the live object keeps them


def test_gc_pauses_freeze_what_survived_at_most_every_settle_period_and_reclaim_hourly(monkeypatch):
    import gc

    from lvs_agent.gcpause import GCPauses
    calls = []
    for name in ("freeze", "unfreeze"):
        monkeypatch.setattr(gc, name, lambda name=name: calls.append(name))
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or 0)
    now = [1000.0]
    p = GCPauses(clock=lambda: now[0])
    assert p.settle() and calls == ["collect", "freeze"]  # garbage first: it must not be frozen
    now[0] += p.SETTLE_EVERY - 1
    assert not p.settle() and len(calls) == 2
    now[0] += 1
    assert p.settle() and calls[2:] == ["collect", "freeze"]
    now[0] += p.RECLAIM_EVERY
    assert p.settle() and calls[4:] == ["unfreeze", "collect", "freeze"] and p.reclaims == 1
    # Passes that all program changes: a freeze without a collection once settles starve.
    del calls[:]
    now[0] += p.STARVED - 1
    assert not p.freeze_starved() and calls == []
    now[0] += 1
    assert p.freeze_starved() and calls == ["freeze"]
    assert not p.freeze_starved() and not p.settle() and calls == ["freeze"]  # it counts as one


def test_agent_settles_the_heap_only_in_passes_without_a_change(tmp_path):
    a, _, _ = agent(tmp_path)
    calls = []
    a.gc.settle = lambda: calls.append("settle")
    a.gc.freeze_starved = lambda: calls.append("freeze_starved")
    a.gc.before_full_pass = lambda: calls.append("before_full_pass")

    async def go():
        await settled(a, full=True)
        assert calls[0] == "before_full_pass"  # the spec frozen before the full pass walks the table
        del calls[:]
        await a.reconcile_once(woken=True)
        assert calls == ["freeze_starved"]  # a change's pass: at most a freeze, never a collection
        await a.reconcile_once(woken=False)
        assert calls == ["freeze_starved", "settle"]
    asyncio.run(go())


def test_gc_pauses_freeze_before_a_full_pass_without_collecting(monkeypatch):
    import gc

    from lvs_agent.gcpause import GCPauses
    calls = []
    for name in ("freeze", "collect"):
        monkeypatch.setattr(gc, name, lambda name=name: calls.append(name))
    p = GCPauses(clock=lambda: 0.0)
    p.before_full_pass()
    assert calls == ["freeze"] and p.freezes == 1


def test_gc_pauses_count_slow_collections(caplog):
    import logging

    from lvs_agent.gcpause import GCPauses
    caplog.set_level(logging.INFO, logger="lvs_agent.gcpause")
    p = GCPauses().install()
    try:
        p.SLOW = 0.0
        import gc
        gc.collect()
    finally:
        p.uninstall()
    assert p.slow >= 1 and p.longest > 0
    assert "garbage collection of generation 2 took" in caplog.text
    assert p._timer not in gc.callbacks


def test_a_pass_merges_a_copy_and_survives_a_failed_merge(tmp_path, monkeypatch):
    """The watch thread deletes objects while the loop merges: the merge gets
    a copy (iterating the live map met a name deleted under it, a KeyError
    that ended the loop in bench part 5). A merge that fails all the same
    is counted, and the next pass merges everything again."""
    import lvs_agent.main as M
    a, eng, _ = agent(tmp_path)
    real, seen = M.merge, []

    def flaky(objects, node, previous=None, changed=None):
        seen.append(objects)
        if len(seen) == 2:
            raise KeyError("nat-director-gone")
        return real(objects, node, previous, changed)
    monkeypatch.setattr(M, "merge", flaky)

    async def go():
        await settled(a, full=True)
        assert seen[0] is not a.objects and seen[0] == a.objects
        a.objects["o2"] = obj("o2", "10.0.0.2", weight=5, generation=2)
        a._touch("o2")
        await a.reconcile_once(woken=True)  # the merge fails: nothing programmed, the loop goes on
        assert a.reconcile_errors == 1 and eng.calls == [False] and a._merged is None
        await settled(a, full=False)
        assert seen[-1] == a.objects and len(eng.calls) == 2
        assert eng.calls[-1] is True  # an incremental pass, from a full merge
    asyncio.run(go())


def test_connection_counts_wait_while_built_statuses_wait_for_a_writer(tmp_path):
    """Counts read during a status backlog would go into statuses that cannot be
    written yet: the read waits (still due) until the writers have caught up."""
    import threading
    a, eng, api = agent(tmp_path)
    a.reporter.conn_status_interval = 0.0
    gate = threading.Event()
    write = api.patch_namespaced_custom_object_status

    def slow(*args):
        gate.wait(10)
        write(*args)
    api.patch_namespaced_custom_object_status = slow

    async def go():
        gate.set()
        await settled(a, full=True)
        assert eng.conn_reads == 1
        gate.clear()
        for i in range(1, 4):  # three new statuses, two writers: one waits in the queue
            a.objects[f"o{i}"] = obj(f"o{i}", f"10.0.0.{i}", weight=7, generation=2)
            a._touch(f"o{i}")
        await a.reconcile_once(full=False)
        deadline = time.monotonic() + 10
        while a.status.backlog != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert a.status.backlog == 1
        reads = eng.conn_reads  # that pass's build read them: nothing was queued yet
        await a.reconcile_once(full=False)  # counts due (interval 0), the backlog not drained
        await asyncio.sleep(0.2)
        assert eng.conn_reads == reads and a.reporter.conns_due
        gate.set()
        assert await asyncio.to_thread(a.status.wait_idle, 10)
        await settled(a, full=False)
        assert eng.conn_reads == reads + 1 and sorted(api.patched) == ["o1", "o1", "o2", "o2", "o3", "o3"]
    asyncio.run(go())
