"""The statuses (lvs_agent.status_reporter): built from a snapshot, written
only when they differ from what was last sent, connection counts alone at
most once per interval (owed until then), a failed write retried."""
from __future__ import annotations

import time

from lvs_agent.nodestate import StatusInputs, merge
from lvs_agent.status_reporter import StatusReporter, StatusSnapshot, without_conns
from lvs_model.nodespec import ServiceKey

K1 = ServiceKey("ipv4", "tcp", "10.0.0.1", 80)


def obj(name, vip, weight=1):
    return {"metadata": {"name": name, "generation": 1},
            "spec": {"services": [{"address": vip, "port": 80, "scheduler": "rr",
                                   "dests": [{"address": "10.1.0.1", "port": 80, "weight": weight}]}]}}


class Engine:
    def __init__(self):
        self.conns, self.reads = {}, 0

    def connections(self, pause=None):
        self.reads += 1
        return dict(self.conns)


def reporter(objects, interval=30.0):
    touched, written = [], []
    r = StatusReporter(Engine(), lambda: objects, lambda name, body: written.append(name), touched.append,
                       conn_status_interval=interval)
    r.writer.stop()  # the tests build by hand
    return r, touched, written


def snapshot(objects):
    merged = merge(objects, "n1")
    return StatusSnapshot(merged, merged.spec, {}, {}, set())


def test_a_status_is_handed_over_once_until_it_changes_or_is_forgotten():
    objects = {"o1": obj("o1", "10.0.0.1"), "o2": obj("o2", "10.0.0.2")}
    r, _, _ = reporter(objects)
    snap = snapshot(objects)
    assert set(r.build(snap, None)) == {"o1", "o2"} and r.engine.reads == 1  # counts read first
    assert r.build(snap, None) == {} and r.engine.reads == 1  # sent already; counts not due
    r.forget("o1")
    assert set(r.build(snap, None)) == {"o1"}  # compared with the object's own (no) status
    r.forget(None)
    assert set(r.build(snap, {"o2"})) == {"o2"}


def test_counts_alone_wait_for_the_interval_and_are_owed_until_then():
    objects = {"o1": obj("o1", "10.0.0.1")}
    r, _, _ = reporter(objects)
    snap = snapshot(objects)
    r.build(snap, None)
    r.engine.conns = {(K1, "10.1.0.1", 80): (5, 1)}
    r.conns_due = True
    assert r.build(snap, set()) == {} and r.conns_owed == {"o1"}  # moved, but written just now
    r.last_write["o1"] -= 31
    out = r.build(snap, set())  # owed: rebuilt without a read or a mark
    assert out["o1"]["dests"][0]["activeConns"] == 5 and not r.conns_owed and r.engine.reads == 2


def test_a_failed_write_is_forgotten_and_marked_for_the_next_pass():
    objects = {"o1": obj("o1", "10.0.0.1")}
    r, touched, _ = reporter(objects)
    status = r.build(snapshot(objects), None)["o1"]
    r._done("o1", status, RuntimeError("API down"))
    assert "o1" not in r.sent and touched == ["o1"]
    r._done("o1", status, None)
    assert objects["o1"]["status"] is status  # a write that went through is what the object has


def test_submit_reads_counts_on_a_full_pass_and_rebuilds_what_is_stale():
    objects = {"o1": obj("o1", "10.0.0.1"), "o2": obj("o2", "10.0.0.2")}
    r, _, _ = reporter(objects)
    built = []
    r.writer.submit = lambda snap, names: built.append(names)
    snap = snapshot(objects)
    owner = snap.merged.owner
    r.conns_due = False
    r.submit(snap, set(), StatusInputs(owner), full=True)
    assert built == [None] and r.conns_due  # no inputs before: every status; a full pass reads counts
    r.conns_due = False
    r.conns_at = time.monotonic()
    r.submit(snap, {"o2"}, StatusInputs(owner, {K1: "EEXIST"}), full=False)
    assert built[-1] == {"o1", "o2"} and not r.conns_due  # o1's service failed: its status is stale


def test_without_conns():
    s = {"dests": [{"address": "a", "activeConns": 1, "inactiveConns": 2, "weight": 1}], "x": 1}
    assert without_conns(s) == {"dests": [{"address": "a", "weight": 1}], "x": 1}
    assert without_conns(None) == {"dests": []}
