"""The CustomResourceDefinitions, generated from this module (the source of truth).

    python -m lvs_operator.crdgen            # writes crds/*.yaml
    python -m lvs_operator.crdgen --check    # exit 1 if crds/ differs

Enumerations and bounds come from ``lvs_model.kernel`` so the API server
and the engine model agree; every rule of the engine model that a schema or a
CEL expression can express is here, each with a message naming the field
(tests/unit/test_crd.py and tests/cluster/test_operator_validation.py check
them). Rules that need another object (a RealServer's port against its
VirtualService's, the VIP against the pools) cannot be CEL: the operator
reports them in status instead.

CEL's IP/CIDR library (``isIP``, ``ip()``, ``isCIDR``) needs Kubernetes 1.31+.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from lvs_model import channel as C
from lvs_model import kernel as K
from lvs_model.nodespec import (DEFAULT_DRAIN_TIMEOUT, MAX_DRAIN_TIMEOUT, MAX_IPVS_TIMEOUT, MIN_HEALTH_INTERVAL,
                                TIMEOUT_FIELDS)
from lvs_model.sysctls import DEVICE_RE, RESERVED_DEVICES, SYSCTL_NAME_RE, SYSCTL_VALUE_RE, allowed_names

from .crmodel import NAT_RETURN

MAX_I32 = 2**31 - 1
MAX_U32 = 2**32 - 1


def _rule(rule: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    r: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def _int(lo: int | None = None, hi: int | None = None, desc: str = "", default: int | None = None,
         fmt: str | None = None) -> dict:
    s: dict[str, Any] = {"type": "integer"}
    if fmt:
        s["format"] = fmt
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    if default is not None:
        s["default"] = default
    if desc:
        s["description"] = desc
    return s


def _str(desc: str = "", enum: tuple[str, ...] | list[str] | None = None, default: str | None = None,
         max_length: int | None = None, pattern: str | None = None) -> dict:
    s: dict[str, Any] = {"type": "string"}
    if desc:
        s["description"] = desc
    if enum:
        s["enum"] = list(enum)
    if default is not None:
        s["default"] = default
    if max_length is not None:
        s["maxLength"] = max_length
    if pattern:
        s["pattern"] = pattern
    return s


def _obj(props: dict, desc: str = "", required: list[str] | None = None, rules: list[dict] | None = None) -> dict:
    s: dict[str, Any] = {"type": "object"}
    if desc:
        s["description"] = desc
    if required:
        s["required"] = required
    s["properties"] = props
    if rules:
        s["x-kubernetes-validations"] = rules
    return s


DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _ip_field(desc: str, what: str, host_rule: bool = False) -> dict:
    s = _str(desc, max_length=45)
    rules = [_rule("isIP(self)", f"{what} must be an IPv4 or IPv6 address (no prefix length, no zone)")]
    if host_rule:
        # ip(x).isGlobalUnicast() is lvs_model.nodespec.unusable_address's
        # complement (the unspecified address has its own rule and message).
        rules.append(_rule("!isIP(self) || ip(self).isUnspecified() || ip(self).isGlobalUnicast()",
                           f"{what} must be a unicast address of one host: not loopback (127.0.0.0/8, ::1), "
                           "link-local (169.254.0.0/16, fe80::/10, where cloud metadata services live), "
                           "multicast or broadcast"))
    s["x-kubernetes-validations"] = rules
    return s


def label_selector(desc: str) -> dict:
    s = _obj({
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63},
                        "maxProperties": 64, "description": "label: value pairs that must all match"},
        "matchExpressions": {"type": "array", "maxItems": 32, "items": _obj({
            "key": _str(max_length=317),
            "operator": _str(enum=("In", "NotIn", "Exists", "DoesNotExist")),
            "values": {"type": "array", "maxItems": 64, "items": _str(max_length=63),
                       "x-kubernetes-list-type": "atomic"},
        }, required=["key", "operator"], rules=[
            _rule("self.operator in ['Exists', 'DoesNotExist'] ? !has(self.values) || size(self.values) == 0 "
                  ": has(self.values) && size(self.values) > 0",
                  "values must be non-empty for In/NotIn and empty for Exists/DoesNotExist")]),
            "x-kubernetes-list-type": "atomic"},
    }, desc)
    s["x-kubernetes-map-type"] = "atomic"
    return s


def tunnel_schema(where: str) -> dict:
    return _obj({
        "type": _str("Encapsulation: ipip (classic LVS-TUN), gue (ipip in UDP) or gre.",
                     enum=tuple(K.TUNNEL_TYPES), default="ipip"),
        "port": _int(1, 65535, "GUE only: the UDP port the real server decapsulates on."),
        "checksum": _str("GUE/GRE checksum: none, csum or remcsum.", enum=tuple(K.TUNNEL_CSUM)),
    }, f"Tunnel options for method tun{where}.", rules=[
        _rule("self.type != 'gue' || has(self.port)",
              "tunnel.port: GUE needs the UDP port the real server decapsulates on", ".port"),
        _rule("self.type == 'gue' || !has(self.port)", "tunnel.port: only GUE tunnels have a port", ".port"),
        _rule("self.type != 'ipip' || !has(self.checksum) || self.checksum == 'none'",
              "tunnel.checksum: ipip has no checksum option; use gue or gre", ".checksum"),
    ])


def health_check_schema() -> dict:
    return _obj({
        "type": _str("none, tcp (connect), http or https (GET, expect expectedStatus).",
                     enum=("none", "tcp", "http", "https"), default="tcp"),
        "port": _int(0, 65535, "Port to check; 0 = the real server's port."),
        "path": _str("URL path for http/https.", default="/", max_length=1024, pattern="^/"),
        "expectedStatus": _int(100, 599, "HTTP status that means healthy.", default=200),
        "interval": {"type": "number", "minimum": MIN_HEALTH_INTERVAL, "maximum": 3600, "default": 5,
                     "description": f"Seconds between checks (at least {MIN_HEALTH_INTERVAL:g})."},
        "timeout": {"type": "number", "minimum": 0.05, "maximum": 3600, "default": 2,
                    "description": "Seconds before a check fails; at most interval."},
        "rise": _int(1, 100, "Consecutive successes before a failed server gets its weight back.", default=2),
        "fall": _int(1, 100, "Consecutive failures before a server's weight goes to 0.", default=3),
    }, "How each director checks the real servers.", rules=[
        _rule("self.timeout <= self.interval",
              "healthCheck.timeout must not be longer than healthCheck.interval", ".timeout"),
    ])


def _netmask_regex() -> str:
    masks = []
    for plen in range(33):
        bits = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
        masks.append("[.]".join(str((bits >> s) & 255) for s in (24, 16, 8, 0)))
    return "^(" + "|".join(masks) + ")$"


_FAMILY_EXPR = ("(has(self.family) ? self.family : (has(self.address) && isIP(self.address) && "
                "ip(self.address).family() == 6 ? 'ipv6' : 'ipv4'))")


def condition_schema() -> dict:
    return {"type": "array", "maxItems": 16, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
            "description": "metav1.Condition list.",
            "items": _obj({
                "type": _str(max_length=316),
                "status": _str(enum=("True", "False", "Unknown")),
                "observedGeneration": _int(0, fmt="int64"),
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": _str(max_length=1024),
                "message": _str(max_length=32768),
            }, required=["type", "status", "lastTransitionTime", "reason", "message"])}


# --------------------------------------------------------------------------
# VirtualService
# --------------------------------------------------------------------------

def virtualservice_spec() -> dict:
    return _obj({
        "address": _ip_field("The virtual IP (VIP). Omit for a firewall-mark service.", "spec.address",
                             host_rule=True),
        "port": _int(0, 65535, "The virtual port; 0 = all ports (needs persistence)."),
        "protocol": _str("tcp (default), udp or sctp. Omit for a firewall-mark service.",
                         enum=tuple(K.PROTOCOLS)),
        "fwmark": _int(1, MAX_U32, "Firewall mark: the service catches packets with this mark "
                                   "(instead of address/port/protocol).", fmt="int64"),
        "family": _str("ipv4 or ipv6; follows spec.address, needed only for an ipv6 fwmark service.",
                       enum=tuple(K.FAMILIES)),
        "scheduler": _str("IPVS scheduler (ipvsadm -s). Default: wlc; mh for an active-active (BGP) "
                          "VirtualService, so every director maps a flow to the same real server.",
                          enum=K.SCHEDULERS),
        "schedulerFlags": {"type": "array", "maxItems": 4, "x-kubernetes-list-type": "set",
                           "description": "sh-fallback/sh-port with scheduler sh, mh-fallback/mh-port with mh.",
                           "items": _str(enum=tuple(K.SCHED_FLAGS))},
        "persistence": _obj({
            "timeout": _int(1, K.MAX_TIMEOUT, "Seconds a client sticks to its real server (ipvsadm -p).",
                            default=300),
            "netmask": _str("Clients grouped by this netmask share a real server (ipvsadm -M): "
                            "IPv4 dotted (255.255.255.0) or a prefix length; IPv6 a prefix length.",
                            max_length=16),
        }, "Persistence (sticky clients)."),
        "onePacket": {"type": "boolean", "description": "One-packet scheduling (ipvsadm -o), UDP only."},
        "method": _str("Default forwarding method of the real servers: nat (masquerading), dr (direct "
                       "routing) or tun (tunnelling).", enum=tuple(K.METHODS), default="nat"),
        "tunnel": tunnel_schema(" (the real servers' default)"),
        "natReturn": _str("How NAT replies return through the director: gateway (the real servers' route "
                          "already goes through the director, as in the classic setup; nothing configured), "
                          "policy-route (the agent on each RealServer's node routes replies from the real "
                          "server's address/port via the directors) or snat (the directors masquerade what "
                          "they forward; the real servers see the director's address).", enum=NAT_RETURN),
        "healthCheck": health_check_schema(),
        "drainTimeout": _int(0, MAX_DRAIN_TIMEOUT,
                             "Seconds a real server that is removed (its RealServer deleted) keeps its established "
                             f"connections at weight 0 before it is deleted; default {DEFAULT_DRAIN_TIMEOUT}, "
                             "0 deletes at once."),
        "directorSelector": label_selector("Which Nodes direct this service ({} = every node)."),
        "backend": _obj({
            "service": _str("Name of a Service in this namespace.", max_length=63),
            "port": _int(1, 65535, "The Service port by number (its port, not the target); give this or "
                                   "portName, or neither when the Service has one port."),
            "portName": _str("The Service port by name.", max_length=63),
            "weight": _int(0, K.MAX_WEIGHT, "Weight of each ready endpoint (a terminating one that still "
                                            "serves gets 0).", default=1),
        }, "A Service whose ready endpoints (from its EndpointSlices) are real servers, as RealServers the "
           "operator derives and owns; beside or instead of hand-written RealServers (one of those with the "
           "same address and port wins). NAT only.", required=["service"]),
    }, "A virtual service: what ipvsadm -A declares, plus which nodes direct it.",
        required=["directorSelector"], rules=[
        _rule("has(self.fwmark) || has(self.address)",
              "spec.address is required (or give spec.fwmark for a firewall-mark service)", ".address"),
        _rule("has(self.fwmark) || has(self.port)",
              "spec.port is required (0 means all ports, with spec.persistence)", ".port"),
        _rule("!has(self.fwmark) || !(has(self.address) || has(self.port) || has(self.protocol))",
              "spec.fwmark: a firewall-mark service is matched by its mark alone: drop spec.address, "
              "spec.port and spec.protocol", ".fwmark"),
        _rule("!has(self.address) || !isIP(self.address) || !ip(self.address).isUnspecified()",
              "spec.address: 0.0.0.0 and :: never match a packet (IPVS matches the virtual address exactly); "
              "use the real VIP, or a firewall-mark service (spec.fwmark) to catch many addresses", ".address"),
        _rule("!has(self.family) || !has(self.address) || !isIP(self.address) || "
              "ip(self.address).family() == (self.family == 'ipv6' ? 6 : 4)",
              "spec.family does not match spec.address", ".family"),
        _rule("!has(self.port) || self.port != 0 || has(self.persistence)",
              "spec.port 0 (all ports) needs spec.persistence.timeout, as ipvsadm -p requires", ".port"),
        _rule("!has(self.schedulerFlags) || self.schedulerFlags.all(f, "
              "f.startsWith((has(self.scheduler) ? self.scheduler : 'wlc') + '-'))",
              "spec.schedulerFlags: sh-fallback and sh-port need scheduler sh, mh-fallback and mh-port "
              "need scheduler mh", ".schedulerFlags"),
        _rule("!has(self.onePacket) || !self.onePacket || has(self.fwmark) || "
              "(has(self.protocol) && self.protocol == 'udp')",
              "spec.onePacket: one-packet scheduling is for UDP services (spec.protocol: udp)", ".onePacket"),
        _rule("!has(self.natReturn) || !has(self.method) || self.method == 'nat'",
              "spec.natReturn only applies to method nat (with dr and tun the real servers answer the client "
              "directly): drop it", ".natReturn"),
        _rule("!has(self.healthCheck) || !has(self.healthCheck.type) || "
              "!(self.healthCheck.type in ['http', 'https']) || !has(self.protocol) || self.protocol != 'udp'",
              "spec.healthCheck.type http and https cannot check a UDP service: use tcp (with "
              "healthCheck.port) or none", ".healthCheck.type"),
        _rule("!has(self.tunnel) || (has(self.method) && self.method == 'tun')",
              "spec.tunnel only applies to method tun", ".tunnel"),
        _rule("!has(self.backend) || !has(self.method) || self.method == 'nat'",
              "spec.backend: a Service's endpoints take method nat only: dr and tun need the VIP inside each "
              "endpoint's network namespace, which the CNI would have to configure", ".backend"),
        _rule("!has(self.backend) || !has(self.backend.port) || !has(self.backend.portName)",
              "spec.backend: give port or portName, not both", ".backend"),
        _rule("!has(self.persistence) || !has(self.persistence.netmask) || (" + _FAMILY_EXPR + " == 'ipv6' ? "
              r"self.persistence.netmask.matches('^/?([1-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$') : "
              r"(self.persistence.netmask.matches('^/?([0-9]|[12][0-9]|3[0-2])$') || "
              f"self.persistence.netmask.matches('{_netmask_regex()}')))",
              "spec.persistence.netmask: IPv4 takes a netmask like 255.255.255.0 or a prefix length 0-32; "
              "IPv6 a prefix length 1-128", ".persistence.netmask"),
        _rule("!has(self.fwmark) || !has(self.healthCheck) || self.healthCheck.type == 'none' || "
              "(has(self.healthCheck.port) && self.healthCheck.port != 0)",
              "spec.healthCheck.port: a firewall-mark service needs an explicit check port", ".healthCheck.port"),
    ])


def virtualservice_status() -> dict:
    return _obj({
        "observedGeneration": _int(0, fmt="int64"),
        "protocol": _str("tcp, udp, sctp or fwmark", max_length=8),
        "scheduler": _str("The scheduler in use (spec.scheduler or its default)", max_length=8),
        "service": _str("The IPVS service key, e.g. tcp:192.168.0.30:80 or fwm:100", max_length=80),
        "directors": _str("ready/total directors", max_length=24),
        "directorsReady": _int(0),
        "directorsTotal": _int(0),
        "realServers": _str("healthy/total real servers", max_length=24),
        "realServersHealthy": _int(0),
        "realServersTotal": _int(0),
        "activeDirector": _str("The director(s) holding the VIP (failover: active-standby)", max_length=600),
        "announcedBy": _str("The directors announcing the VIP over BGP (failover: active-active)", max_length=4096),
        "announcements": {"type": "array", "maxItems": 1024, "items": _obj({
            "node": _str(max_length=253), "announced": {"type": "boolean"}, "reason": _str(max_length=64),
            "message": _str(max_length=1024)}),
            "description": "Per director: announced or withdrawn over BGP and why, as its agent reports."},
        "conditions": condition_schema(),
    })


# --------------------------------------------------------------------------
# RealServer
# --------------------------------------------------------------------------

def realserver_spec() -> dict:
    return _obj({
        "virtualService": _str("Name of the VirtualService (same namespace) this server serves.",
                               max_length=253, pattern=DNS_SUBDOMAIN),
        "address": _ip_field("The real server's IP address (RIP); inside the spec.realServerAddresses of the "
                             "VIPPool admitting the VirtualService, where it sets them.", "spec.address",
                             host_rule=True),
        "port": _int(0, 65535, "Port; defaults to the service's. A different port only with method nat."),
        "weight": _int(0, K.MAX_WEIGHT, "Scheduling weight; 0 drains (no new connections).", default=1),
        "method": _str("Forwarding method override (default: the VirtualService's).", enum=tuple(K.METHODS)),
        "tunnel": tunnel_schema(" (override)"),
        "upperThreshold": _int(0, MAX_I32, "Connection limit (ipvsadm -x); 0 = none."),
        "lowerThreshold": _int(0, MAX_I32, "Connections below which an overloaded server gets traffic "
                                           "again (ipvsadm -y)."),
        "nodeName": _str("The Kubernetes node this server runs on: its agent configures the backend side "
                         "(VIP on tunl0/lo, ARP, rp_filter; the NAT reply route).",
                         max_length=253, pattern=DNS_SUBDOMAIN),
    }, "A real server: what ipvsadm -a declares.", required=["virtualService", "address"], rules=[
        _rule("!has(self.lowerThreshold) || !has(self.upperThreshold) || self.upperThreshold == 0 || "
              "self.lowerThreshold <= self.upperThreshold",
              "spec.lowerThreshold must not be above spec.upperThreshold", ".lowerThreshold"),
        _rule("!has(self.tunnel) || !has(self.method) || self.method == 'tun'",
              "spec.tunnel only applies to method tun", ".tunnel"),
    ])


def realserver_status() -> dict:
    per_director = _obj({
        "node": _str(max_length=253),
        "health": _str(enum=C.HEALTH_VALUES),
        "weight": _int(0),
        "activeConns": _int(0, fmt="int64"),
        "inactiveConns": _int(0, fmt="int64"),
    })
    return _obj({
        "observedGeneration": _int(0, fmt="int64"),
        "port": _int(0, 65535, "Effective port."),
        "method": _str("Effective forwarding method.", enum=tuple(K.METHODS)),
        "health": _str("Healthy, Unhealthy, Draining or Unknown (over all directors).", enum=C.HEALTH_VALUES),
        "activeConns": _int(0, fmt="int64", desc="Active connections, summed over the directors."),
        "inactiveConns": _int(0, fmt="int64", desc="Inactive connections, summed over the directors."),
        "directors": {"type": "array", "maxItems": 1024, "items": per_director,
                      "x-kubernetes-list-type": "atomic", "description": "Per-director report."},
        "conditions": condition_schema(),
    })


# --------------------------------------------------------------------------
# VIPPool
# --------------------------------------------------------------------------

def _address_ranges(field_: str, desc: str) -> dict:
    item = _str("A CIDR (10.0.0.0/24), one address, or a range first-last (10.0.0.10-10.0.0.20).",
                max_length=91)
    item["x-kubernetes-validations"] = [_rule(
        "self.contains('-') ? (self.split('-').size() == 2 && isIP(self.split('-')[0]) && "
        "isIP(self.split('-')[1]) && ip(self.split('-')[0]).family() == ip(self.split('-')[1]).family()) "
        ": (isCIDR(self) || isIP(self))",
        f"spec.{field_}: each entry is a CIDR, an IP address, or a range first-last of one family")]
    return {"type": "array", "maxItems": 256, "items": item, "x-kubernetes-list-type": "atomic",
            "description": desc}


def vippool_spec() -> dict:
    return _obj({
        "addresses": _address_ranges("addresses", "The VIPs this pool hands out."),
        "realServerAddresses": _address_ranges(
            "realServerAddresses", "Tenant limit: where the real servers of VirtualServices whose VIP this pool "
            "admits may be. Unset: anywhere."),
        "backendNodeSelector": label_selector(
            "Tenant limit: the Nodes a RealServer's spec.nodeName may name (its agent then adds the VIP, ARP "
            "and rp_filter settings or a reply route there). Unset: any Node."),
        "directorNodeSelector": label_selector(
            "Tenant limit: the Nodes that may direct VirtualServices whose VIP this pool admits (their "
            "spec.directorSelector is narrowed to these). Unset: any Node."),
        "fwmarks": {"type": "array", "maxItems": 64, "x-kubernetes-list-type": "atomic",
                    "description": "Firewall marks this pool hands out (first..last, inclusive).",
                    "items": _obj({"first": _int(1, MAX_U32, fmt="int64"), "last": _int(1, MAX_U32, fmt="int64")},
                                  required=["first", "last"], rules=[
                        _rule("self.first <= self.last", "spec.fwmarks: first must not be above last")])},
        "namespaces": {"type": "array", "maxItems": 1024, "x-kubernetes-list-type": "set",
                       "items": _str(max_length=63, pattern=DNS_LABEL),
                       "description": "Namespaces allowed to use the pool."},
        "namespaceSelector": label_selector("Namespaces allowed to use the pool, by label ({} = all)."),
    }, "Addresses and marks that VirtualServices in the chosen namespaces may use.", rules=[
        _rule("has(self.addresses) || has(self.fwmarks)",
              "spec.addresses or spec.fwmarks must list what the pool hands out"),
        _rule("has(self.namespaces) || has(self.namespaceSelector)",
              "spec.namespaces or spec.namespaceSelector must say which namespaces may use the pool"),
    ])


# --------------------------------------------------------------------------
# NodeState (the push channel; written by the operator, read by one agent)
# --------------------------------------------------------------------------

def nodestate_spec() -> dict:
    """Structural mirror of the node-spec document (no defaults, no enums:
    the agent validates it with parse_node_spec and reports per service)."""
    dest = _obj({
        "address": _str(), "port": _int(), "weight": _int(), "method": _str(),
        "tunnel": _obj({"type": _str(), "port": _int(), "checksum": _str()}),
        "upperThreshold": _int(), "lowerThreshold": _int(),
    })
    service = _obj({
        "name": _str(), "family": _str(), "protocol": _str(), "address": _str(), "port": _int(),
        "fwmark": _int(fmt="int64"), "scheduler": _str(),
        "schedulerFlags": {"type": "array", "items": _str()},
        "persistence": _obj({"timeout": _int(), "netmask": _str()}),
        "onePacket": {"type": "boolean"}, "snat": {"type": "boolean"}, "drainTimeout": _int(),
        "healthCheck": _obj({"type": _str(), "port": _int(), "path": _str(), "expectedStatus": _int(),
                             "interval": {"type": "number"}, "timeout": {"type": "number"},
                             "rise": _int(), "fall": _int()}),
        "dests": {"type": "array", "items": dest},
    })
    return _obj({
        "node": _str("The node whose agent programs this."),
        "services": {"type": "array", "items": service},
        # One VirtualService's VIP per NodeState; the bound keeps the device rule's CEL cost in budget.
        "directorAddresses": {"type": "array", "maxItems": 16,
                              "items": _obj({"address": _str(), "device": _device("directorAddresses[].device")})},
        "backendVips": {"type": "array", "items": _obj({"address": _str(), "method": _str(),
                                                         "tunnelType": _str(), "tunnelPort": _int(0, 65535),
                                                         "tunnelChecksum": _str()})},
        "replyRoutes": {"type": "array", "items": _obj({"address": _str(), "port": _int(), "protocol": _str(),
                                                         "via": {"type": "array", "items": _str()}})},
        "uplink": _device("uplink"),
        "sysctls": {"type": "object", "maxProperties": 64,
                    "additionalProperties": _str(pattern=SYSCTL_VALUE_RE, max_length=2),
                    "description": "Only the settings kube-lvs manages: " + ", ".join(allowed_names()) + ".",
                    "x-kubernetes-validations": [_rule(
                        "self.all(k, k.matches('" + SYSCTL_NAME_RE + "'))",
                        "spec.sysctls: only " + ", ".join(allowed_names()) + " may be set")]},
        "timeouts": timeouts_schema(),
        "directorGroups": {"type": "array", "items": _obj({
            "name": _str(), "members": {"type": "array", "items": _str()},
            "vips": {"type": "array", "items": _str()}, "syncId": _int(0, 255), "device": _str(),
            "preferred": _str(), "failBack": {"type": "boolean"},
            "gateway": _str("NAT (natReturn gateway): the real servers' default gateway; the holder of the "
                            "group's first VIP holds it too and announces it."),
            "gatewayDevice": _str("The device the gateway is held on; absent: the device of the route to the "
                                  "real servers.")})},
        "bgp": _obj({
            "routerId": _str(), "localAsn": _int(fmt="int64"),
            "peers": {"type": "array", "items": _obj({
                "address": _str(), "asn": _int(fmt="int64"), "localAsn": _int(fmt="int64"), "port": _int(),
                "holdTime": _int(), "keepaliveTime": _int(), "passwordFile": _str(), "bfd": {"type": "boolean"}})},
            "vips": {"type": "array", "items": _str()}, "drain": {"type": "boolean"},
        }, "Active-active: this director's BGP peers and the VIPs it may announce; drain: announce nothing."),
    }, "One node's share of one VirtualService (or of one IPVSSettings), in the node-spec document format.",
        required=["node"])


def timeouts_schema() -> dict:
    return _obj({k: _int(0, MAX_IPVS_TIMEOUT, f"Seconds (ipvsadm --set's {name}); 0 or absent: the kernel's.")
                 for k, name in TIMEOUT_FIELDS.items()},
                "IPVS connection timeouts, as `ipvsadm --set TCP TCPFIN UDP`: tcp (established TCP), tcpFin "
                "(TCP after a FIN), udp; in seconds. 0 or absent keeps the kernel's value (900, 120, 300 "
                "unless somebody changed them).")


# --------------------------------------------------------------------------
# IPVSSettings
# --------------------------------------------------------------------------

def _flag(desc: str) -> dict:
    return {"type": "boolean", "description": desc}


def ipvssettings_spec() -> dict:
    return _obj({
        "nodeSelector": label_selector(
            "The nodes (a director group) these settings are for; {} selects every node. A node two "
            "IPVSSettings select takes the oldest's; the other says so in its Conflict condition."),
        "timeouts": timeouts_schema(),
        "connReuseMode": _int(0, 3, "net.ipv4.vs.conn_reuse_mode (0-3); absent: the kernel's (1)."),
        "expireNodestConn": _flag("net.ipv4.vs.expire_nodest_conn; absent: true on a node that directs "
                                  "a service (kube-lvs's default, as kube-proxy's)."),
        "expireQuiescentTemplate": _flag("net.ipv4.vs.expire_quiescent_template; absent: true on a node "
                                         "that directs a service (kube-lvs's default)."),
        "sloppyTcp": _flag("net.ipv4.vs.sloppy_tcp: take over TCP connections mid-flow (a director that "
                           "did not see the SYN); absent: the kernel's (false)."),
        "sloppySctp": _flag("net.ipv4.vs.sloppy_sctp, the same for SCTP; absent: the kernel's (false)."),
        "conntrack": _flag("net.ipv4.vs.conntrack: keep netfilter connection tracking for IPVS traffic; "
                           "absent: the kernel's (false). Always on where a natReturn: snat service is "
                           "directed (SNAT needs it), whatever this says."),
    }, "Kernel-wide IPVS settings for the selected nodes. What is left out stays as without any "
       "IPVSSettings: the agent's defaults, else the kernel's value.", required=["nodeSelector"])


def nodes_status(nodes: str) -> dict:
    """The status of an admins' object that applies to some nodes (IPVSSettings, BGPPeer)."""
    return _obj({
        "observedGeneration": _int(0, fmt="int64"),
        "nodes": {"type": "array", "items": _str(max_length=253), "description": nodes},
        "nodeCount": _int(0),
        "conditions": condition_schema(),
    }, "Written by the operator.")


