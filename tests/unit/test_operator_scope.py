"""Partial compiles: a RealServer change recompiles only its VirtualService,
and gives exactly the writes a full pass would."""
from __future__ import annotations

import asyncio

import pytest

from lvs_model import channel as C
from lvs_operator.objects import project
from lvs_operator.reconciler import Reconciler
from lvs_operator.scope import scope_of_change, scoped_snapshot
from lvs_operator.write_plan import compile_snapshot, plan_writes
from lvs_operator.watch import Caches, Kind

from test_compiler import NODES, POOLS, rs, vs

NS = "kube-lvs-system"
NOW = "2026-01-02T00:00:00Z"


def _p(kind, objs):
    return [project(kind, o) for o in objs]


def cluster(n=6, weight_of=lambda i, j: 1, extra_vs=()):
    vss = [vs(f"web{i}", address=f"192.168.0.{10 + i}", port=80) for i in range(n)] + list(extra_vs)
    rss = [rs(f"web{i}-{j}", f"web{i}", f"10.0.{i}.{j + 1}", weight=weight_of(i, j)) for i in range(n)
           for j in range(3)]
    return {"virtualservices": _p("virtualservices", vss), "realservers": _p("realservers", rss),
            "vippools": _p("vippools", POOLS), "nodes": _p("nodes", NODES), "namespaces": [], "nodestates": []}


def converged(snap):
    """The snapshot after a full pass's NodeStates and statuses were written."""
    r = compile_snapshot(snap, NS, NOW)
    out = dict(snap)
    out["nodestates"] = [dict(b, status={}) for b in r.nodestates.values()]
    for kind, wanted in (("virtualservices", r.vs_status), ("realservers", r.rs_status)):
        out[kind] = [dict(o, status=wanted[(o["metadata"]["namespace"], o["metadata"]["name"])])
                     for o in snap[kind]]
    out["vippools"] = [dict(o, status=r.pool_status[o["metadata"]["name"]]) for o in snap["vippools"]]
    return out


@pytest.mark.parametrize("kind,old,new,want", [
    ("realservers", rs("a", "web1", "10.0.0.1"), rs("a", "web1", "10.0.0.1", weight=5), {("team-a", "web1")}),
    ("realservers", rs("a", "web1", "10.0.0.1"), rs("a", "web2", "10.0.0.1"),
     {("team-a", "web1"), ("team-a", "web2")}),
    ("realservers", None, rs("a", "web1", "10.0.0.1"), {("team-a", "web1")}),
    ("realservers", rs("a", "web1", "10.0.0.1"), None, {("team-a", "web1")}),
    ("virtualservices", vs("web1", address="192.168.0.1"),
     dict(vs("web1", address="192.168.0.1"), status={"x": 1}), {("team-a", "web1")}),
    ("virtualservices", vs("web1", address="192.168.0.1"), vs("web1", address="192.168.0.2"), None),
    ("virtualservices", None, vs("web1", address="192.168.0.1"), None),
    ("virtualservices", vs("web1", address="192.168.0.1"), None, None),
    ("vippools", None, POOLS[0], None),
    ("nodes", NODES[0], None, None),
    ("namespaces", None, {"metadata": {"name": "x"}}, None),
    ("nodestates", None, {"metadata": {"name": "d1-team-a-web1",
                                       "annotations": {C.ANNOTATION_VIRTUALSERVICE: "team-a/web1"}}},
     {("team-a", "web1")}),
    ("nodestates", None, {"metadata": {"name": "stray"}}, None),
])
def test_scope_of_change(kind, old, new, want):
    key = (((old or new)["metadata"].get("namespace") or ""), (old or new)["metadata"]["name"])
    assert scope_of_change(kind, key, old and project(kind, old), new and project(kind, new)) == want


