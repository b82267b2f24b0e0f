"""The agent's side of the push channel (pure).

The operator writes one NodeState object per (node, VirtualService), or
for a service with over a thousand dests several (its shards: each with the
whole service's attributes and a part of its dests); the agent merges those
of its node into one NodeSpec and writes back, per object, what it
programmed and how its real servers are doing.

Objects declaring the same service are shards of it when they name the same
VirtualService (annotation): their dests are merged into one service. Their
attributes must agree; where a shard's differ (seen while the operator
rewrites the shards one by one), the first shard's (by object name) hold,
the dests of every shard stay programmed, and the disagreeing shard says so
in its status. Without the annotation, or naming another VirtualService, a
second object declaring a service is refused as before.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

from lvs_model.channel import ANNOTATION_VIRTUALSERVICE, LABEL_NODE, label_value
from lvs_model.errors import FieldError
from lvs_model.nodespec import DestKey, NodeSpec, Service, ServiceKey, parse_node_spec

from .verdicts import DRAINING, Verdicts, dest_health


def node_selector(node: str) -> str:
    """The label selector matching exactly this node's NodeState objects."""
    return f"{LABEL_NODE}={label_value(node)}"


@dataclass(frozen=True)
class Parsed:
    """One object's spec, parsed; reused while the object's spec is the very
    same dict (the watch replaces an object's dict when it changes)."""

    source: Any  # the spec mapping it was parsed from
    spec: NodeSpec
    errors: tuple[FieldError, ...]
    keys: tuple[ServiceKey, ...]  # of spec.services
    virtualservice: str = ""  # the VirtualService the operator compiled it from ("ns/name"; "" if none)

    def service(self, key: ServiceKey) -> Service:
        return self.spec.services[self.keys.index(key)]


class Owners(dict):
    """service -> the object owning it (the first by name); ``shards``: for a
    service split over several objects, all of them in name order."""

    def __init__(self, *args: Any, shards: Mapping[ServiceKey, tuple[str, ...]] | None = None) -> None:
        super().__init__(*args)
        self.shards: dict[ServiceKey, tuple[str, ...]] = dict(shards or {})

    def copy(self) -> "Owners":
        return Owners(self, shards=self.shards)


def owners_of(owner: Mapping[ServiceKey, str], key: ServiceKey) -> tuple[str, ...]:
    """Every object carrying ``key``: its shards, or its one owner (none if nobody's)."""
    shards = getattr(owner, "shards", None)
    if shards and key in shards:
        return shards[key]
    return (owner[key],) if key in owner else ()


def combine(key: ServiceKey, parts: list[tuple[str, Service]]) -> tuple[Service, list[tuple[str, FieldError]]]:
    """The shards of one service (object name, its service), first first, as
    one service: the first's attributes, every shard's dests (a dest in two
    shards, as while the operator moves to another shard count, once), and
    an error for each shard whose attributes differ."""
    first_name, first = parts[0]
    attrs = replace(first, dests=())
    dests: dict[DestKey, Any] = {}
    errors = []
    for name, svc in parts:
        if name != first_name and replace(svc, dests=()) != attrs:
            differ = [f.name for f in fields(Service) if f.name != "dests" and getattr(svc, f.name) != getattr(first, f.name)]
            errors.append((name, FieldError("spec.services", f"{key}: {', '.join(differ)} differ(s) from shard "
                                            f"{first_name}; its dests are programmed with {first_name}'s")))
        for d in svc.dests:
            dests.setdefault(d.key, d)
    return replace(first, dests=tuple(dests.values())), errors


@dataclass
class Merged:
    spec: NodeSpec
    errors: dict[str, list[FieldError]] = field(default_factory=dict)  # object name -> errors
    owner: Owners = field(default_factory=Owners)  # service -> object name (owners_of: all its shards)
    parsed: dict[str, Parsed] = field(default_factory=dict)  # object name -> its parse, for the next merge
    index: dict[ServiceKey, int] = field(default_factory=dict)  # service -> position in spec.services
    health_checked: int = 0  # services with a health check (none: no walk over every service for the checker)
    # The owner map of the merge this one only added new objects' services to
    # (no service changed hands): the status pass then skips comparing every owner.
    grown_from: Mapping[ServiceKey, str] | None = None


def _checked(services) -> int:
    return sum(1 for s in services if s.health.type != "none")


