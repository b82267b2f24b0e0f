"""The compiler (pure): cluster objects in, per-node desired state and statuses out.

    compile_cluster(virtualservices, realservers, pools, nodes, namespaces, nodestates, now=...)

takes plain API objects (dicts as the API server returns them) and returns:

- ``nodestates``: NodeState name -> body (metadata name/namespace/labels/
  annotations + spec), one per (node, VirtualService) that has something for
  that node: the service and its VIP on each director, backendVips (DR/TUN)
  and replyRoutes (NAT with ``natReturn: policy-route``) on each backend node
  named by a RealServer's ``nodeName``. The spec is exactly the node-spec
  document ``lvs_model.nodespec.parse_node_spec`` reads. A service with
  more than ``shards.UNSHARDED_MAX`` dests is split over several NodeStates
  per node (``shards``: by a hash of each dest, so one endpoint change
  rewrites one of them).
- and one NodeState per (node, IPVSSettings) for the kernel-wide IPVS
  settings (timeouts, net.ipv4.vs sysctls) of the nodes the IPVSSettings
  selects; a node two of them select takes the oldest's (``ipvssettings``
  argument, keyword only: they need nothing else but the Nodes).
- ``vs_status`` / ``rs_status`` / ``pool_status`` / ``settings_status``: the
  status each object should have, aggregated from the agents' reports in the current NodeStates'
  status (``nodestates`` argument).
- ``events``: Warning events for conditions that just turned bad (compared
  with the status the objects carry now), so a steady state posts nothing.

Deterministic: same input, same output (sorted everywhere; ``now`` only
stamps conditions whose status changed). No I/O.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping

from lvs_model import channel as C
from lvs_model.addresses import sort_key as address_key
from lvs_model.errors import FieldError
from lvs_model.nodespec import (BackendVip, Dest, LocalAddress, NodeSpec, ReplyRoute, Service,
                                ServiceKey, dump_node_spec)

from . import bgp_peers as BGP
from . import shards as S
from .compile_cache import NO_CACHE, CompileCache
from .crmodel import IPVSSettings, Node, RealServer, VIPPool, VirtualService, selector_matches
from .ha_groups import (active_director, canonical_gateway, director_group, gateway_annotations, gateway_denial,
                        held_here, held_since)

HEALTHY, UNHEALTHY, DRAINING, UNKNOWN = C.HEALTH_VALUES

VS_CONDITIONS = ("Accepted", "Conflict", "Programmed", "Ready")
RS_CONDITIONS = ("Accepted", "Ready")

# Every reason this module writes into a False Ready (and a RealServer's False
# BackendConfigured), by what it asks of whoever reads it: FIX, someone must
# change an object or a pool; WAIT, the agents are still at work. Argo CD's
# health checks (deploy/argocd/*.lua) map them and are tested against these
# tuples, so a reason added here cannot go unmapped there.
VS_READY_FIX = ("Invalid", "NoPool", "Conflict", "DirectorsNotAllowed", "NoDirectors", "Failed",
                "NoRealServers", "NoHealthyRealServers")
VS_READY_WAIT = ("Pending",)
RS_READY_FIX = ("VirtualServiceNotFound", "VirtualServiceInvalid", "Invalid", "Duplicate", "AddressNotAllowed",
                "NodeNotAllowed", "NodeAddressNotAllowed", "NoPool", "Conflict", "Unhealthy")
RS_READY_WAIT = ("NotChecked", "Draining")
RS_BACKEND_FIX = ("NoNodeName", "NodeNotFound")


@dataclass(frozen=True)
class Event:
    kind: str  # VirtualService | RealServer | VIPPool
    namespace: str
    name: str
    uid: str
    type: str  # Warning | Normal
    reason: str
    message: str


@dataclass
class Result:
    nodestates: dict[str, dict] = field(default_factory=dict)
    vs_status: dict[tuple[str, str], dict] = field(default_factory=dict)
    rs_status: dict[tuple[str, str], dict] = field(default_factory=dict)
    pool_status: dict[str, dict] = field(default_factory=dict)
    settings_status: dict[str, dict] = field(default_factory=dict)  # IPVSSettings name -> status
    events: list[Event] = field(default_factory=list)
    # VirtualServices whose result depends on other VirtualServices (a service
    # key conflict, a NodeState name collision): a partial compile must
    # include all of them, so callers recompile everything when one is touched.
    entangled: set[tuple[str, str]] = field(default_factory=set)
    peer_status: dict[str, dict] = field(default_factory=dict)  # BGPPeer name -> status
    # Seconds until a pass is due on its own (a drained director's NodeStates go); None: none due.
    recheck_after: float | None = None


# --------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------

def condition(type_: str, ok: bool | None, reason: str, message: str, generation: int, now: str,
              previous: Iterable[Mapping[str, Any]] = ()) -> dict:
    """A metav1.Condition; lastTransitionTime is kept while the status holds."""
    status = "Unknown" if ok is None else ("True" if ok else "False")
    when = now
    for c in previous or ():
        if c.get("type") == type_ and c.get("status") == status and c.get("lastTransitionTime"):
            when = c["lastTransitionTime"]
    return {"type": type_, "status": status, "observedGeneration": generation,
            "lastTransitionTime": when, "reason": reason, "message": message[:32768]}


def _prev_condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for c in status.get("conditions") or ():
        if c.get("type") == type_:
            return c
    return {}


def _turned(status: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether condition ``new`` differs in status or reason from the one in ``status``."""
    old = _prev_condition(status, new["type"])
    return (old.get("status"), old.get("reason")) != (new["status"], new["reason"])


# --------------------------------------------------------------------------
# Per-VirtualService analysis
# --------------------------------------------------------------------------

