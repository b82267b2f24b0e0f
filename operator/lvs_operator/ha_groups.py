"""Director groups in the operator (pure): which NodeStates carry a
``directorGroups`` entry, and what a VirtualService's status says about the
director that holds its VIP.

Opt-in per VirtualService with labels, so a VirtualService without them is
compiled exactly as before (every selected director holds the VIP, which is
what an ECMP/BGP setup wants):

- ``lvs.kube-lvs.io/failover: active-standby``: the selected directors form
  a group; one of them holds the VIP at a time, the others keep the IPVS
  service programmed (hot standby);
- ``lvs.kube-lvs.io/sync-id``: the connection sync daemon's id, 1-255;
  absent: derived from the group's members, so VirtualServices with the same
  directors share one id (a director runs one sync daemon pair);
  ``0`` turns the sync daemon off;
- ``lvs.kube-lvs.io/sync-device``: the device the group shares (absent:
  each director's uplink);
- ``lvs.kube-lvs.io/preferred-director``: the node that holds the VIP while
  it is up; ``lvs.kube-lvs.io/fail-back: "true"`` moves the VIP back to it
  when it returns (default: it stays where it is, connections move once).

The group's name is derived from its members: the agents merge the groups of
all their NodeStates, and one name per set of directors keeps them apart.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

from lvs_model.channel import GROUP
from lvs_model.nodespec import DirectorGroup, Service

LABEL_FAILOVER = f"{GROUP}/failover"
LABEL_SYNC_ID = f"{GROUP}/sync-id"
LABEL_SYNC_DEVICE = f"{GROUP}/sync-device"
LABEL_PREFERRED = f"{GROUP}/preferred-director"
LABEL_FAIL_BACK = f"{GROUP}/fail-back"
ACTIVE_STANDBY = "active-standby"


def _digest(members: Iterable[str]) -> bytes:
    return hashlib.sha256("\0".join(sorted(members)).encode()).digest()


def group_name(members: Iterable[str]) -> str:
    return "directors-" + _digest(members)[:5].hex()


def default_sync_id(members: Iterable[str]) -> int:
    """1-255, the same for every VirtualService with these directors."""
    return 1 + int.from_bytes(_digest(members)[:4], "big") % 255


def enabled(labels: Mapping[str, str]) -> bool:
    return labels.get(LABEL_FAILOVER) == ACTIVE_STANDBY


def director_group(labels: Mapping[str, str], members: Iterable[str], svc: Service) -> tuple[DirectorGroup, ...]:
    """The ``directorGroups`` of the NodeStates of one VirtualService: none
    unless it opts in (and none for a firewall-mark service: no VIP address)."""
    members = tuple(sorted(set(members)))
    if not enabled(labels) or not members or not svc.address:
        return ()
    raw = labels.get(LABEL_SYNC_ID, "")
    sync_id = int(raw) if raw.isdigit() and int(raw) <= 255 else default_sync_id(members)
    return (DirectorGroup(group_name(members), members, (svc.address,), sync_id,
                          labels.get(LABEL_SYNC_DEVICE, ""), labels.get(LABEL_PREFERRED, ""),
                          labels.get(LABEL_FAIL_BACK) == "true"),)


def held_here(status: Mapping[str, Any], vip: str) -> bool:
    """Whether a director's NodeState status says it holds ``vip``."""
    return any(r.get("address") == vip and r.get("held") for r in status.get("activeDirectors") or ())


def active_director(labels: Mapping[str, str], reports: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``status.activeDirector`` of a VirtualService: the directors whose
    agents say they hold the VIP (two, comma separated, during a hand-over or
    a split: visible, not hidden); "" when none does; None when it did not
    opt in (the field is left out)."""
    if not enabled(labels):
        return None
    return ",".join(sorted(n for n, r in reports.items() if r.get("held")))
