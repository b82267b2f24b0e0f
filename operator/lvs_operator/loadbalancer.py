"""LoadBalancer Services on LVS directors (pure): Services, pools and
VirtualServices in; VIPs, derived VirtualServices, Service statuses and
events out.

    plan_loadbalancers(services, virtualservices, pools, namespaces) -> LBPlan

A Service of ``type: LoadBalancer`` whose ``spec.loadBalancerClass`` is
``lvs.kube-lvs.io/lvs`` (channel.LOADBALANCER_CLASS) is ours; any other class,
or none, is left alone (MetalLB's and the cloud controllers' rule). Ours gets:

- a VIP from a VIPPool open to its namespace: the one it already has (a VIP
  is never moved while it is still allowed), else the one its
  ``lvs.kube-lvs.io/load-balancer-ip`` annotation asks for when a pool open
  to the namespace covers it and nobody uses it, else the first free address
  in pool order (pools by name, addresses in their spec order; an IPv4
  CIDR's network and broadcast addresses are skipped). A VIP is "used" when
  any VirtualService has it as spec.address: a LoadBalancer VIP is never
  shared;
- one VirtualService per port, ``<service>-<port name or number>``, owned by
  the Service (ownerReference, label ``lvs.kube-lvs.io/derived-from=
  loadbalancer``), NAT, backed by the Service itself (``spec.backend``), so
  its endpoints become its RealServers (services.py). The directors: the
  pool's ``directorNodeSelector`` when it sets one, else Nodes labelled
  ``lvs.kube-lvs.io/director=true``. natReturn ``snat`` unless the
  ``lvs.kube-lvs.io/nat-return`` annotation says ``policy-route`` or
  ``gateway`` (pods answer through their node's default route, so only snat
  works without help: see operator/README.md); scheduler from
  ``lvs.kube-lvs.io/scheduler`` (default wlc);
- ``status.loadBalancer.ingress: [{ip, ipMode: Proxy}]`` (Proxy: kube-proxy
  must not short-cut the VIP on the nodes, the directors carry it) and a
  condition ``lvs.kube-lvs.io/Allocated`` saying how, or why not (NoPool,
  AddressNotAllowed, AddressInUse, PoolExhausted, NameTaken), with a Warning
  event when it turns False.

A Service no longer ours (deleted, or its type changed away from
LoadBalancer) gets nothing: the reconciler deletes its derived VirtualServices
(and garbage collection their RealServers), and its status loses the ingress
this module had written and the condition.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

from lvs_model import channel as C

from .compiler import Event, condition
from .crmodel import Meta, VIPPool

CONDITION = f"{C.GROUP}/Allocated"
DEFAULT_DIRECTORS = {"matchLabels": {f"{C.GROUP}/director": "true"}}
NAT_RETURNS = ("snat", "policy-route", "gateway")

Ref = tuple[str, str]


@dataclass
class LBPlan:
    virtualservices: dict[Ref, dict] = field(default_factory=dict)  # derived VirtualService bodies
    service_status: dict[Ref, dict] = field(default_factory=dict)  # Service -> {loadBalancer, conditions}
    events: list[Event] = field(default_factory=list)
    vips: dict[Ref, str] = field(default_factory=dict)  # Service -> its VIP


def is_ours(service: Mapping[str, Any], default_class: bool = False) -> bool:
    """A LoadBalancer Service of our class; with ``default_class`` (the
    admin made kube-lvs the cluster's default load balancer) also one that
    names no class. Another class is never ours."""
    spec = service.get("spec") or {}
    cls = spec.get("loadBalancerClass")
    return spec.get("type") == "LoadBalancer" and (cls == C.LOADBALANCER_CLASS or (default_class and not cls))


def _ref(obj: Mapping[str, Any]) -> Ref:
    m = obj.get("metadata") or {}
    return (m.get("namespace") or "", m.get("name") or "")


def owner_service(vs: Mapping[str, Any]) -> Ref | None:
    """The Service a derived VirtualService belongs to, or None for any other."""
    m = vs.get("metadata") or {}
    labels = m.get("labels") or {}
    if labels.get(C.LABEL_DERIVED_FROM) != C.DERIVED_FROM_LOADBALANCER or labels.get(C.LABEL_MANAGED_BY) != C.MANAGED_BY:
        return None
    name = (m.get("annotations") or {}).get(C.ANNOTATION_SERVICE)
    return (m.get("namespace") or "", name) if name else None


def pool_addresses(pool: Mapping[str, Any]) -> Iterator[str]:
    """A pool's addresses in spec order, lazily (an IPv6 /64 is never listed
    whole); an IPv4 CIDR's network and broadcast addresses are skipped."""
    for text in (pool.get("spec") or {}).get("addresses") or ():
        text = str(text).strip()
        try:
            if "-" in text:
                a, b = (ipaddress.ip_address(x.strip()) for x in text.split("-", 1))
                if a.version != b.version or int(a) > int(b):
                    continue
                first, last = int(a), int(b)
                make = type(a)
            else:
                net = ipaddress.ip_network(text, strict=False)
                first, last = int(net[0]), int(net[-1])
                if net.version == 4 and net.prefixlen < 31:
                    first, last = first + 1, last - 1
                make = type(net[0])
        except ValueError:
            continue
        for i in range(first, last + 1):
            yield str(make(i))


