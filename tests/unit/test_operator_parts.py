"""The operator's small parts on their own: scope slicing and narrowing, the
own-writes overlay, the writer's API calls and event bodies."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from lvs_model import channel as C
from lvs_operator import loadbalancer as LB
from lvs_operator.compiler import Event
from lvs_operator.overlay import Overlay
from lvs_operator.scope import (RefIndex, ResyncRound, narrow, next_slice, resync_refs, scoped_view,
                                service_scope)
from lvs_operator.write_plan import Writes
from lvs_operator.writer import Writer, event_body


def _obj(name, rv, ns="team-a", **extra):
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)}, **extra}


# -- scope ----------------------------------------------------------------------

def test_next_slice_covers_every_ref_once_per_round_and_rereads_only_between_rounds():
    refs = {("a", str(i)) for i in range(10)}
    asked = []

    def everything():
        asked.append(1)
        return set(refs)
    rnd, seen = ResyncRound(), []
    for _ in range(4):
        part, rnd = next_slice(rnd, everything, slices=4)
        seen.append(part)
    assert [len(p) for p in seen] == [3, 3, 3, 1] and set().union(*seen) == refs and len(asked) == 1
    refs.add(("b", "new"))
    part, rnd = next_slice(rnd, everything, slices=4)
    assert len(asked) == 2 and rnd.pos == 3 and len(rnd.refs) == 11
    assert next_slice(ResyncRound(), set, 60) == (set(), ResyncRound((), 0))


def test_resync_refs_include_virtualservices_named_only_by_a_nodestate():
    orphan = {"metadata": {"annotations": {C.ANNOTATION_VIRTUALSERVICE: "team-a/gone"}}}
    settings = {"metadata": {"annotations": {}}}
    assert resync_refs([("team-a", "web")], [orphan, settings]) == {("team-a", "web"), ("team-a", "gone")}


def test_narrow_keeps_a_small_unentangled_scope_only():
    a, b = ("n", "a"), ("n", "b")
    assert narrow({a}, set(), 8) == {a}
    assert narrow({a, b}, set(), 8) == {a, b}  # exactly a quarter
    assert narrow({a, b}, set(), 7) is None  # over a quarter: a full pass
    assert narrow({a}, {a}, 100) is None  # in a conflict: only a full pass is correct
    assert narrow(set(), set(), 0) == set() and narrow(None, set(), 5) is None


# -- overlay ----------------------------------------------------------------------

def test_overlay_lays_our_writes_over_the_caches_until_they_catch_up_or_expire():
    now = [0.0]
    o = Overlay(ttl=30.0, clock=lambda: now[0])
    o.note("realservers", _obj("x", 5, spec={"virtualService": "web"}), "team-a", "x")
    o.note("realservers", None, "team-a", "gone")
    assert o.writes == 2
    caches = {"realservers": {("team-a", "x"): _obj("x", 4), ("team-a", "gone"): _obj("gone", 1)}}
    snap = {"realservers": dict(caches["realservers"])}
    o.apply(snap, caches, None)
    assert snap["realservers"][("team-a", "x")]["metadata"]["resourceVersion"] == "5"
    assert ("team-a", "gone") not in snap["realservers"]
    # out of scope: not laid over, but kept
    snap = {"realservers": {}}
    o.apply(snap, caches, {("team-a", "other")})
    assert snap["realservers"] == {} and len(o.entries) == 2
    # the caches caught up with x; gone's entry expires
    caches["realservers"][("team-a", "x")] = _obj("x", 6)
    now[0] = 31.0
    o.apply({"realservers": dict(caches["realservers"])}, caches, None)
    assert o.entries == {}


def test_overlay_recognises_its_echo_by_version_or_by_the_status_being_sent():
    o = Overlay()
    key = ("virtualservices", "team-a", "web")
    o.note("virtualservices", _obj("web", 7, spec={"port": 80}), "team-a", "web")
    assert o.is_echo(key, None, _obj("web", 7, spec={"port": 80}))
    assert not o.is_echo(key, None, _obj("web", 8, spec={"port": 80}))
    assert not o.is_echo(key, None, None)
    status = {"phase": "Ready"}
    o.sending_begin(("realservers", "team-a", "r"), status)
    old = _obj("r", 1, spec={"weight": 1})
    assert not o.is_echo(("realservers", "team-a", "r"), old, _obj("r", 2, spec={"weight": 2}, status=status))
    assert o.is_echo(("realservers", "team-a", "r"), old, _obj("r", 2, spec={"weight": 1}, status=status))
    assert o.sending == {}  # recognised once
    o.sending_begin(key, status)
    o.sending_end(key, {"phase": "Ready"})  # another value: not ours to drop
    assert o.sending == {key: status}
    o.sending_end(key, status)
    o.forget(key)
    assert o.sending == {} and key not in o.entries


# -- writer -----------------------------------------------------------------------

class FakeApi:
    def __init__(self, fail=()):
        self.calls, self.fail, self.rv = [], set(fail), 10

    def _done(self, op, name, body=None):
        from kubernetes.client.exceptions import ApiException
        if name in self.fail:
            raise ApiException(status=409, reason="Conflict")
        self.calls.append((op, name))
        self.rv += 1
        return {**(body or {}), "metadata": {**((body or {}).get("metadata") or {}), "name": name,
                                             "resourceVersion": str(self.rv)}}

    def create_namespaced_custom_object(self, g, v, ns, plural, body):
        return self._done("create", body["metadata"]["name"], body)

    def replace_namespaced_custom_object(self, g, v, ns, plural, name, body):
        return self._done("replace", name, body)

    def delete_namespaced_custom_object(self, g, v, ns, plural, name, body=None):
        from kubernetes.client.exceptions import ApiException
        if name == "missing":
            raise ApiException(status=404, reason="NotFound")
        return self._done("delete", name)


def _ns(name):
    return {"metadata": {"name": name, "namespace": "kube-lvs-system", "labels": {}, "annotations": {}},
            "spec": {"node": "d1"}}


def test_writer_writes_nodestates_notes_them_and_fails_the_pass_on_any_error():
    api, overlay = FakeApi(fail={"bad"}), Overlay()
    w = Writer("kube-lvs-system", lambda: api, overlay)
    ev = Event("VirtualService", "team-a", "web", "uid-1", "Warning", "Conflict", "taken")
    with pytest.raises(RuntimeError, match="create NodeState bad: 409 Conflict"):
        w.execute(Writes(create=[_ns("a"), _ns("bad")], replace=[_ns("b")], delete=[("c", "u"), ("missing", "")],
                         events=[ev]))
    events = [c for c in api.calls if c[1].startswith("web.")]
    assert len(events) == 1  # a failed NodeState still lets the events go out
    assert sorted(c for c in api.calls if c not in events) == [("create", "a"), ("delete", "c"), ("replace", "b")]
    assert set(overlay.entries) == {("nodestates", "kube-lvs-system", n) for n in ("a", "b", "c", "missing")}
    assert overlay.entries[("nodestates", "kube-lvs-system", "c")][0] is None


def test_writer_sends_nodestates_through_request_and_keeps_one_copy_of_each_spec():
    import json
    from lvs_kube.status_patch import PatchError
    sent, rv = [], [20]

    def request(method, path, body):
        sent.append((method, path))
        if body["metadata"]["name"] == "bad":
            raise PatchError(409, "Conflict", b"{}")
        rv[0] += 1
        return json.dumps({**body, "metadata": {**body["metadata"], "resourceVersion": str(rv[0])}}).encode()
    api, overlay = FakeApi(), Overlay()
    w = Writer("kube-lvs-system", lambda: api, overlay, request=request)
    a, b = _ns("a"), _ns("b")
    with pytest.raises(RuntimeError, match="create NodeState bad: 409 Conflict"):
        w.execute(Writes(create=[a, _ns("bad")], replace=[b], delete=[("c", "u")]))
    assert sorted(sent) == [("POST", "/namespaces/kube-lvs-system/nodestates")] * 2 + [
        ("PUT", "/namespaces/kube-lvs-system/nodestates/b")]
    assert api.calls == [("delete", "c")]  # deletions still through the client
    mine = overlay.entries[("nodestates", "kube-lvs-system", "a")][0]
    assert mine["spec"] is a["spec"] and mine["metadata"]["resourceVersion"] == "21"
    # the watch's echo (an equal copy) is recognised and then holds the same spec object
    echo = {"metadata": {**a["metadata"], "resourceVersion": "21"}, "spec": {"node": "d1"}, "status": {}}
    assert overlay.is_echo(("nodestates", "kube-lvs-system", "a"), None, echo)
    assert echo["spec"] is a["spec"]
    other = {"metadata": {**b["metadata"], "resourceVersion": "22"}, "spec": {"node": "d2"}, "status": {}}
    overlay.is_echo(("nodestates", "kube-lvs-system", "b"), None, other)
    assert other["spec"] == {"node": "d2"}  # a different spec is never replaced


def test_writer_recognises_a_nodestate_echo_that_beats_the_answer():
    """The watch may show a created NodeState before the POST returns: it is
    ours (no pass of its own) and holds the spec sent; an agent's report
    arriving meanwhile is not."""
    import json
    overlay = Overlay()
    seen = {}
    a = {**_ns("a"), "metadata": {**_ns("a")["metadata"], "labels": {"lvs.kube-lvs.io/node": "d1"}}}
    b = _ns("b")

    def request(method, path, body):
        name = body["metadata"]["name"]
        key = ("nodestates", "kube-lvs-system", name)
        echo = {"metadata": {**body["metadata"], "resourceVersion": "30"}, "spec": {"node": "d1"}, "status": {}}
        seen[name] = (overlay.is_echo(key, None, echo), echo["spec"] is body["spec"])
        report = {**echo, "status": {"nodes": 1}}
        seen[name + "-report"] = overlay.is_echo(key, echo, report)
        other = {**echo, "spec": {"node": "d2"}}
        seen[name + "-other"] = overlay.is_echo(key, None, other)
        return json.dumps(echo).encode()
    w = Writer("kube-lvs-system", lambda: FakeApi(), overlay, request=request)
    w.execute(Writes(create=[a], replace=[b]))
    assert seen == {"a": (True, True), "a-report": False, "a-other": False,
                    "b": (True, True), "b-report": False, "b-other": False}
    assert overlay.putting == {}  # only while the write is in flight
    late = {"metadata": {**b["metadata"], "resourceVersion": "31"}, "spec": {"node": "d1"}, "status": {}}
    assert not overlay.is_echo(("nodestates", "kube-lvs-system", "b"), None, late)


def test_compact_shares_keys_and_short_strings_and_keeps_the_content():
    import json
    from lvs_operator.objects import SHARED_MAX, compact
    body = {"metadata": {"name": "r", "labels": {"app": "web"}},
            "spec": {"virtualService": "web", "port": 80},
            "status": {"conditions": [{"type": "Ready", "lastTransitionTime": "2026-01-01T00:00:00Z",
                                       "message": "m" * (SHARED_MAX + 1)}], "health": "Healthy"}}
    a, b = (compact("realservers", json.loads(json.dumps(body))) for _ in range(2))
    assert a == b == body
    ca, cb = a["status"]["conditions"][0], b["status"]["conditions"][0]
    assert next(k for k in ca if k == "lastTransitionTime") is next(k for k in cb if k == "lastTransitionTime")
    assert ca["lastTransitionTime"] is cb["lastTransitionTime"] and a["spec"]["virtualService"] is b["spec"]["virtualService"]
    assert a["metadata"]["labels"]["app"] is b["metadata"]["labels"]["app"]
    assert ca["message"] is not cb["message"]  # long strings (messages) are left alone
    ns = {"metadata": {"name": "n"}, "spec": {"node": "d1"}, "status": {"a": "b"}}
    spec = ns["spec"]
    assert compact("nodestates", ns)["spec"] is spec  # the echo takes our own spec object (overlay.share)


def test_project_keeps_parts_of_a_plain_body_and_copies_a_view():
    from types import MappingProxyType
    from lvs_operator.objects import project
    body = {"metadata": {"name": "x", "namespace": "a", "managedFields": [{}], "labels": {"k": "v"}},
            "spec": {"port": 80}, "status": {"s": 1}}
    p = project("virtualservices", body)
    assert p == {"metadata": {"name": "x", "namespace": "a", "labels": {"k": "v"}}, "spec": {"port": 80},
                 "status": {"s": 1}}
    assert p["spec"] is body["spec"]
    view = MappingProxyType({"metadata": MappingProxyType({"name": "x"}), "spec": MappingProxyType({"port": 80})})
    q = project("virtualservices", view)
    assert type(q["spec"]) is dict and q == {"metadata": {"name": "x"}, "spec": {"port": 80}, "status": {}}


@pytest.mark.parametrize("address", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::",
                                     "::ffff:10.0.0.1", "fe80::1%eth0"])
def test_ip_key_is_ipaddress_version_and_integer(address):
    import ipaddress
    from lvs_model.addresses import sort_key as _ip_key
    ip = ipaddress.ip_address(address)
    assert _ip_key(address) == (ip.version, int(ip))


def test_ip_key_refuses_what_ipaddress_refuses():
    from lvs_model.addresses import sort_key as _ip_key
    for bad in ("010.0.0.1", "1.2.3", "10.0.0.1 ", "x"):
        with pytest.raises(ValueError):
            _ip_key(bad)


def test_event_body_is_an_events_v1_event_on_the_object():
    ev = Event("Service", "team-a", "x" * 300, "uid-1", "Warning", "NoPool", "m" * 2000)
    body = event_body(ev, "op-1", datetime(2026, 1, 2, tzinfo=timezone.utc), "abc")
    assert body["metadata"] == {"name": "x" * 200 + ".abc", "namespace": "team-a"}
    assert body["regarding"] == {"apiVersion": "v1", "kind": "Service", "name": "x" * 300,
                                 "namespace": "team-a", "uid": "uid-1"}
    assert len(body["note"]) == 1024 and body["eventTime"] == "2026-01-02T00:00:00.000000Z"
    cluster = event_body(Event("VIPPool", "", "p", "u", "Warning", "Overlap", "m"), "op", datetime.now(timezone.utc), "s")
    assert cluster["metadata"]["namespace"] == "default" and "namespace" not in cluster["regarding"]
    assert cluster["regarding"]["apiVersion"] == C.API_VERSION


# -- scope: Services, the index, the scoped view -----------------------------------------

def _vsobj(name, backend=None, ns="team-a"):
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"address": "192.168.0.1", **({"backend": {"service": backend}} if backend else {})}}


def test_service_scope_is_the_virtualservices_it_backs_or_a_full_pass_for_a_loadbalancer():
    vss = [_vsobj("a", "web"), _vsobj("b", "web"), _vsobj("c", "db"), _vsobj("d", "web", ns="team-b")]
    svc = {"metadata": {"name": "web", "namespace": "team-a"}, "spec": {"type": "ClusterIP"}}
    assert service_scope("services", ("team-a", "web"), None, svc, vss, False) == {("team-a", "a"), ("team-a", "b")}
    lb = {"metadata": svc["metadata"], "spec": {"type": "LoadBalancer"}}
    assert service_scope("services", ("team-a", "web"), svc, lb, vss, False) == {("team-a", "a"), ("team-a", "b")}
    assert service_scope("services", ("team-a", "web"), svc, lb, vss, True) is None  # the default class: ours
    was_ours = {**svc, "status": {"conditions": [{"type": LB.CONDITION}]}}
    assert service_scope("services", ("team-a", "web"), was_ours, svc, vss, False) is None
    eps = {"metadata": {"name": "db-x", "namespace": "team-a", "labels": {"kubernetes.io/service-name": "db"}}}
    assert service_scope("endpointslices", ("team-a", "db-x"), None, eps, vss, False) == {("team-a", "c")}
    assert service_scope("endpointslices", ("team-a", "x"), None, {"metadata": {}}, vss, False) == set()


def test_ref_index_and_scoped_view_give_the_scoped_part_and_follow_changes():
    rs_a = {"metadata": {"name": "r1", "namespace": "team-a"}, "spec": {"virtualService": "a"}}
    rs_b = {"metadata": {"name": "r2", "namespace": "team-a"}, "spec": {"virtualService": "b"}}
    caches = {"virtualservices": {("team-a", "a"): _vsobj("a"), ("team-a", "b"): _vsobj("b")},
              "realservers": {("team-a", "r1"): rs_a, ("team-a", "r2"): rs_b},
              "nodes": {("", "d1"): {"metadata": {"name": "d1"}}}}
    index = RefIndex()
    view = scoped_view(caches, {("team-a", "a")}, index)
    assert list(view["virtualservices"]) == [("team-a", "a")] and list(view["realservers"]) == [("team-a", "r1")]
    assert view["nodes"] == caches["nodes"] and view["nodestates"] == {}
    assert scoped_view(caches, None, index)["realservers"] == caches["realservers"]
    moved = {**rs_b, "spec": {"virtualService": "a"}}  # r2 now names a
    caches["realservers"][("team-a", "r2")] = moved
    index.changed("realservers", ("team-a", "r2"), rs_b, moved)
    assert set(scoped_view(caches, {("team-a", "a")}, index)["realservers"]) == {("team-a", "r1"), ("team-a", "r2")}
    assert scoped_view(caches, {("team-a", "b")}, index)["realservers"] == {}
    other = {k: dict(v) for k, v in caches.items()}  # other caches: the index starts anew
    del other["realservers"][("team-a", "r1")]
    assert list(scoped_view(other, {("team-a", "a")}, index)["realservers"]) == [("team-a", "r2")]


def test_paused_gc_turns_the_collector_back_on_only_if_it_was_on():
    import gc
    from lvs_operator.reconciler import paused_gc
    assert gc.isenabled()
    with pytest.raises(KeyError):
        with paused_gc():
            assert not gc.isenabled()
            raise KeyError("a failed pass")
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
