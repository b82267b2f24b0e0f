"""Health verdicts: the vocabulary (pure), and the verdicts kept across agent restarts.

The states, one dest's verdict and how a check result moves it, and the
spec the verdicts make, are pure: the merge (nodestate.py) and the status
read them without depending on the checker that produces them (health.py).

A restarted agent used to start with no verdicts: every checked real server
was Unknown, and Unknown keeps the configured weight, so a server held at
weight 0 because it had failed went back into rotation for fall x interval
seconds (until its checks failed again), with traffic sent to a dead server.

Two ways out were possible: persist the verdicts, or keep each checked
dest's kernel weight until the agent's own checks decide. This keeps the
verdicts, a small file in the state directory written when one changes,
because the kernel weight cannot say why it is what it is: a weight of 0 is
as much a RealServer configured at 0 as a failed server, and a weight that
differs from the spec may be a change made while the agent was away, which
must take effect at once. The verdicts also carry what the checks knew (a
failed server needs ``rise`` passes to come back, exactly as if the agent
had never stopped; the status says Unhealthy, not Unknown) and they work the
same when the agent starts without the API server, from its object cache.

Only decided verdicts (Healthy, Unhealthy) are kept, with when they changed
and the last error; the consecutive counts start again from 0, so a loaded
verdict flips only after a full ``rise`` or ``fall`` of fresh checks. The
file is replaced atomically; a missing or unreadable one is no verdicts (the
behaviour before: configured weights until the checks decide).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Mapping

from lvs_model.nodespec import Dest, DestKey, NodeSpec, ServiceKey

from .jsonrecord import JsonRecord

HEALTHY, UNHEALTHY, DRAINING, UNKNOWN = "Healthy", "Unhealthy", "Draining", "Unknown"

@dataclass(frozen=True)
class DestHealth:
    state: str = UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_error: str = ""
    changed_at: float = 0.0


def step(h: DestHealth, ok: bool, rise: int, fall: int, now: float, error: str = "") -> DestHealth:
    """One check result in; the new verdict out (pure)."""
    if ok:
        succ, fail = h.successes + 1, 0
        state = HEALTHY if (h.state == UNKNOWN or succ >= rise) else h.state
    else:
        succ, fail = 0, h.failures + 1
        state = UNHEALTHY if fail >= fall else h.state
    changed = now if state != h.state else h.changed_at
    return DestHealth(state, succ, fail, "" if ok else error, changed)


Verdicts = dict[tuple[ServiceKey, DestKey], DestHealth]


def dest_health(d: Dest, h: DestHealth | None, checked: bool) -> str:
    """The health column a user sees for one dest."""
    if d.weight == 0:
        return DRAINING
    if not checked:
        return HEALTHY if h is None else h.state  # unchecked services count as up
    return (h or DestHealth()).state


def effective_spec(spec: NodeSpec, verdicts: Verdicts) -> NodeSpec:
    """The spec with failed servers' weights at 0 (pure). A service with no
    failed server stays the same object (the engine's incremental reconcile
    looks for changed services by identity first)."""
    if not verdicts:
        return spec
    services = []
    for s in spec.services:
        if s.health.type == "none":
            services.append(s)
            continue
        key = s.key
        down = {d.key for d in s.dests if verdicts.get((key, d.key), DestHealth()).state == UNHEALTHY}
        if not down:
            services.append(s)
            continue
        services.append(replace(s, dests=tuple(replace(d, weight=0) if d.key in down else d for d in s.dests)))
    return replace(spec, services=tuple(services))


VERDICT_RECORD = "verdicts.json"  # in the agent's state directory


def to_json(verdicts: Mapping[tuple[ServiceKey, DestKey], DestHealth]) -> dict:
    rows = [[s.family, s.protocol, s.address, s.port, s.fwmark, d.address, d.port, h.state, h.changed_at,
             h.last_error]
            for (s, d), h in sorted(verdicts.items()) if h.state in (HEALTHY, UNHEALTHY)]
    return {"version": 1, "verdicts": rows}


def from_json(data: Mapping) -> Verdicts:
    out: Verdicts = {}
    for fam, proto, addr, port, fwmark, daddr, dport, state, changed, error in data.get("verdicts", []):
        if state not in (HEALTHY, UNHEALTHY):
            continue
        key = (ServiceKey(fam, proto, addr, int(port), int(fwmark)), DestKey(daddr, int(dport)))
        out[key] = DestHealth(state, 0, 0, str(error), float(changed))
    return out


class VerdictStore(JsonRecord[Verdicts]):
    def __init__(self, path: str | os.PathLike):
        super().__init__(path, from_json, to_json, dict)


__all__ = ["DRAINING", "DestHealth", "HEALTHY", "UNHEALTHY", "UNKNOWN", "VERDICT_RECORD", "VerdictStore", "Verdicts",
           "dest_health", "effective_spec", "from_json", "step", "to_json"]
