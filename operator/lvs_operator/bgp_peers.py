"""Active-active directors in the operator (pure): BGPPeer objects, the
``bgp`` section of a VirtualService's NodeStates, the graceful drain of a
director that leaves, and what a VirtualService's status says about who
announces its VIP.

Opt-in per VirtualService with the label ``lvs.kube-lvs.io/failover:
active-active`` (beside ha_groups' ``active-standby``): every selected
director holds the VIP and announces it as a host route over BGP to the
routers of the BGPPeers whose ``nodeSelector`` matches it; the routers
spread the flows with ECMP. A VirtualService without the label is compiled
as before.

A **BGPPeer** (cluster-scoped, the admins', as MetalLB's): ``peerAddress``,
``peerASN``, ``myASN``, ``port``, ``holdTime``, ``keepaliveTime``,
``passwordSecretKey`` (a key of the Secret the admin mounts into the agent's
pod: the operator never reads it, it only passes the key's name on), ``bfd``
and ``nodeSelector`` (absent: every director). Two BGPPeers with the same
address for one node: the oldest wins there, the other's Conflict condition
names the node.

A director is given the VIP only if it can announce it: at least one
BGPPeer selects it and it has an IPv4 InternalIP (the BGP router id; every
director needs its own). One that cannot is left out and the
VirtualService's ``BGP`` condition names it and the fix.

**Graceful drain.** A director that stops being selected keeps its
NodeStates for ``DRAIN_MARGIN`` seconds past the longest hold time of its
peers, with the VIP no longer announced from it (removed from ``bgp.vips``,
or ``bgp.drain: true`` when it announces nothing else through kube-lvs), and
its services and addresses kept: the routers move the flows to the other
directors while this one still forwards what reaches it. The start time is
an annotation on the NodeState, so an operator restarted meanwhile goes on
where it was.

sloppy TCP/SCTP are not written here: the agent implies them for any node
whose spec announces VIPs (lvs_model.bgp.implied_sysctls), after which an
IPVSSettings' declared value wins, as for every default sysctl.
"""
from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from lvs_model import channel as C
from lvs_model.bgp import BgpPeer, BgpSpec, parse_peer
from lvs_model.errors import FieldError

from .crmodel import CustomResource, Node, selector_matches
from .ha_groups import ACTIVE_ACTIVE, ACTIVE_STANDBY, LABEL_FAILOVER

BGPPEER_KIND, BGPPEER_PLURAL = "BGPPeer", "bgppeers"
MODES = (ACTIVE_STANDBY, ACTIVE_ACTIVE)
# On a NodeState kept while its director drains: when the drain began (RFC 3339, the operator's clock).
ANNOTATION_DRAIN_STARTED = f"{C.GROUP}/bgp-drain-started"
# Seconds past the longest hold time before a drained director's NodeStates
# go: a live agent withdraws within a pass (well under a second), a dead or
# partitioned one is dropped by its routers when the hold time expires; the
# margin covers the agent's watch, one pass and the routers' reconvergence.
DRAIN_MARGIN = 5

# BGPPeer spec field -> lvs_model.bgp peer field (same checks, the CR's names in the messages).
PEER_FIELDS = {"peerAddress": "address", "peerASN": "asn", "myASN": "localAsn", "port": "port",
               "holdTime": "holdTime", "keepaliveTime": "keepaliveTime", "passwordSecretKey": "passwordFile",
               "bfd": "bfd"}
_MODEL_TO_CR = {v: k for k, v in PEER_FIELDS.items()}


def mode(labels: Mapping[str, str]) -> str:
    """The failover label's value ("" when absent)."""
    return str(labels.get(LABEL_FAILOVER) or "")


def active_active(labels: Mapping[str, str]) -> bool:
    return mode(labels) == ACTIVE_ACTIVE


def mode_error(labels: Mapping[str, str], fwmark: int) -> str:
    """Why a VirtualService's mode cannot be used, or ""."""
    m = mode(labels)
    if m and m not in MODES:
        return (f"label {LABEL_FAILOVER}: {m!r} is not a mode: {' or '.join(MODES)} (or remove the label: "
                "every selected director holds the VIP)")
    if m == ACTIVE_ACTIVE and fwmark:
        return (f"label {LABEL_FAILOVER}: active-active announces the VIP over BGP, and a firewall-mark "
                "service has no VIP address; use a VIP, or remove the label")
    return ""


