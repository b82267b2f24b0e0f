"""The BGP part of a director's desired state, and what it announces (pure).

In the active-active mode every director of a group programs the same IPVS
services (``mh`` scheduler, sloppy TCP/SCTP) and announces each VIP as a host
route (/32, /128) to the upstream routers over BGP; the routers spread flows
over the directors with ECMP. A BGP speaker (BIRD 2) does the protocol: this
module says which peers it talks to and which prefixes it may announce, and
``decide`` says, per VIP, whether this director announces it now and why.

A director announces a VIP only while traffic sent to it would be served:
the VIP's address is on the node, one of its services is programmed in the
kernel as the spec says, and that service has a real server with a weight
above 0 after the health verdicts. Anything else withdraws the route, so the
routers send the flows to the directors that can serve them.

Peer passwords never appear in a spec: a peer names a file of the Secret
mounted into the agent's pod (one file name, no directories), and only the
agent reads it. Whoever writes a NodeState therefore cannot read a file of
the node through the speaker's configuration.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import FieldError
from .nodespec import NodeSpec, ServiceKey, _addressed_entry, _host_ip, _int, _known_keys

# Seconds. A real-world default that drops a dead director within 9 s
# without BFD (RFC 4271 suggests 90 s, far too long for a load balancer;
# 9/3 is what MetalLB, kube-vip and Calico users commonly run). The BGP
# minimum is 3 (0, "never", is refused: a director nobody can time out).
DEFAULT_HOLD_TIME = 9
MIN_HOLD_TIME = 3
MAX_HOLD_TIME = 65535
DEFAULT_BGP_PORT = 179
MAX_ASN = 2**32 - 1
# A Secret key: what kubectl accepts as a key of a Secret's data, which is
# also one file name in the mounted directory (no "/", never "." or "..").
PASSWORD_FILE_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")

_PEER_KEYS = {"address", "asn", "localAsn", "port", "holdTime", "keepaliveTime", "passwordFile", "bfd"}
_BGP_KEYS = {"routerId", "localAsn", "peers", "vips", "drain"}

# Why a VIP is announced or not (``VipDecision.reason``).
ANNOUNCED = "Announced"
DRAINED = "Drained"
STOPPING = "Stopping"
NO_ADDRESS = "NoAddress"
NO_SERVICE = "NoService"
NOT_PROGRAMMED = "NotProgrammed"
NO_REAL_SERVER = "NoRealServer"


@dataclass(frozen=True)
class BgpPeer:
    """One BGP neighbour of this director (usually its top-of-rack router)."""

    address: str
    asn: int  # the peer's AS number
    local_asn: int  # this director's AS number towards it
    port: int = DEFAULT_BGP_PORT
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive_time: int = 0  # 0: a third of the hold time, as BGP speakers default
    password_file: str = ""  # a file name in the mounted Secret directory; "": no TCP-MD5
    bfd: bool = False

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"


@dataclass(frozen=True)
class BgpSpec:
    """BGP for one director: its router id, its peers, the VIPs it may
    announce, and ``drain`` (announce nothing, keep sessions and services:
    the first step of taking a director out, before its services go)."""

    router_id: str = ""
    peers: tuple[BgpPeer, ...] = ()
    vips: tuple[str, ...] = ()
    drain: bool = False


@dataclass(frozen=True)
class Health:
    """What the agent knows besides the spec: the services its last pass
    left programmed as desired (no error), and whether it is stopping."""

    programmed: frozenset[ServiceKey] = frozenset()
    stopping: bool = False


@dataclass(frozen=True)
class VipDecision:
    vip: str
    announced: bool
    reason: str  # one of the constants above
    message: str

    @property
    def prefix(self) -> str:
        return host_prefix(self.vip)


def host_prefix(address: str) -> str:
    """The host route of a VIP: /32 for IPv4, /128 for IPv6."""
    return f"{address}/{128 if ':' in address else 32}"


# --------------------------------------------------------------------------
# Decision
# --------------------------------------------------------------------------

def combined(spec: NodeSpec) -> tuple[BgpSpec, list[str]]:
    """The node's one BGP view from its parts (one per NodeState, merged by
    the agent): peers by address (the first wins, a different one is a
    problem), VIPs together, the first router id; drained if any part says
    so (draining is per node)."""
    parts = spec.bgp
    problems: list[str] = []
    peers: dict[str, BgpPeer] = {}
    for part in parts:
        for p in part.peers:
            first = peers.setdefault(p.address, p)
            if first != p:
                problems.append(f"peer {p.address} is declared twice with different settings; the first is used")
    router_ids = list(dict.fromkeys(p.router_id for p in parts if p.router_id))
    if len(router_ids) > 1:
        problems.append(f"router ids {', '.join(router_ids)} differ; {router_ids[0]} is used")
    vips = tuple(sorted({v for p in parts for v in p.vips}, key=lambda v: (":" in v, ipaddress.ip_address(v).packed)))
    return BgpSpec(router_ids[0] if router_ids else "", tuple(peers.values()), vips,
                   any(p.drain for p in parts)), list(dict.fromkeys(problems))


def decide(spec: NodeSpec, health: Health) -> tuple[VipDecision, ...]:
    """Per VIP of the BGP section: announce it now or not, and why."""
    bgp, _ = combined(spec)
    local = {a.address for a in spec.director_addresses}
    out = []
    for vip in bgp.vips:
        out.append(_decide_vip(vip, spec, health, bgp.drain, vip in local))
    return tuple(out)


def _decide_vip(vip: str, spec: NodeSpec, health: Health, drained: bool, local: bool) -> VipDecision:
    if health.stopping:
        return VipDecision(vip, False, STOPPING, "the agent is stopping: withdrawn before anything else")
    if drained:
        return VipDecision(vip, False, DRAINED, "this director is drained: withdrawn, services kept")
    if not local:
        return VipDecision(vip, False, NO_ADDRESS, f"{vip} is not among this director's addresses "
                                                   "(IPVS serves only a local address)")
    services = [s for s in spec.services if s.address == vip]
    if not services:
        return VipDecision(vip, False, NO_SERVICE, f"no virtual service on {vip} on this director")
    live = [s for s in services if s.key in health.programmed]
    if not live:
        return VipDecision(vip, False, NOT_PROGRAMMED,
                           f"none of {', '.join(str(s.key) for s in services)} is programmed in the kernel")
    serving = [s for s in live if any(d.weight > 0 for d in s.dests)]
    if not serving:
        return VipDecision(vip, False, NO_REAL_SERVER,
                           f"no real server with a weight above 0 (after health checks) behind "
                           f"{', '.join(str(s.key) for s in live)}")
    up = sum(1 for s in serving for d in s.dests if d.weight > 0)
    return VipDecision(vip, True, ANNOUNCED, f"{up} real server(s) with a weight above 0 behind "
                                             f"{', '.join(str(s.key) for s in serving)}")


def announced(spec: NodeSpec, health: Health) -> frozenset[str]:
    """The prefixes this director announces now (see :func:`decide`)."""
    return frozenset(d.prefix for d in decide(spec, health) if d.announced)


def implied_sysctls(spec: NodeSpec) -> dict[str, str]:
    """Sysctls a director announcing VIPs over BGP needs: ECMP may move a
    flow to this director mid-connection (a router's next hop set changed),
    and without sloppy TCP/SCTP IPVS drops every packet of a connection it
    did not see start. A declared value (IPVSSettings) still wins."""
    if not any(part.vips for part in spec.bgp):
        return {}
    return {"net.ipv4.vs.sloppy_tcp": "1", "net.ipv4.vs.sloppy_sctp": "1"}


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

def parse_bgp(raw: Any, path: str, errors: list[FieldError]) -> tuple[BgpSpec, ...]:
    """The ``bgp`` section of a node spec: a mapping (one NodeState's part)
    or a list of them (a dumped merge). A bad peer or VIP is reported and
    left out; the rest is kept."""
    if raw is None or raw == {} or raw == []:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        part = parse_bgp_part(item, f"{path}[{i}]" if isinstance(raw, list) else path, errors)
        if part is not None:
            out.append(part)
    return tuple(dict.fromkeys(out))


def parse_bgp_part(d: Any, path: str, errors: list[FieldError]) -> BgpSpec | None:
    if not isinstance(d, Mapping):
        errors.append(FieldError(path, "must be a mapping"))
        return None
    _known_keys(d, _BGP_KEYS, path, errors)
    router_id = ""
    if "routerId" in d:
        router_id = _router_id(d["routerId"], f"{path}.routerId", errors)
    default_local = _int(d, "localAsn", path, errors, 0, 0, MAX_ASN) if "localAsn" in d else 0
    peers_raw = d.get("peers") or []
    if not isinstance(peers_raw, list):
        errors.append(FieldError(f"{path}.peers", "must be a list"))
        peers_raw = []
    peers: list[BgpPeer] = []
    seen: dict[str, int] = {}
    for i, p in enumerate(peers_raw):
        peer = parse_peer(p, f"{path}.peers[{i}]", default_local, errors)
        if peer is None:
            continue
        if peer.address in seen:
            errors.append(FieldError(f"{path}.peers[{i}].address",
                                     f"{peer.address} is already peers[{seen[peer.address]}]"))
            continue
        seen[peer.address] = i
        peers.append(peer)
    if peers and not router_id:
        errors.append(FieldError(f"{path}.routerId", "is required with peers: this node's own IPv4 "
                                                      "address (directors must not share one)"))
    vips_raw = d.get("vips") or []
    if not isinstance(vips_raw, list):
        errors.append(FieldError(f"{path}.vips", "must be a list of VIPs"))
        vips_raw = []
    vips: list[str] = []
    for j, v in enumerate(vips_raw):
        n = len(errors)
        vip = _host_ip(v, f"{path}.vips[{j}]", errors, what="a VIP")
        if vip and len(errors) == n:
            vips.append(vip)
    families = {p.family for p in peers}
    for j, vip in enumerate(vips):
        fam = "ipv6" if ":" in vip else "ipv4"
        if peers and fam not in families:
            errors.append(FieldError(f"{path}.vips[{j}]", f"{vip} is {fam} and no peer is: a VIP is "
                                                           "announced to the peers of its family"))
    drain = _flag(d, "drain", path, errors)
    return BgpSpec(router_id, tuple(peers), tuple(dict.fromkeys(vips)), drain)


def parse_peer(d: Any, path: str, default_local: int, errors: list[FieldError]) -> BgpPeer | None:
    n = len(errors)
    if not _addressed_entry(d, _PEER_KEYS, path, errors):
        return None
    address = _peer_address(d["address"], f"{path}.address", errors)
    if "asn" not in d:
        errors.append(FieldError(f"{path}.asn", "is required: the peer's AS number"))
    asn = _int(d, "asn", path, errors, 0, 1, MAX_ASN)
    local_asn = _int(d, "localAsn", path, errors, default_local, 1, MAX_ASN) if "localAsn" in d else default_local
    if not local_asn:
        errors.append(FieldError(f"{path}.localAsn", "is required (here or as the section's localAsn): "
                                                      "this director's AS number"))
    port = _int(d, "port", path, errors, DEFAULT_BGP_PORT, 1, 65535)
    hold = _int(d, "holdTime", path, errors, DEFAULT_HOLD_TIME, MIN_HOLD_TIME, MAX_HOLD_TIME,
                " seconds (BGP's minimum is 3)")
    keepalive = _int(d, "keepaliveTime", path, errors, 0, 0, MAX_HOLD_TIME, " seconds (0: a third of holdTime)")
    if keepalive and keepalive >= hold:
        errors.append(FieldError(f"{path}.keepaliveTime", f"{keepalive}s is not below holdTime {hold}s"))
    password_file = d.get("passwordFile", "")
    if not isinstance(password_file, str) or (password_file and (
            not PASSWORD_FILE_RE.match(password_file) or password_file in (".", ".."))):
        errors.append(FieldError(f"{path}.passwordFile",
                                 f"{password_file!r} is not a key of the BGP Secret mounted into the agent: "
                                 "one file name (letters, digits, '-', '_', '.'), never a path"))
        password_file = ""
    bfd = _flag(d, "bfd", path, errors)
    if len(errors) != n:
        return None
    return BgpPeer(address, asn, local_asn, port, hold, keepalive, password_file, bfd)


def _flag(d: Mapping, key: str, path: str, errors: list[FieldError]) -> bool:
    value = d.get(key, False)
    if not isinstance(value, bool):
        errors.append(FieldError(f"{path}.{key}", "must be true or false"))
        return False
    return value


def _peer_address(value: Any, path: str, errors: list[FieldError]) -> str:
    """A router's address: one unicast host (link-local IPv6 peers need an
    interface, which this section does not carry)."""
    return _host_ip(value, path, errors, what="a BGP peer")


def _router_id(value: Any, path: str, errors: list[FieldError]) -> str:
    try:
        rid = ipaddress.IPv4Address(str(value))
    except ValueError:
        errors.append(FieldError(path, f"{value!r} is not a router id: a dotted IPv4 address, "
                                       "usually this node's own"))
        return ""
    if int(rid) == 0:
        errors.append(FieldError(path, "0.0.0.0 is not a router id"))
        return ""
    return str(rid)


# --------------------------------------------------------------------------
# Dumping
# --------------------------------------------------------------------------

def dump_peer(p: BgpPeer) -> dict:
    out: dict[str, Any] = {"address": p.address, "asn": p.asn, "localAsn": p.local_asn}
    for key, value, default in (("port", p.port, DEFAULT_BGP_PORT), ("holdTime", p.hold_time, DEFAULT_HOLD_TIME),
                                ("keepaliveTime", p.keepalive_time, 0), ("passwordFile", p.password_file, ""),
                                ("bfd", p.bfd, False)):
        if value != default:
            out[key] = value
    return out


def dump_bgp_part(b: BgpSpec) -> dict:
    out: dict[str, Any] = {}
    if b.router_id:
        out["routerId"] = b.router_id
    if b.peers:
        out["peers"] = [dump_peer(p) for p in b.peers]
    if b.vips:
        out["vips"] = list(b.vips)
    if b.drain:
        out["drain"] = True
    return out


def dump_bgp(parts: Iterable[BgpSpec]) -> dict | list[dict]:
    """The document form (inverse of parse_bgp): one part as a mapping, a
    merge of several as a list."""
    dumped = [dump_bgp_part(b) for b in parts]
    return dumped[0] if len(dumped) == 1 else dumped