def test_scoped_pass_writes_what_a_full_pass_writes():
    before = converged(cluster())
    assert not plan_writes(compile_snapshot(before, NS, NOW), before, NS)  # converged
    after = dict(before)
    after["realservers"] = [dict(o, spec=dict(o["spec"], weight=7)) if o["metadata"]["name"] == "web3-1" else o
                            for o in before["realservers"]]
    full = plan_writes(compile_snapshot(after, NS, NOW), after, NS)
    scope = {("team-a", "web3")}
    part_snap = scoped_snapshot(after, scope)
    part = plan_writes(compile_snapshot(part_snap, NS, NOW), part_snap, NS)
    assert [b["metadata"]["name"] for b in full.replace] == ["d1-team-a-web3", "d2-team-a-web3"]
    assert part.replace == full.replace and part.create == full.create and part.delete == full.delete
    assert part.status == full.status
    assert len(part_snap["virtualservices"]) == 1 and len(part_snap["realservers"]) == 3


def _keyed(objs):
    return {(o["metadata"].get("namespace") or "", o["metadata"]["name"]): o for o in objs}


def _names(snap):
    return {kind: sorted(o["metadata"]["name"] for o in objs) for kind, objs in snap.items()}


def test_a_scoped_snapshot_from_the_index_is_the_scoped_part_of_the_whole():
    """The loop's scoped snapshot is a few index lookups; it must hold exactly
    what filtering the whole snapshot would, as the caches change under it
    (a RealServer moved to another VirtualService, one deleted, a NodeState
    created) and with our own unseen writes (the overlay) in or out of scope."""
    r = Reconciler(NS, api_factory=lambda: None)
    r.caches = {kind: _keyed(objs) for kind, objs in converged(cluster(n=8)).items()}
    scope = {("team-a", "web2"), ("team-a", "web5")}

    def check():
        part = r.snapshot(scope)
        assert _names(part) == _names(scoped_snapshot(r.snapshot(), scope))
        return _names(part)

    first = check()
    assert first["realservers"] == ["web2-0", "web2-1", "web2-2", "web5-0", "web5-1", "web5-2"]
    assert len(first["nodestates"]) == 4 and len(first["nodes"]) == len(NODES)

    def change(kind, key, new):
        store = r.caches[kind]
        old = store.get(key)
        if new is None:
            store.pop(key)
        else:
            store[key] = new
        r.changed(kind, key, old, new)

    moved = project("realservers", rs("web3-0", "web5", "10.0.3.1"))
    change("realservers", ("team-a", "web3-0"), moved)
    change("realservers", ("team-a", "web2-1"), None)
    ns = next(o for o in r.caches["nodestates"].values() if o["metadata"]["name"] == "d1-team-a-web2")
    r.overlay.entries[("nodestates", NS, "d1-team-a-web2")] = (None, 1e18)  # deleted by us, not seen yet
    extra = dict(ns, metadata=dict(ns["metadata"], name="d9-team-a-web5", resourceVersion="77"))
    r.overlay.entries[("nodestates", NS, "d9-team-a-web5")] = (extra, 1e18)  # created by us, not seen yet
    other = dict(ns, metadata=dict(ns["metadata"], name="d9-team-a-web1", resourceVersion="78",
                                   annotations={C.ANNOTATION_VIRTUALSERVICE: "team-a/web1"}))
    r.overlay.entries[("nodestates", NS, "d9-team-a-web1")] = (other, 1e18)  # out of scope
    after = check()
    assert after["realservers"] == ["web2-0", "web2-2", "web3-0", "web5-0", "web5-1", "web5-2"]
    assert "d1-team-a-web2" not in after["nodestates"] and "d9-team-a-web5" in after["nodestates"]
    assert "d9-team-a-web1" not in after["nodestates"]
    assert ("nodestates", NS, "d1-team-a-web2") in r.overlay.entries  # still cached: the overlay stays
    change("nodestates", (NS, "d9-team-a-web5"), extra)  # the watch catches up
    assert "d9-team-a-web5" in check()["nodestates"]


class Recorder(Reconciler):
    def __init__(self):
        super().__init__(NS, api_factory=lambda: None)
        self.executed = []

    def execute(self, w):
        self.executed.append(w)


