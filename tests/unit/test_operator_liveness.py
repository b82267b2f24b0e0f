"""The operator's liveness probe fails once a part that does the work has ended (issue 15).

Before, the probe reported counters and stayed green with the reconciler task
dead: the pod kept running and reconciled nothing.
"""
from __future__ import annotations

import asyncio
import threading

import kopf
import pytest

from lvs_operator import handlers


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


async def _parts(fail_reconciler: bool):
    async def forever():
        await asyncio.sleep(3600)

    async def crash():
        raise RuntimeError("boom")
    rec = asyncio.create_task(crash() if fail_reconciler else forever())
    elector = asyncio.create_task(forever())
    await asyncio.sleep(0.01)
    return rec, elector


def test_a_dead_reconciler_or_watch_thread_fails_the_probe(monkeypatch):
    async def scenario():
        rec, elector = await _parts(fail_reconciler=True)
        alive = threading.Thread(target=threading.Event().wait, args=(5,), name="watch-nodes", daemon=True)
        gone = threading.Thread(target=lambda: None, name="watch-virtualservices")
        alive.start(), gone.start(), gone.join()
        state = {"stop": asyncio.Event(), "reconciler_task": rec, "elector_task": elector,
                 "watch_threads": [alive, gone]}
        dead = handlers.dead_parts(state)
        monkeypatch.setattr(handlers, "STATE", state)
        with pytest.raises(kopf.PermanentError, match="not reconciling"):
            handlers.probe()
        state["stop"].set()  # stopping: parts ending is expected
        stopping = handlers.dead_parts(state)
        elector.cancel()
        return dead, stopping
    dead, stopping = run(scenario())
    assert dead == ["reconciler (boom)", "watch-virtualservices"]
    assert stopping == []


def test_a_running_operator_passes(monkeypatch):
    async def scenario():
        rec, elector = await _parts(fail_reconciler=False)
        state = {"stop": asyncio.Event(), "reconciler_task": rec, "elector_task": elector, "watch_threads": []}
        monkeypatch.setattr(handlers, "STATE", state)
        out = handlers.probe()
        rec.cancel(), elector.cancel()
        return out
    assert run(scenario())["passes"] == 0