def mode_conflicts(items: Iterable[tuple[tuple[str, str], str, str]]) -> dict[tuple[str, str], str]:
    """VirtualServices (ref, VIP, mode), oldest first -> the refused ones and why.

    A VIP is either held by one director of a group (active-standby) or
    announced by all (active-active): the services of one VIP (its ports)
    must agree, and the oldest decides. Without the label a service goes
    with either."""
    first: dict[str, tuple[tuple[str, str], str]] = {}  # VIP -> (ref, mode) of the oldest with a mode
    out = {}
    for ref, vip, m in items:
        if not vip or m not in MODES:
            continue
        if vip not in first:
            first[vip] = (ref, m)
            continue
        oref, om = first[vip]
        if om != m:
            out[ref] = (f"VIP {vip} is {om} in VirtualService {oref[0]}/{oref[1]}, created earlier, and this "
                        f"one asks for {m} (label {LABEL_FAILOVER}): the services of one VIP share its mode; "
                        "the oldest wins")
    return out


# --------------------------------------------------------------------------
# BGPPeer objects
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerCR(CustomResource):
    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def node_selector(self) -> Mapping[str, Any]:
        """Absent: every director."""
        sel = self.spec.get("nodeSelector")
        return sel if isinstance(sel, Mapping) else {}

    def peer(self, errors: list[FieldError]) -> BgpPeer | None:
        """The peer in the node spec's terms, with errors at ``spec.*`` paths
        named as the BGPPeer names its fields."""
        for k in self.spec:
            if k not in PEER_FIELDS and k != "nodeSelector":
                errors.append(FieldError(f"spec.{k}", f"unknown field (known: {', '.join(PEER_FIELDS)}, "
                                                      "nodeSelector)"))
        doc = {PEER_FIELDS[k]: v for k, v in self.spec.items() if k in PEER_FIELDS}
        raw: list[FieldError] = []
        peer = parse_peer(doc, "spec", 0, raw)
        errors.extend(FieldError(_cr_path(e.path), e.message) for e in raw)
        return peer


def _cr_path(path: str) -> str:
    head, _, key = path.partition(".")
    return f"{head}.{_MODEL_TO_CR.get(key, key)}" if key else path


@dataclass
class Peers:
    """The BGPPeers of a compile: the valid ones oldest first, and per object
    its errors and the nodes it peers with (for its status)."""

    valid: list[tuple[PeerCR, BgpPeer]] = field(default_factory=list)
    objs: list[PeerCR] = field(default_factory=list)
    errors: dict[str, list[FieldError]] = field(default_factory=dict)
    nodes: dict[str, list[str]] = field(default_factory=dict)  # BGPPeer -> nodes it peers with
    taken: dict[str, dict[str, str]] = field(default_factory=dict)  # BGPPeer -> node -> the older one there

    @classmethod
    def of(cls, objs: Iterable[Mapping[str, Any]]) -> "Peers":
        out = cls()
        for cr in sorted((PeerCR.of(o) for o in objs), key=lambda p: p.meta.age_key):
            errors: list[FieldError] = []
            peer = cr.peer(errors)
            out.objs.append(cr)
            out.errors[cr.name] = errors
            out.nodes[cr.name], out.taken[cr.name] = [], {}
            if peer is not None and not errors:
                out.valid.append((cr, peer))
        return out

    def for_node(self, node: Node) -> dict[str, BgpPeer]:
        """The peers of ``node`` by BGPPeer name: each selecting one's, one per address (the oldest)."""
        chosen: dict[str, tuple[str, BgpPeer]] = {}
        for cr, peer in self.valid:
            if not selector_matches(cr.node_selector, node.labels):
                continue
            if peer.address in chosen:
                self.taken[cr.name][node.name] = chosen[peer.address][0]
                continue
            chosen[peer.address] = (cr.name, peer)
        return dict(chosen.values())

    def note_used(self, node: str, names: Iterable[str]) -> None:
        for name in names:
            if node not in self.nodes[name]:
                self.nodes[name].append(node)


