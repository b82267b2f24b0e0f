"""From a snapshot to the writes it needs (pure).

``compile_snapshot`` hands a snapshot of the caches to the compiler;
``plan_writes`` compares its result with the objects as they are: the
NodeStates to create, replace or delete, the statuses to patch, the events to
post. Unchanged objects produce no write at all, so a restart rewrites nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lvs_model import channel as C

from .compile_cache import NO_CACHE, CompileCache
from .compiler import Event, Result, compile_cluster
from .objects import key_of

Snapshot = Mapping[str, Iterable[Mapping[str, Any]]]  # kind -> objects


@dataclass
class Writes:
    create: list[dict] = field(default_factory=list)  # NodeState bodies
    replace: list[dict] = field(default_factory=list)  # NodeState bodies with resourceVersion
    delete: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    status: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (plural, ns, name, status)
    events: list[Event] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.create) + len(self.replace) + len(self.delete) + len(self.status) + len(self.events)


def compile_snapshot(snapshot: Snapshot, namespace: str, now: str, cache: CompileCache = NO_CACHE) -> Result:
    """The compiler over a snapshot: only NodeStates in ``namespace`` are ours to read."""
    return compile_cluster(
        snapshot.get("virtualservices", ()), snapshot.get("realservers", ()), snapshot.get("vippools", ()),
        snapshot.get("nodes", ()), snapshot.get("namespaces", ()),
        [o for o in snapshot.get("nodestates", ()) if key_of(o)[0] == namespace],
        namespace=namespace, now=now, ipvssettings=snapshot.get("ipvssettings", ()),
        bgppeers=snapshot.get("bgppeers", ()), cache=cache)


def _ours(obj: Mapping[str, Any], namespace: str) -> bool:
    m = obj.get("metadata") or {}
    return m.get("namespace") == namespace and (m.get("labels") or {}).get(C.LABEL_MANAGED_BY) == C.MANAGED_BY


def same_nodestate(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """``current`` already is what ``desired`` asks for: the spec, and our labels and annotations."""
    dm, cm = desired["metadata"], current.get("metadata") or {}
    return (desired["spec"] == current.get("spec")
            and all((cm.get("labels") or {}).get(k) == v for k, v in dm["labels"].items())
            and all((cm.get("annotations") or {}).get(k) == v for k, v in dm["annotations"].items()))


def plan_writes(result: Result, snapshot: Snapshot, namespace: str) -> Writes:
    w = Writes()
    current = {key_of(o)[1]: o for o in snapshot.get("nodestates", ()) if key_of(o)[0] == namespace}
    for name in sorted(result.nodestates):
        desired = result.nodestates[name]
        cur = current.get(name)
        if cur is None:
            w.create.append(desired)
        elif not same_nodestate(desired, cur):
            body = {**desired, "metadata": {**desired["metadata"],
                                            "resourceVersion": cur["metadata"].get("resourceVersion")}}
            w.replace.append(body)
    for name in sorted(current):
        if name not in result.nodestates and _ours(current[name], namespace):
            w.delete.append((name, current[name]["metadata"].get("uid", "")))
    for plural, wanted, objs in (
            ("virtualservices", result.vs_status, snapshot.get("virtualservices", ())),
            ("realservers", result.rs_status, snapshot.get("realservers", ()))):
        by_key = {key_of(o): o for o in objs}
        for ref in sorted(wanted):
            obj = by_key.get(ref)
            if obj is not None and (obj.get("status") or {}) != wanted[ref]:
                w.status.append((plural, ref[0], ref[1], wanted[ref]))
    for plural, wanted in (("vippools", result.pool_status), ("ipvssettings", result.settings_status),
                           ("bgppeers", result.peer_status)):
        cluster_scoped = {key_of(o)[1]: o for o in snapshot.get(plural, ())}
        for name in sorted(wanted):
            obj = cluster_scoped.get(name)
            if obj is not None and (obj.get("status") or {}) != wanted[name]:
                w.status.append((plural, "", name, wanted[name]))
    w.events = list(result.events)
    return w