@dataclass
class _VS:
    cr: VirtualService
    service: Service | None = None  # without dests
    errors: list[FieldError] = field(default_factory=list)
    reason: str = ""  # why not accepted: Invalid | NoPool | Conflict
    message: str = ""
    conflict_with: str = ""
    losers: list[str] = field(default_factory=list)
    dests: list[tuple[RealServer, Dest]] = field(default_factory=list)
    directors: list[Node] = field(default_factory=list)
    pools: list[VIPPool] = field(default_factory=list)  # the pools admitting its VIP
    excluded: list[str] = field(default_factory=list)  # selected nodes no pool lets direct it
    no_bgp: list[str] = field(default_factory=list)  # active-active: directors left out, why (bgp_peers)

    @property
    def accepted(self) -> bool:
        return self.service is not None and not self.reason


@dataclass
class _RS:
    cr: RealServer
    dest: Dest | None = None
    reason: str = ""  # VirtualServiceNotFound | VirtualServiceInvalid | Invalid | Duplicate | *NotAllowed
    message: str = ""


def _fmt_errors(errors: Iterable[FieldError]) -> str:
    return "; ".join(str(e) for e in errors)


SortKey = Callable[[str, int], tuple]


def _ip_sort_key(address: str, port: int) -> tuple:
    return (*address_key(address), port)


def _pool_hint(vs: VirtualService, svc: Service) -> str:
    ns = vs.meta.namespace
    what = f"fwmark {svc.fwmark}" if svc.fwmark else f"spec.address {svc.address}"
    field_ = "spec.fwmarks" if svc.fwmark else "spec.addresses"
    return (f"{what} is in no VIPPool open to namespace {ns}: an administrator must create a "
            f"VIPPool (vippools.{C.GROUP}, cluster-scoped) whose {field_} covers it and whose "
            f"spec.namespaces lists {ns} (or whose spec.namespaceSelector matches it)")


def _pool_names(info: _VS) -> str:
    return ", ".join(p.name for p in info.pools)


def _real_server_denial(rs: RealServer, dest: Dest, info: _VS, nodes: Mapping[str, Node],
                        node_addresses: set[str]) -> tuple[str, str] | None:
    """Why a valid RealServer is not programmed: what its namespace's pools do
    not allow (the admin's limits), or a reply route that would capture a
    node's own traffic. None when it may be programmed."""
    if info.reason == "NoPool":
        return None  # the VirtualService itself is not programmed, and says why
    ns = rs.meta.namespace
    if not any(p.allows_real_server(dest.address) for p in info.pools):
        return ("AddressNotAllowed",
                f"spec.address {dest.address} is outside the real-server ranges of the VIPPool(s) admitting "
                f"{info.service.key} ({_pool_names(info)}): an administrator must add it to a pool's "
                f"spec.realServerAddresses, or use an address inside them")
    if rs.node_name:
        node = nodes.get(rs.node_name)
        labels = node.labels if node else {}
        if not any(p.allows_backend(labels) for p in info.pools):
            return ("NodeNotAllowed",
                    f"spec.nodeName {rs.node_name} is not a backend node namespace {ns} may use: the "
                    f"spec.backendNodeSelector of VIPPool(s) {_pool_names(info)} does not match it; drop "
                    "spec.nodeName or ask an administrator to allow the node")
    if (dest.method == "nat" and info.cr.nat_return == "policy-route" and dest.address in node_addresses
            and not dest.port):
        return ("NodeAddressNotAllowed",
                f"spec.address {dest.address} is a Node's own address and the reply route would match every "
                "port: it would send all of that node's traffic through the directors; give the real server "
                "a port, or use natReturn snat or gateway")
    return None


def _nat_gateways(infos: Mapping[tuple[str, str], _VS], notes: Mapping[tuple[str, str], tuple[str, str]],
                  pools: list[VIPPool], ns_labels: Mapping[str, Mapping[str, str]],
                  node_addresses: set[str]) -> dict[tuple[str, str], tuple[str, str]]:
    """The NAT gateway (address, device) of each accepted VirtualService whose
    annotation passes ha_groups.gateway_denial, oldest first (an older one
    keeps an address); one that does not is refused with the reason."""
    taken = {i.service.address: (i.service.address, f"the VIP of VirtualService {r[0]}/{r[1]}")
             for r, i in infos.items() if i.accepted and i.service.address}
    out = {}
    for ref, info in infos.items():
        if ref not in notes or not info.accepted:
            continue
        ns = ref[0]
        denial = gateway_denial(notes[ref], info.service.address, info.cr.method, info.cr.nat_return, ns,
                                lambda a: any(p.open_to(ns, ns_labels.get(ns, {})) and p.covers_address(a)
                                              for p in pools), node_addresses, taken)
        if denial:
            info.reason, info.message = denial
            continue
        out[ref] = canonical_gateway(notes[ref])
        taken.setdefault(out[ref][0], (info.service.address, f"the NAT gateway of VirtualService {ns}/{ref[1]}"))
    return out


