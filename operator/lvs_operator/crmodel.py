"""Typed views of the custom resources and their conversion to the engine model.

The CR field names and values are the node-spec document's own
(``lvs_model.nodespec``): a VirtualService's spec *is* a service document
plus the fields only the operator needs (``method``/``tunnel`` defaults for
its RealServers, ``directorSelector``, ``natReturn``), and a RealServer's spec
*is* a dest document plus ``virtualService`` and ``nodeName``. So the engine
model's parse_service/parse_dest validate them with the same messages and the
field paths come out as ``spec.port``, ``spec.tunnel.port`` and so on.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Mapping, Self

from lvs_model.errors import FieldError
from lvs_model.nodespec import Dest, Service, parse_dest, parse_service, parse_timeouts
from lvs_model.sysctls import sysctl_error

from .ha_groups import ACTIVE_ACTIVE, LABEL_FAILOVER

# Fields of a VirtualService spec that are not part of the service document.
VS_OPERATOR_FIELDS = ("method", "tunnel", "directorSelector", "natReturn", "backend")
# Fields of a RealServer spec that are not part of the dest document.
RS_OPERATOR_FIELDS = ("virtualService", "nodeName")

NAT_RETURN = ("gateway", "policy-route", "snat")
DEFAULT_METHOD = "nat"


@dataclass(frozen=True)
class Meta:
    namespace: str
    name: str
    uid: str = ""
    created: str = ""  # creationTimestamp, RFC 3339 (sorts as text)
    generation: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def age_key(self) -> tuple[str, str, str]:
        """Oldest first: creationTimestamp, then namespace/name."""
        return (self.created or "9999", self.namespace, self.name)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> "Meta":
        m = obj.get("metadata") or {}
        return cls(namespace=m.get("namespace") or "", name=m.get("name") or "", uid=m.get("uid") or "",
                   created=m.get("creationTimestamp") or "", generation=int(m.get("generation") or 0),
                   labels=dict(m.get("labels") or {}), resource_version=m.get("resourceVersion") or "")


@dataclass(frozen=True)
class CustomResource:
    """A namespaced or cluster-scoped custom resource: its metadata, spec and status."""

    meta: Meta
    spec: Mapping[str, Any]
    status: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Self:
        return cls(Meta.of(obj), dict(obj.get("spec") or {}), dict(obj.get("status") or {}))


@dataclass(frozen=True)
class VirtualService(CustomResource):
    @property
    def method(self) -> str:
        return self.spec.get("method") or DEFAULT_METHOD

    @property
    def tunnel(self) -> Mapping[str, Any]:
        return self.spec.get("tunnel") or {}

    @property
    def director_selector(self) -> Mapping[str, Any] | None:
        return self.spec.get("directorSelector")

    @property
    def nat_return(self) -> str:
        return self.spec.get("natReturn") or "gateway"

    @property
    def backend(self) -> Mapping[str, Any] | None:
        """``spec.backend``: the Service whose endpoints are real servers, or None."""
        b = self.spec.get("backend")
        return b if isinstance(b, Mapping) else None

    def service_doc(self) -> dict[str, Any]:
        doc = {k: v for k, v in self.spec.items() if k not in VS_OPERATOR_FIELDS}
        doc["name"] = f"{self.meta.namespace}/{self.meta.name}"
        if "scheduler" not in doc:  # mh under ECMP: a flow another director gets keeps its real server
            doc["scheduler"] = "mh" if self.meta.labels.get(LABEL_FAILOVER) == ACTIVE_ACTIVE else "wlc"
        return doc

    def to_service(self, errors: list[FieldError]) -> Service | None:
        """The service without dests, or None with errors at ``spec.*`` paths."""
        n = len(errors)
        for k in self.spec:
            if k == "dests":
                errors.append(FieldError("spec.dests", "real servers are RealServer objects, not a list here"))
        if self.method not in ("nat", "dr", "tun"):
            errors.append(FieldError("spec.method", f"{self.method!r} is not one of nat, dr, tun"))
        if self.nat_return not in NAT_RETURN:
            errors.append(FieldError("spec.natReturn", f"{self.nat_return!r} is not one of {', '.join(NAT_RETURN)}"))
        elif "natReturn" in self.spec and self.method != "nat":
            errors.append(FieldError("spec.natReturn", f"only applies to method nat: with {self.method} the real "
                                     "servers answer the client directly; drop it"))
        if self.tunnel and self.method != "tun":
            errors.append(FieldError("spec.tunnel", "only applies to method tun"))
        if "backend" in self.spec:
            errors.extend(backend_errors(self.spec.get("backend"), self.method))
        if self.director_selector is None:
            errors.append(FieldError("spec.directorSelector", "is required ({} selects every node)"))
        svc = parse_service(self.service_doc(), "spec", errors)
        if svc is not None and self.tunnel and self.method == "tun":
            # Validate the default tunnel once, as a dest would carry it.
            probe = {"address": svc.address or ("::1" if svc.family == "ipv6" else "127.0.0.1"),
                     "method": "tun", "tunnel": dict(self.tunnel)}
            sub: list[FieldError] = []
            parse_dest(probe, "spec", svc, sub)
            errors.extend(e for e in sub if e.path.startswith("spec.tunnel"))
        return svc if len(errors) == n else None


def backend_errors(backend: Any, method: str) -> list[FieldError]:
    """What is wrong with a ``spec.backend`` (a Service's endpoints as real
    servers). Only NAT: DR and TUN need the VIP inside each endpoint's own
    network namespace (a pod's), which no agent configures there; that is the
    CNI's side, so such a VirtualService would black-hole its traffic."""
    out: list[FieldError] = []
    if not isinstance(backend, Mapping):
        return [FieldError("spec.backend", "must be an object {service, port or portName, weight}")]
    if not isinstance(backend.get("service"), str) or not backend.get("service"):
        out.append(FieldError("spec.backend.service", "is required: the name of a Service in this namespace"))
    port, name = backend.get("port"), backend.get("portName")
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
        out.append(FieldError("spec.backend.port", f"{port!r} is not a port number (1-65535)"))
    if name is not None and not (isinstance(name, str) and name):
        out.append(FieldError("spec.backend.portName", f"{name!r} is not a Service port name"))
    if port is not None and name is not None:
        out.append(FieldError("spec.backend", "give port or portName, not both"))
    weight = backend.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 65535:
        out.append(FieldError("spec.backend.weight", f"{weight!r} is not a weight (0-65535)"))
    if method != "nat":
        out.append(FieldError("spec.backend", f"a Service's endpoints take method nat only, not {method}: "
                              "dr and tun need the VIP inside each endpoint's network namespace, which the "
                              "CNI would have to configure; use nat (natReturn snat or policy-route), or "
                              "hand-written RealServers for hosts you configure yourself"))
    return out


@dataclass(frozen=True)
class RealServer(CustomResource):
    @property
    def virtual_service(self) -> str:
        return str(self.spec.get("virtualService") or "")

    @property
    def node_name(self) -> str:
        return str(self.spec.get("nodeName") or "")

    def dest_doc(self, vs: VirtualService) -> dict[str, Any]:
        """The dest document: the RealServer's fields, method and tunnel
        inherited from the VirtualService where the RealServer has none."""
        doc = {k: v for k, v in self.spec.items() if k not in RS_OPERATOR_FIELDS}
        method = doc.setdefault("method", vs.method)
        if method == "tun" and "tunnel" not in doc and vs.tunnel:
            doc["tunnel"] = dict(vs.tunnel)
        return doc

    def to_dest(self, vs: VirtualService, svc: Service, errors: list[FieldError]) -> Dest | None:
        return parse_dest(self.dest_doc(vs), "spec", svc, errors)


# --------------------------------------------------------------------------
# VIP pools
# --------------------------------------------------------------------------

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address_range(text: str) -> tuple[IPAddr, IPAddr]:
    """``10.0.0.0/24``, ``10.0.0.7`` or ``10.0.0.10-10.0.0.20`` -> (first, last)."""
    text = str(text).strip()
    if "-" in text:
        a, b = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
        if a.version != b.version:
            raise ValueError(f"{text}: both ends must be the same family")
        if int(a) > int(b):
            raise ValueError(f"{text}: the first address is above the last")
        return a, b
    net = ipaddress.ip_network(text, strict=False)
    return net[0], net[-1]


def _parse_ranges(texts: Any, field_: str, errors: list[str]) -> tuple[tuple[IPAddr, IPAddr], ...]:
    ranges = []
    for i, text in enumerate(texts or []):
        try:
            ranges.append(parse_address_range(text))
        except ValueError as e:
            errors.append(f"{field_}[{i}]: {e}")
    return tuple(ranges)


def _in_ranges(ranges: tuple[tuple[IPAddr, IPAddr], ...], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(a.version == ip.version and int(a) <= int(ip) <= int(b) for a, b in ranges)


# The tenant limits a pool may set, by spec field; each one unset leaves that
# aspect open (as pools were before these limits existed).
TENANT_LIMITS = ("realServerAddresses", "backendNodeSelector", "directorNodeSelector")


@dataclass(frozen=True)
class VIPPool:
    """What the namespaces a pool is open to may use.

    Besides the VIPs (``addresses``, ``fwmarks``), the tenant limits of the
    VirtualServices whose VIP the pool admits: where their real servers may be
    (``realServerAddresses``), which nodes a RealServer's ``nodeName`` may name
    (``backendNodeSelector``) and which nodes may direct them
    (``directorNodeSelector``). None means the pool does not limit it.
    """

    name: str
    ranges: tuple[tuple[IPAddr, IPAddr], ...]
    fwmarks: tuple[tuple[int, int], ...]
    namespaces: frozenset[str]
    namespace_selector: Mapping[str, Any] | None
    created: str = ""
    errors: tuple[str, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    real_server_ranges: tuple[tuple[IPAddr, IPAddr], ...] | None = None
    backend_node_selector: Mapping[str, Any] | None = None
    director_node_selector: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> "VIPPool":
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        errors: list[str] = []
        ranges = _parse_ranges(spec.get("addresses"), "spec.addresses", errors)
        rs_ranges = (_parse_ranges(spec["realServerAddresses"], "spec.realServerAddresses", errors)
                     if spec.get("realServerAddresses") is not None else None)
        marks = []
        for i, r in enumerate(spec.get("fwmarks") or []):
            first, last = int(r.get("first", 0)), int(r.get("last", r.get("first", 0)))
            if first > last:
                errors.append(f"spec.fwmarks[{i}]: first {first} is above last {last}")
            else:
                marks.append((first, last))
        return cls(name=meta.get("name") or "", ranges=ranges, fwmarks=tuple(marks),
                   namespaces=frozenset(spec.get("namespaces") or ()),
                   namespace_selector=spec.get("namespaceSelector"),
                   created=meta.get("creationTimestamp") or "", errors=tuple(errors),
                   status=dict(obj.get("status") or {}), real_server_ranges=rs_ranges,
                   backend_node_selector=spec.get("backendNodeSelector"),
                   director_node_selector=spec.get("directorNodeSelector"))

    def open_to(self, namespace: str, ns_labels: Mapping[str, str]) -> bool:
        if namespace in self.namespaces:
            return True
        if self.namespace_selector is not None:
            labels = {"kubernetes.io/metadata.name": namespace, **dict(ns_labels)}
            return selector_matches(self.namespace_selector, labels)
        return False

    def covers_address(self, address: str) -> bool:
        return _in_ranges(self.ranges, address)

    def covers_fwmark(self, mark: int) -> bool:
        return any(a <= mark <= b for a, b in self.fwmarks)

    def allows_real_server(self, address: str) -> bool:
        return self.real_server_ranges is None or _in_ranges(self.real_server_ranges, address)

    def allows_backend(self, labels: Mapping[str, str]) -> bool:
        return self.backend_node_selector is None or selector_matches(self.backend_node_selector, labels)

    def allows_director(self, labels: Mapping[str, str]) -> bool:
        return self.director_node_selector is None or selector_matches(self.director_node_selector, labels)

    @property
    def open_limits(self) -> tuple[str, ...]:
        """The tenant limits this pool leaves unset."""
        values = (self.real_server_ranges, self.backend_node_selector, self.director_node_selector)
        return tuple(f for f, v in zip(TENANT_LIMITS, values) if v is None)


# --------------------------------------------------------------------------
# Nodes and label selectors
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    name: str
    labels: Mapping[str, str]
    addresses: tuple[tuple[str, str], ...]  # (type, address) from status.addresses

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> "Node":
        meta = obj.get("metadata") or {}
        addrs = tuple((a.get("type", ""), a.get("address", ""))
                      for a in (obj.get("status") or {}).get("addresses") or [])
        return cls(meta.get("name") or "", dict(meta.get("labels") or {}), addrs)

    def address(self, family: str) -> str:
        """The node's InternalIP (else ExternalIP) of ``family``, or ""."""
        for kind in ("InternalIP", "ExternalIP"):
            for t, a in self.addresses:
                if t != kind:
                    continue
                try:
                    ip = ipaddress.ip_address(a)
                except ValueError:
                    continue
                if (ip.version == 6) == (family == "ipv6"):
                    return str(ip)
        return ""


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics: None selects nothing, {} everything."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


# --------------------------------------------------------------------------
# Kernel-wide IPVS settings
# --------------------------------------------------------------------------

# IPVSSettings spec field -> the net.ipv4.vs sysctl it declares (all in
# lvs_model.sysctls' allowlist). Booleans are written 1/0.
SETTINGS_SYSCTLS = {
    "connReuseMode": "net.ipv4.vs.conn_reuse_mode",
    "expireNodestConn": "net.ipv4.vs.expire_nodest_conn",
    "expireQuiescentTemplate": "net.ipv4.vs.expire_quiescent_template",
    "sloppyTcp": "net.ipv4.vs.sloppy_tcp",
    "sloppySctp": "net.ipv4.vs.sloppy_sctp",
    "conntrack": "net.ipv4.vs.conntrack",
}
SETTINGS_FIELDS = ("nodeSelector", "timeouts", *SETTINGS_SYSCTLS)


@dataclass(frozen=True)
class IPVSSettings(CustomResource):
    """Kernel-wide IPVS settings (cluster-scoped) for the nodes its
    ``nodeSelector`` matches: a director group. What it leaves out stays as
    without it (the agent's defaults, the kernel's values)."""

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def node_selector(self) -> Mapping[str, Any] | None:
        return self.spec.get("nodeSelector")

    def node_fields(self, errors: list[FieldError]) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
        """(timeouts, sysctls) as the node-spec document's fields, with errors
        at ``spec.*`` paths; a bad field is reported and left out."""
        for k in self.spec:
            if k not in SETTINGS_FIELDS:
                errors.append(FieldError(f"spec.{k}", f"unknown field (known: {', '.join(SETTINGS_FIELDS)})"))
        if not isinstance(self.node_selector, Mapping):
            errors.append(FieldError("spec.nodeSelector", "is required ({} selects every node)"))
        timeouts = parse_timeouts(self.spec.get("timeouts"), "spec.timeouts", errors)
        sysctls = []
        for key, name in SETTINGS_SYSCTLS.items():
            if key not in self.spec:
                continue
            raw = self.spec[key]
            value = str(int(raw)) if isinstance(raw, (bool, int)) else str(raw)
            why = sysctl_error(name, value) if key == "connReuseMode" or isinstance(raw, bool) else \
                f"{raw!r} must be true or false"
            if why:
                errors.append(FieldError(f"spec.{key}", why))
            else:
                sysctls.append((name, value))
        return timeouts, tuple(sorted(sysctls))