def ipvssettings_status() -> dict:
    return nodes_status("The nodes these settings apply to (selected, not taken by an older one).")


def _device(field_: str) -> dict:
    s = _str("A network interface name.", max_length=15, pattern=DEVICE_RE)
    s["x-kubernetes-validations"] = [_rule("!(self in " + repr(list(RESERVED_DEVICES)) + ")",
                                           f"spec.{field_}: name one interface (eth0), not all or default")]
    return s


def nodestate_status() -> dict:
    return _obj({
        "observedGeneration": _int(0, fmt="int64"),
        "appliedAt": {"type": "string", "format": "date-time"},
        "services": {"type": "array", "items": _obj({
            "key": _str(), "programmed": {"type": "boolean"}, "error": _str()})},
        "dests": {"type": "array", "items": _obj({
            "service": _str(), "address": _str(), "port": _int(),
            "health": _str(enum=C.HEALTH_VALUES), "weight": _int(),
            "activeConns": _int(fmt="int64"), "inactiveConns": _int(fmt="int64")})},
        "activeDirectors": {"type": "array", "items": _obj({
            "address": _str(), "director": _str(), "held": {"type": "boolean"},
            "since": _str("When this director took the VIP over (RFC 3339, its clock).")})},
        "bgp": _obj({
            "vips": {"type": "array", "items": _obj({
                "address": _str(), "announced": {"type": "boolean"}, "reason": _str(), "message": _str()})},
            "peers": {"type": "array", "items": _obj({
                "address": _str(), "asn": _int(fmt="int64"), "state": _str(), "info": _str(), "since": _str()})},
            "problems": {"type": "array", "items": _str()},
        }, "Active-active: each VIP of this NodeState announced or withdrawn and why, each BGP session."),
        "conditions": condition_schema(),
    }, "Written by the node's agent.")


