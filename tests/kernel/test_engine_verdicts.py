"""Health verdicts across an agent restart, on a real kernel.

The agent's own loop (main.Agent, driven pass by pass with the NodeState
given directly instead of a watch), its real engine and real TCP health
checks from the director's namespace: a real server whose listener is
stopped goes to weight 0; then the agent is stopped and a new one started on
the same state directory while a thread polls the kernel. Before
verdicts.py the new agent started with no verdicts and its first pass put
the dead server back at its configured weight until ``fall`` checks failed
again: the poll saw weight 3 and this test failed.
"""
from __future__ import annotations

import asyncio
import threading
import time

from lvs_agent.engine import Engine
from lvs_agent.verdicts import UNHEALTHY
from lvs_agent.observe import read_ipvs
from lvs_agent.verdicts import VERDICT_RECORD, VerdictStore

from agent_helpers import new_agent, passes, stop
from engine_helpers import HoldServer, spec

PORT = 8080
FALL = 2


def nodestate(t) -> dict:
    svc = {"address": t.vip, "port": PORT, "scheduler": "rr",
           "healthCheck": {"type": "tcp", "interval": 1, "timeout": 0.5, "rise": 1, "fall": FALL},
           "dests": [{"address": rip, "port": PORT, "weight": 3, "method": "nat"} for rip in t.rips]}
    return {"metadata": {"name": "d1-web", "generation": 1, "resourceVersion": "1"},
            "spec": {"node": "d1", "services": [svc]}}


def weights(t) -> dict[str, int]:
    key = spec(nodestate(t)["spec"]).services[0].key
    svc = read_ipvs(t.director, runtime=False).services.get(key)
    return {d.address: d.weight for d in svc.dests} if svc is not None else {}


def test_a_restarted_agent_keeps_a_dead_server_at_zero(seed_nat, tmp_path):
    t = seed_nat
    dead_rip, alive_rip = t.rips
    servers = [HoldServer(ns, name, PORT) for ns, name in zip(t.real_servers, t.names)]
    servers[0].close()  # the dead server: nothing listens on its port
    seen: list[dict[str, int]] = []
    try:
        first = new_agent(t.director, tmp_path, {"d1-web": nodestate(t)})

        async def run_first():
            await passes(first, lambda: weights(t) == {dead_rip: 0, alive_rip: 3}, 60)
            await stop(first)
        asyncio.run(run_first())
        saved = VerdictStore(tmp_path / VERDICT_RECORD).load()
        assert [h.state for (s, d), h in saved.items() if d.address == dead_rip] == [UNHEALTHY]

        # The restart: a new agent on the same state directory, the kernel polled throughout.
        polling = threading.Event()
        polling.set()

        def poll():
            while polling.is_set():
                seen.append(weights(t))
                time.sleep(0.02)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        second = new_agent(t.director, tmp_path, {"d1-web": nodestate(t)})

        def fresh_checks_decided() -> bool:
            # The new agent's own checks have failed the dead server ``fall`` times.
            h = next((h for (s, d), h in second.checker.verdicts.items() if d.address == dead_rip), None)
            return h is not None and h.failures >= FALL

        async def run_second():
            await passes(second, fresh_checks_decided, 60)
            await second.reconcile_once(full=False, woken=True)
            await stop(second)
        asyncio.run(run_second())
        polling.clear()
        poller.join(5)
        assert len(seen) >= 10, seen
        assert max(w.get(dead_rip, 0) for w in seen) == 0, [w for w in seen if w.get(dead_rip)][:3]
        assert all(w.get(alive_rip) == 3 for w in seen), [w for w in seen if w.get(alive_rip) != 3][:3]
    finally:
        for s in servers[1:]:
            s.close()
        with Engine(tmp_path / "ownership.json", netns=t.director) as e:
            e.reconcile(spec({}))
