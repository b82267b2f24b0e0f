"""kopf handlers: thin. They only feed caches and wake the reconciler.

- ``@kopf.index`` per kind keeps a projection of every object (kopf lists
  every indexed kind completely before any other handler runs);
- ``@kopf.on.event`` per kind wakes the reconciler (the first call also
  hands it the indexes: from then on the caches are known complete);
- startup starts the Lease elector and the reconciler; cleanup stops them and
  releases the Lease.

No handler patches the watched objects (no finalizers, no kopf annotations):
the only writes are the reconciler's NodeStates, statuses and events.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import kopf

from lvs_model import channel as C

from .leader import LeaseElector
from .reconciler import Reconciler, project

log = logging.getLogger("lvs_operator")

# Filled in by main() before kopf starts (defaults suit `kopf run -m lvs_operator.handlers`).
CONFIG: dict[str, Any] = {
    "namespace": os.environ.get("POD_NAMESPACE") or C.DEFAULT_NAMESPACE,
    "identity": os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
    "lease_name": "kube-lvs-operator",
    "lease_duration": 15.0,
    "lease_renew": 5.0,
    "debounce": 0.3,
    "resync": 300.0,
    "leader_election": True,
}

STATE: dict[str, Any] = {}


def _api() -> Any:
    api = STATE.get("api")
    if api is None:
        from kubernetes import client, config
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api = STATE["api"] = client.CustomObjectsApi()
    return api


def reconciler() -> Reconciler:
    r = STATE.get("reconciler")
    if r is None:
        elector = STATE.get("elector")
        r = STATE["reconciler"] = Reconciler(
            CONFIG["namespace"], _api, debounce=CONFIG["debounce"], resync=CONFIG["resync"],
            is_leader=(lambda: elector.is_leader) if elector else (lambda: True),
            identity=CONFIG["identity"])
    return r


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.posting.enabled = False  # no kopf log lines as Events on users' objects
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace scanning (RBAC)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # The wake-up handlers run on every watch event: their "succeeded" lines are noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    stop = STATE["stop"] = asyncio.Event()
    if CONFIG["leader_election"]:
        elector = STATE["elector"] = LeaseElector(
            _api(), CONFIG["namespace"], CONFIG["lease_name"], CONFIG["identity"],
            duration=CONFIG["lease_duration"], renew_every=CONFIG["lease_renew"],
            on_change=lambda leader: reconciler().leadership(leader))
        STATE["elector_task"] = asyncio.create_task(elector.run(stop))
    STATE["reconciler_task"] = asyncio.create_task(reconciler().run(stop))
    logger.info("kube-lvs operator %s: namespace %s, leader election %s", CONFIG["identity"],
                CONFIG["namespace"], "on" if CONFIG["leader_election"] else "off")


@kopf.on.cleanup()
async def cleanup(logger: logging.Logger, **_: Any) -> None:
    stop = STATE.get("stop")
    if stop:
        stop.set()
    for k in ("reconciler_task", "elector_task"):
        t = STATE.get(k)
        if t:
            try:
                await asyncio.wait_for(t, timeout=5)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                t.cancel()
    elector = STATE.get("elector")
    if elector:
        try:
            await asyncio.to_thread(elector.release)
        except Exception as e:  # best effort: the Lease expires anyway
            logger.warning("lease release: %s", e)


@kopf.on.probe(id="reconciler")
def probe(**_: Any) -> dict:
    r = STATE.get("reconciler")
    elector = STATE.get("elector")
    return {"leader": bool(elector.is_leader) if elector else True,
            "passes": r.passes if r else 0, "writes": r.writes if r else 0,
            "lastError": r.last_error if r else ""}


# -- caches -------------------------------------------------------------------

def _in_our_namespace(namespace: str | None, **_: Any) -> bool:
    return namespace == CONFIG["namespace"]


@kopf.index(C.GROUP, C.VERSION, C.VIRTUALSERVICE_PLURAL)
def virtualservices(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict:
    return {(namespace, name): project("virtualservices", body)}


@kopf.index(C.GROUP, C.VERSION, C.REALSERVER_PLURAL)
def realservers(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict:
    return {(namespace, name): project("realservers", body)}


@kopf.index(C.GROUP, C.VERSION, C.VIPPOOL_PLURAL)
def vippools(body: kopf.Body, name: str, **_: Any) -> dict:
    return {("", name): project("vippools", body)}


@kopf.index("", "v1", "nodes")
def nodes(body: kopf.Body, name: str, **_: Any) -> dict:
    return {("", name): project("nodes", body)}


@kopf.index("", "v1", "namespaces")
def namespaces(body: kopf.Body, name: str, **_: Any) -> dict:
    return {("", name): project("namespaces", body)}


@kopf.index(C.GROUP, C.VERSION, C.NODESTATE_PLURAL, when=_in_our_namespace)
def nodestates(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict:
    return {(namespace, name): project("nodestates", body)}


# -- triggers -------------------------------------------------------------------

def _wake(**kwargs: Any) -> None:
    reconciler().attach({k: kwargs[k] for k in ("virtualservices", "realservers", "vippools", "nodes",
                                                 "namespaces", "nodestates")})


kopf.on.event(C.GROUP, C.VERSION, C.VIRTUALSERVICE_PLURAL, id="wake")(_wake)
kopf.on.event(C.GROUP, C.VERSION, C.REALSERVER_PLURAL, id="wake")(_wake)
kopf.on.event(C.GROUP, C.VERSION, C.VIPPOOL_PLURAL, id="wake")(_wake)
kopf.on.event("", "v1", "nodes", id="wake")(_wake)
kopf.on.event("", "v1", "namespaces", id="wake")(_wake)
kopf.on.event(C.GROUP, C.VERSION, C.NODESTATE_PLURAL, id="wake", when=_in_our_namespace)(_wake)
