"""Which VirtualServices a pass must recompile (pure).

A RealServer change can alter only the VirtualService it names; recompiling
that one alone costs milliseconds where a full pass over a large cluster
costs seconds. Everything here answers "which VirtualServices" (a scope, a
set of refs) or None: anything may be affected, compile everything.

- ``scope_of_change``: the scope of one cache change;
- ``scoped_snapshot``: the part of a snapshot a scoped compile needs;
- ``narrow``: a scope, or None where a full pass is as cheap or the only correct one;
- ``next_slice``: the periodic resync, one slice of every VirtualService at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from lvs_model import channel as C

from .objects import key_of

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
