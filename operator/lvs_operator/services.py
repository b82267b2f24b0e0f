"""A VirtualService backed by a Kubernetes Service (pure): EndpointSlices in,
derived RealServer bodies out.

    derive_realservers(virtualservices, services, endpointslices, realservers) -> Derived

A VirtualService with ``spec.backend: {service, port | portName, weight}`` takes the
endpoints of that Service (same namespace) from its EndpointSlices
(discovery.k8s.io/v1, label ``kubernetes.io/service-name``; never the legacy
Endpoints) as real servers:

- a ready endpoint (not terminating) gets ``backend.weight`` (default 1);
- a terminating endpoint that is still serving gets weight 0: no new
  connections, its established ones stay (kube-proxy's terminating-endpoint
  rule, and IPVS's own drain);
- anything else (not ready, or terminating and not serving) is left out, and
  a dest leaving the NodeState is drained by the agent (weight 0 until its
  last connection ends or the VirtualService's ``drainTimeout``), exactly as a
  deleted RealServer is.

Each one is a RealServer object the operator owns (label
``lvs.kube-lvs.io/derived-from=service``, an ownerReference to the
VirtualService, so garbage collection takes them with it), so
``kubectl get realservers`` shows them with health and connections, and the
compiler treats them as any other RealServer (the pools' tenant limits apply).

The rule between a hand-written RealServer and a derived one: the hand-written
one wins. An endpoint whose address:port a user-made RealServer of the same
VirtualService already declares gets no derived RealServer, so the two never
fight over one dest (the user's weight, method and thresholds hold).

Above 1,000 dests a VirtualService's NodeStates are split in shards (the
compiler's ``shards``), so etcd's 1.5 MiB request limit no longer bounds a
service: one endpoint change rewrites one shard per director. MAX_ENDPOINTS
is the largest cluster Kubernetes supports, 150,000 Pods ("Considerations
for large clusters" in the Kubernetes documentation): no Service of Pods can
have more, and beyond it nobody has tested anything. Past it the lowest
addresses are taken and a TooManyEndpoints Warning event names the limit.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from lvs_model import channel as C
from lvs_model.addresses import sort_key

from .compiler import Event
from .crmodel import VirtualService, backend_errors

MAX_ENDPOINTS = 150_000  # Pods in the largest cluster Kubernetes supports

Ref = tuple[str, str]


@dataclass
class Derived:
    realservers: dict[Ref, dict] = field(default_factory=dict)  # (namespace, name) -> body
    events: list[Event] = field(default_factory=list)


def is_derived(obj: Mapping[str, Any], kind: str = C.DERIVED_FROM_SERVICE) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(C.LABEL_DERIVED_FROM) == kind and labels.get(C.LABEL_MANAGED_BY) == C.MANAGED_BY


def _ns_name(obj: Mapping[str, Any]) -> Ref:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def slice_service(obj: Mapping[str, Any]) -> Ref | None:
    """The (namespace, Service name) an EndpointSlice belongs to."""
    m = obj.get("metadata") or {}
    name = (m.get("labels") or {}).get(C.LABEL_SERVICE_NAME)
    return (m.get("namespace") or "", name) if name else None


def backed_by(virtualservices: Iterable[Mapping[str, Any]], service: Ref) -> set[Ref]:
    """The VirtualServices whose spec.backend names ``service``."""
    ns, name = service
    return {_ns_name(v) for v in virtualservices
            if _ns_name(v)[0] == ns and ((v.get("spec") or {}).get("backend") or {}).get("service") == name}


def _service_port(backend: Mapping[str, Any], service: Mapping[str, Any] | None,
                  slices: list[Mapping[str, Any]], protocol: str) -> tuple[str | None, int | None]:
    """(EndpointSlice port name, or None to match by number; number) for
    ``backend.port``: a Service port's name or number (its ``port``, not the
    target), as kube-proxy reads it. Without a Service object (or a port it
    lists), a name or number is matched against the slices' ports directly."""
    want = backend.get("portName") or backend.get("port")
    ports = [p for p in ((service or {}).get("spec") or {}).get("ports") or ()
             if (p.get("protocol") or "TCP").lower() == protocol]
    if want is None:
        if len(ports) == 1:
            return (ports[0].get("name") or "", None)
        names = {(p.get("name") or "") for s in slices for p in s.get("ports") or ()
                 if (p.get("protocol") or "TCP").lower() == protocol}
        return (names.pop(), None) if len(names) == 1 else (None, None)
    for p in ports:
        if want == p.get("name") or want == p.get("port"):
            return (p.get("name") or "", None)
    return (want, None) if isinstance(want, str) else (None, want)


def _endpoint_port(slice_: Mapping[str, Any], name: str | None, number: int | None, protocol: str) -> int | None:
    for p in slice_.get("ports") or ():
        if (p.get("protocol") or "TCP").lower() != protocol or p.get("port") is None:
            continue
        if (name is not None and (p.get("name") or "") == name) or (name is None and p.get("port") == number):
            return int(p["port"])
    return None


def endpoint_weight(endpoint: Mapping[str, Any], weight: int) -> int | None:
    """The weight an endpoint gets, or None when it is no real server:
    ready -> ``weight``; terminating but serving -> 0; else None. Unset
    conditions read as the API documents: ready unset is true, serving unset
    follows ready, terminating unset is false."""
    c = endpoint.get("conditions") or {}
    ready = c.get("ready") is not False
    serving = c.get("serving") if c.get("serving") is not None else ready
    terminating = c.get("terminating") is True
    if ready and not terminating:
        return weight
    if terminating and serving:
        return 0
    return None


def _family(vs: VirtualService) -> str:
    if vs.spec.get("address"):
        try:
            return "IPv6" if ipaddress.ip_address(vs.spec["address"]).version == 6 else "IPv4"
        except ValueError:
            return ""
    return "IPv6" if vs.spec.get("family") == "ipv6" else "IPv4"


