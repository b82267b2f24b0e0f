"""Drain-then-delete for dests that leave the desired state.

Deleting an IPVS dest at once ends its established connections (the agent
sets ``net.ipv4.vs.expire_nodest_conn=1``: packets of a connection whose dest
is gone are dropped and the entry expired). So a dest that leaves the desired
state while its service stays (its RealServer deleted, or otherwise gone from
the NodeState) is first kept at weight 0 -- no new connections, established
ones go on -- and deleted once its active connections reach 0 or its
service's ``drain_timeout`` seconds have passed, whichever comes first. A
timeout of 0 deletes at once; so does a whole service deleted (its VIP goes
anyway). A dest that comes back into the spec stops draining and gets its
desired weight again.

The drain's start times live in a small record of their own (``DrainStore``,
beside the ownership record) so a restarted agent neither deletes a draining
dest early nor forgets it: a dest it finds leaving with no record starts a
new drain, one with a record keeps its start. Start times are wall-clock
seconds (a monotonic clock starts again at a reboot); a start in the future
(the clock was set back) is taken as now, so a drain still ends within its
timeout of the clock change.

Only ``active`` connections count: IPVS counts a UDP flow, and a TCP
connection past its FIN, as inactive, so such a dest is deleted at once,
as before.

``decide`` is the pure core: (desired services, observed services, owned
dests, active connection counts, records, now) -> the services to plan
(each draining dest appended at weight 0), the dests to delete, the new
records. The planner then sees a draining dest as desired at weight 0 (one
SetDest, no DelDest) and a drained one as not desired (one DelDest): it is
not changed at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Iterable, Mapping

from lvs_model.nodespec import Dest, DestKey, Service, ServiceKey

from .jsonrecord import JsonRecord

DrainKey = tuple[ServiceKey, DestKey]
_ADDR_PORT = attrgetter("address", "port")
Records = dict[DrainKey, float]  # dest -> wall-clock second its drain began


@dataclass(frozen=True)
class Decision:
    """What to do with the dests leaving ``desired`` (see ``decide``)."""

    services: tuple[Service, ...] = ()  # desired, draining dests appended at weight 0
    records: Records = field(default_factory=dict)  # the drains still running (considered services only)
    zero: frozenset[DrainKey] = frozenset()  # draining dests whose kernel weight is not 0 yet
    delete: frozenset[DrainKey] = frozenset()  # leaving dests to delete now

    @property
    def draining(self) -> frozenset[DrainKey]:
        return frozenset(self.records)


def leaving(desired: Iterable[Service], observed: Mapping[ServiceKey, Service],
            owned: Mapping[ServiceKey, set[DestKey]]) -> dict[DrainKey, Dest]:
    """Dests of desired services that the kernel holds and the ownership
    record lists but the spec no longer does: the ones the planner would
    delete (nobody else's dest is ever drained or deleted)."""
    out: dict[DrainKey, Dest] = {}
    for svc in desired:
        key = svc.key
        have = observed.get(key)
        mine = owned.get(key)
        if have is None or not mine:
            continue
        # (address, port) tuples hash in C: a full reconcile runs this over every dest.
        extra = set(map(_ADDR_PORT, have.dests)) - set(map(_ADDR_PORT, svc.dests))
        for d in have.dests if extra else ():
            if (d.address, d.port) in extra and d.key in mine:
                out[(key, d.key)] = d
    return out


def decide(desired: Iterable[Service], observed: Mapping[ServiceKey, Service],
           owned: Mapping[ServiceKey, set[DestKey]], active: Mapping[DrainKey, int],
           records: Mapping[DrainKey, float], now: float) -> Decision:
    """Which leaving dests drain (kept at weight 0) and which go (pure).

    ``active``: the kernel's active connection count of leaving dests; a
    dest missing from it (not read) counts as still busy, so only the
    timeout ends its drain. ``records``: drain start times (any services;
    only those of leaving dests are carried into the result). A dest drains
    while it has active connections and ``now - start < drain_timeout``."""
    desired = tuple(desired)
    going = leaving(desired, observed, owned)
    if not going:
        return Decision(desired)
    timeout = {s.key: s.drain_timeout for s in desired}
    kept: dict[ServiceKey, list[Dest]] = {}
    new: Records = {}
    zero, delete = set(), set()
    for k, d in going.items():
        started = records.get(k, now)
        if started > now:  # the clock was set back: count from now
            started = now
        busy = active.get(k, 1) > 0
        if timeout[k[0]] <= 0 or not busy or now - started >= timeout[k[0]]:
            delete.add(k)
            continue
        new[k] = started
        kept.setdefault(k[0], []).append(replace(d, weight=0))
        if d.weight != 0:
            zero.add(k)
    services = tuple(replace(s, dests=s.dests + tuple(sorted(kept[s.key], key=lambda d: d.key)))
                     if s.key in kept else s for s in desired)
    return Decision(services, new, frozenset(zero), frozenset(delete))


def merge_records(old: Mapping[DrainKey, float], new: Mapping[DrainKey, float],
                  services: Iterable[ServiceKey]) -> Records:
    """``old`` with the records of ``services`` replaced by ``new``'s (an
    incremental reconcile decides for a few services; the rest stand)."""
    keys = set(services)
    out = {k: v for k, v in old.items() if k[0] not in keys}
    out.update(new)
    return out


def by_service(records: Iterable[DrainKey]) -> dict[ServiceKey, tuple[DestKey, ...]]:
    """Draining dests per service, sorted (for statuses)."""
    out: dict[ServiceKey, list[DestKey]] = {}
    for skey, dkey in records:
        out.setdefault(skey, []).append(dkey)
    return {k: tuple(sorted(v)) for k, v in out.items()}


# ---------------------------------------------------------------------------
# The record on disk (I/O)
# ---------------------------------------------------------------------------

def _to_json(records: Mapping[DrainKey, float]) -> dict:
    rows = [[s.family, s.protocol, s.address, s.port, s.fwmark, d.address, d.port, t]
            for (s, d), t in sorted(records.items())]
    return {"version": 1, "draining": rows}


def _from_json(data: Mapping) -> Records:
    out: Records = {}
    for fam, proto, addr, port, fwmark, daddr, dport, t in data.get("draining", []):
        out[(ServiceKey(fam, proto, addr, int(port), int(fwmark)), DestKey(daddr, int(dport)))] = float(t)
    return out


class DrainStore(JsonRecord[Records]):
    """The drain records on disk. A missing or unreadable file is no drains:
    a dest then found leaving starts a new drain, never an early delete."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, _from_json, _to_json, dict)


def read_active(netns: str | None, keys: Iterable[ServiceKey], conn=None) -> dict[DrainKey, int]:
    """Active connection counts of every dest of ``keys`` (services absent
    from the kernel give nothing): one get and one dest dump per service,
    through ``conn`` (an IPVSConnection), else a connection of its own."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    if conn is None:
        from .netlink_batch import IPVSConnection
        with IPVSConnection(netns) as own:
            return read_active(netns, keys, own)
    from lvs_model import kernel as K
    found = [got for k in keys if (got := conn.get_service(k)) is not None]
    dumps = conn.dump_dests([(ka, K.FAMILIES[svc.family]) for svc, _, _, ka in found], runtime=True)
    return {(svc.key, d.key): (rt.active if rt is not None else 1)
            for (svc, _, _, _), ds in zip(found, dumps) for d, rt in ds}


__all__ = ["Decision", "DrainKey", "DrainStore", "Records", "by_service", "decide", "leaving", "merge_records",
           "read_active"]
