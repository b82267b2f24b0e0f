"""The operator's writes through the API: NodeStates, the objects it derives
(RealServers, LoadBalancer VirtualServices), statuses and events.

Every object written is noted in the overlay (overlay.py), so the next pass
plans with it before the watch shows it. Statuses go through a queue of their
own served by threads (lvs_kube.status_writer): a pass hands them over and
returns, so a first pass's tens of thousands of statuses never hold back the
NodeStates of the next pass.
"""
from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

from lvs_model import channel as C
from lvs_kube.status_patch import JSON_PATCH, PatchError
from lvs_kube.status_writer import StatusWriter

from . import loadbalancer as LB
from .compiler import Event
from .objects import key_of, project
from .overlay import Key, Overlay
from .owned import OwnedWrites
from .write_plan import Writes

log = logging.getLogger("lvs_operator")

# Concurrent writes: enough to hide each request's round trip, few enough that
# one operator never holds more than a handful of the API server's inflight slots.
WORKERS = 8
# NodeStates logged one line each up to this many per pass; past it, one summary
# line (a first pass at scale would otherwise log every object).
LOG_EACH_MAX = 50

PatchStatus = Callable[[str, str, str, list, str], bytes]
# (method, path under /apis/<group>/<version>, body) -> the answer's body (StatusPatcher.request)
Request = Callable[[str, str, Mapping[str, Any]], bytes]


def _errors_line(errors: list[str]) -> str:
    return "; ".join(errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else "")


def share_spec(written: dict, sent: Mapping[str, Any]) -> dict:
    """``written`` (the API's answer) holding the very spec ``sent`` when the
    two are equal: a NodeState's spec is then kept once, however many holders
    (compile cache, overlay, caches) it has."""
    spec = sent.get("spec")
    if spec is not None and written.get("spec") == spec:
        written["spec"] = spec
    return written


def event_body(ev: Event, identity: str, now: datetime, suffix: str) -> dict:
    """An events.k8s.io/v1 Event (kubectl describe shows it)."""
    ns = ev.namespace or "default"
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": f"{ev.name[:200]}.{suffix}", "namespace": ns},
        "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": f"{C.GROUP}/operator", "reportingInstance": identity[:128],
        "action": "Reconcile", "reason": ev.reason, "type": ev.type, "note": ev.message[:1024],
        "regarding": {"apiVersion": "v1" if ev.kind == "Service" else C.API_VERSION, "kind": ev.kind,
                      "name": ev.name,
                      **({"namespace": ev.namespace} if ev.namespace else {}), "uid": ev.uid},
    }


