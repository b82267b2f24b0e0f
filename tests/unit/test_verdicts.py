"""Health verdicts across restarts (verdicts.py, HealthChecker's store, the
agent's pass writing them before it programs).

Before verdicts.py a new HealthChecker started with no verdicts: every test
here that expects a dead server's weight to stay 0 right after a restart
fails on that code (HealthChecker took no store, effective_spec of an empty
verdict map is the configured weight)."""
from __future__ import annotations

import asyncio
import json
from concurrent.futures import Future
from types import SimpleNamespace

from lvs_agent.health import HealthChecker
from lvs_agent.verdicts import HEALTHY, UNHEALTHY, UNKNOWN, DestHealth, effective_spec, step
from lvs_agent.main import Agent
from lvs_agent.verdicts import VERDICT_RECORD, VerdictStore
from lvs_model.nodespec import Dest, HealthCheck, NodeSpec, Service

HC = HealthCheck(type="tcp", interval=1.0, timeout=0.5, rise=2, fall=3)
DEAD, ALIVE = Dest("10.1.0.1", 80, 5), Dest("10.1.0.2", 80, 3)
SVC = Service(address="10.0.0.1", port=80, dests=(DEAD, ALIVE), health=HC)
SPEC = NodeSpec(services=(SVC,))
KD, KA = (SVC.key, DEAD.key), (SVC.key, ALIVE.key)


class ScriptedPool:
    """Answers probes from a script per address (True: passes), at once."""

    def __init__(self, script: dict[str, bool]):
        self.script, self.probes = script, 0

    def submit(self, key, fn, hc, address, port):
        self.probes += 1
        f: Future = Future()
        f.set_result((self.script[address], "" if self.script[address] else "refused"))
        return f

    def shutdown(self):
        pass


def weights(verdicts) -> dict:
    return {d.key: d.weight for d in effective_spec(SPEC, verdicts).services[0].dests}


def test_store_keeps_decided_verdicts_only_and_resets_the_counts(tmp_path):
    store = VerdictStore(tmp_path / VERDICT_RECORD)
    assert store.load() == {}
    store.save({KD: DestHealth(UNHEALTHY, 0, 7, "refused", 12.5), KA: DestHealth(HEALTHY, 4, 0, "", 3.0),
                (SVC.key, Dest("10.1.0.9", 80).key): DestHealth(UNKNOWN, 1, 0)})
    assert store.load() == {KD: DestHealth(UNHEALTHY, 0, 0, "refused", 12.5), KA: DestHealth(HEALTHY, 0, 0, "", 3.0)}
    store.path.write_text("[broken")
    assert store.load() == {}


def test_a_restarted_checker_keeps_a_dead_server_at_zero_until_rise_passes(tmp_path):
    """Run 1: the dead server fails ``fall`` checks and is saved Unhealthy.
    Run 2 (a new checker, same file): weight 0 before any check, after each
    failing check, and after rise-1 passes; only ``rise`` passes bring it back."""
    store = VerdictStore(tmp_path / VERDICT_RECORD)

    async def first():
        c = HealthChecker(pool=ScriptedPool({DEAD.address: False, ALIVE.address: True}), min_interval=0.01,
                          store=store)
        c.update(SPEC)
        for _ in range(200):
            if c.verdicts.get(KD, DestHealth()).state == UNHEALTHY:
                break
            await asyncio.sleep(0.01)
        c.persist()
        await c.stop()

    asyncio.run(first())
    assert store.load()[KD].state == UNHEALTHY
    seen: list[dict] = []

    async def second(script, checks):
        pool = ScriptedPool(script)
        c = HealthChecker(pool=pool, store=store, min_interval=0.01)
        seen.append(weights(c.verdicts))  # before the first check
        c.update(SPEC)
        while pool.probes < checks:
            seen.append(weights(c.verdicts))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.005)
        seen.append(weights(c.verdicts))
        await c.stop()
        return c

    asyncio.run(second({DEAD.address: False, ALIVE.address: True}, 8))
    assert seen and all(w[DEAD.key] == 0 and w[ALIVE.key] == 3 for w in seen), seen
    # Without the store (the code before): the configured weight at once.
    assert weights(HealthChecker().verdicts)[DEAD.key] == 5
    # Back up: a loaded verdict counts from 0, so one pass is not enough (rise 2)...
    loaded = store.load()[KD]
    assert step(loaded, True, HC.rise, HC.fall, 0.0).state == UNHEALTHY
    # ...and enough passes bring it back.
    seen.clear()
    c = asyncio.run(second({DEAD.address: True, ALIVE.address: True}, 8))
    assert seen[0][DEAD.key] == 0 and c.verdicts[KD].state == HEALTHY and seen[-1][DEAD.key] == 5


def test_verdicts_of_dests_no_longer_checked_are_dropped(tmp_path):
    store = VerdictStore(tmp_path / VERDICT_RECORD)
    store.save({KD: DestHealth(UNHEALTHY, 0, 0, "", 1.0)})

    async def go():
        c = HealthChecker(pool=ScriptedPool({}), store=store)
        c.update(NodeSpec())
        c.persist()
        await c.stop()
        return c

    assert asyncio.run(go()).verdicts == {} and store.load() == {}


class RecordingEngine:
    """Notes what the verdict file held when each reconcile began."""

    netns = None

    def __init__(self, path):
        self.path, self.seen = path, []

    def reconcile(self, spec, incremental=False, sweep=0):
        held = json.loads(self.path.read_text())["verdicts"] if self.path.exists() else []
        self.seen.append(({r[5]: r[7] for r in held}, {d.address: d.weight for s in spec.services for d in s.dests}))
        return SimpleNamespace(ops=[], failed=[], service_errors={}, problems={})

    def connections(self, pause=None):
        return {}


def test_the_agent_writes_a_flip_before_it_programs_the_weight(tmp_path):
    """The pass that puts the dead server at 0 finds it Unhealthy on disk
    already: a crash between the two cannot bring it back at its weight."""
    eng = RecordingEngine(tmp_path / VERDICT_RECORD)
    a = Agent("n1", "kube-lvs-system", eng, SimpleNamespace(), tmp_path / "nodestates.json")
    a.objects = {"o": {"metadata": {"name": "o", "generation": 1}, "spec": {"services": [
        {"address": "10.0.0.1", "port": 80, "healthCheck": {"type": "tcp", "interval": 1, "timeout": 0.5},
         "dests": [{"address": DEAD.address, "port": 80, "weight": 5}]}]}}}
    a._touch()
    a.checker._pool = ScriptedPool({DEAD.address: False})  # no probe leaves the test
    a.status.stop()

    async def go():
        await a.reconcile_once(full=True)
        key = next(iter(a.checker.verdicts), None) or (a._merged.spec.services[0].key, DEAD.key)
        a.checker.verdicts[key] = DestHealth(UNHEALTHY, 0, 3, "refused", 1.0)
        a.checker._dirty = True  # what a flip in the checker's own loop sets
        await a.reconcile_once(full=False)
        await a.checker.stop()

    asyncio.run(go())
    assert eng.seen[-1] == ({DEAD.address: UNHEALTHY}, {DEAD.address: 0})