def router_id(node: Node) -> str:
    """The node's IPv4 InternalIP (a BGP router id is an IPv4 address), or ""."""
    for t, a in node.addresses:
        if t != "InternalIP":
            continue
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if ip.version == 4:
            return str(ip)
    return ""


def director_bgp(node: Node, peers: Peers, vip: str) -> tuple[BgpSpec | None, str]:
    """The ``bgp`` section of ``node``'s NodeStates for ``vip``, or None and
    why the node cannot announce it (naming the fix)."""
    chosen = peers.for_node(node)
    mine = tuple(chosen.values())
    if not mine:
        return None, (f"{node.name}: no BGPPeer selects it; create a BGPPeer (bgppeers.{C.GROUP}, cluster-scoped) "
                      "whose spec.nodeSelector matches it, or leave nodeSelector out for every director")
    family = "ipv6" if ":" in vip else "ipv4"
    if not any(p.family == family for p in mine):
        return None, (f"{node.name}: no BGPPeer of its peers is {family}, the VIP's family; add a BGPPeer with an "
                      f"{family} peerAddress for it")
    rid = router_id(node)
    if not rid:
        return None, (f"{node.name}: no IPv4 InternalIP in the Node's status.addresses, which is its BGP router "
                      "id (every director needs its own); the kubelet reports it (--node-ip)")
    used = {n: p for n, p in chosen.items() if p.family == family}
    peers.note_used(node.name, used)
    return BgpSpec(rid, tuple(used.values()), (vip,)), ""


# --------------------------------------------------------------------------
# Graceful drain
# --------------------------------------------------------------------------

