"""The objects the operator keeps: which kinds, their cache keys, and the
projection that keeps only what the compiler reads (pure)."""
from __future__ import annotations

import sys
from typing import Any, Mapping

# Strings up to this long are shared (interned) by ``compact``: keys, reasons,
# timestamps and the like repeat across objects; longer ones are messages,
# mostly unique, which a shared table would only add to.
SHARED_MAX = 64

KINDS = ("virtualservices", "realservers", "vippools", "nodes", "namespaces", "nodestates", "ipvssettings",
         "services", "endpointslices", "bgppeers")

Key = tuple[str, str]  # (namespace or "", name)


def plain(obj: Any) -> Any:
    """kopf bodies and views -> plain dicts and lists (a stable snapshot)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def project(kind: str, body: Mapping[str, Any]) -> dict:
    """What the compiler needs of an object (keeps the caches small). A plain
    dict (JSON as the API returns it) is not copied: its parts kept here are
    shared with it, and the rest (managedFields, ...) goes with the body; only
    a kopf body or view is turned into plain dicts first."""
    if not isinstance(body, dict):
        body = plain(body)
    meta = body.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "creationTimestamp", "generation",
                                 "resourceVersion", "labels", "annotations", "ownerReferences") if k in meta}
    if kind == "endpointslices":  # no spec: the fields are top-level
        keep.pop("annotations", None)
        return {"metadata": keep, **{k: body[k] for k in ("addressType", "endpoints", "ports") if k in body}}
    if kind == "services":
        spec = body.get("spec") or {}
        st = body.get("status") or {}
        return {"metadata": keep, "spec": {k: spec[k] for k in ("type", "loadBalancerClass", "ports") if k in spec},
                "status": {k: st[k] for k in ("loadBalancer", "conditions") if k in st}}
    if kind == "nodes":
        keep.pop("annotations", None)
        return {"metadata": keep, "status": {"addresses": (body.get("status") or {}).get("addresses") or []}}
    if kind == "namespaces":
        return {"metadata": {k: keep[k] for k in ("name", "labels", "resourceVersion") if k in keep}}
    return {"metadata": keep, "spec": body.get("spec") or {}, "status": body.get("status") or {}}


def shared(value: Any) -> Any:
    """``value`` (JSON) with its keys and short strings shared with every
    other object's."""
    if isinstance(value, dict):
        return {sys.intern(k): shared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared(v) for v in value]
    if isinstance(value, str) and len(value) <= SHARED_MAX:
        return sys.intern(value)
    return value


def compact(kind: str, obj: dict) -> dict:
    """A projected object from a watch event, its spec, status and labels
    sharing their strings (in place). Each event is parsed on its own, so
    each would hold its own copy of every key ("lastTransitionTime", ...)
    and every repeated value; objects the operator writes come back this way
    by the hundred thousand, and the caches keep them. A NodeState's spec is
    left alone: the echo of our own write takes our spec object instead
    (overlay.share)."""
    for part in ("status",) if kind == "nodestates" else ("spec", "status"):
        if part in obj:
            obj[part] = shared(obj[part])
    meta = obj.get("metadata")
    if meta and "labels" in meta:
        meta["labels"] = shared(meta["labels"])
    return obj


def key_of(obj: Mapping[str, Any]) -> Key:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")
