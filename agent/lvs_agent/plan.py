"""The planner: desired node state + observed kernel + ownership -> minimal ops.

Pure: no I/O, deterministic order. Drift is judged against the kernel as it is
now, not against what was applied last (keepalived#1877). Objects not in the
ownership record are never changed or deleted; a desired service whose key is
already held by someone else is reported as a problem, not taken over.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from lvs_model.nodespec import DIRECTOR_DEVICE, NodeSpec, Service, ServiceKey, effective_sysctls, local_addresses

from . import fou as F
from . import gre_csum as G
from . import ipvs_timeouts as T
from . import ops as O
from .state import (NftTable, Observed, Ownership, RouteKey, RuleKey, SysctlClaim, outcome_unknown,
                    sysctl_claim)
from .tools import missing_message

# Devices the kernel creates itself when the tunnel module loads: we bring them
# up but never create or delete them.
FALLBACK_TUNNELS = {"tunl0": "ipip", "ip6tnl0": "ip6tnl", "gre0": "gre", "ip6gre0": "ip6gre"}

# NAT reply path by policy routing (backend nodes). kube-lvs owns the routing
# tables REPLY_TABLE_BASE .. +REPLY_TABLE_COUNT-1 (0x4c56 = 19542 .. 19797;
# one table per distinct set of directors) and the rule priorities
# REPLY_RULE_PRIORITY (rules with a protocol/source port) and +1 (whole
# address, e.g. fwmark services). It only ever deletes rules and routes its
# ownership record lists; the applier also tags them with protocol 76
# (RTPROT_KUBE_LVS) so a delete can never match someone else's identical rule.
REPLY_TABLE_BASE = 0x4C56
REPLY_TABLE_COUNT = 256
REPLY_RULE_PRIORITY = 0x4C56
REPLY_RULE_PRIORITY_ANY = REPLY_RULE_PRIORITY + 1

# NAT reply path by SNAT (directors): one nftables table of our own. It is
# created, replaced (atomically, one transaction) and deleted as a whole;
# nothing else in the ruleset is ever touched.
NFT_FAMILY, NFT_TABLE, NFT_CHAIN = "inet", "kube-lvs", "postrouting"
NFT_CHAINS = ((NFT_CHAIN, "nat", "postrouting", 100),)  # srcnat


def _family(address: str) -> str:
    return "ipv6" if ":" in address else "ipv4"


def reply_routing(spec: NodeSpec) -> tuple[set[RuleKey], set[RouteKey]]:
    """The rules and routes a backend's reply routes need.

    Each distinct ``via`` (a tuple of director addresses) gets a table in our
    range holding one default route per director, in order of preference
    (metric 1, 2, ...: the next is used only when the first's link is down);
    each reply route gets a rule ``from ADDRESS [ipproto P] [sport N] lookup
    TABLE``. Replies to anyone, including clients on the backend's own subnet,
    then leave through the director, which un-NATs them.
    """
    vias = sorted({r.via for r in spec.reply_routes if r.via})[:REPLY_TABLE_COUNT]
    tables = {via: REPLY_TABLE_BASE + i for i, via in enumerate(vias)}
    rules: set[RuleKey] = set()
    routes: set[RouteKey] = set()
    for via, table in tables.items():
        # Metrics from 1: the kernel turns an IPv6 metric 0 into 1024.
        for metric, gw in enumerate(via, 1):
            routes.add(RouteKey(_family(gw), table, gw, metric))
    for r in spec.reply_routes:
        table = tables.get(r.via)
        if table is None:
            continue
        prio = REPLY_RULE_PRIORITY if (r.port or r.protocol) else REPLY_RULE_PRIORITY_ANY
        rules.add(RuleKey(_family(r.address), prio, r.address, r.protocol, r.port, table))
    return rules, routes


def _snat_rules(spec: NodeSpec) -> list[tuple[ServiceKey, str]]:
    """(service, nft rule text) for every SNAT service's NAT dests.

    A packet is masqueraded when IPVS forwarded it to one of the service's NAT
    real servers: conntrack's original direction still says client -> VIP:port
    (IPVS keeps the original tuple and, with net.ipv4.vs.conntrack=1, fixes up
    the reply tuple), the packet's destination is the real server. Traffic the
    director itself sends to a real server (health checks) or routes to it for
    others has another original destination and is left alone.
    """
    out: list[tuple[ServiceKey, str]] = []
    for svc in sorted((s for s in spec.services if s.snat), key=lambda s: s.key):
        nat = sorted({(d.address, d.port) for d in svc.dests if d.method == "nat"})
        if not nat:
            continue
        ip = "ip6" if svc.family == "ipv6" else "ip"
        if svc.fwmark:
            head = f"meta mark {svc.fwmark:#x} ct direction original"
            groups = [("", sorted({a for a, _ in nat}))]
        else:
            head = f"meta l4proto {svc.protocol} ct direction original ct original {ip} daddr {svc.address}"
            if svc.port:
                head += f" ct original proto-dst {svc.port}"
            ported = [f"{a} . {p}" for a, p in nat if p]
            groups = ([("port", ported)] if ported else []) + \
                [("", sorted({a for a, p in nat if not p}))]
        for kind, items in groups:
            if not items:
                continue
            if kind == "port":
                match = f"{ip} daddr . {svc.protocol} dport {{ {', '.join(items)} }}"
            else:
                match = f"{ip} daddr {{ {', '.join(items)} }}"
            out.append((svc.key, f"{head} {match} masquerade"))
    return out


def snat_table(spec: NodeSpec) -> tuple[str, NftTable] | None:
    """(the table definition for ``nft -f``, what observing it must give), or
    None when no service needs SNAT. Each rule's comment is a digest of its
    text plus the service, so observing the comments detects any change."""
    rules = _snat_rules(spec)
    if not rules:
        return None
    lines, comments = [], []
    for key, text in rules:
        comment = f"{hashlib.sha256(text.encode()).hexdigest()[:12]} {key}"[:127]
        comments.append((NFT_CHAIN, comment))
        lines.append(f'\t\t{text} comment "{comment}"')
    body = (f"table {NFT_FAMILY} {NFT_TABLE} {{\n\tchain {NFT_CHAIN} {{\n"
            f"\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            + "\n".join(lines) + "\n\t}\n}\n")
    return body, NftTable(NFT_CHAINS, tuple(comments))


@dataclass
class Plan:
    ops: list[O.Op] = field(default_factory=list)
    # Desired services that cannot be programmed, with the reason.
    problems: dict[ServiceKey, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ops)


def plan(desired: NodeSpec, observed: Observed, owned: Ownership, uplink: str = "",
         services: Iterable[Service] | None = None, missing: frozenset[str] = frozenset()) -> Plan:
    """``services``: plan IPVS for these only (their keys are all that
    ``observed.services`` and the IPVS records of ``owned`` hold: a sweep
    slice); None: every service of ``desired``. The node side is always
    planned from the whole of ``desired``. ``missing``: the agent's programs
    (tools.py) this host lacks: the services that need one get a problem
    naming it, nothing is planned through it, the rest is planned as usual."""
    p = Plan()
    removals: list[O.Op] = []

    # Links the addresses need.
    wanted_links = {a.device for a in local_addresses(desired)} - {"lo"}
    for name in sorted(wanted_links):
        link = observed.links.get(name)
        if link is None:
            p.ops.append(O.AddLink(name, FALLBACK_TUNNELS.get(name, "dummy")))
            p.ops.append(O.SetLinkUp(name))
        elif not link.up:
            p.ops.append(O.SetLinkUp(name))
    for name, how in sorted(owned.links.items()):
        if name in wanted_links or name not in observed.links or F.is_key(name) or G.is_key(name):
            continue
        removals.append(O.DelLink(name) if how == "created" else O.SetLinkUp(name, False))
    open_fou, close_fou = F.plan(desired, observed, owned)  # GUE receive ports (fou.py)
    p.ops.extend(open_fou)
    removals.extend(close_fou)
    csum_on, csum_off = G.plan(desired, observed, owned)  # GRE checksums expected (gre_csum.py)
    p.ops.extend(csum_on)
    removals.extend(csum_off)

    # Sysctls, after the links whose per-device entries they may name.
    want_sysctl = effective_sysctls(desired, uplink)
    for name, value in sorted(want_sysctl.items()):
        if observed.sysctls.get(name) != value:
            p.ops.append(O.SetSysctl(name, value))
    for name, rec in sorted(T.real_sysctls(owned.sysctls).items()):
        back = None if name in want_sysctl else sysctl_claim(rec).restore_to(observed.sysctls.get(name))
        if back is not None:  # still the value we wrote: ours to put back
            removals.append(O.SetSysctl(name, back, restore=True))
    set_timeouts, restore_timeouts = T.plan(desired, observed, owned)  # ipvsadm --set
    p.ops.extend(set_timeouts)
    removals.extend(restore_timeouts)

    # Addresses: present anywhere counts (the seed's NAT VIP sits on the uplink).
    wanted_addrs = {(a.device, a.address): a for a in local_addresses(desired)}
    held: dict[str, list[str]] = {}  # address -> devices holding it (10k VIPs: no scan per VIP)
    for d2, a2 in observed.addresses:
        held.setdefault(a2, []).append(d2)
    for (dev, addr), a in sorted(wanted_addrs.items()):
        # Held where wanted, or by someone else: fine. Held only at a placement of
        # ours that is going away (a VIP moving from lo to tunl0): add it anew.
        if not any((d2, addr) not in owned.addresses or (d2, addr) in wanted_addrs for d2 in held.get(addr, ())):
            p.ops.append(O.AddAddress(dev, addr, a.prefixlen))
    for dev, addr in sorted(owned.addresses):
        if (dev, addr) not in wanted_addrs and (dev, addr) in observed.addresses:
            removals.append(O.DelAddress(dev, addr, 128 if ":" in addr else 32))

    # NAT reply path, backend side: routes into our tables first, then the
    # rules that send replies there; removals: rules first, then routes.
    want_rules, want_routes = reply_routing(desired)
    for r in sorted(want_routes - observed.routes):
        p.ops.append(O.AddRoute(r))
    for r in sorted(want_rules - observed.rules):
        p.ops.append(O.AddRule(r))
    for r in sorted(owned.rules):
        if r not in want_rules and r in observed.rules:
            removals.append(O.DelRule(r))
    for r in sorted(owned.routes):
        if r not in want_routes and r in observed.routes:
            removals.append(O.DelRoute(r))

    # NAT reply path, director side: our nftables table, before the services
    # (a service's first connection must already be masqueraded).
    want_nft = snat_table(desired)
    tkey = (NFT_FAMILY, NFT_TABLE)
    have_nft = observed.nft_tables.get(tkey)
    if want_nft is not None:
        body, shape = want_nft
        if "nft" in missing:  # its table could not be read either: nothing to judge or change
            for k in sorted({k for k, _ in _snat_rules(desired)}):
                p.problems.setdefault(k, f"natReturn snat {missing_message('nft')}; its return path "
                                         "is not programmed")
        elif have_nft is not None and tkey not in owned.nft_tables:
            for s in desired.services:
                if s.snat:
                    p.problems.setdefault(s.key, (
                        f"nftables table {NFT_FAMILY} {NFT_TABLE} already exists and was not created "
                        "by kube-lvs; it is left untouched and SNAT for this service is not programmed"))
        elif have_nft != shape:
            p.ops.append(O.ReplaceNftTable(NFT_FAMILY, NFT_TABLE, body, create=have_nft is None))
    elif tkey in owned.nft_tables and have_nft is not None:
        removals.append(O.DelNftTable(*tkey))

    # IPVS services and their dests.
    sp = plan_services(desired.services if services is None else services, observed.services, owned)
    p.ops.extend(sp.ops)
    p.problems.update(sp.problems)

    p.ops.extend(removals)
    return p


def plan_services(desired: Iterable[Service], observed: Mapping[ServiceKey, Service],
                  owned: Ownership) -> Plan:
    """The IPVS part of `plan`: services and dests only.

    Deletes only services the ownership record lists and ``observed`` holds,
    and dests the record lists: given a spec, an observed table and a record
    all restricted to the same keys it touches nothing else (the incremental
    reconcile relies on that)."""
    p = Plan()
    desired = tuple(desired)
    for svc in desired:
        k = svc.key
        have = observed.get(k)
        if have is None:
            p.ops.append(O.AddService(svc))
            p.ops.extend(O.AddDest(svc, d) for d in svc.dests)
            continue
        if k not in owned.services:
            p.problems[k] = (f"service {k} already exists in the kernel and was not created by "
                             "kube-lvs (kube-proxy, keepalived or by hand); it is left untouched")
            continue
        if have.attrs() != svc.attrs():
            p.ops.append(O.SetService(svc))
        if have.dests == svc.dests or have.dests == svc.dests[::-1]:
            continue  # the kernel lists dests newest first: an unchanged service, either way
        have_dests = {d.key: d for d in have.dests}
        wanted = set()
        for d in svc.dests:
            dk = d.key
            wanted.add(dk)
            cur = have_dests.get(dk)
            if cur is None:
                p.ops.append(O.AddDest(svc, d))
            elif cur != d:
                p.ops.append(O.SetDest(svc, d))
        # Sorted for a stable plan, but only what goes (most services lose nothing).
        mine = owned.dests.get(k, set())
        stale = [dk for dk in have_dests if dk not in wanted and dk in mine]
        p.ops.extend(O.DelDest(k, dk) for dk in sorted(stale))
    desired_keys = {s.key for s in desired}
    for k in sorted(owned.services):
        if k not in desired_keys and k in observed:
            p.ops.append(O.DelService(k))
    return p


def claim(owned: Ownership, p: Plan, observed: Observed, desired: NodeSpec, uplink: str = "",
          services: Iterable[Service] | None = None, missing: frozenset[str] = frozenset()) -> Ownership:
    """Ownership to persist *before* applying: everything the plan may create.

    Recording first means a crash mid-apply still knows its strays; a create
    that then fails is dropped again by `settle`. Records of objects that are
    neither wanted nor in the kernel any more are forgotten here.
    """
    own = _forget_services(owned.copy(), desired.services if services is None else services, observed)
    want_sysctl = effective_sysctls(desired, uplink)
    for n, rec in list(T.real_sysctls(own.sysctls).items()):
        c = sysctl_claim(rec)
        if n in want_sysctl:
            if c.written != want_sysctl[n]:  # what this pass leaves in the kernel
                own.sysctls[n] = SysctlClaim(c.original, want_sysctl[n])
        elif c.restore_to(observed.sysctls.get(n)) is None:
            del own.sysctls[n]  # back as it was, or somebody else's value now: not ours
    want_addrs = {(a.device, a.address) for a in local_addresses(desired)}
    own.addresses = {a for a in own.addresses if a in want_addrs or a in observed.addresses}
    want_links = {a.device for a in local_addresses(desired)} | F.wanted(desired) | G.wanted(desired)
    own.links = {n: h for n, h in own.links.items() if n in want_links or n in observed.links}
    want_rules, want_routes = reply_routing(desired)
    own.rules = {r for r in own.rules if r in want_rules or r in observed.rules}
    own.routes = {r for r in own.routes if r in want_routes or r in observed.routes}
    want_nft = snat_table(desired) is not None
    unread = "nft" in missing  # the table was not read: what the record says stands
    own.nft_tables = {t for t in own.nft_tables if want_nft or unread or t in observed.nft_tables}
    return T.claim(_record(own, p, observed), p.ops, observed, desired)


def claim_services(owned: Ownership, p: Plan, observed: Observed, desired: Iterable[Service]) -> Ownership:
    """`claim` for a `plan_services` plan: the IPVS records only (every other
    record is left as it is, whatever ``observed`` says of links or sysctls)."""
    return _record(_forget_services(owned.copy(), desired, observed), p, observed)


def _forget_services(own: Ownership, desired: Iterable[Service], observed: Observed) -> Ownership:
    """Drop (in place) records of services neither wanted nor in the kernel."""
    want_keys = {s.key for s in desired}
    for k in list(own.services):
        if k not in want_keys and k not in observed.services:
            own.services.discard(k)
            own.dests.pop(k, None)
    return own


_DEST_CREATES = (O.AddDest, O.SetDest)
# Ops whose success leaves the record as claim made it (settle acts on their failure only).
_CREATES = (O.AddService, O.AddDest, O.SetDest)


def _record(own: Ownership, p: Plan, observed: Observed) -> Ownership:
    """Add (in place) everything the plan's ops may create."""
    # A service's dests follow it in the plan: its key and record set are
    # looked up once per service, not once per dest.
    last, dests = None, set()
    for op in p.ops:
        if type(op) in _DEST_CREATES:
            if op.service is not last:
                last, dests = op.service, own.dests.setdefault(op.service.key, set())
            dests.add(op.dest.key)
            continue
        match op:
            case O.AddService(s):
                own.services.add(s.key)
                own.dests.setdefault(s.key, set())
            case O.AddDest(s, d) | O.SetDest(s, d):
                own.dests.setdefault(s.key, set()).add(d.key)
            case O.AddAddress(dev, a, _):
                own.addresses.add((dev, a))
            case O.AddLink(n, _):
                own.links[n] = "created"
            case O.AddFouPort(f, port):
                own.links[F.key(f, port)] = "created"
            case O.AddGreCsum(dev):
                own.links[G.key(dev)] = "created"
            case O.SetLinkUp(n, True) if n not in own.links:
                own.links[n] = "upped"
            case O.SetSysctl(n, v, False) if n not in own.sysctls:
                own.sysctls[n] = SysctlClaim(observed.sysctls.get(n), v)
            case O.AddRule(r):
                own.rules.add(r)
            case O.AddRoute(r):
                own.routes.add(r)
            case O.ReplaceNftTable(f, n, _, _):
                own.nft_tables.add((f, n))
    return own


def settle(claimed: Ownership, results: list[tuple[O.Op, str | None]]) -> Ownership:
    """Ownership after applying: drop what failed to appear or was removed.

    `results` pairs each op with None (done) or an error text starting with
    the errno name. A create the kernel refused (EEXIST: somebody else's
    object; EINVAL, ENOENT, ...) is not ours. One whose outcome is unknown
    (state.outcome_unknown: a lost ack, ENOBUFS, a socket error after the
    send) stays claimed: the next observe shows whether it exists, and if it
    does it is ours. Deleting one of our services also removes any
    dest someone added to it by hand: the service, and what is in it, is ours.
    """
    own = claimed.copy()
    for op, err in results:
        if err is None and type(op) in _CREATES:
            continue  # created as claimed: nothing to drop
        refused = bool(err) and not outcome_unknown(err)
        match op:
            case O.AddService(s) if refused:
                own.services.discard(s.key)
                own.dests.pop(s.key, None)
            case O.AddDest(s, d) if refused:
                own.dests.get(s.key, set()).discard(d.key)
            case O.DelService(k) if not err or err.startswith("ENOENT") or err.startswith("ESRCH"):
                own.services.discard(k)
                own.dests.pop(k, None)
            case O.DelDest(k, d) if not err or err.startswith("ENOENT"):
                own.dests.get(k, set()).discard(d)
            case O.AddAddress(dev, a, _) if refused:
                own.addresses.discard((dev, a))
            case O.DelAddress(dev, a, _) if not err:
                own.addresses.discard((dev, a))
            case O.AddLink(n, _) if refused:
                own.links.pop(n, None)
            case O.DelLink(n) | O.SetLinkUp(n, False) if not err:
                own.links.pop(n, None)
            case O.AddFouPort(f, port) if refused:
                own.links.pop(F.key(f, port), None)
            case O.DelFouPort(f, port) if not err:
                own.links.pop(F.key(f, port), None)
            case O.AddGreCsum(dev) if refused:
                own.links.pop(G.key(dev), None)
            case O.DelGreCsum(dev) if not err:
                own.links.pop(G.key(dev), None)
            case O.SetSysctl(n, _, True) if not err:
                own.sysctls.pop(n, None)
            case O.SetIPVSTimeouts(_, True) if not err:
                T.settle(own, [(op, err)])
            case O.AddRule(r) if refused:
                own.rules.discard(r)
            case O.DelRule(r) if not err:
                own.rules.discard(r)
            case O.AddRoute(r) if refused:
                own.routes.discard(r)
            case O.DelRoute(r) if not err:
                own.routes.discard(r)
            case O.ReplaceNftTable(f, n, _, True) if refused:
                # nft -f is one transaction: a failed create left nothing behind.
                own.nft_tables.discard((f, n))
            case O.DelNftTable(f, n) if not err:
                own.nft_tables.discard((f, n))
    return own


__all__ = ["Plan", "plan", "plan_services", "claim", "claim_services", "settle", "reply_routing", "snat_table", "DIRECTOR_DEVICE",
           "REPLY_TABLE_BASE", "REPLY_RULE_PRIORITY", "NFT_FAMILY", "NFT_TABLE"]
