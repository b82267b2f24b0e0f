"""Drain-then-delete on a real kernel (drain.py through the engine).

Each test removes a dest from the spec while a client holds a TCP connection
through it (NAT, the seed's topology). Before drain.py the engine deleted the
dest at once (one DelDest, ``expire_nodest_conn=1`` then cuts the held
connection): the assertions that the removal is a SetDest to weight 0, that
the held connection still echoes and that a restarted engine still keeps the
dest all fail on that code.
"""
from __future__ import annotations

import asyncio
import time

import pytest

from lvs_agent import ops as O
from lvs_agent.drain import DrainStore
from lvs_agent.engine import Engine
from lvs_agent.observe import read_ipvs
from lvs_model.nodespec import DestKey

from agent_helpers import new_agent, passes, stop
from engine_helpers import reconcile_ok, spec
from test_engine_lifecycle import HOLD_PORT, Held, echo_nat, hold_doc  # noqa: F401 - echo_nat: a fixture


def drain_engine(t, tmp_path) -> Engine:
    e = Engine(tmp_path / "own.json", netns=t.director, drain_path=tmp_path / "drain.json")
    e.drain_recheck = 0.0  # every incremental reconcile re-checks the draining dests
    return e


def doc(t, rips, timeout: int | None = None) -> dict:
    d = hold_doc(t)
    svc = d["services"][0]
    svc["dests"] = [x for x in svc["dests"] if x["address"] in rips]
    if timeout is not None:
        svc["drainTimeout"] = timeout
    return d


def kernel_dests(t) -> dict[str, tuple[int, int]]:
    """rip -> (weight, active connections) of the test service, read from the kernel."""
    table = read_ipvs(t.director)
    key = spec(hold_doc(t)).services[0].key
    svc = table.services.get(key)
    if svc is None:
        return {}
    return {d.address: (d.weight, table.dest_runtime[(key, d.key)].active) for d in svc.dests}


