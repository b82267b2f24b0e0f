"""The agent's own loop (main.Agent) on a real kernel, driven pass by pass:
its NodeStates given directly instead of through a watch, its statuses
captured instead of written (imported by name, like engine_helpers)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Callable

import pytest

from lvs_agent.engine import DRAIN_RECORD, Engine
from lvs_agent.main import Agent


def new_agent(director: str, state: Path, objects: dict[str, dict]) -> Agent:
    """An agent programming ``director`` with its state in ``state`` (as
    lvs-agent's main() builds it: ownership, drain and verdict records there);
    ``statuses`` on it holds the last status written per object."""
    engine = Engine(state / "ownership.json", netns=director, drain_path=state / DRAIN_RECORD)
    statuses: dict[str, dict] = {}
    a = Agent("d1", "kube-lvs-system", engine, None, state / "nodestates.json",
              patch_status=lambda ns, name, body: statuses.__setitem__(name, body["status"]))
    a.statuses = statuses
    a.objects = dict(objects)
    a.synced = True
    a._touch()
    return a


async def passes(a: Agent, done: Callable[[], bool], seconds: float, full: bool = True) -> None:
    """The agent's passes (the first full, unless ``full=False``), every
    0.2 s, until ``done()``; fails after ``seconds``."""
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await a.reconcile_once(full=full, woken=True)
        full = False
        await asyncio.to_thread(a.status.wait_idle, 10)
        if done():
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"not reached in {seconds}s: verdicts {a.checker.verdicts}, draining {a.engine.draining}")


async def stop(a: Agent) -> None:
    await a.checker.stop()
    a.status.stop()
    a.engine.close()