def _label_map(objs: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    return {(o.get("metadata") or {}).get("name", ""): dict((o.get("metadata") or {}).get("labels") or {})
            for o in objs}


def _with_errors(fn) -> tuple[Any, tuple[FieldError, ...]]:
    errors: list[FieldError] = []
    value = fn(errors)
    return value, tuple(errors)


# --------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------

def compile_cluster(virtualservices: Iterable[Mapping[str, Any]] = (),
                    realservers: Iterable[Mapping[str, Any]] = (),
                    pools: Iterable[Mapping[str, Any]] = (),
                    nodes: Iterable[Mapping[str, Any]] = (),
                    namespaces: Iterable[Mapping[str, Any]] = (),
                    nodestates: Iterable[Mapping[str, Any]] = (),
                    *, namespace: str = C.DEFAULT_NAMESPACE, now: str = "1970-01-01T00:00:00Z",
                    ipvssettings: Iterable[Mapping[str, Any]] = (),
                    bgppeers: Iterable[Mapping[str, Any]] = (),
                    cache: CompileCache = NO_CACHE) -> Result:
    """``cache``: what a long-lived caller keeps between passes (compile_cache);
    the result is the same with or without it."""
    _memo = cache.memo
    # Same NodeSpec (frozen, hashable), same document: callers never mutate it.
    _dump_node_spec = cache.calls(dump_node_spec)
    ip_key = cache.calls(address_key)

    def sort_key(address: str, port: int) -> tuple:
        return (*ip_key(address), port)
    virtualservices = list(virtualservices)
    gateway_notes = gateway_annotations(virtualservices)  # NAT gateways of director groups
    vss = sorted((VirtualService.of(o) for o in virtualservices), key=lambda v: v.meta.age_key)
    rss = sorted((RealServer.of(o) for o in realservers), key=lambda r: r.meta.age_key)
    pool_objs = sorted((VIPPool.of(o) for o in pools), key=lambda p: p.name)
    node_objs = sorted((Node.of(o) for o in nodes), key=lambda n: n.name)
    nodes_by_name = {n.name: n for n in node_objs}
    node_addresses = {a for n in node_objs for _, a in n.addresses}
    ns_labels = _label_map(namespaces)
    current = {(o.get("metadata") or {}).get("name", ""): o for o in nodestates}
    peers = BGP.Peers.of(bgppeers)
    result = Result()

    # 1. Each VirtualService on its own: valid? VIP allowed?
    infos: dict[tuple[str, str], _VS] = {}
    for vs in vss:
        info = _VS(vs)
        info.service, errs = _memo(("vs", vs.meta.uid, vs.meta.resource_version),
                                   lambda: _with_errors(vs.to_service))
        info.errors.extend(errs)
        if info.service is None:
            info.reason, info.message = "Invalid", _fmt_errors(info.errors)
        else:
            svc = info.service
            labels = ns_labels.get(vs.meta.namespace, {})
            info.pools = [p for p in pool_objs if p.open_to(vs.meta.namespace, labels)
                          and (p.covers_fwmark(svc.fwmark) if svc.fwmark else p.covers_address(svc.address))]
            if not info.pools:
                info.reason, info.message = "NoPool", _pool_hint(vs, svc)
            if BGP.mode_error(vs.meta.labels, svc.fwmark):
                info.reason, info.message = "Invalid", BGP.mode_error(vs.meta.labels, svc.fwmark)
        infos[vs.meta.ref] = info

    # 2. Conflicts: same service key twice -> the oldest wins.
    by_key: dict[ServiceKey, list[_VS]] = defaultdict(list)
    for info in infos.values():  # already oldest first
        if info.accepted:
            by_key[info.service.key].append(info)
    for key, group in by_key.items():
        winner = group[0]
        for loser in group[1:]:
            loser.reason = "Conflict"
            loser.conflict_with = f"{winner.cr.meta.namespace}/{winner.cr.meta.name}"
            loser.message = (f"{key} is already declared by VirtualService {loser.conflict_with}, "
                             f"created earlier ({winner.cr.meta.created}); the oldest wins")
            winner.losers.append(f"{loser.cr.meta.namespace}/{loser.cr.meta.name}")
        if len(group) > 1:
            result.entangled.update(i.cr.meta.ref for i in group)
    modes = BGP.mode_conflicts((r, i.service.address, BGP.mode(i.cr.meta.labels))
                               for r, i in infos.items() if i.accepted)
    for r, why in modes.items():  # one VIP, two modes: the oldest's holds
        infos[r].reason, infos[r].message = "Conflict", why
        vip = infos[r].service.address
        result.entangled.update(o for o, i in infos.items() if i.service and i.service.address == vip)
    gateways = _nat_gateways(infos, gateway_notes, pool_objs, ns_labels, node_addresses)

    # 3. RealServers -> dests of their VirtualService.
    rs_infos: dict[tuple[str, str], _RS] = {}
    seen_dest: dict[tuple[tuple[str, str], Any], str] = {}
    for rs in rss:
        ri = _RS(rs)
        rs_infos[rs.meta.ref] = ri
        vref = (rs.meta.namespace, rs.virtual_service)
        info = infos.get(vref)
        if info is None:
            ri.reason = "VirtualServiceNotFound"
            ri.message = f"no VirtualService {rs.virtual_service!r} in namespace {rs.meta.namespace}"
            continue
        if info.service is None:
            ri.reason = "VirtualServiceInvalid"
            ri.message = f"VirtualService {rs.virtual_service} is invalid: {info.message}"
            continue
        dest, errors = _memo(("rs", rs.meta.uid, rs.meta.resource_version, info.cr.meta.uid,
                              info.cr.meta.resource_version),
                             lambda: _with_errors(lambda e: rs.to_dest(info.cr, info.service, e)))
        if dest is None:
            ri.reason, ri.message = "Invalid", _fmt_errors(errors)
            continue
        denial = _real_server_denial(rs, dest, info, nodes_by_name, node_addresses)
        if denial:
            ri.reason, ri.message = denial
            continue
        other = seen_dest.get((vref, dest.key))
        if other:
            ri.reason = "Duplicate"
            ri.message = (f"{dest.key} is already a real server of {rs.virtual_service} "
                          f"through RealServer {other} (created earlier); the oldest wins")
            continue
        seen_dest[(vref, dest.key)] = rs.meta.name
        ri.dest = dest
        info.dests.append((rs, dest))

    # 4. Node state for every accepted VirtualService.
    specs: dict[tuple[str, tuple[str, str]], NodeSpec] = {}  # (node, vs ref) -> spec
    for ref, info in infos.items():
        if not info.accepted:
            continue
        vs, svc = info.cr, info.service
        dests = sorted(info.dests, key=lambda rd: sort_key(rd[1].address, rd[1].port))
        snat = vs.nat_return == "snat" and any(d.method == "nat" for _, d in dests)
        svc = replace(svc, dests=tuple(d for _, d in dests), snat=snat)
        info.service = svc
        selected = [n for n in node_objs if selector_matches(vs.director_selector, n.labels)]
        info.directors = [n for n in selected if any(p.allows_director(n.labels) for p in info.pools)]
        info.excluded = [n.name for n in selected if n not in info.directors]
        bgp: dict[str, tuple] = {}  # active-active: node -> its bgp section
        if BGP.active_active(vs.meta.labels):
            for n in info.directors:
                section, why = BGP.director_bgp(n, peers, svc.address)
                if section is None:
                    info.no_bgp.append(why)
                else:
                    bgp[n.name] = (section,)
            info.directors = [n for n in info.directors if n.name in bgp]
        groups = director_group(vs.meta.labels, (n.name for n in info.directors), svc, gateways.get(ref, ("", "")))
        for n in info.directors:
            specs[(n.name, ref)] = NodeSpec(
                node=n.name, services=(svc,),
                director_addresses=() if svc.fwmark else (LocalAddress(svc.address),),
                sysctls=(("net.ipv4.vs.conntrack", "1"),) if snat else (), director_groups=groups,
                bgp=bgp.get(n.name, ()))
        via = tuple(sorted({a for a in (n.address(svc.family) for n in info.directors) if a},
                           key=lambda a: sort_key(a, 0)))
        for rs, d in dests:
            node = nodes_by_name.get(rs.node_name)
            if node is None:
                continue
            spec = specs.get((node.name, ref), NodeSpec(node=node.name))
            if d.method in ("dr", "tun") and not svc.fwmark:
                gue = d.method == "tun" and d.tunnel_type == "gue"  # the backend opens its port
                gre_csum = d.method == "tun" and d.tunnel_type == "gre" and d.tunnel_csum == "csum"
                bv = BackendVip(svc.address, d.method, d.tunnel_type if d.method == "tun" else "ipip",
                                d.tunnel_port if gue else 0, "csum" if gre_csum else "none")
                spec = replace(spec, backend_vips=tuple(dict.fromkeys(spec.backend_vips + (bv,))))
            elif d.method == "nat" and vs.nat_return == "policy-route" and via:
                rr = ReplyRoute(d.address, d.port, svc.protocol, via)
                spec = replace(spec, reply_routes=tuple(dict.fromkeys(spec.reply_routes + (rr,))))
            else:
                continue
            specs[(node.name, ref)] = spec

    # 5. Names (collisions: the older VirtualService keeps the plain name).
    plain: dict[str, list[tuple[tuple, str, tuple[str, str]]]] = defaultdict(list)
    for (node, ref) in specs:
        plain[C.nodestate_name(node, *ref)].append((infos[ref].cr.meta.age_key, node, ref))
    names: dict[tuple[str, tuple[str, str]], str] = {}
    for name, owners in plain.items():
        owners.sort()
        if len(owners) > 1:
            result.entangled.update(ref for _, _, ref in owners)
        for i, (_, node, ref) in enumerate(owners):
            names[(node, ref)] = name if i == 0 else C.hashed_nodestate_name(node, *ref)
    counts = _shard_counts(infos, current)
    shard_names: dict[tuple[str, tuple[str, str]], list[str]] = {}  # (node, vs ref) -> its NodeStates
    taken = set(names.values()) if counts else set()
    for (node, ref), spec in sorted(specs.items()):
        k = counts.get(ref, 1) if spec.services else 1
        parts = list(zip(_shard_names(names[(node, ref)], node, ref, k, taken), S.split(spec, k, cache.calls(S._digest))))
        shard_names[(node, ref)] = [name for name, _ in parts]
        for i, (name, part) in enumerate(parts):
            annotations = {C.ANNOTATION_VIRTUALSERVICE: f"{ref[0]}/{ref[1]}"}
            if k > 1:
                annotations[S.ANNOTATION_SHARD] = f"{i}/{k}"
            result.nodestates[name] = {
                "apiVersion": C.API_VERSION, "kind": C.NODESTATE_KIND,
                "metadata": {
                    "name": name, "namespace": namespace,
                    "labels": {C.LABEL_NODE: C.label_value(node),
                               C.LABEL_VS_NAMESPACE: C.label_value(ref[0]),
                               C.LABEL_VS_NAME: C.label_value(ref[1]),
                               C.LABEL_MANAGED_BY: C.MANAGED_BY},
                    "annotations": annotations,
                },
                "spec": _dump_node_spec(part),
            }

    drain = BGP.plan_drain(current, result.nodestates, now)  # directors leaving active-active
    result.nodestates.update(drain.keep)
    result.recheck_after = drain.recheck_after

    # 6. Statuses from what the agents report.
    reports: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)  # (vs ref) -> node -> report
    for ref, info in infos.items():
        if not info.accepted:
            continue
        for n in info.directors:
            reports[ref][n.name] = _combined_report(
                [_director_report(current.get(name), result.nodestates[name], info.service.key, sort_key)
                 for name in shard_names[(n.name, ref)]])
    rs_by_vs: dict[tuple[str, str], list[_RS]] = defaultdict(list)
    for ri in rs_infos.values():
        rs_by_vs[(ri.cr.meta.namespace, ri.cr.virtual_service)].append(ri)
    for ref, info in infos.items():
        result.vs_status[ref] = _vs_status(info, reports.get(ref, {}), rs_by_vs.get(ref, []), now, result.events,
                                         sort_key)
        if info.accepted and BGP.active_active(info.cr.meta.labels):
            first_shards = {n.name: current.get(shard_names[(n.name, ref)][0]) or {} for n in info.directors}
            _bgp_status(result.vs_status[ref], info, {n: o.get("status") for n, o in first_shards.items()}, now,
                        result.events)
    for ref, ri in rs_infos.items():
        info = infos.get((ri.cr.meta.namespace, ri.cr.virtual_service))
        result.rs_status[ref] = _rs_status(ri, info, reports.get(info.cr.meta.ref, {}) if info else {},
                                           now, result.events, nodes_by_name, sort_key)
    for p in pool_objs:
        result.pool_status[p.name] = _pool_status(p, _overlaps(p, pool_objs, ns_labels), now)
    _compile_settings(ipvssettings, node_objs, current, namespace, now, result, cache)
    for cr in peers.objs:
        result.peer_status[cr.name] = BGP.peer_status(cr, peers, now, condition)
    return result


