"""The status writer: statuses are built and written in threads of their own,
coalesced, one object never written by two threads at once; and the agent's
reconcile loop does not wait for them."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

from lvs_agent.main import Agent
from lvs_kube.status_writer import DRAINED, StatusWriter

from test_agent_incremental import agent, obj


class Recorder:
    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate
        self.writes: list[tuple[str, object]] = []
        self.active: set[str] = set()
        self.overlap = False
        self.lock = threading.Lock()

    def write(self, name, status):
        with self.lock:
            self.overlap |= name in self.active
            self.active.add(name)
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(0.001)
        with self.lock:
            self.active.discard(name)
            self.writes.append((name, status))


def test_builds_the_newest_snapshot_for_the_union_of_names():
    builds = []
    gate = threading.Event()

    def build(snap, names):
        builds.append((snap, None if names is None else sorted(names)))
        gate.wait(10)
        return {}
    w = StatusWriter(build, lambda n, s: None)
    w.submit(1, {"a"})
    time.sleep(0.05)  # the builder is busy with snapshot 1
    w.submit(2, {"b"})
    w.submit(3, {"c"})
    gate.set()
    assert w.wait_idle(5)
    assert builds == [(1, ["a"]), (3, ["b", "c"])]
    w.submit(4, {"d"})
    w.submit(5, None)  # None (every object) wins over any set
    assert w.wait_idle(5)
    assert builds[-1] == (5, None)
    w.stop()


def test_queued_status_is_replaced_and_one_object_is_never_written_twice_at_once():
    gate = threading.Event()
    rec = Recorder(gate)
    todo: list[dict] = [{"x": 1, "y": 1}, {"x": 2}, {"x": 3, "y": 3}]
    w = StatusWriter(lambda snap, names: todo.pop(0), rec.write, workers=4)
    w.submit(None, None)
    time.sleep(0.05)  # x=1 and y=1 are being written (held at the gate)
    w.submit(None, None)  # x=2 queued: x is in flight
    time.sleep(0.05)
    w.submit(None, None)  # x=3 replaces the queued x=2; y=3 queued behind y=1
    time.sleep(0.05)
    assert w.queued("x") == 3 and w.pending >= 2
    gate.set()
    assert w.wait_idle(5)
    assert [s for n, s in rec.writes if n == "x"] == [1, 3]
    assert [s for n, s in rec.writes if n == "y"] == [1, 3]
    assert not rec.overlap and w.written == 4 and w.failed == 0
    w.stop()


def test_a_failed_write_is_reported_and_the_others_go_on():
    done = []

    def write(name, status):
        if name == "bad":
            raise RuntimeError("API down")
    w = StatusWriter(lambda snap, names: {"bad": 1, "good": 2}, write,
                     lambda n, s, e: done.append((n, s, None if e is None else str(e))))
    w.submit(None, None)
    assert w.wait_idle(5)
    assert sorted(done) == [("bad", 1, "API down"), ("good", 2, None)]
    assert (w.written, w.failed) == (1, 1)
    w.stop()


def test_a_failing_build_does_not_stop_the_next_one():
    calls = []

    def build(snap, names):
        calls.append(snap)
        if snap == "boom":
            raise ValueError("bad input")
        return {"o": snap}
    w = StatusWriter(build, lambda n, s: None)
    w.submit("boom", None)
    assert w.wait_idle(5)
    w.submit("ok", None)
    assert w.wait_idle(5) and calls == ["boom", "ok"] and w.written == 1
    w.stop()


def test_reconcile_loop_does_not_wait_for_status_writes(tmp_path):
    """The API server answers status writes slowly (held here): reconciles go on,
    and the held statuses land once it answers, the newest per object."""
    a, eng, api = agent(tmp_path)
    gate = threading.Event()
    written: list[tuple[str, int]] = []

    def slow_patch(group, version, ns, plural, name, body):
        assert gate.wait(10)
        written.append((name, body["status"]["observedGeneration"]))
    api.patch_namespaced_custom_object_status = slow_patch

    async def go():
        await asyncio.wait_for(a.reconcile_once(full=True), 5)
        for gen in (2, 3):
            a.objects["o1"] = obj("o1", "10.0.0.1", weight=gen, generation=gen)
            a._touch("o1")
            await asyncio.wait_for(a.reconcile_once(full=False), 5)
        assert eng.calls == [False, True, True] and written == []
        gate.set()
        assert await asyncio.to_thread(a.status.wait_idle, 10)
    asyncio.run(go())
    assert sorted(n for n, _ in written if n != "o1") == ["o2", "o3"]
    assert [g for n, g in written if n == "o1"][-1] == 3
    assert a.objects["o1"]["status"]["observedGeneration"] == 3


def test_builds_and_writes_wait_at_the_gate():
    """The agent's gate: while a pass programs the kernel, statuses wait."""
    idle = threading.Event()
    rec = Recorder()
    built = []
    w = StatusWriter(lambda snap, names: built.append(snap) or {"o": 1}, rec.write, gate=idle.wait)
    w.submit("s", None)
    time.sleep(0.2)
    assert built == [] and rec.writes == []
    idle.set()
    assert w.wait_idle(5) and rec.writes == [("o", 1)]
    w.stop()


def test_agent_status_threads_wait_while_a_pass_runs(tmp_path):
    a, eng, api = agent(tmp_path)
    a.status.stop()
    a = Agent("n1", "kube-lvs-system", eng, api, tmp_path / "cache2.json", status_workers=1)
    a.objects = {f"o{i}": obj(f"o{i}", f"10.0.0.{i}") for i in range(1, 4)}
    writes: list[float] = []
    hold: list[float] = []
    real = api.patch_namespaced_custom_object_status

    def patch(*args):  # 0.2 s each, one at a time: the last two are due during the hold
        writes.append(time.monotonic())
        time.sleep(0.2)
        real(*args)
    api.patch_namespaced_custom_object_status = patch

    def busy():  # the engine holds the next pass a while
        hold.append(time.monotonic())
        time.sleep(0.3)
        hold.append(time.monotonic())

    async def go():
        await a.reconcile_once(full=True)  # 3 statuses submitted at its end
        eng.during = busy
        await a.reconcile_once(full=False)
        assert await asyncio.to_thread(a.status.wait_idle, 10)
    asyncio.run(go())
    assert len(writes) == 3
    # A write already past the gate may finish; none starts while the pass runs.
    assert not [t for t in writes if hold[0] + 0.05 < t < hold[1]]


def test_a_large_backlog_logs_one_line_when_drained_a_small_one_none(caplog):
    caplog.set_level(logging.INFO, logger="lvs_kube.status_writer")
    w = StatusWriter(lambda snap, names: {f"o{i}": i for i in range(snap)}, lambda n, s: None, workers=4)
    w.submit(StatusWriter.BURST_LOG - 1, None)
    assert w.wait_idle(5)
    assert not [r for r in caplog.records if DRAINED in r.getMessage()]
    w.submit(StatusWriter.BURST_LOG + 50, None)
    assert w.wait_idle(5)
    lines = [r.getMessage() for r in caplog.records if DRAINED in r.getMessage()]
    assert len(lines) == 1 and f"{StatusWriter.BURST_LOG + 50} status(es) written, 0 failed" in lines[0], lines
    w.stop()
