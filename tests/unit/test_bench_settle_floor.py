"""Benchmark part 5's count of the writes to settle and the floor they imply
(bench/lvs_bench/apiserver_writes.py), and the floor's writes
(bench/lvs_bench/write_floor.py) against a fake API."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from lvs_bench import apiserver_writes as W  # noqa: E402
from lvs_bench import write_floor as F  # noqa: E402

G = 'group="lvs.kube-lvs.io"'


def line(resource: str, sub: str, verb: str, code: str, n: float, group: str = G) -> str:
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",{group},'
            f'resource="{resource}",scope="resource",subresource="{sub}",verb="{verb}",version="v1alpha1"}} {n}')


METRICS_0 = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    line("virtualservices", "status", "PATCH", "200", 10),
    line("nodestates", "", "POST", "201", 2),
])
METRICS_1 = "\n".join([
    "# TYPE apiserver_request_total counter",
    line("virtualservices", "status", "PATCH", "200", 40),
    line("virtualservices", "status", "PATCH", "409", 7),  # refused: not a write that was made
    line("virtualservices", "", "POST", "201", 30),
    line("realservers", "status", "PATCH", "200", 6e1),
    line("realservers", "", "POST", "201", 60),
    line("nodestates", "", "POST", "201", 32),
    line("nodestates", "", "PUT", "200", 5),
    line("nodestates", "status", "PATCH", "200", 31),
    line("nodestates", "", "LIST", "200", 99),  # a read
    line("virtualservices", "", "WATCH", "200", 3),
    line("vippools", "", "POST", "201", 1),  # not a kind that settles
    line("configmaps", "", "PUT", "200", 8, 'group=""'),
    'apiserver_request_duration_seconds_count{group="lvs.kube-lvs.io",resource="nodestates",verb="PUT"} 5',
])


def test_counts_are_the_groups_answered_requests_by_resource_subresource_and_verb():
    c = W.request_counts(METRICS_1)
    assert c[("virtualservices", "status", "PATCH")] == 40
    assert c[("realservers", "status", "PATCH")] == 60
    assert c[("nodestates", "", "LIST")] == 99
    assert ("configmaps", "", "PUT") not in c


def test_writes_between_two_counts_are_the_settling_kinds_writes_only():
    d = W.writes_between(W.request_counts(METRICS_0), W.request_counts(METRICS_1),
                         ("virtualservices", "realservers", "nodestates"))
    assert d == {("nodestates", "", "POST"): 30, ("nodestates", "", "PUT"): 5, ("nodestates", "status", "PATCH"): 31,
                 ("realservers", "", "POST"): 60, ("realservers", "status", "PATCH"): 60,
                 ("virtualservices", "", "POST"): 30, ("virtualservices", "status", "PATCH"): 30}
    assert W.by_kind(d) == {"creates": 90, "vs_status": 30, "rs_status": 60, "ns_status": 31, "ns_writes": 35,
                            "writes": 246}
    assert W.label(("nodestates", "status", "PATCH")) == "nodestates/status PATCH"
    assert W.label(("nodestates", "", "PUT")) == "nodestates PUT"


def test_altered_status_changes_a_kept_value_and_leaves_the_original_alone():
    st = {"observedGeneration": 3, "conditions": [{"type": "Ready", "message": "ok"}]}
    assert W.altered_status(st) == {"observedGeneration": 4, "conditions": [{"type": "Ready", "message": "ok"}]}
    assert st["observedGeneration"] == 3
    st2 = {"nodes": [{"name": "a"}]}
    out = W.altered_status(st2)
    assert out == {"nodes": [{"name": "a"}], "observedGeneration": 1} and st2 == {"nodes": [{"name": "a"}]}
    out["nodes"][0]["name"] = "b"
    assert st2["nodes"][0]["name"] == "a"  # a deep copy


def test_floor_is_each_kinds_count_at_its_sampled_seconds_per_write():
    counts = {("a", "", "POST"): 1000, ("b", "status", "PATCH"): 300}
    samples = {("a", "", "POST"): (100, 0.5), ("b", "status", "PATCH"): (300, 0.6)}
    assert W.floor_seconds(counts, samples) == pytest.approx(1000 * 0.005 + 0.6)
    assert W.floor_seconds(counts, {("a", "", "POST"): (100, 0.5)}) is None


class FakeApi:
    """Records each request; a PUT must name the object's current resourceVersion."""

    def __init__(self, objs: list[dict]):
        self.calls: list[tuple] = []
        self.rv = {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"]) for o in objs}

    def patch(self, plural, ns, name, body, content_type):
        self.calls.append(("PATCH-status", name, body))
        self.rv[name] += 1
        return b"{}"

    def request(self, method, path, body, content_type="application/json"):
        name = body["metadata"]["name"] if method == "POST" else path.split("/")[4]
        self.calls.append((method, name, body))
        if method == "PUT":
            assert int(body["metadata"]["resourceVersion"]) == self.rv[name], "stale resourceVersion"
        if method != "POST":
            self.rv[name] += 1
        return json.dumps({"metadata": {"resourceVersion": str(self.rv.get(name, 0))}}).encode()


def objs(n: int) -> list[dict]:
    return [{"apiVersion": "v", "kind": "NodeState",
             "metadata": {"name": f"ns{i}", "namespace": "x", "resourceVersion": str(100 + i), "uid": "u",
                          "managedFields": [{}], "labels": {"a": "b", F.LABEL_NODE: "n1"}},
             "spec": {"i": i}, "status": {"observedGeneration": 1}} for i in range(n)]


def run_all(tasks) -> int:
    return sum(t() for t in tasks)


def test_floor_status_writes_change_then_restore_each_object_in_order():
    o = objs(2)
    api = FakeApi(o)
    tasks = F.tasks_for(("nodestates", "status", "PATCH"), o, 5, "x", api, [])
    assert len(tasks) == 2 and run_all(tasks) == 6  # 3 pairs over 2 objects
    values = [(name, body[0]["value"]["observedGeneration"]) for _, name, body in api.calls]
    assert values == [("ns0", 2), ("ns0", 1), ("ns0", 2), ("ns0", 1), ("ns1", 2), ("ns1", 1)]


def test_floor_replaces_chain_resource_versions_and_restore_the_annotations():
    o = objs(1)
    api = FakeApi(o)
    assert run_all(F.tasks_for(("nodestates", "", "PUT"), o, 4, "x", api, [])) == 4
    notes = [body["metadata"]["annotations"] for _, _, body in api.calls]
    assert notes == [{F.ANNOTATION: "1"}, {}, {F.ANNOTATION: "1"}, {}]
    assert all("managedFields" not in body["metadata"] and "status" not in body for _, _, body in api.calls)


def test_floor_creates_copies_under_names_of_their_own_and_remembers_them():
    o, made = objs(2), []
    api = FakeApi(o)
    tasks = F.tasks_for(("nodestates", "", "POST"), o, 3, "x", api, made)
    tasks += F.tasks_for(("nodestates", "", "POST"), o, 2, "x", api, made)  # a second run: new names
    assert run_all(tasks) == 5
    names = [name for _, name, _ in api.calls]
    assert names == [f"{F.FLOOR_PREFIX}{i}" for i in range(5)] and made == [("nodestates", n) for n in names]
    first = api.calls[0][2]
    assert first["spec"] == {"i": 0} and first["metadata"]["labels"] == {"a": "b", F.LABEL_NODE: "bench-floor-node"}
    assert o[0]["metadata"]["labels"][F.LABEL_NODE] == "n1"  # no agent's copy; the original untouched
    assert "uid" not in first["metadata"] and "resourceVersion" not in first["metadata"]
