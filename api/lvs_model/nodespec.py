"""The per-node desired state: what one node's kernel must hold.

The operator compiles it, the agent (or ``lvsctl apply``) makes the kernel
match it. Values are frozen and hashable so the planner can diff them with
plain equality. Parsing never raises for one bad service: it keeps the good
ones and returns a FieldError for each bad one, because one tenant's mistake
must not stop the other services on the node.
"""
from __future__ import annotations

import functools

import ipaddress
from collections.abc import Iterable, Mapping  # isinstance on the abc is C; typing.Mapping adds a Python hop
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import kernel as K
from .addresses import canonical, is_host
from .errors import FieldError, SpecError
from .sysctls import device_error, sysctl_error

if TYPE_CHECKING:  # bgp.py imports this module
    from .bgp import BgpSpec

DIRECTOR_DEVICE = "kube-lvs0"  # dummy device holding director VIPs (cf. kube-ipvs0)
# Seconds: checks run from the director's host network, so a floor keeps one
# tenant's service from turning the agent into a probe generator.
MIN_HEALTH_INTERVAL = 1.0
# Seconds a removed real server keeps its established connections (weight 0)
# before its dest is deleted; the common load-balancer default for connection
# draining (deregistration delay).
DEFAULT_DRAIN_TIMEOUT = 300
MAX_DRAIN_TIMEOUT = 86400
# IPVS connection timeouts (``ipvsadm --set tcp tcpfin udp``): the document's
# key -> the model's name. The kernel refuses more than INT_MAX/HZ seconds;
# the bound below holds for every HZ up to 1000.
TIMEOUT_FIELDS = {"tcp": "tcp", "tcpFin": "tcpfin", "udp": "udp"}
TIMEOUT_NAMES = tuple(TIMEOUT_FIELDS.values())
MAX_IPVS_TIMEOUT = (2**31 - 1) // 1000


@dataclass(frozen=True, order=True)
class ServiceKey:
    """How the kernel identifies a virtual service."""

    family: str  # "ipv4" | "ipv6"
    protocol: str  # "tcp" | "udp" | "sctp" | "" for fwmark
    address: str  # canonical text, "" for fwmark
    port: int
    fwmark: int = 0

    def __str__(self) -> str:
        if self.fwmark:
            return f"fwm:{self.fwmark}" + ("/v6" if self.family == "ipv6" else "")
        host = f"[{self.address}]" if self.family == "ipv6" else self.address
        return f"{self.protocol}:{host}:{self.port}"


@dataclass(frozen=True, order=True)
class DestKey:
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Dest:
    address: str
    port: int
    weight: int = 1
    method: str = "nat"  # nat | dr | tun
    tunnel_type: str = "ipip"
    tunnel_port: int = 0  # GUE only
    tunnel_csum: str = "none"
    upper_threshold: int = 0
    lower_threshold: int = 0

    @property
    def key(self) -> DestKey:
        return DestKey(self.address, self.port)


@dataclass(frozen=True)
class HealthCheck:
    """How a director checks its real servers (no kernel state: agent-side only)."""

    type: str = "none"  # none | tcp | http | https
    port: int = 0  # 0: the dest's port
    path: str = "/"
    expected_status: int = 200
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True)
class Service:
    family: str = "ipv4"
    protocol: str = "tcp"
    address: str = ""
    port: int = 0
    fwmark: int = 0
    scheduler: str = "wlc"
    scheduler_flags: tuple[str, ...] = ()
    persistence_timeout: int = 0  # seconds; 0 = not persistent
    persistence_netmask: str = ""  # "" = host (/32 or /128)
    one_packet: bool = False
    dests: tuple[Dest, ...] = ()
    name: str = ""  # who asked for it (namespace/name); for status only
    health: HealthCheck = HealthCheck()
    # NAT reply path by SNAT on the director: the director masquerades what it
    # forwards to this service's NAT dests, so replies come back to it whatever
    # the real server's routes are (needs net.ipv4.vs.conntrack=1). Agent-side
    # only: no IPVS attribute, not part of attrs().
    snat: bool = False
    # Seconds a dest that leaves the desired state is kept at weight 0 while it
    # still has active connections, before it is deleted (agent-side only).
    drain_timeout: int = DEFAULT_DRAIN_TIMEOUT

    @property
    def key(self) -> ServiceKey:
        if self.fwmark:
            return ServiceKey(self.family, "", "", 0, self.fwmark)
        return ServiceKey(self.family, self.protocol, self.address, self.port)

    @property
    def flags(self) -> int:
        bits = 0
        if self.persistence_timeout:
            bits |= K.SVC_F_PERSISTENT
        if self.one_packet:
            bits |= K.SVC_F_ONEPACKET
        for f in self.scheduler_flags:
            # "flag-N": a bit read from a foreign service whose scheduler has no name for it.
            bits |= K.SCHED_FLAGS[f][1] if f in K.SCHED_FLAGS else K.SVC_F_SCHED1 << (int(f[5:]) - 1)
        return bits

    @property
    def netmask(self) -> str:
        """The netmask the kernel stores: IPv4 dotted, IPv6 prefix length."""
        if self.persistence_netmask:
            return self.persistence_netmask
        return "255.255.255.255" if self.family == "ipv4" else "128"

    def attrs(self) -> tuple:
        """Everything `ipvsadm -E` can change; equality means no SetService."""
        return (self.scheduler, self.flags, self.persistence_timeout, self.netmask)


