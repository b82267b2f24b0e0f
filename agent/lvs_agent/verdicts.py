"""Health verdicts kept across agent restarts.

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
from typing import Mapping

from lvs_model.nodespec import DestKey, ServiceKey

from .health import HEALTHY, UNHEALTHY, DestHealth, Verdicts
from .jsonrecord import JsonRecord

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


__all__ = ["VERDICT_RECORD", "VerdictStore", "from_json", "to_json"]
