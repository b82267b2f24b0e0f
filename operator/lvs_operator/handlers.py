"""kopf handlers: thin. kopf runs the process (start-up, clean-up, liveness).

- startup starts the Lease elector, the caches' list+watch threads
  (watch.py: kopf's per-object handlers cost time quadratic in the number of
  objects at start-up) and the reconciler, which they wake;
- cleanup stops them and releases the Lease.

Nothing patches the watched objects (no finalizers, no kopf annotations):
the only writes are the reconciler's NodeStates, statuses and events.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from typing import Any, Mapping

import kopf

from lvs_model import channel as C
from lvs_kube.status_patch import StatusPatcher

from .leader import LEASE_DURATION, LEASE_RENEW, LeaseElector
from .reconciler import DEBOUNCE, RESYNC, Reconciler
from .watch import Caches, operator_kinds

log = logging.getLogger("lvs_operator")

# Filled in by main() before kopf starts (defaults suit `kopf run -m lvs_operator.handlers`).
CONFIG: dict[str, Any] = {
    "namespace": os.environ.get("POD_NAMESPACE") or C.DEFAULT_NAMESPACE,
    "identity": os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
    "lease_name": "kube-lvs-operator",
    "lease_duration": LEASE_DURATION,
    "lease_renew": LEASE_RENEW,
    "debounce": DEBOUNCE,
    "resync": RESYNC,
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


def _api_client() -> Any:
    return _api().api_client


def reconciler() -> Reconciler:
    r = STATE.get("reconciler")
    if r is None:
        elector = STATE.get("elector")
        raw = StatusPatcher(_api_client())
        r = STATE["reconciler"] = Reconciler(
            CONFIG["namespace"], _api, debounce=CONFIG["debounce"], resync=CONFIG["resync"],
            is_leader=(lambda: elector.is_leader) if elector else (lambda: True),
            identity=CONFIG["identity"], patch_status=raw.patch, request=raw.request,
            default_loadbalancer=CONFIG.get("default_loadbalancer", False))
    return r


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.posting.enabled = False  # no kopf log lines as Events on users' objects
    settings.scanning.disabled = True  # no cluster-wide CRD/namespace scanning (RBAC)
    # kopf's own watches (the probe's; the caches are watch.py's): the server
    # ends each watch within 5 minutes, the client gives it 30 s more before
    # calling the connection dead; one request may take a minute at most.
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
    rec = reconciler()
    caches = STATE["caches"] = Caches(operator_kinds(CONFIG["namespace"]), on_change=rec.changed)
    STATE["watch_stop"] = threading.Event()
    STATE["watch_threads"] = caches.start(_api_client, STATE["watch_stop"])

    async def attach_when_listed() -> None:
        await caches.ready.wait()
        rec.attach(caches.data)

    STATE["attach_task"] = asyncio.create_task(attach_when_listed())
    STATE["reconciler_task"] = asyncio.create_task(rec.run(stop))
    logger.info("kube-lvs operator %s: namespace %s, leader election %s", CONFIG["identity"],
                CONFIG["namespace"], "on" if CONFIG["leader_election"] else "off")


@kopf.on.cleanup()
async def cleanup(logger: logging.Logger, **_: Any) -> None:
    stop = STATE.get("stop")
    if stop:
        stop.set()
    if STATE.get("watch_stop"):
        STATE["watch_stop"].set()
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


def dead_parts(state: Mapping[str, Any]) -> list[str]:
    """The long-lived parts that have ended although the operator is not
    stopping: the reconciler and elector tasks and the watch threads. Any of
    them gone means nothing is reconciled any more, so liveness must fail and
    the kubelet restart the pod."""
    if state.get("stop") is not None and state["stop"].is_set():
        return []
    dead = []
    for k in ("reconciler_task", "elector_task"):
        t = state.get(k)
        if t is not None and t.done():
            why = t.exception() if not t.cancelled() else "cancelled"
            dead.append(f"{k.removesuffix('_task')} ({why or 'returned'})")
    dead += [t.name for t in state.get("watch_threads") or () if not t.is_alive()]
    return dead


@kopf.on.probe(id="reconciler")
def probe(**_: Any) -> dict:
    dead = dead_parts(STATE)
    if dead:
        # kopf answers the liveness endpoint with 500 when a probe fails.
        raise kopf.PermanentError(f"not reconciling: {', '.join(dead)} ended")
    r = STATE.get("reconciler")
    elector = STATE.get("elector")
    return {"leader": bool(elector.is_leader) if elector else True,
            "passes": r.passes if r else 0, "writes": r.writes if r else 0,
            "lastError": r.last_error if r else ""}
