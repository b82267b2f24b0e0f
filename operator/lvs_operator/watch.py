"""The operator's caches: one list+watch per kind, projected, in plain dicts.

kopf's per-object machinery costs time quadratic in the number of objects at
start-up (bench part 4: 23 min at 11k objects), so the operator keeps its own
caches the way client-go informers do: a paginated LIST, then a WATCH from
the list's resourceVersion (with bookmarks), a fresh LIST when the server says
410 Gone, backoff while the API server is away. Every kind must have listed
once before the reconciler runs, so a restarted operator never mistakes "not
listed yet" for "deleted".

Each watcher runs in a thread (the kubernetes client is blocking) and hands
its results to the asyncio loop in one call per LIST and one per event; the
caches are only ever touched on the loop.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from lvs_model import channel as C
from lvs_kube.watchstream import Gone, check, follow

from .bgp_peers import BGPPEER_PLURAL
from .objects import Key, key_of, project

log = logging.getLogger("lvs_operator")

@dataclass(frozen=True)
class Kind:
    plural: str  # also the cache name (reconciler.KINDS)
    group: str = ""  # "" is the core API
    version: str = "v1"
    namespace: str | None = None  # watch one namespace only

    def path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        ns = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{ns}/{self.plural}"


def operator_kinds(namespace: str) -> tuple[Kind, ...]:
    g, v = C.GROUP, C.VERSION
    return (Kind(C.VIRTUALSERVICE_PLURAL, g, v), Kind(C.REALSERVER_PLURAL, g, v), Kind(C.VIPPOOL_PLURAL, g, v),
            Kind("nodes"), Kind("namespaces"), Kind(C.NODESTATE_PLURAL, g, v, namespace),
            Kind(C.IPVSSETTINGS_PLURAL, g, v), Kind("services"), Kind("endpointslices", "discovery.k8s.io", "v1"),
            Kind(BGPPEER_PLURAL, g, v))


class Watcher:
    """LIST + WATCH of one kind; calls ``on_list(kind, {key: obj})`` and
    ``on_event(kind, type, key, obj)`` (from its thread: the caller makes
    them thread-safe)."""

    PAGE = 500

    def __init__(self, kind: Kind, api_client_factory: Callable[[], Any],
                 on_list: Callable[[str, dict[Key, dict]], None],
                 on_event: Callable[[str, str, Key, dict | None], None],
                 stop: threading.Event, timeout: int = 300):
        self.kind, self.factory = kind, api_client_factory
        self.on_list, self.on_event = on_list, on_event
        self.stop, self.timeout = stop, timeout
        self.lists = 0

    def _get(self, api: Any, params: list[tuple[str, Any]], timeout: float) -> Any:
        """GET the kind's collection; the raw urllib3 response (not read yet)."""
        method, url, headers, _, _ = api.param_serialize(
            "GET", self.kind.path(), query_params=params, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        return check(api.call_api(method, url, header_params=headers, _request_timeout=timeout).response)

    def list(self, api: Any) -> str:
        objs: dict[Key, dict] = {}
        cont, rv = "", ""
        while True:
            params: list[tuple[str, Any]] = [("limit", self.PAGE)] + ([("continue", cont)] if cont else [])
            resp = self._get(api, params, 120)
            body = json.loads(resp.data)
            for o in body.get("items") or ():
                objs[key_of(o)] = project(self.kind.plural, o)
            meta = body.get("metadata") or {}
            cont, rv = meta.get("continue") or "", meta.get("resourceVersion") or rv
            if not cont:
                break
        self.lists += 1
        self.on_list(self.kind.plural, objs)
        return rv

    def watch(self, api: Any, rv: str) -> str:
        params = [("watch", "true"), ("resourceVersion", rv), ("allowWatchBookmarks", "true"),
                  ("timeoutSeconds", self.timeout)]
        return follow(self._get(api, params, self.timeout + 30), rv, self._event, self.stop.is_set)

    def _event(self, ev: dict) -> None:
        typ, obj = ev.get("type"), ev.get("object") or {}
        if typ != "BOOKMARK":  # a bookmark only moves the resourceVersion
            self.on_event(self.kind.plural, typ, key_of(obj),
                          None if typ == "DELETED" else project(self.kind.plural, obj))

    def run(self) -> None:
        backoff = 1.0
        rv = ""
        while not self.stop.is_set():
            try:
                api = self.factory()
                if not rv:
                    rv = self.list(api)
                rv = self.watch(api, rv)
                backoff = 1.0
            except Gone:
                rv = ""
            except Exception as e:  # API server away: keep the caches, retry
                log.warning("watch %s: %s; retrying in %.0fs", self.kind.plural, e, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


class Caches:
    """kind -> {key: projected object}, filled by watchers, read on the loop."""

    def __init__(self, kinds: tuple[Kind, ...], on_change: Callable[[str, Key, dict | None, dict | None], None]):
        self.kinds = kinds
        self.data: dict[str, dict[Key, dict]] = {k.plural: {} for k in kinds}
        self.listed: set[str] = set()
        self.on_change = on_change
        self.ready = asyncio.Event()

    def replace(self, kind: str, objs: dict[Key, dict]) -> None:
        old = self.data[kind]
        self.data[kind] = objs
        first = kind not in self.listed
        self.listed.add(kind)
        if not first:  # a relist: report what differs
            for k in old.keys() | objs.keys():
                if old.get(k) != objs.get(k):
                    self.on_change(kind, k, old.get(k), objs.get(k))
        if len(self.listed) == len(self.kinds) and not self.ready.is_set():
            log.info("caches populated (%s); reconciling",
                     ", ".join(f"{len(v)} {k}" for k, v in self.data.items()))
            self.ready.set()

    def apply(self, kind: str, typ: str, key: Key, obj: dict | None) -> None:
        store = self.data[kind]
        old = store.get(key)
        if obj is None:
            store.pop(key, None)
        else:
            store[key] = obj
        if kind in self.listed and old != obj:
            self.on_change(kind, key, old, obj)

    def start(self, api_client_factory: Callable[[], Any], stop: threading.Event) -> list[threading.Thread]:
        loop = asyncio.get_running_loop()
        threads = []
        for kind in self.kinds:
            w = Watcher(kind, api_client_factory,
                        on_list=lambda k, objs: loop.call_soon_threadsafe(self.replace, k, objs),
                        on_event=lambda k, t, key, o: loop.call_soon_threadsafe(self.apply, k, t, key, o),
                        stop=stop)
            t = threading.Thread(target=w.run, name=f"watch-{kind.plural}", daemon=True)
            t.start()
            threads.append(t)
        return threads


__all__ = ["Caches", "Kind", "Watcher", "operator_kinds"]