@dataclass(frozen=True)
class LocalAddress:
    """An address the node must hold: a director VIP or a backend VIP."""

    address: str  # canonical, no prefix
    device: str = DIRECTOR_DEVICE

    @property
    def prefixlen(self) -> int:
        return 128 if ":" in self.address else 32


@dataclass(frozen=True)
class BackendVip:
    """A VIP this node serves as a DR or TUN real server."""

    address: str
    method: str  # dr | tun
    tunnel_type: str = "ipip"
    # GUE: the UDP port the directors send to (the dest's tunnel port); the
    # agent opens it as a FOU/GUE receive port, without which the kernel
    # drops every GUE packet. 0: none opened (configured by hand).
    tunnel_port: int = 0
    # GRE with checksums ("csum"): the receiving GRE device must expect them
    # (icsum), else the kernel drops every checksummed packet as a CRC error.
    tunnel_csum: str = "none"

    @property
    def device(self) -> str:
        if self.method == "dr":
            return "lo"
        v6 = ":" in self.address
        # GUE carries an IPIP (IPv6: ip6ip6) packet: it lands on that tunnel's
        # device; IPv6 GRE is ip6_gre's (its fallback device ip6gre0).
        return {"ipip": "ip6tnl0" if v6 else "tunl0", "gre": "ip6gre0" if v6 else "gre0",
                "gue": "ip6tnl0" if v6 else "tunl0"}[self.tunnel_type]


@dataclass(frozen=True)
class ReplyRoute:
    """Backend side of a NAT service's reply path by policy routing.

    Replies this node sends from ``address`` (source port ``port``, protocol
    ``protocol``; port 0 / protocol "" = any) must leave through one of the
    directors in ``via`` instead of the default route, because IPVS NAT only
    un-translates replies that pass back through the director.
    """

    address: str
    port: int = 0
    protocol: str = "tcp"  # tcp | udp | sctp | "" (any: fwmark services)
    via: tuple[str, ...] = ()


@dataclass(frozen=True)
class DirectorGroup:
    """The directors that serve ``vips`` together (a VirtualService's
    directorSelector): one of them holds each VIP, the others keep the same
    IPVS services as hot standby. ``sync_id`` (1-255; 0: none) runs the
    kernel's connection sync daemon on ``device`` ("" : the uplink).

    ``gateway`` (NAT with ``natReturn: gateway``): the inside address the
    real servers use as their default gateway. It moves with the group's
    first VIP (whoever holds that VIP holds it too, and announces it), so the
    replies of the connections reach the director that has them. It is held
    on ``gateway_device``, "" : the device of the route to the real servers."""

    name: str
    members: tuple[str, ...] = ()
    vips: tuple[str, ...] = ()
    sync_id: int = 0
    device: str = ""
    preferred: str = ""
    fail_back: bool = False
    gateway: str = ""
    gateway_device: str = ""


@dataclass(frozen=True)
class NodeSpec:
    node: str = ""
    services: tuple[Service, ...] = ()
    director_addresses: tuple[LocalAddress, ...] = ()
    backend_vips: tuple[BackendVip, ...] = ()
    # The device that carries LVS traffic (ARP and rp_filter get scoped to it);
    # "" lets the agent pick the device of the default route.
    uplink: str = ""
    sysctls: tuple[tuple[str, str], ...] = ()
    # NAT reply path by policy routing on this (backend) node.
    reply_routes: tuple["ReplyRoute", ...] = ()
    # IPVS connection timeouts in seconds, ((name, seconds), ...) sorted by
    # name, names from TIMEOUT_NAMES; a name not listed keeps the kernel's.
    # Pairs, not a record, so the agent's merge of NodeStates treats them like
    # every other node-level field (concatenated, duplicates dropped).
    timeouts: tuple[tuple[str, int], ...] = ()
    # Director high availability: the groups this director belongs to. None:
    # this director holds every VIP it is given (a single director).
    director_groups: tuple[DirectorGroup, ...] = ()
    # Active-active directors: the BGP section (lvs_model.bgp), one part per
    # NodeState that carries one (the agent's merge concatenates them).
    bgp: tuple["BgpSpec", ...] = ()

    def service(self, key: ServiceKey) -> Service | None:
        return self._by_key.get(key)

    @functools.cached_property
    def _by_key(self) -> dict[ServiceKey, Service]:
        """First service per key (a lookup per status at 10k services must not scan)."""
        out: dict[ServiceKey, Service] = {}
        for s in self.services:
            out.setdefault(s.key, s)
        return out


# --------------------------------------------------------------------------
# Derived kernel settings
# --------------------------------------------------------------------------

