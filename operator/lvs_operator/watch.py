"""The operator's caches: one list+watch per kind, projected, in plain dicts.

kopf's per-object machinery costs time that grows with the square of the
number of objects at start-up, so the operator keeps its own caches the way
client-go informers do, with ``lvs_kube.informer`` (the agent's watch is the
same code). Every kind must have listed once before the reconciler runs, so a
restarted operator never mistakes "not listed yet" for "deleted".

Each kind's informer runs in a thread (the kubernetes client is blocking)
and hands its results to the asyncio loop in one call per LIST and one per
event; the caches are only ever touched on the loop.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from lvs_model import channel as C
from lvs_kube.backoff import Backoff
from lvs_kube.informer import Collection, Informer

from .bgp_peers import BGPPEER_PLURAL
from .objects import Key, compact, key_of, project

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
            t = threading.Thread(target=informer(kind, api_client_factory, loop, self, stop).run,
                                 name=f"watch-{kind.plural}", daemon=True)
            t.start()
            threads.append(t)
        return threads


# Seconds between retries while the API server is away, doubling up to: the
# longest the operator's caches stay behind once the server is back.
RETRY_CAP = 30.0


def informer(kind: Kind, api_client_factory: Callable[[], Any], loop: asyncio.AbstractEventLoop, caches: Caches,
             stop: threading.Event) -> Informer:
    """The informer that fills ``caches``' ``kind``: each LIST and each event
    keyed and projected in its thread, handed to the loop in one call."""
    plural = kind.plural

    def listed(items: list[tuple[Key, dict]]) -> None:
        loop.call_soon_threadsafe(caches.replace, plural, dict(items))

    def event(ev: dict) -> None:
        typ, obj = ev["type"], ev.get("object") or {}
        loop.call_soon_threadsafe(caches.apply, plural, typ, key_of(obj),
                                  None if typ == "DELETED" else compact(plural, project(plural, obj)))

    return Informer(Collection(kind.path(), api_client_factory), listed, event, stop.is_set, name=plural,
                    backoff=Backoff(cap=RETRY_CAP), sleep=stop.wait, item=lambda o: (key_of(o), project(plural, o)))


__all__ = ["Caches", "Kind", "informer", "operator_kinds"]