def _port_name(port: Mapping[str, Any]) -> str:
    return str(port.get("name") or port.get("port"))


def _ingress(service: Mapping[str, Any]) -> list[dict]:
    return list((((service.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or [])


def _other_conditions(service: Mapping[str, Any]) -> list[dict]:
    return [c for c in (service.get("status") or {}).get("conditions") or () if c.get("type") != CONDITION]


def _status(service: Mapping[str, Any], vip: str | None, cond: dict | None) -> dict:
    st: dict[str, Any] = {"loadBalancer": {"ingress": [{"ip": vip, "ipMode": "Proxy"}]} if vip else {}}
    st["conditions"] = _other_conditions(service) + ([cond] if cond else [])
    return st


def _vs_body(svc: Mapping[str, Any], meta: Meta, port: Mapping[str, Any], vip: str,
             pool: VIPPool) -> dict:
    ann = (svc.get("metadata") or {}).get("annotations") or {}
    nat_return = ann.get(C.ANNOTATION_LB_NAT_RETURN) if ann.get(C.ANNOTATION_LB_NAT_RETURN) in NAT_RETURNS else "snat"
    spec = {
        "address": vip, "port": int(port["port"]), "protocol": (port.get("protocol") or "TCP").lower(),
        "scheduler": ann.get(C.ANNOTATION_LB_SCHEDULER) or "wlc", "method": "nat", "natReturn": nat_return,
        "directorSelector": dict(pool.director_node_selector) if pool.director_node_selector is not None
        else DEFAULT_DIRECTORS,
        "backend": {"service": meta.name, "weight": 1,  # the CRD's default, written so it compares equal
                    **({"portName": port["name"]} if port.get("name") else {"port": int(port["port"])})},
    }
    return {
        "apiVersion": C.API_VERSION, "kind": C.VIRTUALSERVICE_KIND,
        "metadata": {
            "name": f"{meta.name}-{_port_name(port)}".lower(), "namespace": meta.namespace,
            "labels": {C.LABEL_DERIVED_FROM: C.DERIVED_FROM_LOADBALANCER, C.LABEL_MANAGED_BY: C.MANAGED_BY,
                       C.LABEL_SERVICE: C.label_value(meta.name)},
            "annotations": {C.ANNOTATION_SERVICE: meta.name},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta.name, "uid": meta.uid,
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "spec": spec,
    }


def plan_loadbalancers(services: Iterable[Mapping[str, Any]], virtualservices: Iterable[Mapping[str, Any]],
                       pools: Iterable[Mapping[str, Any]], namespaces: Iterable[Mapping[str, Any]],
                       now: str = "1970-01-01T00:00:00Z", default_class: bool = False) -> LBPlan:
    plan = LBPlan()
    vss = list(virtualservices)
    svcs = sorted(services, key=lambda s: Meta.of(s).age_key)
    pool_objs = sorted(pools, key=lambda p: (p.get("metadata") or {}).get("name") or "")
    parsed = [VIPPool.of(p) for p in pool_objs]
    ns_labels = {(o.get("metadata") or {}).get("name", ""): dict((o.get("metadata") or {}).get("labels") or {})
                 for o in namespaces}
    derived: dict[Ref, list[Mapping[str, Any]]] = {}
    used: dict[str, Ref | None] = {}  # VIP -> the Service holding it (None: a hand-made VirtualService)
    for v in vss:
        owner = owner_service(v)
        if owner:
            derived.setdefault(owner, []).append(v)
        addr = (v.get("spec") or {}).get("address")
        if addr:
            used.setdefault(str(addr), owner)
    by_name = {_ref(v): v for v in vss}

    for svc in svcs:
        ref, meta = _ref(svc), Meta.of(svc)
        if not is_ours(svc, default_class):
            mine = {(d.get("spec") or {}).get("address") for d in derived.get(ref, ())}
            had = [i for i in _ingress(svc) if i.get("ip") in mine]
            if had or any(c.get("type") == CONDITION for c in (svc.get("status") or {}).get("conditions") or ()):
                # released: drop what we wrote, keep anything another controller did
                rest = [i for i in _ingress(svc) if i.get("ip") not in mine]
                plan.service_status[ref] = {"loadBalancer": {"ingress": rest} if rest else {},
                                            "conditions": _other_conditions(svc)}
            continue
        prev = [c for c in (svc.get("status") or {}).get("conditions") or () if c.get("type") == CONDITION]
        gen = meta.generation

        def fail(reason: str, message: str) -> None:
            cond = condition(CONDITION, False, reason, message, gen, now, prev)
            plan.service_status[ref] = _status(svc, None, cond)
            if not prev or (prev[0].get("status"), prev[0].get("reason")) != ("False", reason):
                plan.events.append(Event("Service", ref[0], ref[1], meta.uid, "Warning", reason, message))

        open_pools = [(p, q) for p, q in zip(pool_objs, parsed) if q.open_to(ref[0], ns_labels.get(ref[0], {}))]
        if not open_pools:
            fail("NoPool", f"no VIPPool is open to namespace {ref[0]}: an administrator must create a VIPPool "
                           f"(vippools.{C.GROUP}) whose spec.namespaces lists {ref[0]} (or whose "
                           "spec.namespaceSelector matches it) for this Service to get a VIP")
            continue

        def covering(addr: str) -> VIPPool | None:
            return next((q for _, q in open_pools if q.covers_address(addr)), None)

        vip, pool = None, None
        for d in derived.get(ref, ()):  # keep the VIP it has
            addr = str((d.get("spec") or {}).get("address") or "")
            if addr and covering(addr) and used.get(addr) == ref:
                vip, pool = addr, covering(addr)
                break
        want = ((svc.get("metadata") or {}).get("annotations") or {}).get(C.ANNOTATION_LB_ADDRESS)
        if vip is None and want:
            try:
                want = str(ipaddress.ip_address(want))
            except ValueError:
                fail("AddressNotAllowed", f"annotation {C.ANNOTATION_LB_ADDRESS}: {want!r} is not an IP address")
                continue
            if covering(want) is None:
                fail("AddressNotAllowed", f"annotation {C.ANNOTATION_LB_ADDRESS} asks for {want}, which no "
                                          f"VIPPool open to namespace {ref[0]} covers")
                continue
            if used.get(want, ref) != ref:
                holder = used[want]
                fail("AddressInUse", f"{want} is already used by "
                                     f"{'Service ' + '/'.join(holder) if holder else 'a VirtualService'}")
                continue
            vip, pool = want, covering(want)
        if vip is None:
            for p, q in open_pools:
                vip = next((a for a in pool_addresses(p) if a not in used), None)
                if vip:
                    pool = q
                    break
        if vip is None or pool is None:
            fail("PoolExhausted", "every address of the VIPPool(s) open to namespace "
                                  f"{ref[0]} ({', '.join(q.name for _, q in open_pools)}) is in use")
            continue
        used[vip] = ref
        plan.vips[ref] = vip
        bodies = [_vs_body(svc, meta, port, vip, pool) for port in (svc.get("spec") or {}).get("ports") or ()]
        taken = [b["metadata"]["name"] for b in bodies
                 if (other := by_name.get(_ref(b))) is not None and owner_service(other) != ref]
        if taken:
            fail("NameTaken", f"VirtualService(s) {', '.join(taken)} already exist and are not this Service's: "
                              "rename them or the Service's ports")
            continue
        for b in bodies:
            plan.virtualservices[_ref(b)] = b
        cond = condition(CONDITION, True, "Allocated",
                         f"{vip} from VIPPool {pool.name}; VirtualService(s) "
                         f"{', '.join(b['metadata']['name'] for b in bodies)}", gen, now, prev)
        plan.service_status[ref] = _status(svc, vip, cond)
    return plan


def status_differs(service: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    st = service.get("status") or {}
    return ((st.get("loadBalancer") or {}) != wanted["loadBalancer"]
            or list(st.get("conditions") or ()) != wanted["conditions"])