def effective_sysctls(spec: NodeSpec, uplink: str) -> dict[str, str]:
    """Sysctls implied by the services and backend VIPs, plus explicit ones.

    ARP settings are scoped to the uplink (and the tunnel device), never to
    ``all``: a global arp_ignore broke CNIs and kube-proxy externalIPs
    (kubernetes#71555). rp_filter's effective value is max(all, dev), so
    TUN needs ``all`` at 0 too.
    """
    out: dict[str, str] = {}
    methods = {d.method for s in spec.services for d in s.dests}
    families = {s.family for s in spec.services if any(d.method == "nat" for d in s.dests)}
    if "nat" in methods:
        if "ipv4" in families:
            out["net.ipv4.ip_forward"] = "1"
        if "ipv6" in families:
            out["net.ipv6.conf.all.forwarding"] = "1"
    if spec.services:
        # Expire connections to removed dests, as kube-proxy does. The
        # defaults without an IPVSSettings: a declared value (spec.sysctls) wins.
        out["net.ipv4.vs.expire_nodest_conn"] = "1"
        out["net.ipv4.vs.expire_quiescent_template"] = "1"
    v4_backends = [v for v in spec.backend_vips if ":" not in v.address]
    if v4_backends and uplink:
        out[f"net.ipv4.conf.{uplink}.arp_ignore"] = "1"
        out[f"net.ipv4.conf.{uplink}.arp_announce"] = "2"
    for v in v4_backends:
        if v.method == "tun":
            out["net.ipv4.conf.all.rp_filter"] = "0"
            out[f"net.ipv4.conf.{v.device}.rp_filter"] = "0"
            if uplink:
                out[f"net.ipv4.conf.{uplink}.rp_filter"] = "0"
    from .bgp import implied_sysctls  # here: bgp.py imports this module
    out.update(implied_sysctls(spec))
    out.update(dict(spec.sysctls))
    if any(s.snat for s in spec.services):
        # SNAT on the director: IPVS keeps conntrack entries (net/netfilter's
        # NAT masquerades only tracked packets). After the declared values: an
        # IPVSSettings' conntrack: false must not break a service's SNAT.
        out["net.ipv4.vs.conntrack"] = "1"
    return out


def timeout_map(spec: NodeSpec) -> dict[str, int]:
    """The timeouts the spec declares (name -> seconds); the last pair of a
    name wins, as the merge of NodeStates keeps the order of its objects."""
    return dict(spec.timeouts)


def local_addresses(spec: NodeSpec) -> tuple[LocalAddress, ...]:
    """Every address the node must hold, director and backend side."""
    backend = tuple(LocalAddress(v.address, v.device) for v in spec.backend_vips)
    return tuple(dict.fromkeys(spec.director_addresses + backend))


# --------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------

def _canon_ip(value: Any, path: str, errors: list[FieldError], family: str | None = None) -> str:
    try:
        address = canonical(str(value))
    except ValueError:
        errors.append(FieldError(path, f"{value!r} is not an IP address"))
        return ""
    fam = "ipv6" if ":" in address else "ipv4"  # canonical text: only IPv6 has colons
    if family and fam != family:
        errors.append(FieldError(path, f"{address} is {fam} but the service is {family}"))
    return address


def unusable_address(address: str) -> str:
    """Why ``address`` can never be a VIP or a real server, or "".

    The complement of Go's ``IP.IsGlobalUnicast`` (and of the CRDs' CEL
    ``ip(x).isGlobalUnicast()``): loopback never leaves the node, link-local
    holds the clouds' metadata services (169.254.169.254), multicast and
    broadcast are not one host. Private ranges are fine.
    """
    if is_host(address):
        return ""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return f"{ip} is an IPv4-mapped IPv6 address: write the IPv4 address {ip.ipv4_mapped}"
    if ip.is_unspecified:
        return f"{ip} is the unspecified address, not a host"
    if ip.is_loopback:
        return f"{ip} is a loopback address: it never leaves the node"
    if ip.is_link_local:
        return f"{ip} is link-local (169.254.0.0/16, fe80::/10: where cloud metadata services live)"
    if ip.is_multicast:
        return f"{ip} is a multicast address, not one host"
    if ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{ip} is the broadcast address, not one host"
    return ""


def _host_ip(value: Any, path: str, errors: list[FieldError], family: str | None = None,
             what: str = "an address") -> str:
    """An address that must be one routable host (VIP, real server, director)."""
    if is_host(value) and (not family or family == ("ipv6" if ":" in value else "ipv4")):
        return value  # the common case, with nothing to report
    address = _canon_ip(value, path, errors, family)
    why = unusable_address(address) if address else ""
    if why:
        errors.append(FieldError(path, f"{why}; {what} must be a unicast address of a host"))
        return ""
    return address


def _int(d: Mapping, key: str, path: str, errors: list[FieldError], default: int,
         lo: int, hi: int, hint: str = "") -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(FieldError(f"{path}.{key}", f"must be an integer, got {value!r}"))
        return default
    if not lo <= value <= hi:
        errors.append(FieldError(f"{path}.{key}", f"{value} is out of range {lo}-{hi}{hint}"))
    return value