def _bgp_status(status: dict, info: _VS, reports: Mapping[str, Mapping[str, Any] | None], now: str,
                events: list[Event]) -> None:
    """An active-active VirtualService's status: who announces the VIP
    (``announcedBy``, ``announcements`` per director, as their agents
    report), and the ``BGP`` condition naming the directors left out and the
    fix; when that leaves none, Programmed and Ready say so instead of
    "matches no Node"."""
    vs, gen = info.cr, info.cr.meta.generation
    prev = vs.status.get("conditions") or ()
    status["announcedBy"], status["announcements"] = BGP.announcements(info.service.address, reports)
    if info.no_bgp:
        cond = condition("BGP", False, "NoBGPPeer", "not announced from " + "; ".join(info.no_bgp), gen, now, prev)
    else:
        cond = condition("BGP", True, "Peered", f"announced over BGP from {len(info.directors)} director(s)",
                         gen, now, prev)
    if info.service.scheduler not in ("mh", "sh", "dh"):
        cond["message"] += (f"; scheduler {info.service.scheduler}: a flow ECMP moves to another director "
                            "goes to another real server (reset); mh keeps it")
    status["conditions"].append(cond)
    if info.no_bgp and not info.directors and not info.excluded:
        why = "no selected director can announce the VIP over BGP: " + "; ".join(info.no_bgp)
        status["conditions"] = [condition(c["type"], False, "NoDirectors", why, gen, now, prev)
                                if c["type"] in ("Programmed", "Ready") else c for c in status["conditions"]]
    if cond["status"] == "False" and _turned(vs.status, cond):
        events.append(Event("VirtualService", vs.meta.namespace, vs.meta.name, vs.meta.uid, "Warning",
                            cond["reason"], cond["message"]))