def until_gone(e: Engine, t, d: dict, rip: str, seconds: float) -> float:
    """Incremental reconciles (as the agent's passes) until ``rip`` leaves the
    kernel; the time it took. Fails after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        reconcile_ok(e, d, incremental=True)
        if rip not in kernel_dests(t):
            return time.monotonic() - began
        time.sleep(0.2)
    pytest.fail(f"{rip} still in the kernel after {seconds}s: {kernel_dests(t)}")


def test_removed_dest_drains_survives_a_restart_and_goes_when_its_connection_closes(echo_nat, tmp_path):
    t = echo_nat
    e = drain_engine(t, tmp_path)
    reconcile_ok(e, hold_doc(t))
    conn = Held(t.client, t.vip, HOLD_PORT)
    e2 = None
    try:
        victim = t.rips[t.names.index(conn.server)]
        other = next(r for r in t.rips if r != victim)
        d = doc(t, [other])
        r = reconcile_ok(e, d, incremental=True)
        # Weight 0, not a delete; the held connection still works on it.
        assert [type(op).__name__ for op in r.ops] == ["SetDest"], [O.describe(op) for op in r.ops]
        assert kernel_dests(t)[victim] == (0, 1)
        assert conn.echo("draining") == "draining"
        key = spec(d).services[0].key
        started = e.draining[(key, DestKey(victim, HOLD_PORT))]
        # New connections all go to the other server.
        fresh = [Held(t.client, t.vip, HOLD_PORT) for _ in range(4)]
        assert {h.server for h in fresh} == {t.names[t.rips.index(other)]}
        for h in fresh:
            h.close()
        # Re-checked while the connection is open: still draining.
        reconcile_ok(e, d, incremental=True)
        assert kernel_dests(t)[victim][0] == 0
        # A restart in the middle (a new engine, the same records): a full
        # reconcile keeps the dest and its drain's start.
        e.close()
        e2 = drain_engine(t, tmp_path)
        r = reconcile_ok(e2, d)
        assert not any(isinstance(op, O.DelDest) for op in r.ops), [O.describe(op) for op in r.ops]
        assert e2.draining == {(key, DestKey(victim, HOLD_PORT)): started}
        assert kernel_dests(t)[victim] == (0, 1)
        assert conn.echo("after restart") == "after restart"
        # The connection closes: the next re-checks delete the dest.
        conn.close()
        until_gone(e2, t, d, victim, 30)
        assert e2.draining == {} and kernel_dests(t) == {other: (1, 0)}
        assert (tmp_path / "drain.json").exists()
        assert DrainStore(tmp_path / "drain.json").load() == {}
    finally:
        conn.close()
        last = e2 or e
        reconcile_ok(last, {})
        last.close()


def test_drain_timeout_ends_a_drain_with_the_connection_still_open(echo_nat, tmp_path):
    """drainTimeout 2: the dest goes once 2 s have passed though its client
    still holds the connection; never before. A whole service deleted goes at
    once, draining dest and all."""
    t = echo_nat
    e = drain_engine(t, tmp_path)
    conn = None
    try:
        reconcile_ok(e, doc(t, t.rips, timeout=2))
        conn = Held(t.client, t.vip, HOLD_PORT)
        victim = t.rips[t.names.index(conn.server)]
        other = next(r for r in t.rips if r != victim)
        d = doc(t, [other], timeout=2)
        reconcile_ok(e, d, incremental=True)
        key = spec(d).services[0].key
        started = e.draining[(key, DestKey(victim, HOLD_PORT))]
        assert kernel_dests(t)[victim] == (0, 1)
        until_gone(e, t, d, victim, 30)
        assert time.time() - started >= 2  # not before its timeout
        assert e.draining == {}
        # drainTimeout 0: at once, connection or not.
        conn.close()
        reconcile_ok(e, doc(t, t.rips, timeout=0), incremental=True)
        conn = Held(t.client, t.vip, HOLD_PORT)
        victim = t.rips[t.names.index(conn.server)]
        r = reconcile_ok(e, doc(t, [x for x in t.rips if x != victim], timeout=0), incremental=True)
        assert [type(op).__name__ for op in r.ops] == ["DelDest"]
        # A draining dest's whole service deleted: removed at once with it.
        conn.close()
        reconcile_ok(e, doc(t, t.rips), incremental=True)
        conn = Held(t.client, t.vip, HOLD_PORT)
        victim = t.rips[t.names.index(conn.server)]
        reconcile_ok(e, doc(t, [x for x in t.rips if x != victim]), incremental=True)
        assert kernel_dests(t)[victim] == (0, 1)
        r = reconcile_ok(e, {}, incremental=True)
        names = [type(op).__name__ for op in r.ops]
        assert "DelService" in names and "DelDest" not in names and "SetDest" not in names, names
        assert kernel_dests(t) == {}
        assert e.draining == {}
    finally:
        if conn is not None:
            conn.close()
        reconcile_ok(e, {})
        e.close()


def test_agent_shows_a_draining_dest_and_deletes_it_once_drained(echo_nat, tmp_path):
    """The agent's own loop (its default re-check interval): a RealServer
    gone from the NodeState while a client holds a connection through it is
    listed Draining at weight 0 with its active connection, new connections
    avoid it, and once the connection closes the agent's passes delete it and
    its status entry goes. Before drain.py the first pass deleted it."""
    t = echo_nat
    obj = {"metadata": {"name": "d1-web", "generation": 1}, "spec": {"node": "d1", **hold_doc(t)}}
    a = new_agent(t.director, tmp_path, {"d1-web": obj})
    a.reporter.conn_status_interval = 0.2  # connection counts read into statuses every pass, not every 30 s
    conn = None

    def dests() -> dict:
        return {d["address"]: d for d in (a.statuses.get("d1-web") or {}).get("dests", [])}

    async def go():
        nonlocal conn
        await passes(a, lambda: set(dests()) == set(t.rips), 30)
        conn = await asyncio.to_thread(Held, t.client, t.vip, HOLD_PORT)
        victim = t.rips[t.names.index(conn.server)]
        other = next(r for r in t.rips if r != victim)
        a.objects["d1-web"] = {"metadata": {"name": "d1-web", "generation": 2},
                               "spec": {"node": "d1", **doc(t, [other])}}
        a._touch("d1-web")
        await passes(a, lambda: dests().get(victim, {}).get("activeConns") == 1, 30, full=False)
        assert dests()[victim] == {"service": f"tcp:{t.vip}:{HOLD_PORT}", "address": victim, "port": HOLD_PORT,
                                   "health": "Draining", "weight": 0, "activeConns": 1, "inactiveConns": 0}
        assert kernel_dests(t)[victim] == (0, 1)
        assert await asyncio.to_thread(conn.echo, "held") == "held"
        conn.close()
        await passes(a, lambda: victim not in kernel_dests(t), 30, full=False)
        await passes(a, lambda: set(dests()) == {other}, 30, full=False)
        assert a.engine.draining == {}
        await stop(a)

    try:
        asyncio.run(go())
    finally:
        if conn is not None:
            conn.close()
        with Engine(tmp_path / "ownership.json", netns=t.director) as e:
            reconcile_ok(e, {})