def _choice(d: Mapping, key: str, path: str, errors: list[FieldError], default: str,
            choices: Iterable[str]) -> str:
    value = d.get(key, default)
    choices = tuple(choices)
    if value not in choices:
        errors.append(FieldError(f"{path}.{key}", f"{value!r} is not one of {', '.join(choices)}"))
        return default
    return value


def _known_keys(d: Mapping, allowed: set[str], path: str, errors: list[FieldError]) -> None:
    for k in d:
        if k not in allowed:
            errors.append(FieldError(f"{path}.{k}", f"unknown field (known: {', '.join(sorted(allowed))})"))


def _addressed_entry(d: Any, keys: set[str], path: str, errors: list[FieldError]) -> bool:
    """Whether ``d`` is a mapping with an ``address`` (a dest, a BGP peer);
    its unknown keys are reported either way."""
    if not isinstance(d, Mapping):
        errors.append(FieldError(path, "must be a mapping"))
        return False
    _known_keys(d, keys, path, errors)
    if "address" not in d:
        errors.append(FieldError(f"{path}.address", "is required"))
        return False
    return True


_DEST_KEYS = {"address", "port", "weight", "method", "tunnel", "upperThreshold", "lowerThreshold"}
_SVC_KEYS = {"name", "family", "protocol", "address", "port", "fwmark", "scheduler",
             "schedulerFlags", "persistence", "onePacket", "dests", "healthCheck", "snat", "drainTimeout"}
_HC_KEYS = {"type", "port", "path", "expectedStatus", "interval", "timeout", "rise", "fall"}


def _number(d: Mapping, key: str, path: str, errors: list[FieldError], default: float,
            lo: float, hi: float) -> float:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors.append(FieldError(f"{path}.{key}", f"must be a number, got {value!r}"))
        return default
    if not lo <= value <= hi:
        errors.append(FieldError(f"{path}.{key}", f"{value} is out of range {lo:g}-{hi:g}"))
    return float(value)


def parse_health_check(d: Any, path: str, errors: list[FieldError]) -> HealthCheck:
    if not d:
        return HealthCheck()
    if not isinstance(d, Mapping):
        errors.append(FieldError(path, "must be a mapping"))
        return HealthCheck()
    _known_keys(d, _HC_KEYS, path, errors)
    kind = _choice(d, "type", path, errors, "tcp", ("none", "tcp", "http", "https"))
    hc_path = d.get("path", "/")
    if not isinstance(hc_path, str) or not hc_path.startswith("/"):
        errors.append(FieldError(f"{path}.path", f"{hc_path!r} must be an absolute URL path like /healthz"))
        hc_path = "/"
    interval = _number(d, "interval", path, errors, 5.0, MIN_HEALTH_INTERVAL, 3600)
    timeout = _number(d, "timeout", path, errors, 2.0, 0.05, 3600)
    if timeout > interval:
        errors.append(FieldError(f"{path}.timeout", f"{timeout:g}s is longer than interval {interval:g}s"))
    return HealthCheck(
        type=kind,
        port=_int(d, "port", path, errors, 0, 0, 65535),
        path=hc_path,
        expected_status=_int(d, "expectedStatus", path, errors, 200, 100, 599),
        interval=interval, timeout=timeout,
        rise=_int(d, "rise", path, errors, 2, 1, 100),
        fall=_int(d, "fall", path, errors, 3, 1, 100),
    )


def parse_dest(d: Any, path: str, svc: Service, errors: list[FieldError]) -> Dest | None:
    n = len(errors)
    if not _addressed_entry(d, _DEST_KEYS, path, errors):
        return None
    address = _host_ip(d["address"], f"{path}.address", errors, svc.family, "a real server")
    if address and address == svc.address:
        errors.append(FieldError(f"{path}.address", f"{address} is the virtual service's own address: "
                                 "a real server must be another host"))
    method = _choice(d, "method", path, errors, "nat", K.METHODS)
    default_port = svc.port
    port = _int(d, "port", path, errors, default_port, 0, 65535)
    if svc.fwmark and "port" not in d:
        port = 0
    weight = _int(d, "weight", path, errors, 1, 0, K.MAX_WEIGHT, " (0 drains the server)")
    upper = _int(d, "upperThreshold", path, errors, 0, 0, 2**31 - 1, " (0 means no limit)")
    lower = _int(d, "lowerThreshold", path, errors, 0, 0, 2**31 - 1)
    if upper and lower > upper:
        errors.append(FieldError(f"{path}.lowerThreshold",
                                 f"{lower} is above upperThreshold {upper}"))
    tunnel = d.get("tunnel") or {}
    ttype, tport, tcsum = "ipip", 0, "none"
    if tunnel:
        if method != "tun":
            errors.append(FieldError(f"{path}.tunnel", "only applies to method tun"))
        elif not isinstance(tunnel, Mapping):
            errors.append(FieldError(f"{path}.tunnel", "must be a mapping"))
        else:
            tpath = f"{path}.tunnel"
            _known_keys(tunnel, {"type", "port", "checksum"}, tpath, errors)
            ttype = _choice(tunnel, "type", tpath, errors, "ipip", K.TUNNEL_TYPES)
            tport = _int(tunnel, "port", tpath, errors, 0, 0, 65535)
            tcsum = _choice(tunnel, "checksum", tpath, errors, "none", K.TUNNEL_CSUM)
            if ttype == "gue" and not tport:
                errors.append(FieldError(f"{tpath}.port", "GUE needs the UDP port the real server decapsulates on"))
            if ttype != "gue" and tport:
                errors.append(FieldError(f"{tpath}.port", "only GUE tunnels have a port"))
            if ttype == "ipip" and tcsum != "none":
                errors.append(FieldError(f"{tpath}.checksum", "ipip has no checksum option; use gue or gre"))
    if method in ("dr", "tun") and not svc.fwmark and port != svc.port:
        errors.append(FieldError(
            f"{path}.port",
            f"{port} differs from the service port {svc.port}: only method nat can map ports "
            "(DR and TUN deliver the packet unchanged)"))
    if len(errors) != n:
        return None
    return Dest(address, port, weight, method, ttype, tport, tcsum, upper, lower)