def test_reconciler_scopes_and_falls_back_to_full():
    r = Recorder()
    snap = converged(cluster(n=8))
    assert r.reconcile_once(snap, None) == 0 and r.full_passes == 1
    assert r.reconcile_once(snap, set()) == 0  # woken with nothing to do
    changed = dict(snap, realservers=[dict(o, spec=dict(o["spec"], weight=3)) if o["metadata"]["name"] == "web2-0"
                                      else o for o in snap["realservers"]])
    assert r.reconcile_once(changed, {("team-a", "web2")}) == 2 and r.full_passes == 1  # scoped
    assert [b["metadata"]["name"] for b in r.executed[-1].replace] == ["d1-team-a-web2", "d2-team-a-web2"]
    # A scope covering over a quarter of the VirtualServices: one full pass instead.
    r.reconcile_once(changed, {("team-a", f"web{i}") for i in range(3)})
    assert r.full_passes == 2


def test_conflicting_virtualservices_are_always_compiled_together():
    twin = vs("twin", address="192.168.0.12", port=80, ts="2026-01-05T00:00:00Z")  # same key as web2
    r = Recorder()
    snap = converged(cluster(n=8, extra_vs=[twin]))
    r.reconcile_once(snap, None)
    assert r.entangled == {("team-a", "web2"), ("team-a", "twin")}
    r.reconcile_once(snap, {("team-a", "twin")})
    assert r.full_passes == 2  # not a partial compile that would let the twin win


def test_changes_widen_the_scope_until_a_pass_takes_it():
    r = Recorder()
    r.scope = set()
    r.changed("realservers", ("team-a", "a"), None, project("realservers", rs("a", "web1", "10.0.0.1")))
    assert r.scope == {("team-a", "web1")}
    r.changed("nodes", ("", "d1"), None, project("nodes", NODES[0]))
    assert r.scope is None  # anything may change: full
    r.changed("realservers", ("team-a", "b"), None, project("realservers", rs("b", "web2", "10.0.0.2")))
    assert r.scope is None


def test_our_own_write_coming_back_wakes_no_pass_but_anyone_elses_does():
    """The watch shows every write the operator made (a NodeState, a status):
    the pass that made it planned with it already (the overlay), so its echo,
    the same resourceVersion, is not a change. A newer version is."""
    r = Recorder()
    r.scope = set()
    mine = dict(project("realservers", rs("a", "web1", "10.0.0.1")), status={"health": "Healthy"})
    mine["metadata"]["resourceVersion"] = "12"
    before = dict(mine, status={})
    before["metadata"] = dict(mine["metadata"], resourceVersion="11")
    r.overlay.note("realservers", mine, "team-a", "a")
    r.changed("realservers", ("team-a", "a"), before, mine)
    assert r.scope == set() and not r.dirty.is_set()
    theirs = dict(mine, status={"health": "Unknown"})
    theirs["metadata"] = dict(mine["metadata"], resourceVersion="13")
    r.changed("realservers", ("team-a", "a"), mine, theirs)
    assert r.scope == {("team-a", "web1")} and r.dirty.is_set()
    r.dirty.clear()
    other = dict(mine, metadata=dict(mine["metadata"], name="b"), spec=dict(mine["spec"], virtualService="web2"))
    r.changed("realservers", ("team-a", "b"), None, other)  # the same resourceVersion, but not ours
    assert r.scope == {("team-a", "web1"), ("team-a", "web2")} and r.dirty.is_set()
    # The echo of a status still being written (the writer thread has not noted it yet).
    r.scope, _ = set(), r.dirty.clear()
    sending = {"health": "Healthy", "activeConns": 3}
    r.overlay.sending[("realservers", "team-a", "b")] = sending
    echo = dict(other, status=dict(sending), metadata=dict(other["metadata"], resourceVersion="20"))
    r.changed("realservers", ("team-a", "b"), other, echo)
    assert r.scope == set() and not r.dirty.is_set() and not r.overlay.sending
    r.overlay.sending[("realservers", "team-a", "b")] = sending
    edited = dict(echo, spec=dict(echo["spec"], weight=9), metadata=dict(echo["metadata"], resourceVersion="21"))
    r.changed("realservers", ("team-a", "b"), echo, edited)  # the same status, but the spec moved
    assert r.scope == {("team-a", "web2")} and r.dirty.is_set()