def _shard_counts(infos: Mapping[tuple[str, str], _VS], current: Mapping[str, Mapping]) -> dict[tuple[str, str], int]:
    """The shard count of each accepted VirtualService with more than one
    (shards.shard_count), from its dest count and the count its current
    NodeStates carry (so a count holds through a rolling update's surge)."""
    now: dict[tuple[str, str], int] = {}
    for obj in current.values():
        ann = (obj.get("metadata") or {}).get("annotations") or {}
        if S.ANNOTATION_SHARD in ann:
            ns, _, name = str(ann.get(C.ANNOTATION_VIRTUALSERVICE) or "").partition("/")
            now[(ns, name)] = max(now.get((ns, name), 1), S.current_count(ann))
    out = {}
    for ref, info in infos.items():
        if info.accepted and (len(info.dests) > S.UNSHARDED_MAX or ref in now):
            k = S.shard_count(len(info.dests), now.get(ref, 1))
            if k > 1:
                out[ref] = k
    return out


def _shard_names(base: str, node: str, ref: tuple[str, str], k: int, taken: set[str]) -> list[str]:
    """The NodeState names of (node, VirtualService) in ``k`` shards: ``base``
    itself unsharded; else ``base.i-of-k``, or the hashed base's when one of
    those is another VirtualService's name or too long."""
    if k <= 1:
        return [base]
    out = [S.shard_name(base, i, k) for i in range(k)]
    if any(n in taken or not S.fits(n) for n in out):
        out = [S.shard_name(C.hashed_nodestate_name(node, *ref), i, k) for i in range(k)]
    return out


def _combined_report(parts: list[dict]) -> dict:
    """One director's report on a service from the reports of its shards:
    current and programmed when every shard is, the dests of all of them."""
    if len(parts) == 1:
        return parts[0]
    rep = {"exists": all(p["exists"] for p in parts), "current": all(p["current"] for p in parts),
           "programmed": all(p["programmed"] for p in parts),
           "error": "; ".join(dict.fromkeys(p["error"] for p in parts if p["error"])),
           "held": any(p["held"] for p in parts), "dests": {}}
    for p in parts:
        rep["dests"].update(p["dests"])
    return rep


def _director_report(obj: Mapping[str, Any] | None, desired: Mapping[str, Any], key: ServiceKey,
                     sort_key: SortKey = _ip_sort_key) -> dict:
    """What one director's agent says about the service in its NodeState."""
    rep = {"exists": obj is not None, "current": False, "programmed": False, "error": "", "dests": {},
           "held": False, "since": ""}
    if obj is None:
        return rep
    status = obj.get("status") or {}
    rep["held"] = held_here(status, key.address)
    rep["since"] = held_since(status, key.address)
    gen = (obj.get("metadata") or {}).get("generation")
    rep["current"] = (obj.get("spec") == desired["spec"] and gen is not None
                      and status.get("observedGeneration") == gen)
    for s in status.get("services") or ():
        if s.get("key") == str(key):
            rep["programmed"] = bool(s.get("programmed"))
            rep["error"] = s.get("error") or ""
    for d in status.get("dests") or ():
        if d.get("service") == str(key):
            try:
                dk = sort_key(str(d.get("address")), int(d.get("port") or 0))
            except ValueError:
                continue
            rep["dests"][dk] = d
    return rep


