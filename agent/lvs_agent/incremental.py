"""Incremental reconcile: which services to re-plan, or why it must be full (pure).

A full reconcile reads the whole kernel IPVS table, a cost that grows with
the table, for a change of one weight. The engine therefore remembers the
last spec it reconciled (``Memory``) and, for the next spec, re-plans only the
services that were added, removed or changed since, plus those that were not
fine last time (failed ops, planner problems: they are retried as a full
reconcile would). When the node side may have to change too (a non-service
part of the spec such as the director addresses, whatever the services
derive for the node: sysctls, reply routes, the SNAT table), the delta says
so (``node``) and the engine re-reads and re-plans the node side whole, still
without reading the IPVS table: each VirtualService brings its VIP, and a
full reconcile per new VIP would make creating N services cost N full reads. Only
no memory, a changed ownership record file or a key listed twice mean full.

Deciding must not cost a walk over the whole spec either: keys are computed only for services that are not the very
same object at the same position as last time (the agent reuses the parse of
unchanged NodeState objects), and what the services imply for the node is
judged by counts kept in the memory (``service_profile``).

Incremental mode trusts the kernel to still hold what was applied: drift in
services nobody changed (a dest deleted by hand) is found by the sweep
(``check``: the agent re-checks a slice of the services on every pass).
"""
from __future__ import annotations

from collections import Counter
from itertools import compress
from operator import is_not
from dataclasses import dataclass, field, fields
from typing import Iterable, Mapping

from lvs_model.nodespec import NodeSpec, Service, ServiceKey, effective_sysctls, local_addresses

from . import ops as O
from .plan import Plan, reply_routing, snat_table
from .state import Ownership


def node_side(spec: NodeSpec, uplink: str) -> tuple:
    """Everything a spec makes the planner program besides IPVS services and
    dests. Too slow to compute per change at 100k dests (it walks every dest):
    `delta` uses the non-service fields plus `service_profile` counts instead,
    and the unit tests check that those decide this exactly."""
    return (effective_sysctls(spec, uplink), local_addresses(spec), reply_routing(spec), snat_table(spec))


def service_profile(s: Service) -> tuple[str, ...]:
    """What one service adds to the node beyond IPVS (effective_sysctls: any
    service; a NAT dest, per family; SNAT). The node side depends on the
    services only through which of these any service has."""
    out = ["service"]
    if any(d.method == "nat" for d in s.dests):
        out.append(f"nat:{s.family}")
    if s.snat:
        out.append("snat")
    return tuple(out)


def _non_service_fields(spec: NodeSpec) -> tuple:
    return tuple(getattr(spec, f.name) for f in fields(spec) if f.name != "services")


@dataclass(frozen=True)
class Memory:
    """What the engine keeps of its last reconcile."""

    spec: NodeSpec
    uplink: str
    owned_sig: tuple | None  # the ownership file as it was left (stat signature)
    retry: frozenset[ServiceKey]  # services not fine: re-planned next time
    index: Mapping[ServiceKey, Service]  # spec.services by key (never changed in place)
    profile: Mapping[str, int]  # service_profile -> how many services have it


@dataclass(frozen=True)
class Delta:
    """Either the services to re-plan (``keys``: ``want`` are those the spec
    still has) or why not (``full``). ``index``/``profile``: the new spec's,
    for the next Memory."""

    keys: frozenset[ServiceKey] = frozenset()
    want: tuple[Service, ...] = ()
    full: str = ""
    node: str = ""  # why the node side must be re-planned too (read and planned whole), if it must
    index: Mapping[ServiceKey, Service] = field(default_factory=dict)
    profile: Mapping[str, int] = field(default_factory=dict)


def _profile_of(services: Iterable[Service]) -> Counter:
    return Counter(p for s in services for p in service_profile(s))


def remember(spec: NodeSpec, uplink: str, owned_sig: tuple | None,
             retry: frozenset[ServiceKey]) -> Memory | None:
    """Memory of a full reconcile of ``spec`` (None: a spec listing a key
    twice is not built on)."""
    index = {s.key: s for s in spec.services}
    if len(index) != len(spec.services):
        return None
    return Memory(spec, uplink, owned_sig, retry, index, _profile_of(spec.services))


def advance(mem: Memory, d: Delta, spec: NodeSpec, owned_sig: tuple | None,
            retry: frozenset[ServiceKey], uplink: str | None = None) -> Memory:
    """Memory after an incremental reconcile of ``spec`` (``d = delta(mem, spec, ...)``;
    ``uplink``: as resolved again by a sweep that checked the node side)."""
    return Memory(spec, mem.uplink if uplink is None else uplink, owned_sig, retry, d.index, d.profile)


