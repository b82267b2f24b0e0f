"""The objects the operator keeps: which kinds, their cache keys, and the
projection that keeps only what the compiler reads (pure)."""
from __future__ import annotations

from typing import Any, Mapping

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


def key_of(obj: Mapping[str, Any]) -> Key:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")
