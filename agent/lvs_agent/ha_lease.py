"""One Lease per director (coordination.k8s.io/v1): liveness and what it holds.

The shell around ha_owner. Each director renews its own Lease every
``renew_every`` seconds: one API write per director per period, whatever the
number of VIPs (a Lease per VIP would make 10k VIPs 10k writes per period).
Two annotations carry the rest, rewritten with the renewal:

- ``lvs.kube-lvs.io/held``: the VIPs this director holds (sorted, comma
  separated), so the others know who holds what and nothing moves back on a
  director's return unless the policy says so;
- ``lvs.kube-lvs.io/unserved``: the VIPs it has no healthy real server for,
  which it gives up.

The Leases of all directors carry the label ``lvs.kube-lvs.io/director-lease``
and are listed with it, one list call per round. On shutdown a director deletes
its Lease: the others see it gone on their next list and take its VIPs over
at once instead of after the expiry.
"""
from __future__ import annotations

import base64
import logging
import zlib
from datetime import datetime, timezone
from typing import Any, Iterable

from lvs_model.channel import GROUP

from .ha_owner import Member

log = logging.getLogger("lvs_agent.ha_lease")

LEASE_LABEL = f"{GROUP}/director-lease"
HELD = f"{GROUP}/held"
UNSERVED = f"{GROUP}/unserved"
LEASE_PREFIX = "lvs-director-"
COORD = ("coordination.k8s.io", "v1")
PACK_OVER = 16_384


def _micro_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_name(node: str) -> str:
    return LEASE_PREFIX + node


def _join(vips: Iterable[str]) -> str:
    """Sorted, comma separated; past PACK_OVER characters zlib + base64 with a
    ``z:`` prefix (an API object's annotations may total 256 KiB: 10k IPv6
    VIPs in plain text would not fit)."""
    text = ",".join(sorted(vips))
    if len(text) <= PACK_OVER:
        return text
    return "z:" + base64.b64encode(zlib.compress(text.encode(), 9)).decode()


def _split(text: str | None) -> frozenset[str]:
    text = text or ""
    if text.startswith("z:"):
        text = zlib.decompress(base64.b64decode(text[2:])).decode()
    return frozenset(v for v in text.split(",") if v)


def lease_body(namespace: str, node: str, duration: float, held: Iterable[str], unserved: Iterable[str],
               renew_time: str, resource_version: str | None = None) -> dict:
    meta: dict[str, Any] = {"name": lease_name(node), "namespace": namespace,
                            "labels": {LEASE_LABEL: "true"},
                            "annotations": {HELD: _join(held), UNSERVED: _join(unserved)}}
    if resource_version:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node, "leaseDurationSeconds": max(1, int(duration)),
                     "renewTime": renew_time}}


def member_from(lease: dict) -> Member | None:
    """The Member a Lease describes; None for one that is not a director's."""
    meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    if not holder or not str(meta.get("name", "")).startswith(LEASE_PREFIX):
        return None
    notes = meta.get("annotations") or {}
    return Member(holder, str(spec.get("renewTime") or ""), float(spec.get("leaseDurationSeconds") or 0),
                  _split(notes.get(HELD)), _split(notes.get(UNSERVED)))


class DirectorLease:
    """This director's Lease and the list of all of them.

    ``api``: a kubernetes CustomObjectsApi (plain dicts, like the operator's
    leader election). Calls block: run them in a thread."""

    def __init__(self, api: Any, namespace: str, node: str, duration: float = 6.0):
        """``duration``: how long the others wait after this Lease last changed
        before they take its VIPs (the detection time of a dead director);
        three renewals (HaController renews every 2 s) fit in it, as in
        kube-vip's 5 s / 1 s retry."""
        self.api, self.namespace, self.node, self.duration = api, namespace, node, duration
        self._rv: str | None = None

    def renew(self, held: Iterable[str], unserved: Iterable[str]) -> None:
        """Write this director's Lease (create it the first time, replace it
        after). A conflict re-reads the resource version and writes once more."""
        from kubernetes.client.exceptions import ApiException
        for attempt in (1, 2):
            body = lease_body(self.namespace, self.node, self.duration, held, unserved, _micro_now(), self._rv)
            try:
                if self._rv is None:
                    got = self.api.create_namespaced_custom_object(*COORD, self.namespace, "leases", body)
                else:
                    got = self.api.replace_namespaced_custom_object(*COORD, self.namespace, "leases",
                                                                    lease_name(self.node), body)
                self._rv = (got.get("metadata") or {}).get("resourceVersion")
                return
            except ApiException as e:
                if e.status not in (404, 409) or attempt == 2:
                    raise
                self._rv = self._current_rv()

    def _current_rv(self) -> str | None:
        from kubernetes.client.exceptions import ApiException
        try:
            got = self.api.get_namespaced_custom_object(*COORD, self.namespace, "leases", lease_name(self.node))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (got.get("metadata") or {}).get("resourceVersion")

    def members(self) -> list[Member]:
        """Every director's Lease (raises when the API server cannot be read:
        the caller freezes the member list)."""
        got = self.api.list_namespaced_custom_object(*COORD, self.namespace, "leases",
                                                     label_selector=f"{LEASE_LABEL}=true")
        return [m for m in map(member_from, got.get("items") or []) if m is not None]

    def release(self) -> None:
        """Delete this director's Lease (shutdown): the others take over now."""
        from kubernetes.client.exceptions import ApiException
        try:
            self.api.delete_namespaced_custom_object(*COORD, self.namespace, "leases", lease_name(self.node))
        except ApiException as e:
            if e.status != 404:
                raise
        self._rv = None
