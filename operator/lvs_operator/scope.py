"""Which VirtualServices a pass must recompile (pure).

A RealServer change can alter only the VirtualService it names; recompiling
that one alone costs milliseconds where a full pass over a large cluster
costs seconds. Everything here answers "which VirtualServices" (a scope, a
set of refs) or None: anything may be affected, compile everything.

- ``scope_of_change``: the scope of one cache change (``service_scope`` for
  a Service's or EndpointSlice's);
- ``RefIndex`` and ``scoped_view``: a scoped pass's part of the caches in a
  few lookups, not a scan of every object;
- ``scoped_snapshot``: the part of a snapshot a scoped compile needs;
- ``narrow``: a scope, or None where a full pass is as cheap or the only correct one;
- ``next_slice``: the periodic resync, one slice of every VirtualService at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterable, Mapping

from lvs_model import channel as C

from . import loadbalancer as LB
from .objects import KINDS, key_of
from .services import backed_by, slice_service

Ref = tuple[str, str]  # a VirtualService's (namespace, name)

# A resync round is this many scoped passes: a change arriving meanwhile waits
# for one slice's pass, not a full one, and the round still ends within the
# resync period.
RESYNC_SLICES = 60


def vs_ref_of_nodestate(obj: Mapping[str, Any] | None) -> Ref | None:
    ann = ((obj or {}).get("metadata") or {}).get("annotations") or {}
    ns, sep, name = (ann.get(C.ANNOTATION_VIRTUALSERVICE) or "").partition("/")
    return (ns, name) if sep else None


def vs_ref_of_realserver(obj: Mapping[str, Any] | None) -> Ref | None:
    if not obj:
        return None
    return ((obj.get("metadata") or {}).get("namespace") or "", (obj.get("spec") or {}).get("virtualService") or "")


def without_status(obj: Mapping[str, Any]) -> dict:
    """The object but its status and resourceVersion: what differs when only a status was written."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": meta}


def scope_of_change(kind: str, key: tuple[str, str], old: Mapping[str, Any] | None,
                    new: Mapping[str, Any] | None) -> set[Ref] | None:
    """The VirtualServices whose compile result this change can alter; None: any.

    A RealServer affects the VirtualService it names (before and after); a
    NodeState (an agent's report) the VirtualService it was compiled from; a
    VirtualService whose status alone changed (our own write coming back)
    itself; an IPVSSettings whose status alone changed nothing. Everything
    else (a VirtualService created, deleted or edited: it can win or lose a
    conflict; pools, nodes, namespaces, IPVSSettings, an agent's report on an
    IPVSSettings' NodeState) needs a full pass: only full passes compile
    IPVSSettings (scoped_snapshot).
    """
    if kind == "realservers":
        return {r for r in (vs_ref_of_realserver(old), vs_ref_of_realserver(new)) if r}
    if kind == "nodestates":
        refs = {r for r in (vs_ref_of_nodestate(old), vs_ref_of_nodestate(new)) if r}
        return refs or None
    if kind == "virtualservices" and old and new and without_status(old) == without_status(new):
        return {key}
    if kind in ("ipvssettings", "bgppeers") and old and new and without_status(old) == without_status(new):
        return set()
    return None


def service_scope(kind: str, key: tuple[str, str], old: Mapping[str, Any] | None, new: Mapping[str, Any] | None,
                  virtualservices: Collection[Mapping[str, Any]], default_loadbalancer: bool) -> set[Ref] | None:
    """A Service or EndpointSlice change: the VirtualServices backed by its
    Service; None (a full pass) for a LoadBalancer Service of our class
    (before or after): its VIP and VirtualServices are planned in full passes."""
    if kind == "services":
        if any(o is not None and LB.is_ours(o, default_loadbalancer) for o in (old, new)):
            return None
        if any(o is not None and LB.CONDITION in {c.get("type") for c in (o.get("status") or {}).get(
                "conditions") or ()} for o in (old, new)):
            return None  # ours until now: released in a full pass
        services = {key}
    else:
        services = {r for r in (slice_service(old or {}), slice_service(new or {})) if r}
    return set().union(*(backed_by(virtualservices, s) for s in services)) if services else set()


# The kinds a scoped pass takes only part of, with the VirtualService each
# object belongs to.
SCOPED_KINDS: dict[str, Callable[[Mapping[str, Any]], Ref | None]] = {
    "virtualservices": key_of, "realservers": vs_ref_of_realserver, "nodestates": vs_ref_of_nodestate}