def parse_service(d: Any, path: str, errors: list[FieldError]) -> Service | None:
    """Parse one service; None (and errors) if anything about it is wrong."""
    if not isinstance(d, Mapping):
        errors.append(FieldError(path, "must be a mapping"))
        return None
    n = len(errors)
    _known_keys(d, _SVC_KEYS, path, errors)
    fwmark = _int(d, "fwmark", path, errors, 0, 0, 2**32 - 1)
    family = _choice(d, "family", path, errors, "", ("", *K.FAMILIES))
    address, port, protocol = "", 0, d.get("protocol", "tcp")
    if fwmark:
        for k in ("address", "port", "protocol"):
            if k in d:
                errors.append(FieldError(
                    f"{path}.{k}",
                    "a firewall-mark service is matched by its mark alone: drop address, port and protocol"))
        family = family or "ipv4"
        protocol = ""
    else:
        if "address" not in d:
            errors.append(FieldError(f"{path}.address", "is required (or give fwmark)"))
            return None
        address = _canon_ip(d["address"], f"{path}.address", errors, family or None)
        if address:
            family = family or ("ipv6" if ":" in address else "ipv4")
            why = unusable_address(address)
            if why and ipaddress.ip_address(address).is_unspecified:  # an unspecified one is unusable
                errors.append(FieldError(
                    f"{path}.address",
                    f"{address} never matches a packet: IPVS matches the virtual address exactly. "
                    "Use the real VIP, or a firewall-mark service (fwmark) to catch many addresses"))
            elif why:
                errors.append(FieldError(f"{path}.address", f"{why}; a VIP must be a unicast address"))
        protocol = _choice(d, "protocol", path, errors, "tcp", K.PROTOCOLS)
        if "port" not in d:
            errors.append(FieldError(f"{path}.port", "is required (0 means all ports, with persistence)"))
        port = _int(d, "port", path, errors, 0, 0, 65535)
        if port == 0 and "port" in d and not (d.get("persistence") or {}).get("timeout"):
            errors.append(FieldError(f"{path}.port",
                                     "port 0 (all ports) needs persistence.timeout, as ipvsadm -p requires"))
    scheduler = _choice(d, "scheduler", path, errors, "wlc", K.SCHEDULERS)
    flags = d.get("schedulerFlags") or []
    if not isinstance(flags, list):
        errors.append(FieldError(f"{path}.schedulerFlags", "must be a list"))
        flags = []
    for i, f in enumerate(flags):
        if f not in K.SCHED_FLAGS:
            errors.append(FieldError(f"{path}.schedulerFlags[{i}]",
                                     f"{f!r} is not one of {', '.join(K.SCHED_FLAGS)}"))
        elif scheduler not in K.SCHED_FLAGS[f][0]:
            errors.append(FieldError(f"{path}.schedulerFlags[{i}]",
                                     f"{f} only applies to scheduler {K.SCHED_FLAGS[f][0][0]}, not {scheduler}"))
    persistence = d.get("persistence") or {}
    timeout, netmask = 0, ""
    if not isinstance(persistence, Mapping):
        errors.append(FieldError(f"{path}.persistence", "must be a mapping"))
    elif persistence:
        ppath = f"{path}.persistence"
        _known_keys(persistence, {"timeout", "netmask"}, ppath, errors)
        timeout = _int(persistence, "timeout", ppath, errors, 300, 1, K.MAX_TIMEOUT)
        if "netmask" in persistence:
            netmask = _parse_netmask(persistence["netmask"], family, f"{ppath}.netmask", errors)
    one_packet = d.get("onePacket", False)
    if not isinstance(one_packet, bool):
        errors.append(FieldError(f"{path}.onePacket", "must be true or false"))
        one_packet = False
    elif one_packet and protocol not in ("udp", ""):
        errors.append(FieldError(f"{path}.onePacket", "one-packet scheduling is for UDP services"))
    snat = d.get("snat", False)
    if not isinstance(snat, bool):
        errors.append(FieldError(f"{path}.snat", "must be true or false"))
        snat = False
    drain_timeout = _int(d, "drainTimeout", path, errors, DEFAULT_DRAIN_TIMEOUT, 0, MAX_DRAIN_TIMEOUT,
                         " (seconds; 0 deletes a removed real server at once)")
    health = parse_health_check(d.get("healthCheck"), f"{path}.healthCheck", errors)
    if health.type in ("http", "https") and protocol == "udp":
        errors.append(FieldError(f"{path}.healthCheck.type",
                                 f"{health.type} cannot check a UDP service; use tcp (a TCP port the real "
                                 "server also serves, with healthCheck.port) or none"))
    if health.type != "none" and fwmark and not health.port:
        errors.append(FieldError(f"{path}.healthCheck.port", "a firewall-mark service needs an explicit check port"))
    if len(errors) != n:
        return None
    svc = Service(family, protocol, address, port, fwmark, scheduler, tuple(flags), timeout,
                  netmask, one_packet, (), str(d.get("name", "")), health, snat, drain_timeout)
    dests_raw = d.get("dests") or []
    if not isinstance(dests_raw, list):
        errors.append(FieldError(f"{path}.dests", "must be a list"))
        return None
    dests: list[Dest] = []
    seen: set[DestKey] = set()
    for i, dd in enumerate(dests_raw):
        dest = parse_dest(dd, f"{path}.dests[{i}]", svc, errors)
        if dest is None:
            continue
        if dest.key in seen:
            errors.append(FieldError(f"{path}.dests[{i}]", f"{dest.key} is listed twice"))
            continue
        seen.add(dest.key)
        dests.append(dest)
    if len(errors) != n:
        return None
    return replace(svc, dests=tuple(dests))


