"""Lease-based leader election (coordination.k8s.io/v1), as client-go does it.

Every replica watches and compiles; only the holder of the Lease writes.
Expiry is judged on the local monotonic clock from when this replica last saw
the Lease change (client-go's rule), so skewed clocks cannot make two
replicas both believe they lead. A leader that cannot renew steps down
``duration - margin`` after its last successful renewal, before anyone else
may take over; on shutdown it releases the Lease so a successor starts at once.

Why a Lease and not kopf peering: kopf peering pauses lower-priority
operators but lets same-priority peers run together (with a warning), and
needs its own cluster-wide KopfPeering CRDs; a Lease gives exactly one
writer, is the standard Kubernetes mechanism, and needs only get/create/update
on one named Lease in the operator's namespace.
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

log = logging.getLogger("lvs_operator.leader")

# Defaults of --lease-duration and --lease-renew (main.py): client-go's leader
# election defaults, so a dead leader is replaced within 15 s and a leader
# renews three times per Lease, surviving two lost renewals.
LEASE_DURATION = 15.0
LEASE_RENEW = 5.0
# A leader that cannot renew stops writing this long before its Lease expires
# for the others: room for one renewal's round trip and the replicas' clocks
# running at slightly different rates.
LEASE_MARGIN = 2.0


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    def __init__(self, api: Any, namespace: str, name: str, identity: str,
                 duration: float = LEASE_DURATION, renew_every: float = LEASE_RENEW, margin: float = LEASE_MARGIN,
                 on_change: Callable[[bool], None] | None = None):
        """``api``: a kubernetes CustomObjectsApi (used for the Lease path, plain dicts)."""
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration, self.renew_every, self.margin = duration, renew_every, margin
        self.on_change = on_change
        self._renewed_at: float | None = None  # monotonic time of our last successful write
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._was_leader = False

    # -- state ---------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return (self._renewed_at is not None
                and time.monotonic() - self._renewed_at < self.duration - self.margin)

    def _notify(self) -> None:
        now = self.is_leader
        if now != self._was_leader:
            self._was_leader = now
            log.info("%s leadership of lease %s/%s", "acquired" if now else "lost", self.namespace, self.name)
            if self.on_change:
                self.on_change(now)

    # -- one round (blocking; run in a thread) -----------------------------------
    def _get(self) -> dict | None:
        from kubernetes.client.exceptions import ApiException
        try:
            return self.api.get_namespaced_custom_object("coordination.k8s.io", "v1", self.namespace,
                                                         "leases", self.name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def try_acquire_or_renew(self) -> bool:
        from kubernetes.client.exceptions import ApiException
        lease = self._get()
        now_mono = time.monotonic()
        spec_new = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                    "renewTime": _micro_now()}
        try:
            if lease is None:
                spec_new.update(acquireTime=spec_new["renewTime"], leaseTransitions=0)
                self.api.create_namespaced_custom_object(
                    "coordination.k8s.io", "v1", self.namespace, "leases",
                    {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec_new})
                self._renewed_at = now_mono
                return True
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, now_mono
            if holder and holder != self.identity:
                lease_for = float(spec.get("leaseDurationSeconds") or self.duration)
                if now_mono - self._observed_at < lease_for:
                    self._renewed_at = None
                    return False  # someone else holds it and it has not expired
            if holder == self.identity:
                spec_new["acquireTime"] = spec.get("acquireTime") or spec_new["renewTime"]
                spec_new["leaseTransitions"] = spec.get("leaseTransitions") or 0
            else:
                spec_new["acquireTime"] = spec_new["renewTime"]
                spec_new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": spec_new}
            self.api.replace_namespaced_custom_object("coordination.k8s.io", "v1", self.namespace,
                                                      "leases", self.name, body)
            self._renewed_at = now_mono
            return True
        except ApiException as e:
            if e.status in (409, 422):  # someone else wrote first: re-read next round
                self._renewed_at = None
                return False
            raise

    def release(self) -> None:
        """Give the Lease up (only if we hold it)."""
        if not self.is_leader:
            return
        lease = self._get()
        if not lease or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        spec = dict(lease["spec"])
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=_micro_now())
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]}, "spec": spec}
        self.api.replace_namespaced_custom_object("coordination.k8s.io", "v1", self.namespace,
                                                  "leases", self.name, body)
        self._renewed_at = None
        self._notify()

    # -- loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.try_acquire_or_renew)
            except Exception as e:  # API server away: keep trying, step down when due
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            self._notify()
            delay = self.renew_every if self.is_leader else self.renew_every / 2
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            self._notify()