def test_caches_report_changes_only_after_the_first_list_and_diff_a_relist():
    seen = []

    async def go():
        c = Caches((Kind("nodes"), Kind("namespaces")), on_change=lambda *a: seen.append(a[:2]))
        c.apply("nodes", "ADDED", ("", "early"), {"metadata": {"name": "early"}})  # before listing: silent
        c.replace("nodes", {("", "d1"): {"metadata": {"name": "d1"}}})
        assert not c.ready.is_set()  # namespaces not listed yet
        c.replace("namespaces", {})
        assert c.ready.is_set()
        c.apply("nodes", "MODIFIED", ("", "d1"), {"metadata": {"name": "d1", "labels": {"a": "b"}}})
        c.apply("nodes", "MODIFIED", ("", "d1"), {"metadata": {"name": "d1", "labels": {"a": "b"}}})  # same
        c.replace("nodes", {("", "d2"): {"metadata": {"name": "d2"}}})  # relist after 410: d1 gone, d2 new
        return c

    c = asyncio.run(go())
    assert seen[0] == ("nodes", ("", "d1")) and len(seen) == 3
    assert sorted(seen[1:]) == [("nodes", ("", "d1")), ("nodes", ("", "d2"))]
    assert list(c.data["nodes"]) == [("", "d2")]


def test_kind_paths():
    assert Kind("nodes").path() == "/api/v1/nodes"
    assert Kind("nodestates", C.GROUP, C.VERSION, NS).path() == f"/apis/{C.GROUP}/{C.VERSION}/namespaces/{NS}/nodestates"


def test_resync_recompiles_every_virtualservice_once_per_round_in_scoped_slices():
    """The periodic resync: RESYNC_SLICES scoped passes per round (a full pass at
    10k services held a change up for seconds). The round covers every
    VirtualService and every one a NodeState names: a NodeState whose
    VirtualService is gone is deleted by its slice; a hand-edited NodeState is
    written back by its slice."""
    snap = converged(cluster(n=24))
    orphan = dict(snap["nodestates"][0], metadata=dict(
        snap["nodestates"][0]["metadata"], name="d1-team-a-gone",
        annotations={**snap["nodestates"][0]["metadata"]["annotations"], C.ANNOTATION_VIRTUALSERVICE: "team-a/gone"}))
    edited = dict(snap["nodestates"][2], spec={"services": []})
    snap["nodestates"] = [orphan, edited] + [o for i, o in enumerate(snap["nodestates"]) if i != 2]
    r = Recorder()
    r.RESYNC_SLICES = 5
    r.caches = {kind: {(o["metadata"].get("namespace") or "", o["metadata"]["name"]): o for o in objs}
                for kind, objs in snap.items()}
    r.reconcile_once(converged(cluster(n=24)), None)  # the first, full pass (entangled: none)
    r.executed.clear()
    seen = []
    for _ in range(5):
        r.scope = set()
        r.resync_tick()
        assert r.dirty.is_set() and len(r.scope) == 5  # 25 VirtualServices (24 + gone) / 5 slices
        seen += sorted(r.scope)
        r.reconcile_once(snap, r.scope)
    assert sorted(seen) == sorted([("team-a", f"web{i}") for i in range(24)] + [("team-a", "gone")])
    assert r.full_passes == 1  # every slice was a scoped pass
    deleted = [name for w in r.executed for name, _ in w.delete]
    replaced = [b["metadata"]["name"] for w in r.executed for b in w.replace]
    assert deleted == ["d1-team-a-gone"] and replaced == [edited["metadata"]["name"]]
    r.scope = None
    r.resync_tick()  # a full pass already due stays full
    assert r.scope is None and r.resync_round.pos == 5  # the next round has begun


def test_resync_waits_while_a_full_pass_runs():
    """A full pass rechecks everything: slices gathered while it runs would
    only make the next pass a full one again."""
    r = Recorder()
    snap = converged(cluster(n=8))
    r.caches = {kind: {(o["metadata"].get("namespace") or "", o["metadata"]["name"]): o for o in objs}
                for kind, objs in snap.items()}
    r.scope = set()
    r.full_pass_running = True
    r.resync_tick()
    assert r.scope == set() and r.resync_round.pos == 0 and not r.dirty.is_set()
    r.full_pass_running = False
    r.resync_tick()
    assert r.scope and r.resync_round.pos == len(r.scope) and r.dirty.is_set()