def _vs_status(info: _VS, reports: Mapping[str, dict], rs_infos: Iterable[_RS],
               now: str, events: list[Event], sort_key: SortKey = _ip_sort_key) -> dict:
    vs = info.cr
    gen = vs.meta.generation
    prev = vs.status.get("conditions") or ()
    svc = info.service
    status: dict[str, Any] = {"observedGeneration": gen}
    if svc is not None:
        status["protocol"] = "fwmark" if svc.fwmark else svc.protocol
        status["scheduler"] = svc.scheduler
        status["service"] = str(svc.key)
    total = len(info.directors)
    ready_nodes = sorted(n for n, r in reports.items() if r["current"] and r["programmed"])
    errors = sorted(f"{n}: {r['error']}" for n, r in reports.items() if r["current"] and r["error"])
    ready = len(ready_nodes)
    rs_total = rs_healthy = 0
    for ri in rs_infos:
        if ri.dest is None:
            continue
        rs_total += 1
        if _aggregate_health(ri, reports, sort_key)[0] == HEALTHY:
            rs_healthy += 1
    if not info.accepted:
        ready = total = rs_healthy = 0
    status.update(directors=f"{ready}/{total}", directorsReady=ready, directorsTotal=total,
                  realServers=f"{rs_healthy}/{rs_total}", realServersHealthy=rs_healthy,
                  realServersTotal=rs_total)
    active = active_director(vs.meta.labels, reports) if info.accepted else None
    if active is not None:
        status["activeDirector"] = active
        was = vs.status.get("activeDirector")
        if active and was is not None and was != active:
            events.append(Event("VirtualService", vs.meta.namespace, vs.meta.name, vs.meta.uid, "Normal",
                                "Takeover", f"{svc.address} is held by {active} (was {was or 'nobody'})"))

    conds = []
    if info.accepted:
        conds.append(condition("Accepted", True, "Accepted",
                               f"{svc.key} is valid, its address is in a VIPPool open to namespace "
                               f"{vs.meta.namespace}, and no older VirtualService declares it", gen, now, prev))
    else:
        conds.append(condition("Accepted", False, info.reason, info.message, gen, now, prev))
    if info.reason == "Conflict":
        conds.append(condition("Conflict", True, "Conflict", info.message, gen, now, prev))
    elif info.losers:
        conds.append(condition("Conflict", False, "Winner",
                               f"older than {', '.join(info.losers)}, which declare the same service",
                               gen, now, prev))
    else:
        conds.append(condition("Conflict", False, "NoConflict", "no other VirtualService declares this service",
                               gen, now, prev))
    if not info.accepted:
        prog = condition("Programmed", False, info.reason, f"not programmed: {info.message}", gen, now, prev)
    elif total == 0 and info.excluded:
        prog = condition("Programmed", False, "DirectorsNotAllowed",
                         f"spec.directorSelector matches only nodes the VIPPool(s) {_pool_names(info)} do not "
                         f"let namespace {vs.meta.namespace} use as directors ({', '.join(info.excluded)}): "
                         "select nodes that the pool's spec.directorNodeSelector matches",
                         gen, now, prev)
    elif total == 0:
        prog = condition("Programmed", False, "NoDirectors",
                         "spec.directorSelector matches no Node: no director programs this service",
                         gen, now, prev)
    elif errors:
        prog = condition("Programmed", False, "Failed", "; ".join(errors), gen, now, prev)
    elif ready < total:
        pending = sorted(n for n in (d.name for d in info.directors) if n not in ready_nodes)
        prog = condition("Programmed", False, "Pending",
                         f"waiting for the agents on {', '.join(pending)} ({ready}/{total} directors ready)",
                         gen, now, prev)
    else:
        prog = condition("Programmed", True, "Programmed", f"programmed on {total} director(s)", gen, now, prev)
    if info.excluded and total:
        prog["message"] += (f"; not on {', '.join(info.excluded)}: the VIPPool's spec.directorNodeSelector "
                            "does not allow them")
    conds.append(prog)
    if prog["status"] != "True":
        rd = condition("Ready", False, prog["reason"], prog["message"], gen, now, prev)
    elif rs_total == 0:
        rd = condition("Ready", False, "NoRealServers", "no RealServer names this VirtualService", gen, now, prev)
    elif rs_healthy == 0:
        rd = condition("Ready", False, "NoHealthyRealServers", f"0/{rs_total} real servers healthy", gen, now, prev)
    else:
        rd = condition("Ready", True, "Ready",
                       f"{ready}/{total} directors ready, {rs_healthy}/{rs_total} real servers healthy",
                       gen, now, prev)
    conds.append(rd)
    status["conditions"] = conds

    acc = conds[0]
    if acc["status"] == "False" and _turned(vs.status, acc):
        events.append(Event("VirtualService", vs.meta.namespace, vs.meta.name, vs.meta.uid, "Warning",
                            info.reason, info.message))
    elif prog["reason"] == "DirectorsNotAllowed" and _turned(vs.status, prog):
        events.append(Event("VirtualService", vs.meta.namespace, vs.meta.name, vs.meta.uid, "Warning",
                            prog["reason"], prog["message"]))
    return status


