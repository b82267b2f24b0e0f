"""Objects the operator owns in the tenants' namespaces (pure planning).

Derived RealServers (from a VirtualService's backend Service) and derived
VirtualServices (from a LoadBalancer Service) are written like NodeStates:
compared with what is there, and only the difference is written. Only objects
the ``owned`` predicate accepts (the derived-from label plus managed-by) are
ever replaced or deleted; a hand-made object that happens to have a wanted
name is left alone and reported in ``blocked``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

Ref = tuple[str, str]


@dataclass
class OwnedWrites:
    plural: str
    create: list[dict] = field(default_factory=list)
    replace: list[dict] = field(default_factory=list)  # with the current resourceVersion
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (namespace, name, uid)
    blocked: list[Ref] = field(default_factory=list)  # wanted names a hand-made object holds

    def __len__(self) -> int:
        return len(self.create) + len(self.replace) + len(self.delete)


def _ref(obj: Mapping[str, Any]) -> Ref:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def same_object(desired: Mapping[str, Any], current: Mapping[str, Any], defaulted: Iterable[str] = ()) -> bool:
    """Whether ``current`` already is ``desired``: the same spec (fields the
    API server defaulted and ``desired`` leaves out aside), its labels and
    annotations present, the same ownerReferences."""
    ds, cs = desired.get("spec") or {}, current.get("spec") or {}
    if any(cs.get(k) != v for k, v in ds.items()) or set(cs) - set(ds) - set(defaulted):
        return False
    dm, cm = desired.get("metadata") or {}, current.get("metadata") or {}
    return (all((cm.get("labels") or {}).get(k) == v for k, v in (dm.get("labels") or {}).items())
            and all((cm.get("annotations") or {}).get(k) == v for k, v in (dm.get("annotations") or {}).items())
            and [(o.get("kind"), o.get("name"), o.get("uid")) for o in cm.get("ownerReferences") or ()]
            == [(o.get("kind"), o.get("name"), o.get("uid")) for o in dm.get("ownerReferences") or ()])


def plan_owned(plural: str, desired: Mapping[Ref, dict], current: Iterable[Mapping[str, Any]],
               owned: Callable[[Mapping[str, Any]], bool], defaulted: Iterable[str] = ()) -> OwnedWrites:
    """Create what is missing, replace what differs, delete what is owned and
    no longer wanted; deterministic (sorted)."""
    w = OwnedWrites(plural)
    cur = {_ref(o): o for o in current}
    for ref in sorted(desired):
        body, have = desired[ref], cur.get(ref)
        if have is None:
            w.create.append(body)
        elif not owned(have):
            w.blocked.append(ref)
        elif not same_object(body, have, defaulted):
            w.replace.append({**body, "metadata": {**body["metadata"],
                                                   "resourceVersion": have["metadata"].get("resourceVersion")}})
    for ref in sorted(cur):
        if ref not in desired and owned(cur[ref]):
            w.delete.append((*ref, (cur[ref].get("metadata") or {}).get("uid") or ""))
    return w