# --------------------------------------------------------------------------
# BGPPeer (active-active directors' routers)
# --------------------------------------------------------------------------

def _asn(desc: str) -> dict:
    return _int(desc=desc, fmt="int64")


def bgppeer_spec() -> dict:
    from lvs_model.bgp import DEFAULT_HOLD_TIME, MAX_ASN, MAX_HOLD_TIME, MIN_HOLD_TIME
    key = _str("TCP-MD5 password: a key of the Secret mounted into the agent's pod (the agent reads the file of "
               "that name; the operator never reads the Secret). Absent: no password.",
               max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    key["x-kubernetes-validations"] = [_rule("!(self in ['.', '..'])",
                                             "spec.passwordSecretKey must be a key of the Secret, not . or ..")]
    hold = DEFAULT_HOLD_TIME
    return _obj({
        "peerAddress": _ip_field("The router's address (usually the top-of-rack switch), directly reachable.",
                                 "spec.peerAddress", host_rule=True),
        "peerASN": _asn("The router's AS number."),
        "myASN": _asn("The directors' AS number towards this router (one for all directors: equal paths)."),
        "port": _int(1, 65535, "The router's BGP port; absent: 179."),
        "holdTime": _int(0, MAX_HOLD_TIME, f"Seconds without a message before the router drops a director's "
                                           f"routes; absent: {hold}. 0 (never) is refused."),
        "keepaliveTime": _int(1, MAX_HOLD_TIME, "Seconds between keepalives, below holdTime; absent: a third "
                                                "of holdTime."),
        "passwordSecretKey": key,
        "bfd": _flag("Run BFD with this router (sub-second failure detection where the router runs it)."),
        "nodeSelector": label_selector("The directors that peer with this router; absent: every director of an "
                                       "active-active VirtualService."),
    }, "A BGP router the active-active directors announce VIPs to (MetalLB's BGPPeer, for kube-lvs).",
        required=["peerAddress", "peerASN", "myASN"], rules=[
        _rule(f"self.peerASN >= 1 && self.peerASN <= {MAX_ASN}",
              f"spec.peerASN must be an AS number, 1-{MAX_ASN} (0 is reserved)", ".peerASN"),
        _rule(f"self.myASN >= 1 && self.myASN <= {MAX_ASN}",
              f"spec.myASN must be an AS number, 1-{MAX_ASN} (0 is reserved)", ".myASN"),
        _rule(f"!has(self.holdTime) || self.holdTime >= {MIN_HOLD_TIME}",
              f"spec.holdTime must be at least {MIN_HOLD_TIME} seconds (BGP's minimum); 0 (never time out) is "
              "refused: a director that dies must be dropped", ".holdTime"),
        _rule(f"!has(self.keepaliveTime) || self.keepaliveTime < (has(self.holdTime) ? self.holdTime : {hold})",
              f"spec.keepaliveTime must be below spec.holdTime (absent: {hold} s)", ".keepaliveTime"),
    ])


def bgppeer_status() -> dict:
    return nodes_status("The directors that peer with it (of active-active VirtualServices).")


# --------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------

def _col(name: str, path: str, type_: str = "string", priority: int = 0, desc: str = "") -> dict:
    c: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path}
    if priority:
        c["priority"] = priority
    if desc:
        c["description"] = desc
    return c