def scoped_snapshot(snap: Mapping[str, list[dict]], refs: set[Ref]) -> dict[str, list[dict]]:
    """The part of a snapshot a compile of ``refs`` needs (all pools, nodes and
    namespaces; only their VirtualServices, RealServers and NodeStates; no
    IPVSSettings: their NodeStates are not in it, so only a full pass may
    compile them, or it would write them anew and never delete one)."""
    out = dict(snap)
    for kind, ref_of in SCOPED_KINDS.items():
        out[kind] = [o for o in snap.get(kind, ()) if ref_of(o) in refs]
    out["ipvssettings"] = []
    return out


Caches = Mapping[str, Mapping[tuple[str, str], dict]]  # kind -> (namespace, name) -> object


class RefIndex:
    """The RealServers and NodeStates of each VirtualService (kind -> ref ->
    cache keys), built per kind on first use from one caches object and kept
    up to date by ``changed``; other caches start it anew."""

    def __init__(self) -> None:
        self._index: dict[str, dict[Ref, set[tuple[str, str]]]] = {}
        self._of: Caches | None = None

    def changed(self, kind: str, key: tuple[str, str], old: Mapping[str, Any] | None,
                new: Mapping[str, Any] | None) -> None:
        index = self._index.get(kind) if self._of is not None else None
        if index is None:
            return
        ref_of = SCOPED_KINDS[kind]
        if old is not None and (r := ref_of(old)) is not None and r in index:
            index[r].discard(key)
            if not index[r]:
                del index[r]
        if new is not None and (r := ref_of(new)) is not None:
            index.setdefault(r, set()).add(key)

    def of(self, caches: Caches, kind: str) -> dict[Ref, set[tuple[str, str]]]:
        if self._of is not caches:
            self._index, self._of = {}, caches
        if kind not in self._index:
            ref_of, index = SCOPED_KINDS[kind], {}
            for key, obj in (caches.get(kind) or {}).items():
                if (r := ref_of(obj)) is not None:
                    index.setdefault(r, set()).add(key)
            self._index[kind] = index
        return self._index[kind]


def scoped_view(caches: Caches, scope: set[Ref] | None, index: RefIndex) -> dict[str, dict]:
    """Every kind's objects by key (copies of the caches' mappings); for a
    ``scope``, only its VirtualServices, RealServers and NodeStates."""
    snap: dict[str, dict] = {}
    for kind in KINDS:
        objs = caches.get(kind) or {}
        if scope is None or kind not in SCOPED_KINDS:
            snap[kind] = dict(objs)
        elif kind == "virtualservices":
            snap[kind] = {k: objs[k] for k in scope if k in objs}
        else:
            snap[kind] = {k: objs[k] for r in scope for k in index.of(caches, kind).get(r, ()) if k in objs}
    return snap


# A scope over this fraction of the VirtualServices is compiled as a full pass:
# past it a scoped pass saves little, and a full pass also settles conflicts.
FULL_PASS_FRACTION = 4  # one in four


def narrow(scope: set[Ref] | None, entangled: set[Ref], known: int) -> set[Ref] | None:
    """``scope``, or None where a full pass is as cheap (over a quarter of the
    ``known`` VirtualServices) or the only correct one (a VirtualService in it
    conflicts with another: ``entangled``, from the last full pass)."""
    if not scope:
        return scope
    return None if scope & entangled or len(scope) * FULL_PASS_FRACTION > known else scope


@dataclass(frozen=True)
class ResyncRound:
    """The VirtualServices of one resync round, in order, and how many are done."""
    refs: tuple[Ref, ...] = ()
    pos: int = 0


def resync_refs(virtualservices: Iterable[Ref], nodestates: Iterable[Mapping[str, Any]]) -> set[Ref]:
    """Every VirtualService, and every one a NodeState names (a NodeState left
    by a deleted VirtualService is found and deleted too)."""
    refs = set(virtualservices)
    refs.update(r for o in nodestates if (r := vs_ref_of_nodestate(o)) is not None)
    return refs


def next_slice(round_: ResyncRound, everything: Callable[[], set[Ref]],
               slices: int = RESYNC_SLICES) -> tuple[set[Ref], ResyncRound]:
    """The next slice of the round, and the round after it; a finished round
    starts anew from ``everything()`` (asked only then)."""
    if round_.pos >= len(round_.refs):
        round_ = ResyncRound(tuple(sorted(everything())), 0)
    n = math.ceil(len(round_.refs) / slices)
    part = round_.refs[round_.pos:round_.pos + n]
    return set(part), ResyncRound(round_.refs, round_.pos + len(part))
