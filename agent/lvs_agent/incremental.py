"""Incremental reconcile: which services to re-plan, or why it must be full (pure).

A full reconcile reads the whole kernel IPVS table: seconds at 100k dests in
the lab VM, for a change of one weight. The engine therefore remembers the
last spec it reconciled (``Memory``) and, for the next spec, re-plans only the
services that were added, removed or changed since, plus those that were not
fine last time (failed ops, planner problems: they are retried as a full
reconcile would). Anything else that may have to change falls back to a full
reconcile: a non-service part of the spec, whatever the spec derives for the
node beyond IPVS (sysctls, addresses, reply routes, the SNAT table), a changed
service that does SNAT, a changed ownership record file.

Incremental mode trusts the kernel to still hold what was applied: drift in
services nobody changed (a dest deleted by hand) is found by the next full
reconcile only, which the agent runs periodically.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

from lvs_model.nodespec import NodeSpec, Service, ServiceKey, effective_sysctls, local_addresses

from . import ops as O
from .plan import Plan, reply_routing, snat_table
from .state import Ownership


def node_side(spec: NodeSpec, uplink: str) -> tuple:
    """Everything a spec makes the planner program besides IPVS services and
    dests (compared, not inspected: a new derivation is covered as soon as it
    is listed here)."""
    return (effective_sysctls(spec, uplink), local_addresses(spec), reply_routing(spec), snat_table(spec))


def _non_service_fields(spec: NodeSpec) -> tuple:
    return tuple(getattr(spec, f.name) for f in fields(spec) if f.name != "services")


@dataclass(frozen=True)
class Memory:
    """What the engine keeps of its last reconcile."""

    spec: NodeSpec
    uplink: str
    node_side: tuple  # node_side(spec, uplink)
    owned_sig: tuple | None  # the ownership file as it was left (stat signature)
    retry: frozenset[ServiceKey] = frozenset()  # services not fine: re-planned next time


@dataclass(frozen=True)
class Delta:
    """Either the services to re-plan (``keys``) or why not (``full``)."""

    keys: frozenset[ServiceKey] = frozenset()
    full: str = ""


def changed_services(old: Iterable[Service], new: Iterable[Service]) -> frozenset[ServiceKey]:
    """Keys of services added, removed or different (any field) between two lists."""
    new = tuple(new)
    before = {s.key: s for s in old}
    out = set(before.keys() ^ {s.key for s in new})
    for s in new:
        o = before.get(s.key)
        if o is not None and o is not s and o != s:
            out.add(s.key)
    return frozenset(out)


def delta(mem: Memory | None, spec: NodeSpec, owned_sig: tuple | None) -> Delta:
    """The services to re-plan for ``spec``, or the reason for a full reconcile."""
    if mem is None:
        return Delta(full="no previous reconcile to build on")
    if owned_sig is None or owned_sig != mem.owned_sig:
        return Delta(full="the ownership record changed on disk")
    if _non_service_fields(spec) != _non_service_fields(mem.spec):
        return Delta(full="a non-service part of the spec changed")
    if len({s.key for s in spec.services}) != len(spec.services):
        return Delta(full="the spec lists a service twice")
    keys = changed_services(mem.spec.services, spec.services) | mem.retry
    if not keys:
        return Delta()
    touched = [s for s in (*mem.spec.services, *spec.services) if s.key in keys]
    if any(s.snat for s in touched):
        return Delta(full="a changed service does SNAT (the nftables table)")
    if node_side(spec, mem.uplink) != mem.node_side:
        return Delta(full="the services change what the node needs besides IPVS")
    return Delta(keys=keys)


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


def restrict_owned(own: Ownership, keys: Iterable[ServiceKey]) -> Ownership:
    """The IPVS records of ``keys`` only (every other record empty)."""
    keys = set(keys)
    return Ownership(services=own.services & keys,
                     dests={k: set(v) for k, v in own.dests.items() if k in keys})


def merge_owned(full: Ownership, part: Ownership, keys: Iterable[ServiceKey]) -> Ownership:
    """``full`` with the IPVS records of ``keys`` replaced by ``part``'s.

    Unchanged services' dest sets are shared, not copied: every function that
    changes a record (claim, settle) works on a copy."""
    keys = set(keys)
    dests = {k: v for k, v in full.dests.items() if k not in keys}
    dests.update({k: v for k, v in part.dests.items() if k in keys})
    return Ownership((full.services - keys) | (part.services & keys), dests, full.addresses, full.links,
                     full.sysctls, full.rules, full.routes, full.nft_tables)


__all__ = ["Memory", "Delta", "node_side", "changed_services", "delta", "retry_after",
           "restrict_owned", "merge_owned"]