def _aggregate_health(ri: _RS, reports: Mapping[str, dict],
                      sort_key: SortKey = _ip_sort_key) -> tuple[str, list[dict]]:
    """The RealServer's health over its directors' reports, and the per-director detail."""
    if ri.dest is None:
        return UNKNOWN, []
    dk = sort_key(ri.dest.address, ri.dest.port)
    per = []
    for node in sorted(reports):
        d = reports[node]["dests"].get(dk)
        if d is None:
            continue
        per.append({"node": node, "health": d.get("health") or UNKNOWN, "weight": int(d.get("weight") or 0),
                    "activeConns": int(d.get("activeConns") or 0),
                    "inactiveConns": int(d.get("inactiveConns") or 0)})
    states = {p["health"] for p in per}
    if UNHEALTHY in states:
        health = UNHEALTHY
    elif ri.dest.weight == 0 or DRAINING in states:
        health = DRAINING
    elif per and states == {HEALTHY}:
        health = HEALTHY
    else:
        health = UNKNOWN
    return health, per


def _backend_condition(ri: _RS, info: _VS, nodes: Mapping[str, Node]) -> tuple[bool, str, str] | None:
    """Whether the real server's own side is configured by an agent, where it
    needs one: DR and TUN need the VIP on the server, NAT with policy-route
    needs its reply route. None where nothing is needed."""
    d, svc, rs = ri.dest, info.service, ri.cr
    needs = ("the VIP on lo/tunl0 with ARP and rp_filter settings" if d.method in ("dr", "tun") and not svc.fwmark
             else "the reply route through the directors" if d.method == "nat" and info.cr.nat_return == "policy-route"
             else "")
    if not needs:
        return None
    if not rs.node_name:
        return (False, "NoNodeName", f"spec.nodeName is not set, so no agent configures {needs} on {d.address}: "
                                     "set spec.nodeName to the Node it runs on, or configure it by hand")
    if rs.node_name not in nodes:
        return (False, "NodeNotFound", f"spec.nodeName {rs.node_name} is not a Node: no agent configures {needs}")
    return (True, "Configured", f"the agent on {rs.node_name} configures {needs}")


def _rs_status(ri: _RS, info: _VS | None, reports: Mapping[str, dict], now: str,
               events: list[Event], nodes: Mapping[str, Node], sort_key: SortKey = _ip_sort_key) -> dict:
    rs = ri.cr
    gen = rs.meta.generation
    prev = rs.status.get("conditions") or ()
    status: dict[str, Any] = {"observedGeneration": gen}
    if ri.dest is not None:
        status.update(port=ri.dest.port, method=ri.dest.method)
    programmed = ri.dest is not None and info is not None and info.accepted
    health, per = _aggregate_health(ri, reports, sort_key) if programmed else (UNKNOWN, [])
    if ri.dest is not None and ri.dest.weight == 0 and health == UNKNOWN:
        health = DRAINING
    status.update(health=health, activeConns=sum(p["activeConns"] for p in per),
                  inactiveConns=sum(p["inactiveConns"] for p in per), directors=per)
    if ri.dest is None:
        acc = condition("Accepted", False, ri.reason, ri.message, gen, now, prev)
    else:
        acc = condition("Accepted", True, "Accepted",
                        f"real server {ri.dest.key} ({ri.dest.method}) of VirtualService {rs.virtual_service}",
                        gen, now, prev)
    if ri.dest is None:
        rd = condition("Ready", False, ri.reason, ri.message, gen, now, prev)
    elif not programmed:
        rd = condition("Ready", False, info.reason if info else "VirtualServiceNotFound",
                       f"VirtualService {rs.virtual_service} is not programmed: {info.message if info else ''}",
                       gen, now, prev)
    elif health == HEALTHY:
        rd = condition("Ready", True, HEALTHY, f"healthy on {len(per)} director(s)", gen, now, prev)
    elif health == UNHEALTHY:
        bad = [p["node"] for p in per if p["health"] == UNHEALTHY]
        rd = condition("Ready", False, UNHEALTHY, f"failing health checks from {', '.join(bad)}", gen, now, prev)
    elif health == DRAINING:
        rd = condition("Ready", False, DRAINING, "weight 0: no new connections", gen, now, prev)
    else:
        rd = condition("Ready", False, "NotChecked", "no director has reported on it yet", gen, now, prev)
    status["conditions"] = [acc, rd]
    backend = _backend_condition(ri, info, nodes) if programmed else None
    if backend:
        bc = condition("BackendConfigured", *backend, gen, now, prev)
        status["conditions"].append(bc)
    if acc["status"] == "False" and _turned(rs.status, acc):
        events.append(Event("RealServer", rs.meta.namespace, rs.meta.name, rs.meta.uid, "Warning",
                            ri.reason, ri.message))
    elif backend and not backend[0] and _turned(rs.status, bc):
        events.append(Event("RealServer", rs.meta.namespace, rs.meta.name, rs.meta.uid, "Warning",
                            bc["reason"], bc["message"]))
    return status