def _parse_netmask(value: Any, family: str, path: str, errors: list[FieldError]) -> str:
    text = str(value)
    if family == "ipv6":
        try:
            plen = int(text.lstrip("/"))
        except ValueError:
            errors.append(FieldError(path, f"{value!r}: an IPv6 persistence netmask is a prefix length 1-128"))
            return ""
        if not 1 <= plen <= 128:
            errors.append(FieldError(path, f"{plen} is out of range 1-128"))
        return str(plen)
    try:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{text.lstrip('/')}").netmask)
    except ValueError:
        errors.append(FieldError(path, f"{value!r} is not an IPv4 netmask (e.g. 255.255.255.0 or 24)"))
        return ""


def parse_node_spec(data: Any) -> tuple[NodeSpec, list[FieldError]]:
    """Parse a node spec document; bad services are dropped and reported."""
    from .bgp import parse_bgp  # here: bgp.py imports this module
    errors: list[FieldError] = []
    if not isinstance(data, Mapping):
        return NodeSpec(), [FieldError("spec", "must be a mapping")]
    _known_keys(data, {"node", "services", "directorAddresses", "backendVips", "uplink", "sysctls",
                       "replyRoutes", "timeouts", "directorGroups", "bgp"},
                "spec", errors)
    services: list[Service] = []
    seen: dict[ServiceKey, int] = {}
    for i, raw in enumerate(data.get("services") or []):
        path = f"services[{i}]"
        svc = parse_service(raw, path, errors)
        if svc is None:
            continue
        if svc.key in seen:
            errors.append(FieldError(path, f"{svc.key} is already declared by services[{seen[svc.key]}]"))
            continue
        seen[svc.key] = i
        services.append(svc)
    director: list[LocalAddress] = []
    for i, raw in enumerate(data.get("directorAddresses") or []):
        path = f"directorAddresses[{i}]"
        raw = raw if isinstance(raw, Mapping) else {"address": raw}
        addr = _host_ip(raw.get("address"), f"{path}.address", errors, what="a VIP")
        device = raw.get("device", DIRECTOR_DEVICE)
        bad_device = device_error(device)
        if bad_device:
            errors.append(FieldError(f"{path}.device", bad_device))
        elif addr:
            director.append(LocalAddress(addr, device))
    backend: list[BackendVip] = []
    for i, raw in enumerate(data.get("backendVips") or []):
        path = f"backendVips[{i}]"
        if not isinstance(raw, Mapping):
            errors.append(FieldError(path, "must be a mapping"))
            continue
        n = len(errors)
        addr = _host_ip(raw.get("address"), f"{path}.address", errors, what="a VIP")
        method = _choice(raw, "method", path, errors, "tun", ("dr", "tun"))
        ttype = _choice(raw, "tunnelType", path, errors, "ipip", K.TUNNEL_TYPES)
        tport = _int(raw, "tunnelPort", path, errors, 0, 0, 65535)
        if tport and (method, ttype) != ("tun", "gue"):
            errors.append(FieldError(f"{path}.tunnelPort", "only GUE tunnels have a port"))
        tcsum = _choice(raw, "tunnelChecksum", path, errors, "none", ("none", "csum"))
        if tcsum != "none" and (method, ttype) != ("tun", "gre"):
            errors.append(FieldError(f"{path}.tunnelChecksum", "only GRE real servers are set up for checksums"))
        if len(errors) == n:
            backend.append(BackendVip(addr, method, ttype, tport, tcsum))
    routes: list[ReplyRoute] = []
    for i, raw in enumerate(data.get("replyRoutes") or []):
        path = f"replyRoutes[{i}]"
        if not isinstance(raw, Mapping):
            errors.append(FieldError(path, "must be a mapping"))
            continue
        n = len(errors)
        _known_keys(raw, {"address", "port", "protocol", "via"}, path, errors)
        addr = _host_ip(raw.get("address"), f"{path}.address", errors, what="a real server")
        fam = "ipv6" if ":" in addr else "ipv4"
        rport = _int(raw, "port", path, errors, 0, 0, 65535)
        rproto = _choice(raw, "protocol", path, errors, "tcp", ("", *K.PROTOCOLS))
        via_raw = raw.get("via") or []
        if not isinstance(via_raw, list) or not via_raw:
            errors.append(FieldError(f"{path}.via", "must list at least one director address"))
            via_raw = []
        via = tuple(_host_ip(v, f"{path}.via[{j}]", errors, fam if addr else None, "a director")
                    for j, v in enumerate(via_raw))
        if len(errors) == n:
            routes.append(ReplyRoute(addr, rport, rproto, via))
    sysctls = _parse_sysctls(data.get("sysctls"), errors)
    uplink = str(data.get("uplink", ""))
    if uplink and device_error(uplink):
        errors.append(FieldError("uplink", f"{device_error(uplink)}; it is ignored and the device of "
                                           "the default route is used"))
        uplink = ""
    spec = NodeSpec(
        node=str(data.get("node", "")),
        services=tuple(services),
        director_addresses=tuple(dict.fromkeys(director)),
        backend_vips=tuple(dict.fromkeys(backend)),
        uplink=uplink,
        sysctls=tuple(sorted(sysctls.items())),
        reply_routes=tuple(dict.fromkeys(routes)),
        timeouts=parse_timeouts(data.get("timeouts"), "timeouts", errors),
        director_groups=parse_director_groups(data.get("directorGroups"), errors),
        bgp=parse_bgp(data.get("bgp"), "bgp", errors),
    )
    return spec, errors