def same_service(a: Service, b: Service) -> bool:
    """``a == b``, by the field dicts (compared in C): the dataclass ``__eq__``
    costs ~2 µs per dest, 0.2 s for a rebuilt 100k-dest spec natively."""
    if a is b:
        return True
    if type(a) is not type(b) or len(a.dests) != len(b.dests):
        return False
    for x, y in zip(a.dests, b.dests):
        if x is not y and (type(x) is not type(y) or x.__dict__ != y.__dict__):
            return False
    return {**a.__dict__, "dests": None} == {**b.__dict__, "dests": None}


def _positional_diff(old: tuple[Service, ...], new: tuple[Service, ...]) -> tuple[list[Service], list[Service]]:
    """The services of ``old`` and of ``new`` that are not the very same
    object at the same position. Computing a key builds a ServiceKey: for
    unchanged, shared service objects (the agent reuses the parse of an
    unchanged NodeState) no key is computed at all. The scan runs in C
    (``compress`` over ``is_not``), not a Python loop over every position."""
    n = min(len(old), len(new))
    moved = list(compress(range(n), map(is_not, old, new)))
    return [old[i] for i in moved] + list(old[n:]), [new[i] for i in moved] + list(new[n:])


def delta(mem: Memory | None, spec: NodeSpec, owned_sig: tuple | None,
          check: Iterable[ServiceKey] = ()) -> Delta:
    """The services to re-plan for ``spec``, or the reason for a full reconcile.
    ``check``: more services to re-read and repair though unchanged (a sweep
    slice: drift is found a slice at a time instead of by a full reconcile)."""
    if mem is None:
        return Delta(full="no previous reconcile to build on")
    if owned_sig is None or owned_sig != mem.owned_sig:
        return Delta(full="the ownership record changed on disk")
    node = ""
    if _non_service_fields(spec) != _non_service_fields(mem.spec):
        node = "a non-service part of the spec changed"
    if spec.services is mem.spec.services:  # the very same spec again (a sweep-only pass)
        gone_l, came_l = [], []
    else:
        gone_l, came_l = _positional_diff(tuple(mem.spec.services), tuple(spec.services))
    gone = {s.key: s for s in gone_l}
    came = {s.key: s for s in came_l}
    if len(came) != len(came_l) or any(k in mem.index and k not in gone for k in came):
        return Delta(full="the spec lists a service twice")
    changed = set(gone.keys() ^ came.keys())
    changed |= {k for k in gone.keys() & came.keys() if not same_service(gone[k], came[k])}
    index = dict(mem.index)
    for k in gone:
        del index[k]
    index.update(came)
    keys = frozenset(changed) | mem.retry
    touched = [s for k in keys for s in (mem.index.get(k), index.get(k)) if s is not None]
    keys |= frozenset(check)
    if any(s.snat for s in touched):
        node = node or "a changed service does SNAT (the nftables table)"
    profile = Counter(mem.profile)
    profile.subtract(_profile_of(mem.index[k] for k in changed if k in mem.index))
    profile.update(_profile_of(index[k] for k in changed if k in index))
    if {p for p, n in profile.items() if n > 0} != {p for p, n in mem.profile.items() if n > 0}:
        node = node or "the services change what the node needs besides IPVS"
    want = tuple(index[k] for k in sorted(keys) if k in index)
    return Delta(keys=keys, want=want, index=index, profile=+profile, node=node)


def retry_after(p: Plan, results: list[tuple[O.Op, str | None]]) -> frozenset[ServiceKey] | None:
    """Services to re-plan next time: planner problems and failed IPVS ops.
    None when an op that is not about one service failed (next: full)."""
    keys = set(p.problems)
    for op, err in results:
        if not err:
            continue
        k = O.service_key(op)
        if k is None:
            return None
        keys.add(k)
    return frozenset(keys)


def restrict_owned(own: Ownership, keys: Iterable[ServiceKey], node: bool = False) -> Ownership:
    """The IPVS records of ``keys`` only; every other record empty, or with
    ``node`` the node-side records (links, addresses, ...) as they are."""
    keys = set(keys)
    side = (own.addresses, own.links, own.sysctls, own.rules, own.routes, own.nft_tables) if node else ()
    return Ownership({k for k in keys if k in own.services}, {k: set(own.dests[k]) for k in keys if k in own.dests},
                     *side).copy()


def merge_owned(full: Ownership, part: Ownership, keys: Iterable[ServiceKey], node: bool = False) -> Ownership:
    """``full`` with the IPVS records of ``keys`` replaced by ``part``'s (and
    with ``node`` its node-side records too).

    Unchanged services' dest sets are shared, not copied: every function that
    changes a record (claim, settle) works on a copy."""
    keys = set(keys)
    dests = {k: v for k, v in full.dests.items() if k not in keys}
    dests.update({k: v for k, v in part.dests.items() if k in keys})
    side = part if node else full
    return Ownership((full.services - keys) | (part.services & keys), dests, side.addresses, side.links,
                     side.sysctls, side.rules, side.routes, side.nft_tables)


__all__ = ["Memory", "Delta", "node_side", "service_profile", "same_service", "remember", "advance", "delta",
           "retry_after",
           "restrict_owned", "merge_owned"]
