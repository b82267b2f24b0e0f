"""The operator's shell without a cluster: Lease election, cache overlays, memoised compiles."""
from __future__ import annotations

import asyncio
import copy

import pytest

from lvs_operator import leader as L
from lvs_operator.compiler import compile_cluster
from lvs_operator.objects import project
from lvs_operator.compile_cache import CompileCache
from lvs_operator.reconciler import Reconciler

from test_compiler import NODES, POOLS, rs, vs


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class FakeLeases:
    """get/create/replace of one Lease with resourceVersion conflicts, like the API server."""

    def __init__(self):
        self.obj = None
        self.rv = 0
        self.down = False

    def _check(self):
        if self.down:
            raise ConnectionError("API server away")

    def get_namespaced_custom_object(self, group, version, ns, plural, name):
        from kubernetes.client.exceptions import ApiException
        self._check()
        if self.obj is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.obj)

    def create_namespaced_custom_object(self, group, version, ns, plural, body):
        from kubernetes.client.exceptions import ApiException
        self._check()
        if self.obj is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.rv += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.obj)

    def replace_namespaced_custom_object(self, group, version, ns, plural, name, body):
        from kubernetes.client.exceptions import ApiException
        self._check()
        if body["metadata"].get("resourceVersion") != self.obj["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.rv += 1
        self.obj = copy.deepcopy(body)
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(self.obj)

    @property
    def holder(self):
        return (self.obj or {}).get("spec", {}).get("holderIdentity")


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(L.time, "monotonic", c)
    return c


def test_one_leader_and_takeover_only_after_expiry(clock):
    api = FakeLeases()
    a = L.LeaseElector(api, "ns", "lease", "a", duration=10, renew_every=2, margin=2)
    b = L.LeaseElector(api, "ns", "lease", "b", duration=10, renew_every=2, margin=2)
    assert a.try_acquire_or_renew() and a.is_leader and api.holder == "a"
    for _ in range(10):  # a keeps renewing: b never gets it
        clock.t += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew() and not b.is_leader
    # a stops renewing (hung, partitioned): it steps down before b may take over.
    clock.t += 8.5
    assert not a.is_leader
    assert not b.try_acquire_or_renew()  # b saw the record change 8.5 s ago: not expired yet
    clock.t += 2
    assert b.try_acquire_or_renew() and b.is_leader and api.holder == "b"
    assert api.obj["spec"]["leaseTransitions"] == 1
    # a comes back: it sees b's fresh record and stays a follower.
    assert not a.try_acquire_or_renew() and not a.is_leader


def test_release_hands_over_at_once(clock):
    api = FakeLeases()
    a = L.LeaseElector(api, "ns", "lease", "a", duration=10)
    b = L.LeaseElector(api, "ns", "lease", "b", duration=10)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader and api.holder is None
    assert b.try_acquire_or_renew() and api.holder == "b"


def test_leader_steps_down_when_the_api_server_is_away(clock):
    api = FakeLeases()
    changes = []
    a = L.LeaseElector(api, "ns", "lease", "a", duration=10, margin=2, on_change=changes.append)
    assert a.try_acquire_or_renew()
    a._notify()
    api.down = True
    clock.t += 7
    with pytest.raises(ConnectionError):
        a.try_acquire_or_renew()
    assert a.is_leader  # still within duration - margin
    clock.t += 1.5
    a._notify()
    assert not a.is_leader and changes == [True, False]


def test_conflicting_write_means_follower(clock):
    api = FakeLeases()
    a = L.LeaseElector(api, "ns", "lease", "a")
    assert a.try_acquire_or_renew()
    real_get = api.get_namespaced_custom_object

    def stale_get(*args):  # someone writes between our read and our write
        obj = real_get(*args)
        api.rv += 1
        api.obj["metadata"]["resourceVersion"] = str(api.rv)
        return obj
    api.get_namespaced_custom_object = stale_get
    assert not a.try_acquire_or_renew() and not a.is_leader


# --------------------------------------------------------------------------
# Overlays: what we just wrote wins over a cache that has not caught up
# --------------------------------------------------------------------------

def _ns_obj(name, rv, spec):
    return {"metadata": {"name": name, "namespace": "kube-lvs-system", "resourceVersion": str(rv)}, "spec": spec}


def test_overlay_until_the_watch_catches_up():
    r = Reconciler("kube-lvs-system", api_factory=lambda: None)
    cache = {("kube-lvs-system", "x"): _ns_obj("x", 5, {"node": "old"}),
             ("kube-lvs-system", "gone"): _ns_obj("gone", 6, {"node": "g"})}
    r.caches = {"nodestates": cache}
    r.overlay.entries[("nodestates", "kube-lvs-system", "x")] = (project("nodestates", _ns_obj("x", 9, {"node": "new"})), 1e18)
    r.overlay.entries[("nodestates", "kube-lvs-system", "gone")] = (None, 1e18)
    snap = r.snapshot()["nodestates"]
    assert [o["spec"]["node"] for o in snap] == ["new"]  # written and deleted by us
    cache[("kube-lvs-system", "x")] = _ns_obj("x", 9, {"node": "new"})
    del cache[("kube-lvs-system", "gone")]
    assert [o["spec"]["node"] for o in r.snapshot()["nodestates"]] == ["new"]
    assert r.overlay.entries == {}  # caught up: overlays dropped
    # A newer version from someone else (an agent's status write) wins over an older overlay.
    r.overlay.entries[("nodestates", "kube-lvs-system", "x")] = (project("nodestates", _ns_obj("x", 8, {"node": "mine"})), 1e18)
    assert [o["spec"]["node"] for o in r.snapshot()["nodestates"]] == ["new"]


# --------------------------------------------------------------------------
# Memoised compiles: keyed by resourceVersion, so a new version is recompiled
# --------------------------------------------------------------------------

def test_memo_follows_resource_versions():
    cache = CompileCache()
    vss = [vs("web", address="192.168.0.30", port=80)]
    rss = [rs("a", "web", "10.0.0.51"), rs("b", "web", "10.0.0.52")]
    for i, o in enumerate(vss + rss):
        o["metadata"]["resourceVersion"] = str(i + 1)
    first = compile_cluster(vss, rss, POOLS, NODES, cache=cache)
    again = compile_cluster(copy.deepcopy(vss), copy.deepcopy(rss), POOLS, NODES, cache=cache)
    assert again.nodestates == first.nodestates
    rss[1]["spec"]["weight"] = 9
    rss[1]["metadata"]["resourceVersion"] = "99"
    changed = compile_cluster(vss, rss, POOLS, NODES, cache=cache)
    dests = changed.nodestates["d1-team-a-web"]["spec"]["services"][0]["dests"]
    assert [d["weight"] for d in dests] == [1, 9]
    vss[0]["spec"]["port"] = 8080
    vss[0]["metadata"]["resourceVersion"] = "100"
    moved = compile_cluster(vss, rss, POOLS, NODES, cache=cache)
    assert moved.nodestates["d1-team-a-web"]["spec"]["services"][0]["port"] == 8080
    assert [d["port"] for d in moved.nodestates["d1-team-a-web"]["spec"]["services"][0]["dests"]] == [8080, 8080]


# --------------------------------------------------------------------------
# The loop's pacing: a change after a quiet spell is compiled at once, a burst
# waits as long as the last pass took (at most the debounce window)
# --------------------------------------------------------------------------

def test_a_change_after_quiet_is_compiled_at_once_and_a_burst_is_paced_by_the_pass_time():
    import time as _time
    r = Reconciler("kube-lvs-system", api_factory=lambda: None, debounce=30.0, resync=1e9)
    r.caches = {"virtualservices": {("ns", c): {} for c in "abcdefgh"}}  # one is not a quarter of them
    passes: list[tuple[object, float]] = []
    took = [0.4]

    def slow_pass(snap, scope):
        passes.append((scope, _time.monotonic()))
        _time.sleep(took[0])
        return 0
    r.reconcile_once = slow_pass  # type: ignore[method-assign]

    async def go():
        stop = asyncio.Event()
        loop = asyncio.create_task(r.run(stop))
        r.scope = {("ns", "a")}
        r.kick()
        for _ in range(200):  # far less than the 30 s window
            if passes:
                break
            await asyncio.sleep(0.01)
        assert [p[0] for p in passes] == [{("ns", "a")}]
        r.scope = {("ns", "b")}  # a change during that pass: waits 0.4 s after its end
        r.kick()
        took[0] = 0.0
        await asyncio.sleep(0.5)
        assert len(passes) == 1 and r.scope == {("ns", "b")}  # gathered, not yet compiled
        for _ in range(100):
            if len(passes) == 2:
                break
            await asyncio.sleep(0.01)
        assert [p[0] for p in passes] == [{("ns", "a")}, {("ns", "b")}]
        assert passes[1][1] - passes[0][1] >= 0.8 - 0.05  # the pass's 0.4 s, then as long again
        r.scope = {("ns", "c")}  # after a pass that took no time: at once, not after 30 s
        r.kick()
        for _ in range(100):
            if len(passes) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(passes) == 3
        loop.cancel()
    asyncio.run(go())