class Writer:
    def __init__(self, namespace: str, api_factory: Callable[[], Any], overlay: Overlay, *,
                 identity: str = "kube-lvs-operator", patch_status: PatchStatus | None = None,
                 is_leader: Callable[[], bool] = lambda: True,
                 on_status_done: Callable[[bool], None] = lambda ok: None, workers: int = WORKERS,
                 request: Request | None = None):
        """``patch_status(plural, namespace, name, patch, content type)``: how
        statuses are written (handlers pass a StatusPatcher's; else through
        ``api_factory()``), returning the object written. ``on_status_done(ok)``:
        called from a status thread after each status write, ok or failed.
        ``request``: how NodeStates are created and replaced (a kept-alive
        connection per worker, JSON in and out: the generated client's own CPU
        per write is taken from the API server on shared cores); else through
        ``api_factory()``."""
        self.namespace, self.api_factory, self.overlay = namespace, api_factory, overlay
        self.identity, self._patch, self.is_leader = identity, patch_status, is_leader
        self.on_status_done, self.workers, self._request = on_status_done, workers, request
        # Statuses planned and not written yet, (plural, namespace, name) -> status:
        # the newest wins, so a status superseded before its turn is never written.
        self._statuses: dict[Key, dict] = {}
        self._statuses_lock = threading.Lock()
        self._status_writer: StatusWriter | None = None
        self.status_failures = 0

    # -- NodeStates and events ----------------------------------------------------
    def execute(self, w: Writes) -> None:
        """Do the writes: NodeStates (created and replaced concurrently), then
        deletions, then statuses (queued), then events. Every failure is
        collected; the pass fails (and is retried) if any write did."""
        from kubernetes.client.exceptions import ApiException

        api = self.api_factory()
        g, v, ns = C.GROUP, C.VERSION, self.namespace
        errors: list[str] = []
        few = len(w.create) + len(w.replace) <= LOG_EACH_MAX
        note = self.overlay.note

        request, where = self._request, f"/namespaces/{quote(ns)}/{C.NODESTATE_PLURAL}"

        def put(op: str, body: dict) -> None:
            name = body["metadata"]["name"]
            key = ("nodestates", ns, name)
            self.overlay.putting_begin(key, body)
            try:
                if request is not None:
                    obj = json.loads(request("POST", where, body) if op == "create"
                                     else request("PUT", f"{where}/{quote(name)}", body))
                elif op == "create":
                    obj = api.create_namespaced_custom_object(g, v, ns, C.NODESTATE_PLURAL, body)
                else:
                    obj = api.replace_namespaced_custom_object(g, v, ns, C.NODESTATE_PLURAL, name, body)
                note("nodestates", share_spec(obj, body), ns, name)
                if few:
                    log.info("%s NodeState %s", "created" if op == "create" else "updated", name)
            except (ApiException, PatchError) as e:
                errors.append(f"{op} NodeState {name}: {e.status} {e.reason}")
            finally:
                self.overlay.putting_end(key, body)

        def delete(name: str, uid: str) -> None:
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

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda b: put("create", b), w.create))
            list(pool.map(lambda b: put("replace", b), w.replace))
            if not few:
                log.info("NodeStates: %d created, %d updated; %d status(es) to write",
                         len(w.create), len(w.replace), len(w.status))
            list(pool.map(lambda d: delete(*d), w.delete))
        self.queue_statuses(w.status)
        for ev in w.events:
            try:
                self.post_event(api, ev)
            except ApiException as e:
                log.warning("event for %s %s/%s: %s %s", ev.kind, ev.namespace, ev.name, e.status, e.reason)
        if errors:
            raise RuntimeError(_errors_line(errors))

    def post_event(self, api: Any, ev: Event) -> None:
        body = event_body(ev, self.identity, datetime.now(timezone.utc), uuid.uuid4().hex[:16])
        api.create_namespaced_custom_object("events.k8s.io", "v1", body["metadata"]["namespace"], "events", body)
        log.info("event %s %s on %s %s/%s: %s", ev.type, ev.reason, ev.kind, ev.namespace, ev.name, ev.message)

    # -- derived objects ------------------------------------------------------------
    def write_owned(self, w: OwnedWrites, snap: Mapping[str, list[dict]]) -> dict[str, list[dict]]:
        """Create, replace and delete the derived objects ``w`` plans (in the
        tenants' namespaces), and return the snapshot with them as written, so
        this very pass compiles them (with the uids a new one just got)."""
        if not w:
            return dict(snap)
        from kubernetes.client.exceptions import ApiException
        api = self.api_factory()
        g, v = C.GROUP, C.VERSION
        written: dict[tuple[str, str], dict | None] = {}
        errors = []
        for op, body in [("create", b) for b in w.create] + [("replace", b) for b in w.replace]:
            ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
            try:
                if op == "create":
                    obj = api.create_namespaced_custom_object(g, v, ns, w.plural, body)
                else:
                    obj = api.replace_namespaced_custom_object(g, v, ns, w.plural, name, body)
                self.overlay.note(w.plural, obj, ns, name)
                written[(ns, name)] = project(w.plural, obj)
                log.info("%s %s %s/%s", "created" if op == "create" else "updated", w.plural, ns, name)
            except ApiException as e:
                errors.append(f"{op} {w.plural} {ns}/{name}: {e.status} {e.reason}")
        for ns, name, uid in w.delete:
            try:
                api.delete_namespaced_custom_object(g, v, ns, w.plural, name,
                                                    body={"preconditions": {"uid": uid}} if uid else None)
                log.info("deleted %s %s/%s", w.plural, ns, name)
            except ApiException as e:
                if e.status != 404:
                    errors.append(f"delete {w.plural} {ns}/{name}: {e.status} {e.reason}")
                    continue
            self.overlay.note(w.plural, None, ns, name)
            written[(ns, name)] = None
        if errors:
            raise RuntimeError("; ".join(errors[:5]))
        out = dict(snap)
        objs = {key_of(o): o for o in snap.get(w.plural, ())}
        for k, obj in written.items():
            if obj is None:
                objs.pop(k, None)
            else:
                objs[k] = obj
        out[w.plural] = list(objs.values())
        return out

    def write_service_statuses(self, lb: "LB.LBPlan", services: Iterable[Mapping[str, Any]]) -> int:
        """Patch ``status.loadBalancer`` and our condition of the Services
        whose status differs from the plan (the status subresource only)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        current = {key_of(s): s for s in services}
        todo = [(ref, st) for ref, st in sorted(lb.service_status.items())
                if ref in current and LB.status_differs(current[ref], st)]
        if not todo:
            return 0
        core = client.CoreV1Api(self.api_factory().api_client)
        for (ns, name), st in todo:
            patch = [{"op": "add", "path": "/status/loadBalancer", "value": st["loadBalancer"]},
                     {"op": "add", "path": "/status/conditions", "value": st["conditions"]}]
            try:
                obj = core.patch_namespaced_service_status(name, ns, patch, _content_type=JSON_PATCH)
                self.overlay.note("services", core.api_client.sanitize_for_serialization(obj), ns, name)
                log.info("Service %s/%s: load balancer %s", ns, name,
                         (st["loadBalancer"].get("ingress") or [{}])[0].get("ip") or "released")
            except ApiException as e:
                if e.status != 404:
                    raise RuntimeError(f"status of Service {ns}/{name}: {e.status} {e.reason}") from e
        return len(todo)

    # -- statuses (written by threads of their own) ------------------------------
    def queue_statuses(self, statuses: Iterable[tuple[str, str, str, dict]]) -> None:
        """Hand statuses to the status threads and return. A status planned
        again before its turn replaces the queued one; every pass plans what
        is still unwritten again."""
        keys = set()
        with self._statuses_lock:
            for plural, namespace, name, value in statuses:
                self._statuses[(plural, namespace, name)] = value
                keys.add((plural, namespace, name))
        if not keys:
            return
        if self._status_writer is None:
            self._status_writer = StatusWriter(self._take_statuses, self._write_status, self._status_done,
                                               workers=self.workers)
        self._status_writer.submit(None, keys)

    def drop_statuses(self) -> None:
        """Forget every queued status (a follower writes nothing; a new leader plans them again)."""
        with self._statuses_lock:
            self._statuses.clear()

    def _take_statuses(self, _snapshot: None, keys: set | None) -> dict:
        with self._statuses_lock:
            if keys is None:
                keys = set(self._statuses)
            return {k: self._statuses.pop(k) for k in keys if k in self._statuses}

    def _write_status(self, key: Key, value: dict) -> None:
        if not self.is_leader():
            return  # leadership lost meanwhile: the new leader writes its own
        from kubernetes.client.exceptions import ApiException
        plural, namespace, name = key
        patch = [{"op": "add", "path": "/status", "value": value}]
        self.overlay.sending_begin(key, value)
        try:
            if self._patch is not None:
                obj = json.loads(self._patch(plural, namespace, name, patch, JSON_PATCH))
            elif namespace:
                obj = self.api_factory().patch_namespaced_custom_object_status(
                    C.GROUP, C.VERSION, namespace, plural, name, patch, _content_type=JSON_PATCH)
            else:
                obj = self.api_factory().patch_cluster_custom_object_status(
                    C.GROUP, C.VERSION, plural, name, patch, _content_type=JSON_PATCH)
            self.overlay.note(plural, obj, namespace, name)  # the overlay recognises the echo from here on
        except (ApiException, PatchError) as e:
            if e.status == 404:
                return  # deleted meanwhile
            raise
        finally:
            self.overlay.sending_end(key, value)

    def _status_done(self, key: Key, value: dict, error: BaseException | None) -> None:
        if error is not None:
            self.status_failures += 1
            log.warning("status of %s %s/%s not written (planned again): %s", key[0], key[1], key[2], error)
        self.on_status_done(error is None)

    def statuses_idle(self, timeout: float | None = None) -> bool:
        """Whether every queued status has been written (or failed)."""
        return self._status_writer is None or self._status_writer.wait_idle(timeout)

    def stop(self) -> None:
        if self._status_writer is not None:
            self._status_writer.stop()
