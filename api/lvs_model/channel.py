"""The push channel between operator and agents: names both sides must agree on.

The operator writes one ``NodeState`` object per (node, VirtualService) in its
own namespace; each node's agent lists/watches those labelled with its node
(``lvs.kube-lvs.io/node=<label_value(node)>``), merges their ``spec`` with
``parse_node_spec`` and reports through their ``status`` subresource.
See operator/README.md for the full contract.
"""
from __future__ import annotations

import hashlib
import re

GROUP = "lvs.kube-lvs.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kube-lvs"
DEFAULT_NAMESPACE = "kube-lvs-system"  # where NodeStates live (the operator's namespace)

NODESTATE_KIND, NODESTATE_PLURAL = "NodeState", "nodestates"
VIRTUALSERVICE_KIND, VIRTUALSERVICE_PLURAL = "VirtualService", "virtualservices"
REALSERVER_KIND, REALSERVER_PLURAL = "RealServer", "realservers"
VIPPOOL_KIND, VIPPOOL_PLURAL = "VIPPool", "vippools"
IPVSSETTINGS_KIND, IPVSSETTINGS_PLURAL = "IPVSSettings", "ipvssettings"

LABEL_NODE = f"{GROUP}/node"
LABEL_VS_NAMESPACE = f"{GROUP}/vs-namespace"
LABEL_VS_NAME = f"{GROUP}/vs-name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kube-lvs-operator"
# Full "namespace/name" of the VirtualService (labels may be shortened).
ANNOTATION_VIRTUALSERVICE = f"{GROUP}/virtualservice"
# A NodeState compiled from an IPVSSettings (cluster-scoped) instead: its name.
LABEL_IPVSSETTINGS = f"{GROUP}/ipvssettings"
ANNOTATION_IPVSSETTINGS = f"{GROUP}/ipvssettings"

# Objects the operator derives from Kubernetes Services (issue 19): RealServers
# from a VirtualService's spec.backend Service (value "service"), and
# VirtualServices from a LoadBalancer Service of LOADBALANCER_CLASS (value
# "loadbalancer"). The operator creates, updates and deletes only objects
# carrying this label and LABEL_MANAGED_BY; a hand-made object never has them.
LABEL_DERIVED_FROM = f"{GROUP}/derived-from"
DERIVED_FROM_SERVICE, DERIVED_FROM_LOADBALANCER = "service", "loadbalancer"
# On a derived object: the Service it follows (name, same namespace).
ANNOTATION_SERVICE = f"{GROUP}/service"
LABEL_SERVICE = f"{GROUP}/service"
# spec.loadBalancerClass of the LoadBalancer Services kube-lvs implements.
LOADBALANCER_CLASS = f"{GROUP}/lvs"
# Annotations a LoadBalancer Service of that class may carry.
ANNOTATION_LB_ADDRESS = f"{GROUP}/load-balancer-ip"  # the VIP it asks for
ANNOTATION_LB_SCHEDULER = f"{GROUP}/scheduler"
ANNOTATION_LB_NAT_RETURN = f"{GROUP}/nat-return"
# Kubernetes' own label naming an EndpointSlice's Service.
LABEL_SERVICE_NAME = "kubernetes.io/service-name"

# Health values a NodeState status reports per dest.
HEALTH_VALUES = ("Healthy", "Unhealthy", "Draining", "Unknown")

_LABEL_OK = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SUBDOMAIN_OK = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _digest(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def label_value(text: str) -> str:
    """``text`` as a label value: itself when valid (<= 63 chars), else a
    truncated form plus a hash of the whole (deterministic, so the agent can
    compute its node's selector value the same way)."""
    if len(text) <= 63 and _LABEL_OK.match(text):
        return text
    head = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:52].strip("-_.")
    return f"{head}-{_digest(text)}" if head else _digest(text)


def nodestate_name(node: str, vs_namespace: str, vs_name: str) -> str:
    """``<node>-<vs-namespace>-<vs-name>``, lower-cased; when that is not a
    valid object name (over 253 chars, odd characters) a truncated form plus a
    short hash of the three parts."""
    plain = f"{node}-{vs_namespace}-{vs_name}".lower()
    if len(plain) <= 253 and _SUBDOMAIN_OK.match(plain):
        return plain
    return hashed_nodestate_name(node, vs_namespace, vs_name)


def hashed_nodestate_name(node: str, vs_namespace: str, vs_name: str) -> str:
    """The always-hashed form (also used when two plain names collide)."""
    return _hashed(f"{node}-{vs_namespace}-{vs_name}", (node, vs_namespace, vs_name))


def _hashed(plain: str, parts: tuple[str, ...]) -> str:
    head = re.sub(r"[^a-z0-9.-]", "-", plain.lower())[:230].strip("-.")
    tail = _digest("\0".join(parts))
    return f"{head}-{tail}" if head else f"x-{tail}"


def settings_nodestate_name(node: str, settings: str) -> str:
    """``<node>.ipvssettings.<settings>``, lower-cased, for the NodeState an
    IPVSSettings object gives one node. The dots keep it apart from the
    per-VirtualService names (a namespace has none); when the plain form is
    not a valid object name, a truncated form plus a short hash."""
    plain = f"{node}.ipvssettings.{settings}".lower()
    if len(plain) <= 253 and _SUBDOMAIN_OK.match(plain):
        return plain
    return hashed_settings_nodestate_name(node, settings)


def hashed_settings_nodestate_name(node: str, settings: str) -> str:
    """The always-hashed form (also when the plain one is taken by another NodeState)."""
    return _hashed(f"{node}.ipvssettings.{settings}", (node, settings, "ipvssettings"))


def derived_realserver_name(vs_name: str, address: str, port: int) -> str:
    """``<vs>-<address with dashes>-<port>``, lower-cased, for the RealServer
    derived from one endpoint of a VirtualService's backend Service; a
    truncated form plus a hash when that is not a valid object name."""
    plain = f"{vs_name}-{address.replace(':', '-').replace('.', '-')}-{port}".lower()
    if len(plain) <= 253 and _SUBDOMAIN_OK.match(plain):
        return plain
    return _hashed(plain, (vs_name, address, str(port)))
