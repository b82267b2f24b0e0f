"""Which director of a group holds each VIP (pure).

The directors a VirtualService selects form a group; exactly one live,
healthy director of the group should hold each VIP (the address, ARP/ND
answers), while every director keeps the IPVS services programmed (hot
standby). No consensus protocol is written here: the Kubernetes API server is
the member list. Each director renews one Lease of its own (one write per
renewal period whatever the number of VIPs) and publishes on it the VIPs it
holds and the VIPs it cannot serve (no healthy real server). Every agent reads
the group's Leases and computes the same answer on its own:

- **Rank** of a director for a VIP: the preferred director first (when the
  policy names one), then rendezvous (highest-random-weight) hashing of
  (VIP, director). Removing a director changes no other director's weight, so
  a director leaving moves only its own VIPs, and a director joining takes
  only the VIPs it now ranks first for (about 1/n of them): the VIPs of a
  group are spread over its directors and the spread is stable.
- **Candidates** for a VIP: the live members (Lease not expired) that do not
  list it as unserved. A director with no healthy real server for a VIP gives
  it up; when no member can serve it, every live member stays a candidate so
  the VIP is still held somewhere (the services answer as well as they can).
- **No fail-back by default**: a VIP held by a live candidate stays there
  when a better-ranked director returns, so its connections do not move
  twice. With ``fail_back`` the holder releases it to the best-ranked
  candidate, which takes it only once the holder's Lease no longer lists it
  (never two holders on purpose).
- **Two claimants** (a healed partition): the better-ranked keeps it, the
  other releases it.
- **Frozen**: when the member list cannot be read (API server away), nothing
  moves: the director keeps what it holds and takes nothing new, so a control
  plane outage drops no VIP. The one exception is a VIP another director was
  seen announcing (its gratuitous ARP): a director cut off from the API server
  while the others took its VIPs over must stop answering for them.

Lease expiry is judged on the local monotonic clock from when this agent saw
a Lease change (client-go's rule), so skewed clocks cannot expire a live
director. After the member list could not be read, every Lease counts as
freshly seen when reads resume: a director whose Lease went unrenewed because
the API server was away is not declared dead the moment it comes back.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping


@dataclass(frozen=True)
class Member:
    """One director's Lease as read from the API server."""
    name: str
    renew_time: str  # as written; only its changes matter, never its value
    duration: float  # leaseDurationSeconds
    held: frozenset[str] = frozenset()
    unserved: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Policy:
    """How one VIP is placed: over which directors (its group; None: every
    live member), the preferred one, whether it goes back to it."""
    group: frozenset[str] | None = None
    preferred: str | None = None
    fail_back: bool = False

    def within(self, live: Mapping[str, Member]) -> dict[str, Member]:
        return dict(live) if self.group is None else {n: m for n, m in live.items() if n in self.group}


@dataclass
class LeaseTracker:
    """When this agent last saw each Lease change (monotonic seconds).

    ``observe`` takes the Leases of one successful list, ``unreadable`` records
    a failed one; ``live`` says which members have not expired."""
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # name -> (renew_time, seen at)
    members: dict[str, Member] = field(default_factory=dict)
    gap: bool = True  # no successful list yet, or the last one failed

    def observe(self, leases: Iterable[Member], now: float) -> None:
        fresh = self.gap
        self.members = {m.name: m for m in leases}
        for name, m in self.members.items():
            prev = self.seen.get(name)
            if fresh or prev is None or prev[0] != m.renew_time:
                self.seen[name] = (m.renew_time, now)
        for name in set(self.seen) - set(self.members):
            del self.seen[name]  # Lease deleted: gone at once
        self.gap = False

    def unreadable(self) -> None:
        self.gap = True

    @property
    def frozen(self) -> bool:
        return self.gap

    def live(self, now: float) -> dict[str, Member]:
        return {name: m for name, m in self.members.items()
                if now - self.seen[name][1] < m.duration}


def weight(vip: str, director: str) -> int:
    """Rendezvous weight: stable across processes and Python versions (no
    ``hash()``, which is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"{vip}\0{director}".encode(), digest_size=8).digest(), "big")


def ranked(vip: str, directors: Iterable[str], policy: Policy = Policy()) -> list[str]:
    """``directors`` best first for ``vip``: the preferred one, then by weight
    (ties, astronomically rare, by name)."""
    return sorted(set(directors),
                  key=lambda d: (d != policy.preferred, -weight(vip, d), d))


def candidates(vip: str, live: Mapping[str, Member]) -> list[str]:
    """Live members that can serve ``vip``; all live members when none can."""
    able = [n for n, m in live.items() if vip not in m.unserved]
    return able or list(live)


def owner(vip: str, live: Mapping[str, Member], policy: Policy = Policy()) -> str | None:
    """Who holds ``vip`` once the group has settled (what every agent shows as
    the active director)."""
    live = policy.within(live)
    cands = candidates(vip, live)
    if not cands:
        return None
    order = ranked(vip, cands, policy)
    claimants = [d for d in order if vip in live[d].held]
    if claimants and not (policy.fail_back and claimants[0] != order[0]):
        return claimants[0]
    return order[0]


def decide(me: str, vips: Mapping[str, Policy], live: Mapping[str, Member], held: frozenset[str],
           frozen: bool = False, announced_by_others: frozenset[str] = frozenset(),
           may_take: bool = True) -> frozenset[str]:
    """The VIPs ``me`` should hold after this round.

    ``vips``: the VIPs of the groups ``me`` belongs to, each with its policy;
    ``held``: what it holds now.
    A VIP is taken only when no other live candidate still claims it, so a
    hand-over in progress never has two holders by design. ``may_take``
    False (a director that has not yet watched the member list for a Lease
    duration, so it may not have seen every live director's claims): keep
    or give up, take nothing."""
    if frozen:
        return frozenset(v for v in held if v in vips and v not in announced_by_others)
    if me in live:  # what this agent holds is known here before its Lease says so
        live = {**live, me: replace(live[me], held=held)}
    out = set()
    for vip, policy in vips.items():
        if owner(vip, live, policy) != me:
            continue  # not live, cannot serve it while others can, or someone else's
        if vip in held or (may_take and not any(vip in m.held for n, m in policy.within(live).items() if n != me)):
            out.add(vip)
    return frozenset(out)


def takeovers(before: frozenset[str], after: frozenset[str]) -> frozenset[str]:
    """VIPs newly held: each needs a gratuitous ARP / unsolicited NA."""
    return after - before