def _overlaps(p: VIPPool, pools: Iterable[VIPPool], ns_labels: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Other pools sharing an address or mark with ``p`` while open to other
    namespaces: a VIP in both may be claimed from either side (the oldest
    VirtualService wins), which an admin rarely means."""
    def users(q: VIPPool) -> frozenset[str]:
        return frozenset(q.namespaces) | frozenset(n for n, labels in ns_labels.items()
                                                   if q.namespace_selector is not None and q.open_to(n, labels))
    mine = users(p)
    out = []
    for q in pools:
        if q.name == p.name or users(q) == mine:
            continue
        shared = [f"{a}-{b}" for a, b in p.ranges
                  if any(x.version == a.version and int(x) <= int(b) and int(a) <= int(y) for x, y in q.ranges)]
        shared += [f"fwmark {a}-{b}" for a, b in p.fwmarks if any(x <= b and a <= y for x, y in q.fwmarks)]
        if shared:
            out.append(f"{', '.join(shared)} also in VIPPool {q.name} (open to "
                       f"{', '.join(sorted(users(q))) or 'no namespace yet'})")
    return out


def _pool_status(p: VIPPool, overlaps: list[str], now: str) -> dict:
    prev = p.status.get("conditions") or ()
    ok = not p.errors
    valid = condition("Valid", ok, "Valid" if ok else "Invalid",
                      "all ranges usable" if ok else "; ".join(p.errors) + " (ignored)", 0, now, prev)
    open_ = p.open_limits
    limits = condition(
        "TenantLimits", not open_, "Limited" if not open_ else "Unrestricted",
        "real servers, backend nodes and directors are limited" if not open_ else
        f"spec.{', spec.'.join(open_)} not set: the namespaces this pool is open to may use any "
        "real-server address, backend node or director for it; set them for tenant namespaces",
        0, now, prev)
    overlap = condition(
        "Overlapping", bool(overlaps), "Overlapping" if overlaps else "Disjoint",
        "; ".join(overlaps) + ": a VIP there may be claimed from either side (the oldest VirtualService wins); "
        "split spec.addresses so each VIP belongs to one pool" if overlaps else
        "no other pool open to other namespaces shares an address or mark", 0, now, prev)
    return {"conditions": [valid, limits, overlap]}


# --------------------------------------------------------------------------
# Kernel-wide IPVS settings
# --------------------------------------------------------------------------

def _compile_settings(objs: Iterable[Mapping[str, Any]], nodes: list[Node], current: Mapping[str, Mapping],
                      namespace: str, now: str, result: Result, cache: CompileCache = NO_CACHE) -> None:
    """One NodeState per (selected node, IPVSSettings) carrying its timeouts
    and sysctls; a node already taken by an older IPVSSettings is left to it
    and named in the younger one's Conflict condition. Needs only the Nodes,
    so its outcome never depends on which VirtualServices a pass compiles."""
    owner: dict[str, str] = {}  # node -> the IPVSSettings that has it
    for st in sorted((IPVSSettings.of(o) for o in objs), key=lambda x: x.meta.age_key):
        (timeouts, sysctls), errors = cache.memo(("ipvssettings", st.meta.uid, st.meta.resource_version),
                                            lambda: _with_errors(st.node_fields))
        selected = [n.name for n in nodes if selector_matches(st.node_selector, n.labels)] if not errors else []
        taken = {n: owner[n] for n in selected if n in owner}
        applied = [n for n in selected if n not in taken]
        reports = {}
        for node in applied:
            owner[node] = st.name
            if not (timeouts or sysctls):
                continue
            name = C.settings_nodestate_name(node, st.name)
            if name in result.nodestates:  # a VirtualService's NodeState has that name
                name = C.hashed_settings_nodestate_name(node, st.name)
            body = {
                "apiVersion": C.API_VERSION, "kind": C.NODESTATE_KIND,
                "metadata": {
                    "name": name, "namespace": namespace,
                    "labels": {C.LABEL_NODE: C.label_value(node), C.LABEL_IPVSSETTINGS: C.label_value(st.name),
                               C.LABEL_MANAGED_BY: C.MANAGED_BY},
                    "annotations": {C.ANNOTATION_IPVSSETTINGS: st.name},
                },
                "spec": cache.calls(dump_node_spec)(NodeSpec(node=node, timeouts=timeouts, sysctls=sysctls)),
            }
            result.nodestates[name] = body
            reports[node] = _settings_report(current.get(name), body)
        result.settings_status[st.name] = _settings_status(st, errors, applied, taken, reports,
                                                           bool(timeouts or sysctls), now)


def _settings_report(obj: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> str:
    """"" when the node's agent programmed this very spec, else why not yet."""
    if obj is None:
        return "not written yet"
    status = obj.get("status") or {}
    gen = (obj.get("metadata") or {}).get("generation")
    if obj.get("spec") != desired["spec"] or gen is None or status.get("observedGeneration") != gen:
        return "waiting for the agent"
    cond = _prev_condition(status, "Programmed")
    return "" if cond.get("status") == "True" else (cond.get("message") or "not programmed")


def _settings_status(st: IPVSSettings, errors: tuple[FieldError, ...], applied: list[str],
                     taken: Mapping[str, str], reports: Mapping[str, str], declares: bool, now: str) -> dict:
    gen = st.meta.generation
    prev = st.status.get("conditions") or ()
    status: dict[str, Any] = {"observedGeneration": gen, "nodes": applied, "nodeCount": len(applied)}
    if errors:
        acc = condition("Accepted", False, "Invalid", f"{_fmt_errors(errors)}; nothing of it is applied",
                        gen, now, prev)
    else:
        acc = condition("Accepted", True, "Accepted", "valid", gen, now, prev)
    if taken:
        by = defaultdict(list)
        for node, other in sorted(taken.items()):
            by[other].append(node)
        conflict = condition("Conflict", True, "Conflict", "; ".join(
            f"node(s) {', '.join(ns)} already take their settings from IPVSSettings {other}, created earlier: "
            "the oldest wins, so this one does not apply there" for other, ns in sorted(by.items())), gen, now, prev)
    else:
        conflict = condition("Conflict", False, "NoConflict", "no older IPVSSettings selects its nodes",
                             gen, now, prev)
    pending = sorted(f"{n}: {why}" for n, why in reports.items() if why)
    if errors:
        prog = condition("Programmed", False, "Invalid", "not applied: the spec is invalid", gen, now, prev)
    elif not applied:
        prog = condition("Programmed", False, "NoNodes",
                         "spec.nodeSelector matches no Node that another IPVSSettings does not have", gen, now, prev)
    elif not declares:
        prog = condition("Programmed", True, "NothingDeclared",
                         "declares no setting: its nodes keep the defaults", gen, now, prev)
    elif pending:
        prog = condition("Programmed", False, "Pending", "; ".join(pending), gen, now, prev)
    else:
        prog = condition("Programmed", True, "Programmed", f"programmed on {len(applied)} node(s)", gen, now, prev)
    status["conditions"] = [acc, conflict, prog]
    return status