def parse_director_groups(raw: Any, errors: list[FieldError]) -> tuple[DirectorGroup, ...]:
    out: list[DirectorGroup] = []
    for i, g in enumerate(raw or []):
        path = f"directorGroups[{i}]"
        if not isinstance(g, Mapping):
            errors.append(FieldError(path, "must be a mapping"))
            continue
        n = len(errors)
        _known_keys(g, {"name", "members", "vips", "syncId", "device", "preferred", "failBack", "gateway",
                        "gatewayDevice"}, path, errors)
        members = g.get("members") or []
        if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
            errors.append(FieldError(f"{path}.members", "must be a list of node names"))
            members = []
        vips = tuple(_host_ip(v, f"{path}.vips[{j}]", errors, what="a VIP") for j, v in enumerate(g.get("vips") or []))
        sync_id = _int(g, "syncId", path, errors, 0, 0, 255)
        device = str(g.get("device", ""))
        if device and device_error(device):
            errors.append(FieldError(f"{path}.device", device_error(device)))
        gateway = _host_ip(g["gateway"], f"{path}.gateway", errors, what="a NAT gateway") if g.get("gateway") else ""
        if gateway and gateway in vips:
            errors.append(FieldError(f"{path}.gateway", f"{gateway} is a VIP of the group; the gateway is the "
                                     "inside address the real servers route through"))
        gateway_device = str(g.get("gatewayDevice", ""))
        if gateway_device and device_error(gateway_device):
            errors.append(FieldError(f"{path}.gatewayDevice", device_error(gateway_device)))
        if len(errors) == n:
            out.append(DirectorGroup(str(g.get("name", "")), tuple(sorted(set(members))), tuple(sorted(set(vips))),
                                     sync_id, device, str(g.get("preferred", "")), bool(g.get("failBack", False)),
                                     gateway, gateway_device))
    return tuple(dict.fromkeys(out))


def dump_director_group(g: DirectorGroup) -> dict:
    out: dict[str, Any] = {"name": g.name, "members": list(g.members), "vips": list(g.vips)}
    for key, value in (("syncId", g.sync_id), ("device", g.device), ("preferred", g.preferred),
                       ("failBack", g.fail_back), ("gateway", g.gateway), ("gatewayDevice", g.gateway_device)):
        if value:
            out[key] = value
    return out


def parse_timeouts(raw: Any, path: str, errors: list[FieldError]) -> tuple[tuple[str, int], ...]:
    """``{tcp, tcpFin, udp}`` in seconds as ``ipvsadm --set`` takes them; 0 or
    absent keeps the kernel's value. A bad entry is reported and not set."""
    if not raw:
        return ()
    if not isinstance(raw, Mapping):
        errors.append(FieldError(path, "must be a mapping of tcp, tcpFin, udp to seconds"))
        return ()
    _known_keys(raw, set(TIMEOUT_FIELDS), path, errors)
    out = []
    for key, name in TIMEOUT_FIELDS.items():
        n = len(errors)
        value = _int(raw, key, path, errors, 0, 0, MAX_IPVS_TIMEOUT, " seconds (0: keep the kernel's)")
        if value and len(errors) == n:
            out.append((name, value))
    return tuple(sorted(out))