def parse_object(obj: Mapping[str, Any], previous: Parsed | None = None) -> Parsed:
    """``previous`` again if the object's spec is the same mapping, else a new parse.

    Parsing every object on every event would make each event cost the
    whole table; reuse also keeps unchanged services the same objects, which is what the
    engine's incremental reconcile checks first."""
    source = obj.get("spec") or {}
    if previous is not None and previous.source is source:
        return previous
    spec, errors = parse_node_spec(source)
    vs = str(((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_VIRTUALSERVICE) or "")
    return Parsed(source, spec, tuple(errors), tuple(s.key for s in spec.services), vs)


_NODE_FIELDS = tuple(f.name for f in fields(NodeSpec) if f.name not in ("node", "services", "uplink"))


def _node_level(spec: NodeSpec) -> tuple:
    return tuple(getattr(spec, f) for f in _NODE_FIELDS)


def _adds_nothing_node_level(spec: NodeSpec, merged: NodeSpec) -> bool:
    """Whether a new object's node-level fields are all in the merge already
    (every NodeState of a node carries the same director addresses, sysctls, ...).
    Sysctls are (name, value) pairs with unique names, so a pair in the merge
    is that name at that value."""
    return all(set(getattr(spec, f)) <= set(getattr(merged, f)) for f in _NODE_FIELDS)


def _merge_changed(objects: Mapping[str, Mapping[str, Any]], node: str, prev: Merged,
                   changed: Iterable[str] | None = None) -> Merged | None:
    """The previous merge with the changed objects' services swapped in place
    and new objects' services appended, or None when anything else could
    move: no object gone, each changed object with the same service keys, a
    new one with keys nobody has, no errors before or after, the same
    node-level fields (director addresses, sysctls, ...). A weight change then
    costs a pass over identities, not a new merge, and so does each of many
    objects arriving one pass at a time (a new merge per pass would make
    creating them quadratic); ``changed``: the only objects that may have changed
    (the watch marks them), not even that pass.

    Services of objects added since the last full merge come after the
    others (a full merge orders them by object name); nothing depends on
    the order but the order of the kernel operations."""
    if prev.spec.node != node:
        return None
    if changed is None:
        if prev.parsed.keys() - objects.keys():
            return None  # an object gone: its services go, a full merge
        names = list(objects)
    else:
        names = list(changed)  # a snapshot: the watch thread adds meanwhile
    parsed, services, checked = prev.parsed, None, prev.health_checked
    owner, index = prev.owner, prev.index
    for name in names:
        obj, old = objects.get(name), prev.parsed.get(name)
        if obj is None:
            if old is None:
                continue  # came and went between two passes
            return None
        new = parse_object(obj, old)
        if new is old:
            continue
        if new.errors or len(set(new.keys)) != len(new.keys):
            return None
        if old is None:
            if any(k in owner for k in new.keys) or not _adds_nothing_node_level(new.spec, prev.spec):
                return None
        elif (old.errors or new.keys != old.keys or any(name not in owners_of(prev.owner, k) for k in new.keys)
              or name in prev.errors or new.virtualservice != old.virtualservice
              or _node_level(new.spec) != _node_level(old.spec)):
            return None
        if services is None:
            services, parsed = list(prev.spec.services), dict(prev.parsed)
        if old is None:
            if owner is prev.owner:
                owner, index = Owners(prev.owner, shards=getattr(prev.owner, "shards", None)), dict(prev.index)
            for svc in new.spec.services:
                owner[svc.key], index[svc.key] = name, len(services)
                services.append(svc)
        else:
            for svc in new.spec.services:
                shards = owners_of(prev.owner, svc.key)
                if len(shards) > 1:  # one shard changed: the service again from all of them
                    svc, errs = combine(svc.key, [(n, (new if n == name else parsed[n]).service(svc.key))
                                                  for n in shards])
                    if errs:
                        return None
                services[index[svc.key]] = svc
        checked += _checked(new.spec.services) - (_checked(old.spec.services) if old else 0)
        parsed[name] = new
    if objects.keys() != parsed.keys():
        return None  # an object neither marked nor merged (added or gone after ``changed`` was taken)
    if services is None:
        return prev
    return Merged(replace(prev.spec, services=tuple(services)), prev.errors, owner, parsed, index, checked,
                  prev.owner if owner is not prev.owner else None)


def merge(objects: Mapping[str, Mapping[str, Any]], node: str,
          previous: Merged | Mapping[str, Parsed] | None = None, changed: Iterable[str] | None = None) -> Merged:
    """Merge NodeState objects (name -> object) into one spec for `node`.

    A bad object, or a service declared by two objects, is reported against
    that object and never stops the rest (first name in sort order wins).
    ``previous``: the last merge (changed objects swapped in when nothing else
    can move), or its ``parsed`` (reused for unchanged objects); ``changed``:
    with a Merged, the names of the only objects that may differ from it.
    """
    if isinstance(previous, Merged):
        fast = _merge_changed(objects, node, previous, changed)
        if fast is not None:
            return fast
        previous = previous.parsed
    services: list = []
    sysctls: dict[str, str] = {}
    lists: dict[str, list] = {f.name: [] for f in fields(NodeSpec)
                              if f.name not in ("node", "services", "sysctls", "uplink")}
    m = Merged(NodeSpec(node=node))
    previous = previous or {}
    shards: dict[ServiceKey, list[tuple[str, Service]]] = {}  # services with a second shard: every shard
    for name in sorted(objects):
        parsed = m.parsed[name] = parse_object(objects[name], previous.get(name))
        spec = parsed.spec
        errors = list(parsed.errors)
        for s, key in zip(spec.services, parsed.keys):
            first = m.owner.get(key)
            if first is not None:
                if first != name and parsed.virtualservice and m.parsed[first].virtualservice == parsed.virtualservice:
                    shards.setdefault(key, [(first, m.parsed[first].service(key))]).append((name, s))
                else:
                    errors.append(FieldError("spec.services", f"{key} is already programmed by {first}"))
                continue
            m.owner[key] = name
            m.index[key] = len(services)
            services.append(s)
            m.health_checked += s.health.type != "none"
        for field_name, acc in lists.items():  # director addresses, backend VIPs, reply routes, ...
            acc.extend(getattr(spec, field_name))
        sysctls.update(dict(spec.sysctls))
        if errors:
            m.errors[name] = errors
    for key, parts in shards.items():
        services[m.index[key]], errs = combine(key, parts)
        m.owner.shards[key] = tuple(name for name, _ in parts)
        for name, err in errs:
            m.errors.setdefault(name, []).append(err)
    m.spec = NodeSpec(node=node, services=tuple(services), sysctls=tuple(sorted(sysctls.items())),
                      **{k: tuple(dict.fromkeys(v)) for k, v in lists.items()})
    return m


def condition(type_: str, ok: bool, reason: str, message: str, generation: int, now: str,
              previous: list[dict] | None = None) -> dict:
    """A metav1.Condition; keeps lastTransitionTime while the status holds."""
    status = "True" if ok else "False"
    for c in previous or []:
        if c.get("type") == type_ and c.get("status") == status:
            now = c.get("lastTransitionTime", now)
    return {"type": type_, "status": status, "reason": reason, "message": message[:32768],
            "observedGeneration": generation, "lastTransitionTime": now}


_last_weights: tuple[Any, dict] = (None, {})


def _weights_of(live: Service | None) -> dict:
    """dest -> programmed weight of ``live``, kept for the last service asked:
    the statuses of a sharded service's objects are built one after another
    against the same programmed service, whose 10k dests would otherwise be
    walked once per shard."""
    global _last_weights
    if live is None:
        return {}
    last, weights = _last_weights
    if last is not live:
        weights = {d.key: d.weight for d in live.dests}
        _last_weights = (live, weights)
    return weights


def _live(programmed: NodeSpec, merged: Merged, key: ServiceKey) -> Service | None:
    """The programmed service of ``key``: the merge's index gives its place
    (the programmed spec keeps the merged order). ``programmed.service`` would
    build a dict of every key once per pass, a cost in the whole table for a
    one-object status build, competing with the next change's pass."""
    i = merged.index.get(key)
    if i is not None and i < len(programmed.services) and programmed.services[i].key == key:
        return programmed.services[i]
    return programmed.service(key)


def build_status(name: str, obj: Mapping[str, Any], merged: Merged, programmed: NodeSpec,
                 service_errors: Mapping[ServiceKey, str], verdicts: Verdicts,
                 checked: set[ServiceKey], conns: Mapping[tuple[ServiceKey, str, int], tuple[int, int]],
                 now: str, draining: Mapping[ServiceKey, Iterable[DestKey]] | None = None) -> dict:
    """The status the agent writes on one NodeState object. ``draining``:
    dests the engine keeps at weight 0 after they left the spec (drain.py),
    per service; each is listed after the service's own dests with health
    Draining, so `kubectl get` shows what still holds connections."""
    gen = int(obj.get("metadata", {}).get("generation", 0))
    prev = (obj.get("status") or {}).get("conditions") or []
    services, dests = [], []
    own = merged.parsed[name].spec.services if name in merged.parsed else ()
    seen: set[ServiceKey] = set()
    for s in own:  # this object's services only: a scan of all of them per object is O(n^2)
        if name not in owners_of(merged.owner, s.key) or s.key in seen:
            continue
        seen.add(s.key)
        err = service_errors.get(s.key, "")
        services.append({"key": str(s.key), "programmed": not err, "error": err})
        live = _live(programmed, merged, s.key)
        live_weight = _weights_of(live)
        for d in s.dests:
            active, inactive = conns.get((s.key, d.address, d.port), (0, 0))
            health = dest_health(d, verdicts.get((s.key, d.key)), s.key in checked)
            dests.append({"service": str(s.key), "address": d.address, "port": d.port,
                          "health": health, "weight": live_weight.get(d.key, d.weight),
                          "activeConns": active, "inactiveConns": inactive})
        for dk in (draining or {}).get(s.key, ()) if merged.owner.get(s.key) == name else ():  # the first shard
            active, inactive = conns.get((s.key, dk.address, dk.port), (0, 0))
            dests.append({"service": str(s.key), "address": dk.address, "port": dk.port,
                          "health": DRAINING, "weight": 0, "activeConns": active, "inactiveConns": inactive})
    errs = [str(e) for e in merged.errors.get(name, [])] + [
        f"{x['key']}: {x['error']}" for x in services if x["error"]]
    return {
        "observedGeneration": gen,
        "appliedAt": now,
        "services": services,
        "dests": dests,
        "conditions": [condition("Programmed", not errs, "Applied" if not errs else "Failed",
                                 "; ".join(errs) or "all services programmed", gen, now, prev)],
    }


@dataclass(frozen=True)
class StatusInputs:
    """What the statuses are built from besides the objects themselves and the
    connection counts: compared between two passes to rebuild only the
    statuses that may differ (building them all is work in the whole table)."""

    owner: Mapping[ServiceKey, str] = field(default_factory=dict)  # service -> object name
    errors: Mapping[ServiceKey, str] = field(default_factory=dict)  # service -> why not programmed
    merge_errors: Mapping[str, Any] = field(default_factory=dict)  # object name -> its spec errors
    health: Mapping[tuple[ServiceKey, DestKey], str] = field(default_factory=dict)  # dest -> state
    owner_grown_from: Mapping[ServiceKey, str] | None = None  # Merged.grown_from
    draining: frozenset[tuple[ServiceKey, DestKey]] = frozenset()  # dests the engine drains


def _changed_keys(a: Mapping, b: Mapping) -> set:
    if a is b or a == b:
        return set()
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


def stale_statuses(prev: StatusInputs, cur: StatusInputs) -> set[str]:
    """Names of the objects whose status may differ between ``prev`` and
    ``cur``: a service changing hands, an error or a dest's health changing,
    a drain beginning or ending."""
    out: set[str | None] = set()
    if cur.owner_grown_from is not prev.owner:  # else: only new objects' keys were added (marked changed)
        for k in _changed_keys(prev.owner, cur.owner):
            out |= {prev.owner.get(k), cur.owner.get(k)}
    for k in _changed_keys(prev.errors, cur.errors):
        out |= {*owners_of(prev.owner, k), *owners_of(cur.owner, k)}
    out |= _changed_keys(prev.merge_errors, cur.merge_errors)
    for skey in {skey for skey, _ in _changed_keys(prev.health, cur.health)}:  # every shard: each rebuilt is compared
        out |= {*owners_of(prev.owner, skey), *owners_of(cur.owner, skey)}
    for skey, _ in prev.draining ^ cur.draining:  # a drain began or ended
        out |= {prev.owner.get(skey), cur.owner.get(skey)}
    out.discard(None)
    return out  # type: ignore[return-value]


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether a write is worth it: ignore the timestamp alone."""
    def strip(s):
        return {k: v for k, v in (s or {}).items() if k != "appliedAt"}
    return strip(old) != strip(new)