def endpoints_of(vs: VirtualService, service: Mapping[str, Any] | None,
                 slices: list[Mapping[str, Any]]) -> dict[tuple[str, int], tuple[int, Mapping[str, Any]]]:
    """(address, port) -> (weight, endpoint) for every endpoint of the
    VirtualService's backend that is a real server. An endpoint listed in two
    slices (while the controller moves it) takes the higher weight."""
    backend = vs.backend or {}
    protocol = (vs.spec.get("protocol") or "tcp").lower()
    family = _family(vs)
    weight = int(backend.get("weight", 1))
    name, number = _service_port(backend, service, slices, protocol)
    if name is None and number is None:
        return {}
    out: dict[tuple[str, int], tuple[int, Mapping[str, Any]]] = {}
    for s in slices:
        if s.get("addressType") != family:
            continue  # FQDN slices and the other family
        port = _endpoint_port(s, name, number, protocol)
        if port is None:
            continue
        for ep in s.get("endpoints") or ():
            addresses = ep.get("addresses") or ()
            w = endpoint_weight(ep, weight)
            if not addresses or w is None:
                continue
            try:
                address = str(ipaddress.ip_address(addresses[0]))  # consumers use the first (API docs)
            except ValueError:
                continue
            key = (address, port)
            if key not in out or out[key][0] < w:
                out[key] = (w, ep)
    return out


def derived_realserver(vs: VirtualService, address: str, port: int, weight: int, endpoint: Mapping[str, Any],
                       service_name: str) -> dict:
    """The RealServer body for one endpoint, owned by the VirtualService."""
    spec: dict[str, Any] = {"virtualService": vs.meta.name, "address": address, "port": port, "weight": weight}
    node = endpoint.get("nodeName")
    if node and vs.nat_return == "policy-route":
        spec["nodeName"] = node  # that node's agent routes the endpoint's replies via the directors
    annotations = {C.ANNOTATION_SERVICE: service_name}
    ref = endpoint.get("targetRef") or {}
    if ref.get("kind") and ref.get("name"):
        annotations[f"{C.GROUP}/target"] = f"{ref['kind']}/{ref['name']}"
    return {
        "apiVersion": C.API_VERSION, "kind": C.REALSERVER_KIND,
        "metadata": {
            "name": C.derived_realserver_name(vs.meta.name, address, port), "namespace": vs.meta.namespace,
            "labels": {C.LABEL_DERIVED_FROM: C.DERIVED_FROM_SERVICE, C.LABEL_MANAGED_BY: C.MANAGED_BY,
                       C.LABEL_SERVICE: C.label_value(service_name)},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": C.API_VERSION, "kind": C.VIRTUALSERVICE_KIND,
                                 "name": vs.meta.name, "uid": vs.meta.uid, "controller": True,
                                 "blockOwnerDeletion": False}],
        },
        "spec": spec,
    }


def derive_realservers(virtualservices: Iterable[Mapping[str, Any]], services: Iterable[Mapping[str, Any]],
                       endpointslices: Iterable[Mapping[str, Any]],
                       realservers: Iterable[Mapping[str, Any]]) -> Derived:
    """Every derived RealServer the VirtualServices' backends call for.
    VirtualServices without a uid (not created yet) derive nothing: their
    RealServers could not name their owner."""
    by_service: dict[Ref, list[Mapping[str, Any]]] = {}
    for s in endpointslices:
        ref = slice_service(s)
        if ref:
            by_service.setdefault(ref, []).append(s)
    svc_objs = {_ns_name(s): s for s in services}
    by_vs: dict[Ref, list[Mapping[str, Any]]] = {}  # one pass over the RealServers, not one per VirtualService
    for r in realservers:
        by_vs.setdefault((_ns_name(r)[0], str((r.get("spec") or {}).get("virtualService") or "")), []).append(r)
    out = Derived()
    for obj in virtualservices:
        vs = VirtualService.of(obj)
        backend = vs.backend
        if backend is None or not vs.meta.uid or backend_errors(backend, vs.method):
            continue
        ref = (vs.meta.namespace, str(backend["service"]))
        default_port = vs.spec.get("port") or 0
        mine = by_vs.get(vs.meta.ref, [])
        claimed = {(str((r.get("spec") or {}).get("address")), int((r.get("spec") or {}).get("port") or default_port))
                   for r in mine if not is_derived(r)}
        eps = endpoints_of(vs, svc_objs.get(ref), sorted(by_service.get(ref, ()), key=_ns_name))
        keys = sorted((k for k in eps if k not in claimed), key=lambda k: (*sort_key(k[0]), k[1]))
        if len(keys) > MAX_ENDPOINTS:
            have = sum(1 for r in mine if is_derived(r))
            if have < MAX_ENDPOINTS:
                out.events.append(Event(
                    "VirtualService", vs.meta.namespace, vs.meta.name, vs.meta.uid, "Warning", "TooManyEndpoints",
                    f"Service {ref[1]} has {len(keys)} endpoints; a VirtualService takes the first "
                    f"{MAX_ENDPOINTS:,} by address (the Pods of the largest cluster Kubernetes supports): "
                    "split the Service, or give several VirtualServices a fwmark each"))
            keys = keys[:MAX_ENDPOINTS]
        for address, port in keys:
            weight, ep = eps[(address, port)]
            body = derived_realserver(vs, address, port, weight, ep, ref[1])
            out.realservers[_ns_name(body)] = body
    return out


__all__ = ["Derived", "MAX_ENDPOINTS", "backed_by", "derive_realservers", "endpoint_weight", "endpoints_of",
           "is_derived", "slice_service"]