def dump_timeouts(timeouts: Iterable[tuple[str, int]]) -> dict[str, int]:
    """The document form of timeouts (inverse of parse_timeouts)."""
    keys = {name: key for key, name in TIMEOUT_FIELDS.items()}
    return {keys[name]: value for name, value in timeouts}


def _parse_sysctls(raw: Any, errors: list[FieldError]) -> dict[str, str]:
    """The allowed entries; each refused one is reported (``sysctls.NAME``) and
    not written: the agent writes what a NodeState asks on the host."""
    if not raw:
        return {}
    if not isinstance(raw, Mapping):
        errors.append(FieldError("sysctls", "must be a mapping of name to value"))
        return {}
    out: dict[str, str] = {}
    for name, value in raw.items():
        why = sysctl_error(str(name), str(value))
        if why:
            errors.append(FieldError(f"sysctls.{name}", f"{why} (not written)"))
        else:
            out[str(name)] = str(value).strip()
    return out


def parse_node_spec_strict(data: Any) -> NodeSpec:
    spec, errors = parse_node_spec(data)
    if errors:
        raise SpecError(errors)
    return spec


def dump_service(s: Service) -> dict:
    """The document form of a service (inverse of parse_service)."""
    out: dict[str, Any] = {}
    if s.name:
        out["name"] = s.name
    if s.fwmark:
        out["fwmark"] = s.fwmark
        out["family"] = s.family
    else:
        out.update(protocol=s.protocol, address=s.address, port=s.port)
    out["scheduler"] = s.scheduler
    if s.scheduler_flags:
        out["schedulerFlags"] = list(s.scheduler_flags)
    if s.persistence_timeout:
        p: dict[str, Any] = {"timeout": s.persistence_timeout}
        if s.persistence_netmask:
            p["netmask"] = s.persistence_netmask
        out["persistence"] = p
    if s.one_packet:
        out["onePacket"] = True
    if s.snat:
        out["snat"] = True
    if s.drain_timeout != DEFAULT_DRAIN_TIMEOUT:
        out["drainTimeout"] = s.drain_timeout
    if s.health != HealthCheck():
        h = s.health
        out["healthCheck"] = {"type": h.type, "port": h.port, "path": h.path,
                              "expectedStatus": h.expected_status, "interval": h.interval,
                              "timeout": h.timeout, "rise": h.rise, "fall": h.fall}
    out["dests"] = [dump_dest(d) for d in s.dests]
    return out


def dump_dest(d: Dest) -> dict:
    out: dict[str, Any] = {"address": d.address, "port": d.port, "weight": d.weight, "method": d.method}
    if d.method == "tun" and (d.tunnel_type != "ipip" or d.tunnel_port or d.tunnel_csum != "none"):
        t: dict[str, Any] = {"type": d.tunnel_type}
        if d.tunnel_port:
            t["port"] = d.tunnel_port
        if d.tunnel_csum != "none":
            t["checksum"] = d.tunnel_csum
        out["tunnel"] = t
    if d.upper_threshold:
        out["upperThreshold"] = d.upper_threshold
    if d.lower_threshold:
        out["lowerThreshold"] = d.lower_threshold
    return out


def dump_node_spec(spec: NodeSpec) -> dict:
    out: dict[str, Any] = {}
    if spec.node:
        out["node"] = spec.node
    out["services"] = [dump_service(s) for s in spec.services]
    if spec.director_addresses:
        out["directorAddresses"] = [
            {"address": a.address, **({"device": a.device} if a.device != DIRECTOR_DEVICE else {})}
            for a in spec.director_addresses]
    if spec.backend_vips:
        out["backendVips"] = [
            {"address": v.address, "method": v.method,
             **({"tunnelType": v.tunnel_type} if v.tunnel_type != "ipip" else {}),
             **({"tunnelPort": v.tunnel_port} if v.tunnel_port else {}),
             **({"tunnelChecksum": v.tunnel_csum} if v.tunnel_csum != "none" else {})}
            for v in spec.backend_vips]
    if spec.uplink:
        out["uplink"] = spec.uplink
    if spec.sysctls:
        out["sysctls"] = dict(spec.sysctls)
    if spec.reply_routes:
        out["replyRoutes"] = [{"address": r.address, "port": r.port, "protocol": r.protocol,
                               "via": list(r.via)} for r in spec.reply_routes]
    if spec.timeouts:
        out["timeouts"] = dump_timeouts(spec.timeouts)
    if spec.director_groups:
        out["directorGroups"] = [dump_director_group(g) for g in spec.director_groups]
    if spec.bgp:
        from .bgp import dump_bgp  # here: bgp.py imports this module
        out["bgp"] = dump_bgp(spec.bgp)
    return out
