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

NAT with ``natReturn: gateway``: the real servers send their replies to
their default gateway, an inside address of the director, so that address
must move with the VIP. Annotations (not labels: a label value cannot hold
an IPv6 address's colons):

- ``lvs.kube-lvs.io/nat-gateway``: the real servers' gateway address. A
  tenant names an address the director will hold on the segment of the real
  servers, so it is checked like a VIP (:func:`gateway_denial`): a unicast
  host address inside a VIPPool open to the VirtualService's namespace, not a
  Node's address, not another VirtualService's VIP or gateway;
- ``lvs.kube-lvs.io/nat-gateway-device``: the device the director holds it
  on (absent: the device of its route to the real servers).

The group's name is derived from its members: the agents merge the groups of
all their NodeStates, and one name per set of directors keeps them apart.
"""
from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, Callable, Iterable, Mapping

from lvs_model.channel import GROUP
from lvs_model.nodespec import DirectorGroup, Service, device_error, unusable_address

LABEL_FAILOVER = f"{GROUP}/failover"
LABEL_SYNC_ID = f"{GROUP}/sync-id"
LABEL_SYNC_DEVICE = f"{GROUP}/sync-device"
LABEL_PREFERRED = f"{GROUP}/preferred-director"
LABEL_FAIL_BACK = f"{GROUP}/fail-back"
ACTIVE_STANDBY = "active-standby"
ACTIVE_ACTIVE = "active-active"  # every director announces the VIP over BGP (bgp_peers.py)
ANNOTATION_NAT_GATEWAY = f"{GROUP}/nat-gateway"
ANNOTATION_NAT_GATEWAY_DEVICE = f"{GROUP}/nat-gateway-device"


def _digest(members: Iterable[str]) -> bytes:
    return hashlib.sha256("\0".join(sorted(members)).encode()).digest()


def group_name(members: Iterable[str]) -> str:
    return "directors-" + _digest(members)[:5].hex()


def default_sync_id(members: Iterable[str]) -> int:
    """1-255, the same for every VirtualService with these directors."""
    return 1 + int.from_bytes(_digest(members)[:4], "big") % 255


def enabled(labels: Mapping[str, str]) -> bool:
    return labels.get(LABEL_FAILOVER) == ACTIVE_STANDBY


def director_group(labels: Mapping[str, str], members: Iterable[str], svc: Service,
                   gateway: tuple[str, str] = ("", "")) -> tuple[DirectorGroup, ...]:
    """The ``directorGroups`` of the NodeStates of one VirtualService: none
    unless it opts in (and none for a firewall-mark service: no VIP address).
    ``gateway``: (address, device) of its NAT gateway, already checked
    (:func:`gateway_denial`)."""
    members = tuple(sorted(set(members)))
    if not enabled(labels) or not members or not svc.address:
        return ()
    raw = labels.get(LABEL_SYNC_ID, "")
    sync_id = int(raw) if raw.isdigit() and int(raw) <= 255 else default_sync_id(members)
    return (DirectorGroup(group_name(members), members, (svc.address,), sync_id,
                          labels.get(LABEL_SYNC_DEVICE, ""), labels.get(LABEL_PREFERRED, ""),
                          labels.get(LABEL_FAIL_BACK) == "true", *gateway),)


def gateway_annotations(objs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(namespace, name) -> (nat-gateway, nat-gateway-device) as written, for
    the VirtualServices that opt into a group and carry the annotation (the
    compiler's typed objects keep labels, not annotations)."""
    out = {}
    for o in objs:
        meta = o.get("metadata") or {}
        notes = meta.get("annotations") or {}
        if enabled(meta.get("labels") or {}) and notes.get(ANNOTATION_NAT_GATEWAY):
            out[(meta.get("namespace") or "", meta.get("name") or "")] = (
                str(notes[ANNOTATION_NAT_GATEWAY]).strip(), str(notes.get(ANNOTATION_NAT_GATEWAY_DEVICE) or ""))
    return out


def gateway_denial(raw: tuple[str, str], vip: str, method: str, nat_return: str, namespace: str,
                   in_pool: Callable[[str], bool], node_addresses: Iterable[str],
                   taken: Mapping[str, tuple[str, str]]) -> tuple[str, str] | None:
    """Why a VirtualService's ``nat-gateway`` annotation cannot be used, as
    (reason, message naming the annotation and the fix), or None (then
    :func:`canonical_gateway` gives the address to carry).

    The address will be held by a director on the real servers' segment and
    announced there, so a tenant must not be able to name just any address
    (a Node's, another tenant's gateway): it must be a host address in a
    VIPPool open to ``namespace`` (``in_pool``), of the VIP's family, not a
    Node's address, not the VIP, and not a VIP or the gateway of another VIP
    (``taken``: address -> (the VIP it goes with, what uses it); VirtualServices
    of one VIP, say ports 80 and 443, share its gateway)."""
    address, device = raw
    note = f"annotation {ANNOTATION_NAT_GATEWAY}: {address!r}"
    if method != "nat" or nat_return != "gateway":
        return ("Invalid", f"{note} only applies to method nat with natReturn gateway (this one: {method}"
                           f"{', natReturn ' + nat_return if method == 'nat' else ''}); remove the annotation")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ("Invalid", f"{note} is not an IP address; give the inside address the real servers use as "
                           "their default gateway")
    address = str(ip)
    why = unusable_address(address)
    if why:
        return ("Invalid", f"{note}: {why}; the gateway must be a unicast address of a host")
    if (ip.version == 6) != (":" in vip):
        return ("Invalid", f"{note} is IPv{ip.version} but the VIP {vip} is not; give an address of the "
                           "VIP's family")
    if device and device_error(device):
        return ("Invalid", f"annotation {ANNOTATION_NAT_GATEWAY_DEVICE}: {device_error(device)}")
    if address in set(node_addresses):
        return ("Invalid", f"{note} is a Node's own address: a director holding it would take that node's "
                           "traffic; give the real servers a gateway address of their own")
    if address == vip:
        return ("Invalid", f"{note} is the VIP itself; give the inside address the real servers use as their "
                           "default gateway")
    if address in taken and taken[address][0] != vip:
        return ("Invalid", f"{note} is already {taken[address][1]}, created earlier; give each VIP a "
                           "gateway address of its own")
    if not in_pool(address):
        return ("NoPool", f"{note} is in no VIPPool open to namespace {namespace}: the directors would hold "
                          f"it like a VIP; an administrator must add it to the spec.addresses of a VIPPool "
                          f"open to {namespace}, or remove the annotation")
    return None


def canonical_gateway(raw: tuple[str, str]) -> tuple[str, str]:
    """(address, device) of an annotation :func:`gateway_denial` accepted."""
    return str(ipaddress.ip_address(raw[0])), raw[1]


def held_here(status: Mapping[str, Any], vip: str) -> bool:
    """Whether a director's NodeState status says it holds ``vip``."""
    return any(r.get("address") == vip and r.get("held") for r in status.get("activeDirectors") or ())


def held_since(status: Mapping[str, Any], vip: str) -> str:
    """When a director's status says it took ``vip`` over (RFC 3339, its
    clock); "" when it does not hold it or does not say."""
    return next((str(r.get("since") or "") for r in status.get("activeDirectors") or ()
                 if r.get("address") == vip and r.get("held")), "")


def active_director(labels: Mapping[str, str], reports: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``status.activeDirector`` of a VirtualService: the director whose
    agent says it holds the VIP; "" when none does; None when it did not opt
    in (the field is left out).

    Two claims: a director that died holding the VIP keeps its last report
    (nobody else may write its NodeState status), so the claim made last
    (``since``, when each took the VIP over) is the holder. Claims without
    that time (agents of an older version) or made at the same instant are
    all shown, comma separated: visible, not hidden."""
    if not enabled(labels):
        return None
    claims = {n: str(r.get("since") or "") for n, r in reports.items() if r.get("held")}
    if len(claims) > 1 and all(claims.values()):
        latest = max(claims.values())
        claims = {n: s for n, s in claims.items() if s == latest}
    return ",".join(sorted(claims))