AGE = _col("Age", ".metadata.creationTimestamp", "date")


def crd(kind: str, plural: str, short: str, scope: str, spec: dict, status: dict, columns: list[dict],
        desc: str, singular: str = "") -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{C.GROUP}",
                     "labels": {"app.kubernetes.io/name": "kube-lvs", "app.kubernetes.io/part-of": "kube-lvs"}},
        "spec": {
            "group": C.GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular or kind.lower(),
                      "shortNames": [short], "categories": [C.CATEGORY]},
            "scope": scope,
            "versions": [{
                "name": C.VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": _obj({
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec, "status": status,
                }, desc, required=["spec"])},
            }],
        },
    }


def all_crds() -> dict[str, dict]:
    """File name -> CRD."""
    return {
        "virtualservices.yaml": crd(
            C.VIRTUALSERVICE_KIND, C.VIRTUALSERVICE_PLURAL, "lvsvc", "Namespaced",
            virtualservice_spec(), virtualservice_status(), [
                _col("VIP", ".spec.address"), _col("Port", ".spec.port", "integer"),
                _col("Protocol", ".status.protocol"), _col("Scheduler", ".status.scheduler"),
                _col("Method", ".spec.method"), _col("Directors", ".status.directors", desc="ready/total"),
                _col("RealServers", ".status.realServers", desc="healthy/total"),
                _col("Active", ".status.activeDirector", priority=1, desc="the director holding the VIP"),
                _col("Announced", ".status.announcedBy", priority=1, desc="the directors announcing it over BGP"),
                _col("FWMark", ".spec.fwmark", "integer", priority=1),
                _col("Ready", '.status.conditions[?(@.type=="Ready")].status', priority=1),
                _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
                AGE],
            "An IPVS virtual service (LVS). Fully qualified: virtualservices.lvs.kube-lvs.io "
            "(Istio has a kind of the same name)."),
        "realservers.yaml": crd(
            C.REALSERVER_KIND, C.REALSERVER_PLURAL, "lvsrs", "Namespaced",
            realserver_spec(), realserver_status(), [
                _col("VirtualService", ".spec.virtualService"), _col("Address", ".spec.address"),
                _col("Port", ".status.port", "integer"), _col("Weight", ".spec.weight", "integer"),
                _col("Method", ".status.method"), _col("Health", ".status.health"),
                _col("Active", ".status.activeConns", "integer"),
                _col("Inactive", ".status.inactiveConns", "integer"),
                _col("Node", ".spec.nodeName", priority=1),
                AGE],
            "A real server behind a VirtualService."),
        "vippools.yaml": crd(
            C.VIPPOOL_KIND, C.VIPPOOL_PLURAL, "vippool", "Cluster",
            vippool_spec(), _obj({"conditions": condition_schema()}), [
                _col("Addresses", ".spec.addresses"), _col("FWMarks", ".spec.fwmarks", priority=1),
                _col("Namespaces", ".spec.namespaces"), AGE],
            "Admin-owned: which VIPs and firewall marks which namespaces may use."),
        "ipvssettings.yaml": crd(
            C.IPVSSETTINGS_KIND, C.IPVSSETTINGS_PLURAL, "lvsset", "Cluster",
            ipvssettings_spec(), ipvssettings_status(), [
                _col("Nodes", ".status.nodeCount", "integer"),
                _col("TCP", ".spec.timeouts.tcp", "integer"), _col("TCPFIN", ".spec.timeouts.tcpFin", "integer"),
                _col("UDP", ".spec.timeouts.udp", "integer"),
                _col("Programmed", '.status.conditions[?(@.type=="Programmed")].status'),
                _col("Conflict", '.status.conditions[?(@.type=="Conflict")].status', priority=1),
                AGE],
            "Admin-owned: kernel-wide IPVS settings (connection timeouts, net.ipv4.vs sysctls) for a "
            "group of nodes.", singular="ipvssetting"),
        "bgppeers.yaml": crd(
            "BGPPeer", "bgppeers", "lvspeer", "Cluster", bgppeer_spec(), bgppeer_status(), [
                _col("Address", ".spec.peerAddress"), _col("PeerASN", ".spec.peerASN", "integer"),
                _col("MyASN", ".spec.myASN", "integer"), _col("Nodes", ".status.nodeCount", "integer"),
                _col("Accepted", '.status.conditions[?(@.type=="Accepted")].status'),
                _col("BFD", ".spec.bfd", "boolean", priority=1),
                _col("HoldTime", ".spec.holdTime", "integer", priority=1),
                AGE],
            "Admin-owned: a BGP router the active-active directors announce their VIPs to."),
        "nodestates.yaml": crd(
            C.NODESTATE_KIND, C.NODESTATE_PLURAL, "lvsnode", "Namespaced",
            nodestate_spec(), nodestate_status(), [
                _col("Node", ".spec.node"),
                _col("VirtualService", f".metadata.annotations.{C.GROUP.replace('.', chr(92) + '.')}/virtualservice"),
                _col("Programmed", '.status.conditions[?(@.type=="Programmed")].status'),
                _col("Generation", ".metadata.generation", "integer", priority=1),
                _col("Observed", ".status.observedGeneration", "integer", priority=1),
                AGE],
            "Per-node desired state written by the kube-lvs operator, one per (node, VirtualService); "
            "the node's agent reports through status."),
    }


HEADER = "# Generated by `python -m lvs_operator.crdgen` from operator/lvs_operator/crdgen.py. Do not edit.\n"


def render(obj: dict) -> str:
    return HEADER + yaml.safe_dump(obj, sort_keys=False, width=110, default_flow_style=False)


def default_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "crds"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_operator.crdgen", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_dir(), help="directory (default: the repo's crds/)")
    ap.add_argument("--check", action="store_true", help="only compare, exit 1 when a file differs")
    args = ap.parse_args(argv)
    files = {name: render(obj) for name, obj in all_crds().items()}
    files["kustomization.yaml"] = ("# Generated by `python -m lvs_operator.crdgen`. Do not edit.\n"
                                   "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                                   "resources:\n" + "".join(f"- {n}\n" for n in sorted(all_crds())))
    stale = []
    for name, text in files.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("out of date (run python -m lvs_operator.crdgen): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
