"""The operator's imperative shell: snapshot the caches, compile, write the difference.

kopf keeps the caches (indexes, pre-populated before anything runs, so a
restarted operator never mistakes "not listed yet" for "deleted"); this
module turns a snapshot into writes:

- ``plan_writes`` (pure): compiler result + current objects -> the NodeStates
  to create, replace or delete, the statuses to patch, the events to post.
  Unchanged objects produce no write at all, so a restart rewrites nothing.
- ``Reconciler``: debounced loop; only the Lease holder writes. Objects it
  has just written are overlaid on the caches until the watch catches up, so
  a quick second pass neither writes twice nor posts an event twice.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

from lvs_model import channel as C

from .compiler import Event, Result, compile_cluster

log = logging.getLogger("lvs_operator")

KINDS = ("virtualservices", "realservers", "vippools", "nodes", "namespaces", "nodestates")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain(obj: Any) -> Any:
    """kopf bodies and views -> plain dicts and lists (a stable snapshot)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def project(kind: str, body: Mapping[str, Any]) -> dict:
    """What the compiler needs of an object (keeps the caches small)."""
    body = plain(body)
    meta = body.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "creationTimestamp", "generation",
                                 "resourceVersion", "labels", "annotations") if k in meta}
    if kind == "nodes":
        keep.pop("annotations", None)
        return {"metadata": keep, "status": {"addresses": (body.get("status") or {}).get("addresses") or []}}
    if kind == "namespaces":
        return {"metadata": {k: keep[k] for k in ("name", "labels", "resourceVersion") if k in keep}}
    return {"metadata": keep, "spec": body.get("spec") or {}, "status": body.get("status") or {}}


def key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


# --------------------------------------------------------------------------
# Planning (pure)
# --------------------------------------------------------------------------

@dataclass
class Writes:
    create: list[dict] = field(default_factory=list)  # NodeState bodies
    replace: list[dict] = field(default_factory=list)  # NodeState bodies with resourceVersion
    delete: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    status: list[tuple[str, str, str, dict]] = field(default_factory=list)  # (plural, ns, name, status)
    events: list[Event] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.create) + len(self.replace) + len(self.delete) + len(self.status) + len(self.events)


def _ours(obj: Mapping[str, Any], namespace: str) -> bool:
    m = obj.get("metadata") or {}
    return m.get("namespace") == namespace and (m.get("labels") or {}).get(C.LABEL_MANAGED_BY) == C.MANAGED_BY


