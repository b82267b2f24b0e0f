"""The planner: desired node state + observed kernel + ownership -> minimal ops.

Pure: no I/O, deterministic order. Drift is judged against the kernel as it is
now, not against what was applied last (keepalived#1877). Objects not in the
ownership record are never changed or deleted; a desired service whose key is
already held by someone else is reported as a problem, not taken over.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lvs_model.nodespec import DIRECTOR_DEVICE, NodeSpec, ServiceKey, effective_sysctls, local_addresses

from . import ops as O
from .state import Observed, Ownership

# Devices the kernel creates itself when the tunnel module loads: we bring them
# up but never create or delete them.
FALLBACK_TUNNELS = {"tunl0": "ipip", "ip6tnl0": "ip6tnl", "gre0": "gre"}


@dataclass
class Plan:
    ops: list[O.Op] = field(default_factory=list)
    # Desired services that cannot be programmed, with the reason.
    problems: dict[ServiceKey, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.ops)


def plan(desired: NodeSpec, observed: Observed, owned: Ownership, uplink: str = "") -> Plan:
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
        if name in wanted_links or name not in observed.links:
            continue
        removals.append(O.DelLink(name) if how == "created" else O.SetLinkUp(name, False))

    # Sysctls, after the links whose per-device entries they may name.
    want_sysctl = effective_sysctls(desired, uplink)
    for name, value in sorted(want_sysctl.items()):
        if observed.sysctls.get(name) != value:
            p.ops.append(O.SetSysctl(name, value))
    for name, original in sorted(owned.sysctls.items()):
        if name not in want_sysctl and original is not None and observed.sysctls.get(name) != original:
            removals.append(O.SetSysctl(name, original, restore=True))

    # Addresses: present anywhere counts (the seed's NAT VIP sits on the uplink).
    wanted_addrs = {(a.device, a.address): a for a in local_addresses(desired)}
    for (dev, addr), a in sorted(wanted_addrs.items()):
        # Held where wanted, or by someone else: fine. Held only at a placement of
        # ours that is going away (a VIP moving from lo to tunl0): add it anew.
        if not any(a2 == addr and ((d2, a2) not in owned.addresses or (d2, a2) in wanted_addrs)
                   for d2, a2 in observed.addresses):
            p.ops.append(O.AddAddress(dev, addr, a.prefixlen))
    for dev, addr in sorted(owned.addresses):
        if (dev, addr) not in wanted_addrs and (dev, addr) in observed.addresses:
            removals.append(O.DelAddress(dev, addr, 128 if ":" in addr else 32))

    # IPVS services and their dests.
    for svc in desired.services:
        k = svc.key
        have = observed.services.get(k)
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
        have_dests = {d.key: d for d in have.dests}
        for d in svc.dests:
            cur = have_dests.get(d.key)
            if cur is None:
                p.ops.append(O.AddDest(svc, d))
            elif cur != d:
                p.ops.append(O.SetDest(svc, d))
        wanted = {d.key for d in svc.dests}
        mine = owned.dests.get(k, set())
        p.ops.extend(O.DelDest(k, dk) for dk in sorted(have_dests)
                     if dk not in wanted and dk in mine)
    desired_keys = {s.key for s in desired.services}
    for k in sorted(owned.services):
        if k not in desired_keys and k in observed.services:
            p.ops.append(O.DelService(k))

    p.ops.extend(removals)
    return p


def claim(owned: Ownership, p: Plan, observed: Observed, desired: NodeSpec, uplink: str = "") -> Ownership:
    """Ownership to persist *before* applying: everything the plan may create.

    Recording first means a crash mid-apply still knows its strays; a create
    that then fails is dropped again by `settle`. Records of objects that are
    neither wanted nor in the kernel any more are forgotten here.
    """
    own = owned.copy()
    want_keys = {s.key for s in desired.services}
    for k in list(own.services):
        if k not in want_keys and k not in observed.services:
            own.services.discard(k)
            own.dests.pop(k, None)
    want_sysctl = effective_sysctls(desired, uplink)
    for n, original in list(own.sysctls.items()):
        if n not in want_sysctl and (original is None or observed.sysctls.get(n) == original):
            del own.sysctls[n]
    want_addrs = {(a.device, a.address) for a in local_addresses(desired)}
    own.addresses = {a for a in own.addresses if a in want_addrs or a in observed.addresses}
    want_links = {a.device for a in local_addresses(desired)}
    own.links = {n: h for n, h in own.links.items() if n in want_links or n in observed.links}
    for op in p.ops:
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
            case O.SetLinkUp(n, True) if n not in own.links:
                own.links[n] = "upped"
            case O.SetSysctl(n, _, False) if n not in own.sysctls:
                own.sysctls[n] = observed.sysctls.get(n)
    return own


def settle(claimed: Ownership, results: list[tuple[O.Op, str | None]]) -> Ownership:
    """Ownership after applying: drop what failed to appear or was removed.

    `results` pairs each op with None (done) or an error text starting with
    the errno name. A create the kernel refused (EEXIST: somebody else's
    object; EINVAL, ENOENT, ...) is not ours. One whose outcome is unknown
    (EIO: a lost ack) stays claimed: the next observe shows whether it exists,
    and if it does it is ours. Deleting one of our services also removes any
    dest someone added to it by hand: the service, and what is in it, is ours.
    """
    own = claimed.copy()
    for op, err in results:
        refused = bool(err) and not err.startswith("EIO")
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
            case O.AddAddress(dev, a, _) if err:
                own.addresses.discard((dev, a))
            case O.DelAddress(dev, a, _) if not err:
                own.addresses.discard((dev, a))
            case O.AddLink(n, _) if err:
                own.links.pop(n, None)
            case O.DelLink(n) | O.SetLinkUp(n, False) if not err:
                own.links.pop(n, None)
            case O.SetSysctl(n, _, True) if not err:
                own.sysctls.pop(n, None)
    return own


__all__ = ["Plan", "plan", "claim", "settle", "DIRECTOR_DEVICE"]