class FakeStatusApi:
    def __init__(self, fail=()):
        self.written, self.fail = [], set(fail)

    def patch_namespaced_custom_object_status(self, g, v, ns, plural, name, patch, **kw):
        from kubernetes.client.exceptions import ApiException
        if name in self.fail:
            raise ApiException(status=500, reason="boom")
        self.written.append((plural, ns, name, patch[0]["value"]))
        return {"metadata": {"name": name, "namespace": ns, "resourceVersion": "9"}, "spec": {},
                "status": patch[0]["value"]}


def test_statuses_are_written_off_the_pass_and_the_newest_planned_wins():
    """A pass queues its statuses and returns (written inline, tens of thousands
    held back the NodeStates of every VirtualService created meanwhile); one
    planned again before its turn is written once, with the newest value."""
    api = FakeStatusApi()
    r = Reconciler(NS, api_factory=lambda: api)
    submitted = []
    r.writer._status_writer = type("Stub", (), {"submit": lambda self, snap, keys: submitted.append(keys)})()
    key = ("realservers", "team-a", "web1-0")
    r.queue_statuses([(*key, {"phase": "Pending"})])
    r.queue_statuses([(*key, {"phase": "Ready"}), ("virtualservices", "team-a", "web1", {"phase": "Ready"})])
    assert submitted == [{key}, {key, ("virtualservices", "team-a", "web1")}]
    assert r.writer._take_statuses(None, {key}) == {key: {"phase": "Ready"}}
    assert r.writer._take_statuses(None, {key}) == {}  # taken once
    # The real writer threads: written, and overlaid until the watch has them.
    r.writer._status_writer = None
    r.queue_statuses([(*key, {"phase": "Ready"})])
    assert r.statuses_idle(10)
    assert api.written == [("realservers", "team-a", "web1-0", {"phase": "Ready"})]
    assert r.overlay.entries[key][0]["status"] == {"phase": "Ready"}
    assert r.overlay.sending == {}  # written: the overlay recognises its echo now
    r.writer._status_writer.stop()


def test_a_follower_writes_no_queued_status_and_a_failed_one_is_counted():
    api = FakeStatusApi(fail={"bad"})
    leader = [False]
    r = Reconciler(NS, api_factory=lambda: api, is_leader=lambda: leader[0])
    r.queue_statuses([("realservers", "team-a", "x", {"phase": "Ready"})])
    assert r.statuses_idle(10) and api.written == []
    leader[0] = True
    r.queue_statuses([("realservers", "team-a", "bad", {"phase": "Ready"})])
    assert r.statuses_idle(10) and r.status_failures == 1 and api.written == []
    assert r.overlay.sending == {}  # not written: nothing to mistake for its echo
    r.writer._status_writer.stop()


def test_a_deleted_object_is_not_brought_back_by_our_unseen_status_write():
    """A VirtualService whose status we had just written (the overlay holds
    it, its echo not yet seen) is deleted: the next snapshot must not hold
    it, or its NodeStates stay until the overlay entry expires (seen end to
    end: a deleted service stayed programmed until the operator restarted)."""
    r = Reconciler(NS, api_factory=lambda: None)
    r.caches = {kind: _keyed(objs) for kind, objs in converged(cluster(n=2)).items()}
    key = ("team-a", "web1")
    old = r.caches["virtualservices"][key]
    written = dict(old, metadata=dict(old["metadata"], resourceVersion="999999"), status={"phase": "x"})
    r.overlay.entries[("virtualservices", *key)] = (written, 1e18)
    assert "web1" in _names(r.snapshot())["virtualservices"]
    r.caches["virtualservices"].pop(key)
    r.changed("virtualservices", key, old, None)
    snap = r.snapshot()
    assert "web1" not in _names(snap)["virtualservices"]
    result = compile_snapshot(snap, NS, "T")
    assert not [n for n in result.nodestates if n.endswith("-team-a-web1")]