def _same_nodestate(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    dm, cm = desired["metadata"], current.get("metadata") or {}
    return (desired["spec"] == current.get("spec")
            and all((cm.get("labels") or {}).get(k) == v for k, v in dm["labels"].items())
            and all((cm.get("annotations") or {}).get(k) == v for k, v in dm["annotations"].items()))


def plan_writes(result: Result, snapshot: Mapping[str, Iterable[Mapping[str, Any]]], namespace: str) -> Writes:
    w = Writes()
    current = {key_of(o)[1]: o for o in snapshot.get("nodestates", ()) if key_of(o)[0] == namespace}
    for name in sorted(result.nodestates):
        desired = result.nodestates[name]
        cur = current.get(name)
        if cur is None:
            w.create.append(desired)
        elif not _same_nodestate(desired, cur):
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
    pools = {key_of(o)[1]: o for o in snapshot.get("vippools", ())}
    for name in sorted(result.pool_status):
        obj = pools.get(name)
        if obj is not None and (obj.get("status") or {}) != result.pool_status[name]:
            w.status.append(("vippools", "", name, result.pool_status[name]))
    w.events = list(result.events)
    return w


def compile_snapshot(snapshot: Mapping[str, Iterable[Mapping[str, Any]]], namespace: str, now: str) -> Result:
    return compile_cluster(
        snapshot.get("virtualservices", ()), snapshot.get("realservers", ()), snapshot.get("vippools", ()),
        snapshot.get("nodes", ()), snapshot.get("namespaces", ()),
        [o for o in snapshot.get("nodestates", ()) if key_of(o)[0] == namespace],
        namespace=namespace, now=now)


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------

def _rv(obj: Mapping[str, Any] | None) -> int | None:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Reconciler:
    OVERLAY_TTL = 30.0

    def __init__(self, namespace: str, api_factory: Callable[[], Any], *, debounce: float = 0.3,
                 resync: float = 300.0, is_leader: Callable[[], bool] = lambda: True,
                 identity: str = "kube-lvs-operator"):
        self.namespace = namespace
        self.api_factory = api_factory
        self.debounce, self.resync = debounce, resync
        self.is_leader = is_leader
        self.identity = identity
        self.indexes: Mapping[str, Any] | None = None
        self._dirty: asyncio.Event | None = None
        # (plural, ns, name) -> (object or None for deleted, monotonic time)
        self.overlay: dict[tuple[str, str, str], tuple[dict | None, float]] = {}
        self.passes = 0
        self.writes = 0
        self.first_pass_pending = True  # log the first full pass after (re)gaining leadership
        self.last_error = ""
        self.last_ok = 0.0

    # -- triggering ----------------------------------------------------------
    @property
    def dirty(self) -> asyncio.Event:
        if self._dirty is None:
            self._dirty = asyncio.Event()
        return self._dirty

    def attach(self, indexes: Mapping[str, Any]) -> None:
        """Called by the first event handler: kopf has listed every kind by now."""
        if self.indexes is None:
            self.indexes = indexes
            log.info("caches populated; reconciling")
        self.kick()

    def kick(self) -> None:
        self.dirty.set()

    def leadership(self, leader: bool) -> None:
        """The elector's callback: a new leader starts with a full pass."""
        if leader:
            self.first_pass_pending = True
            self.overlay.clear()
            self.kick()

    # -- snapshot -------------------------------------------------------------
    def snapshot(self) -> dict[str, list[dict]]:
        snap: dict[str, list[dict]] = {}
        for kind in KINDS:
            index = (self.indexes or {}).get(kind)
            objs: dict[tuple[str, str], dict] = {}
            if index is not None:
                for store in index.values():
                    for obj in store:
                        objs[key_of(obj)] = obj
            snap[kind] = objs  # type: ignore[assignment]
        now = time.monotonic()
        for (plural, ns, name), (obj, at) in list(self.overlay.items()):
            objs = snap[plural]  # type: ignore[assignment]
            cached = objs.get((ns, name))
            expired = now - at > self.OVERLAY_TTL
            if obj is None:  # deleted by us
                if cached is None or expired:
                    del self.overlay[(plural, ns, name)]
                else:
                    del objs[(ns, name)]
                continue
            rv_o, rv_c = _rv(obj), _rv(cached)
            if expired or rv_o is None or (rv_c is not None and rv_c >= rv_o):
                del self.overlay[(plural, ns, name)]
            else:
                objs[(ns, name)] = obj
        return {k: list(v.values()) for k, v in snap.items()}  # type: ignore[union-attr]

    # -- the loop -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = 1.0

        async def resync() -> None:
            while not stop.is_set():
                await asyncio.sleep(self.resync)
                self.kick()

        ticker = asyncio.create_task(resync())
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(self.dirty.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if stop.is_set():
                    break
                await asyncio.sleep(self.debounce)
                self.dirty.clear()
                if self.indexes is None or not self.is_leader():
                    continue
                snap = self.snapshot()
                try:
                    n = await asyncio.to_thread(self.reconcile_once, snap)
                    self.passes += 1
                    self.last_ok = time.time()
                    self.last_error = ""
                    backoff = 1.0
                    if self.first_pass_pending:
                        self.first_pass_pending = False
                        log.info("first full pass as leader: %d write(s)", n)
                    elif n:
                        log.info("reconciled: %d write(s)", n)
                except Exception as e:  # API trouble: retry with backoff
                    self.last_error = str(e)
                    log.warning("reconcile failed (retrying in %.0fs): %s", backoff, e)
                    asyncio.get_running_loop().call_later(backoff, self.kick)
                    backoff = min(backoff * 2, 60.0)
        finally:
            ticker.cancel()

    # -- writing (in a worker thread) -------------------------------------------
    def reconcile_once(self, snap: Mapping[str, list[dict]]) -> int:
        result = compile_snapshot(snap, self.namespace, now_rfc3339())
        w = plan_writes(result, snap, self.namespace)
        if not w:
            return 0
        self.execute(w)
        return len(w)

    def execute(self, w: Writes) -> None:
        from kubernetes.client.exceptions import ApiException

        api = self.api_factory()
        g, v, ns = C.GROUP, C.VERSION, self.namespace
        errors: list[str] = []
        stamp = time.monotonic

        def note(plural: str, obj: dict | None, namespace: str, name: str) -> None:
            self.overlay[(plural, namespace, name)] = (project(plural, obj) if obj is not None else None, stamp())
            self.writes += 1

        for body in w.create:
            name = body["metadata"]["name"]
            try:
                note("nodestates", api.create_namespaced_custom_object(g, v, ns, C.NODESTATE_PLURAL, body), ns, name)
                log.info("created NodeState %s", name)
            except ApiException as e:
                errors.append(f"create NodeState {name}: {e.status} {e.reason}")
        for body in w.replace:
            name = body["metadata"]["name"]
            try:
                note("nodestates", api.replace_namespaced_custom_object(g, v, ns, C.NODESTATE_PLURAL, name, body),
                     ns, name)
                log.info("updated NodeState %s", name)
            except ApiException as e:
                errors.append(f"replace NodeState {name}: {e.status} {e.reason}")
        for name, uid in w.delete:
            try:
                api.delete_namespaced_custom_object(g, v, ns, C.NODESTATE_PLURAL, name,
                                                    body={"preconditions": {"uid": uid}} if uid else None)
                note("nodestates", None, ns, name)
                log.info("deleted NodeState %s", name)
            except ApiException as e:
                if e.status == 404:
                    note("nodestates", None, ns, name)
                else:
                    errors.append(f"delete NodeState {name}: {e.status} {e.reason}")
        for plural, namespace, name, status in w.status:
            patch = [{"op": "add", "path": "/status", "value": status}]
            try:
                if namespace:
                    obj = api.patch_namespaced_custom_object_status(
                        g, v, namespace, plural, name, patch, _content_type="application/json-patch+json")
                else:
                    obj = api.patch_cluster_custom_object_status(
                        g, v, plural, name, patch, _content_type="application/json-patch+json")
                note(plural, obj, namespace, name)
            except ApiException as e:
                if e.status != 404:
                    errors.append(f"status of {plural} {namespace}/{name}: {e.status} {e.reason}")
        for ev in w.events:
            try:
                self.post_event(api, ev)
            except ApiException as e:
                log.warning("event for %s %s/%s: %s %s", ev.kind, ev.namespace, ev.name, e.status, e.reason)
        if errors:
            raise RuntimeError("; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))

    def post_event(self, api: Any, ev: Event) -> None:
        """An events.k8s.io/v1 Event (kubectl describe shows it)."""
        now = datetime.now(timezone.utc)
        ns = ev.namespace or "default"
        body = {
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": f"{ev.name[:200]}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": f"{C.GROUP}/operator", "reportingInstance": self.identity[:128],
            "action": "Reconcile", "reason": ev.reason, "type": ev.type, "note": ev.message[:1024],
            "regarding": {"apiVersion": C.API_VERSION, "kind": ev.kind, "name": ev.name,
                          **({"namespace": ev.namespace} if ev.namespace else {}), "uid": ev.uid},
        }
        api.create_namespaced_custom_object("events.k8s.io", "v1", ns, "events", body)
        log.info("event %s %s on %s %s/%s: %s", ev.type, ev.reason, ev.kind, ev.namespace, ev.name, ev.message)