def _bgp_parts(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = spec.get("bgp")
    if isinstance(raw, Mapping):
        return [raw]
    return [p for p in raw if isinstance(p, Mapping)] if isinstance(raw, list) else []


def announces(spec: Mapping[str, Any]) -> bool:
    """Whether a NodeState spec announces a VIP (not drained)."""
    return any(p.get("vips") and not p.get("drain") for p in _bgp_parts(spec))


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except (TypeError, ValueError):
        return None


def grace(spec: Mapping[str, Any]) -> int:
    """Seconds a drained NodeState is kept: its peers' longest hold time
    (lvs_model.bgp's default where a peer gives none) plus DRAIN_MARGIN."""
    from lvs_model.bgp import DEFAULT_HOLD_TIME
    holds = [int(p.get("holdTime") or DEFAULT_HOLD_TIME) for part in _bgp_parts(spec)
             for p in part.get("peers") or () if isinstance(p, Mapping)]
    return max(holds or [DEFAULT_HOLD_TIME]) + DRAIN_MARGIN


def drained_spec(spec: Mapping[str, Any], node_announces_more: bool) -> dict:
    """``spec`` announcing nothing: its VIPs left out when the node still
    announces other VirtualServices' (a drain flag would withdraw those
    too: it is per node), else ``drain: true`` (the whole director leaves;
    its status then says Drained per VIP). Services and addresses stay."""
    out = copy.deepcopy(dict(spec))
    parts = out.get("bgp")
    for part in [parts] if isinstance(parts, dict) else parts or []:
        if not isinstance(part, dict):
            continue
        if node_announces_more:
            part.pop("vips", None)
        else:
            part["drain"] = True
    return out


@dataclass
class Drain:
    """The NodeStates a compile keeps while their directors drain, and when
    the next pass is due (the earliest end of a drain), in seconds."""

    keep: dict[str, dict] = field(default_factory=dict)
    recheck_after: float | None = None


def plan_drain(current: Mapping[str, Mapping[str, Any]], desired: Mapping[str, Mapping[str, Any]],
               now: str) -> Drain:
    """Which current NodeStates that the compile no longer wants are kept,
    drained, instead of deleted.

    A NodeState is drained when it announced a VIP (or is draining already)
    and its director has no desired NodeState of the same VirtualService
    (a renamed or resharded NodeState goes at once: the director stays).
    Once drained, its spec is kept as written (a later pass, which may see
    only part of the cluster, decides nothing again); it goes when the
    annotation's start is ``grace`` seconds old."""
    out = Drain()
    t_now = _parse_time(now)
    wanted = {_pair(o) for o in desired.values()}
    announcing_nodes = {_node(o) for o in desired.values() if announces(o.get("spec") or {})}
    for name in sorted(current):
        obj = current[name]
        if name in desired:
            continue
        meta = obj.get("metadata") or {}
        notes = meta.get("annotations") or {}
        labels = meta.get("labels") or {}
        if labels.get(C.LABEL_MANAGED_BY) != C.MANAGED_BY or not notes.get(C.ANNOTATION_VIRTUALSERVICE):
            continue
        spec = obj.get("spec") or {}
        started = notes.get(ANNOTATION_DRAIN_STARTED)
        if started is None and (not announces(spec) or _pair(obj) in wanted):
            continue
        began = _parse_time(str(started)) if started else t_now
        if began is None or t_now is None:
            continue  # an annotation that is no time: not ours to keep
        left = grace(spec) - (t_now - began).total_seconds()
        if left <= 0:
            continue
        if started is None:
            spec = drained_spec(spec, _node(obj) in announcing_nodes)
        out.keep[name] = {
            "apiVersion": C.API_VERSION, "kind": C.NODESTATE_KIND,
            "metadata": {"name": name, "namespace": meta.get("namespace") or "",
                         "labels": dict(labels),
                         "annotations": {**{k: v for k, v in notes.items() if k.startswith(C.GROUP + "/")},
                                         ANNOTATION_DRAIN_STARTED: started or now}},
            "spec": spec,
        }
        out.recheck_after = left if out.recheck_after is None else min(out.recheck_after, left)
    return out


def _node(obj: Mapping[str, Any]) -> str:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(C.LABEL_NODE, "")


def _pair(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (_node(obj), (meta.get("annotations") or {}).get(C.ANNOTATION_VIRTUALSERVICE, ""))


# --------------------------------------------------------------------------
# Statuses
# --------------------------------------------------------------------------

def announcement(status: Mapping[str, Any], vip: str) -> dict | None:
    """A director's report on ``vip`` in its NodeState status (the agent's
    ``bgp.vips``): {announced, reason, message}, or None."""
    for v in ((status.get("bgp") or {}).get("vips") or ()):
        if v.get("address") == vip:
            return {"announced": bool(v.get("announced")), "reason": str(v.get("reason") or ""),
                    "message": str(v.get("message") or "")}
    return None


def announcements(vip: str, reports: Mapping[str, Mapping[str, Any] | None]) -> tuple[str, list[dict]]:
    """(``status.announcedBy``, ``status.announcements``) of an active-active
    VirtualService from its directors' NodeState statuses (node -> status)."""
    per = []
    for node in sorted(reports):
        a = announcement(reports[node] or {}, vip)
        per.append({"node": node, **(a or {"announced": False, "reason": "NotReported",
                                           "message": "the director's agent has not reported on BGP yet"})})
    return ",".join(p["node"] for p in per if p["announced"]), per


def peer_status(cr: PeerCR, peers: Peers, now: str, condition: Any) -> dict:
    """A BGPPeer's status: valid or not, the nodes that peer with it, and the
    nodes an older BGPPeer of the same address has."""
    gen = cr.meta.generation
    prev = cr.status.get("conditions") or ()
    errors = peers.errors.get(cr.name) or []
    nodes = sorted(peers.nodes.get(cr.name) or [])
    if errors:
        acc = condition("Accepted", False, "Invalid", "; ".join(str(e) for e in errors) + "; not used",
                        gen, now, prev)
    else:
        acc = condition("Accepted", True, "Accepted", "valid", gen, now, prev)
    taken = peers.taken.get(cr.name) or {}
    if taken:
        conflict = condition("Conflict", True, "Conflict", "; ".join(
            f"node {n}: BGPPeer {o}, created earlier, has the same peerAddress there; the oldest wins"
            for n, o in sorted(taken.items())), gen, now, prev)
    else:
        conflict = condition("Conflict", False, "NoConflict", "no older BGPPeer has this address on its nodes",
                             gen, now, prev)
    return {"observedGeneration": gen, "nodes": nodes, "nodeCount": len(nodes), "conditions": [acc, conflict]}
