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


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("broken", ["reconciler", "watch thread"])
def test_kopf_liveness_endpoint_answers_500_when_a_part_died(monkeypatch, broken):
    """Through kopf's own health reporter (the endpoint the kubelet probes):
    green while every part runs, an HTTP error once the reconciler task ended
    with an exception or a watch thread ended."""
    import aiohttp
    from kopf._cogs.structs import ephemera
    from kopf._core.engines import indexing, probing

    async def scenario():
        rec, elector = await _parts(fail_reconciler=False)
        watch = threading.Thread(target=threading.Event().wait, args=(5,), name="watch-nodes", daemon=True)
        watch.start()
        state = {"stop": asyncio.Event(), "reconciler_task": rec, "elector_task": elector,
                 "watch_threads": [watch]}
        monkeypatch.setattr(handlers, "STATE", state)
        url = f"http://127.0.0.1:{_free_port()}/healthz"
        ready = asyncio.Event()
        settings = kopf.OperatorSettings()
        reporter = asyncio.create_task(probing.health_reporter(
            url, memo=ephemera.Memo(), indices=indexing.OperatorIndices(indexing.OperatorIndexers()), registry=kopf.get_default_registry(),
            settings=settings, ready_flag=ready))
        await asyncio.wait_for(ready.wait(), 5)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url) as resp:
                    before = resp.status
                if broken == "reconciler":
                    rec.cancel()
                    async def crash():
                        raise RuntimeError("boom")
                    state["reconciler_task"] = asyncio.create_task(crash())
                    await asyncio.sleep(0.01)
                else:
                    state["watch_threads"] = [threading.Thread(target=lambda: None, name="watch-nodes")]
                    state["watch_threads"][0].start()
                    state["watch_threads"][0].join()
                # kopf caches a successful probe for 10 s: ask a fresh reporter's view
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
                ready2 = asyncio.Event()
                url2 = f"http://127.0.0.1:{_free_port()}/healthz"
                rep2 = asyncio.create_task(probing.health_reporter(
                    url2, memo=ephemera.Memo(), indices=indexing.OperatorIndices(indexing.OperatorIndexers()),
                    registry=kopf.get_default_registry(), settings=settings, ready_flag=ready2))
                await asyncio.wait_for(ready2.wait(), 5)
                async with http.get(url2) as resp:
                    after = resp.status
                rep2.cancel()
                await asyncio.gather(rep2, return_exceptions=True)
        finally:
            reporter.cancel()
            elector.cancel()
            state["reconciler_task"].cancel()
        return before, after

    before, after = run(scenario())
    assert before == 200
    assert after >= 500
