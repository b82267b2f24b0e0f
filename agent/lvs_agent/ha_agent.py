"""The agent's director side in a director group: hold only the VIPs it owns.

Every director of a group programs the same IPVS services (hot standby: a
takeover needs no IPVS change, only the address); the spec the engine gets
lists only the VIP addresses this director holds (``held_spec``), so a VIP
it gives up is removed by the ordinary rule (an address the record lists and
the spec does not), and one it takes over is added like any other. After the
pass that added them, the new VIPs are announced (gratuitous ARP / NA) on the
group's device. The kernel's connection sync daemon runs on that device with
the group's sync id, master and backup in every director, so whichever holds
a VIP sends its connections and the others have them.

NAT with ``natReturn: gateway``: a group may carry the real servers' default
gateway (``DirectorGroup.gateway``). It goes with the group's first VIP:
whoever holds that VIP holds the gateway address too, on the device that
reaches the real servers (the group's ``gateway_device``, else the device of
this director's route to one of the VIP's NAT real servers, looked up in the
HA thread), and announces it there like the VIP, so the real servers' replies
reach the director that has the connections.

The pure parts (policies, held_spec, unserved, wanted_daemons) are unit
tested; :class:`HaController` is the shell: one thread renews this director's
Lease, reads the group's Leases, decides (ha_owner.decide) and wakes the
agent when what it holds changes. Without director groups in the spec it does
nothing at all: no Lease, no daemon, every VIP held (a single director
behaves as before).
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping

from lvs_model.nodespec import LocalAddress, NodeSpec

from . import ha_owner as H
from .ipvs_sync import SyncDaemon

log = logging.getLogger("lvs_agent.ha")


# --------------------------------------------------------------------------
# Pure
# --------------------------------------------------------------------------

def policies(spec: NodeSpec) -> dict[str, H.Policy]:
    """VIP -> how it is placed, for every VIP of a group this director is in.
    A VIP in two groups (two NodeStates that disagree) takes the first."""
    out: dict[str, H.Policy] = {}
    for g in spec.director_groups:
        if g.members and spec.node not in g.members:
            continue
        p = H.Policy(frozenset(g.members) or None, g.preferred or None, g.fail_back)
        for v in g.vips:
            out.setdefault(v, p)
    return out


def gateways(spec: NodeSpec) -> dict[str, tuple[str, str, str]]:
    """VIP -> (gateway, declared device, a NAT real server of the VIP to find
    the device by) for the groups of this director that carry a gateway. The
    gateway goes with the group's first VIP: one holder, even when the
    group's VIPs are spread over several directors."""
    out: dict[str, tuple[str, str, str]] = {}
    for g in spec.director_groups:
        if not g.gateway or not g.vips or (g.members and spec.node not in g.members):
            continue
        vip = g.vips[0]
        rips = sorted(d.address for s in spec.services if s.address == vip for d in s.dests if d.method == "nat")
        out.setdefault(vip, (g.gateway, g.gateway_device, rips[0] if rips else ""))
    return out


def gateway_addresses(spec: NodeSpec, held: Iterable[str], devices: Mapping[str, str]) -> tuple[LocalAddress, ...]:
    """The gateway addresses this director holds with ``held``: each on its
    declared device, else on ``devices[gateway]`` (the device of the route to
    the real servers); one with no device known yet is not held."""
    out = []
    for vip, (gw, declared, _) in sorted(gateways(spec).items()):
        device = declared or devices.get(gw, "")
        if vip in held and device:
            out.append(LocalAddress(gw, device))
    return tuple(dict.fromkeys(out))


def held_spec(spec: NodeSpec, held: Iterable[str], devices: Mapping[str, str] | None = None) -> NodeSpec:
    """``spec`` with the director addresses of group VIPs this director does
    not hold left out (addresses outside every group are kept), and the NAT
    gateways of the VIPs it holds added (``devices``: gateway -> device)."""
    grouped = set(policies(spec))
    if not grouped:
        return spec
    keep = set(held)
    addrs = tuple(a for a in spec.director_addresses if a.address not in grouped or a.address in keep)
    addrs = tuple(dict.fromkeys(addrs + gateway_addresses(spec, keep, devices or {})))
    return spec if addrs == spec.director_addresses else replace(spec, director_addresses=addrs)


def unserved(spec: NodeSpec, vips: Iterable[str]) -> frozenset[str]:
    """The VIPs whose services all have no dest with a weight above 0 (after
    the health verdicts: a failed server's weight is 0). A VIP with no
    service here is not counted: nothing to say about it."""
    out = set()
    for vip in vips:
        svcs = [s for s in spec.services if s.address == vip]
        if svcs and not any(d.weight > 0 for s in svcs for d in s.dests):
            out.add(vip)
    return frozenset(out)


def cut_off(spec: NodeSpec, vips: Iterable[str], uplink: str, running: Callable[[str], bool]) -> frozenset[str]:
    """The VIPs whose group device (its ``device``, else the uplink) is down
    or has no carrier: this director cannot answer for them, whatever its
    Lease says (its API server may be reachable another way)."""
    devices = {v: g.device or uplink for g in spec.director_groups for v in g.vips}
    down = {d for d in set(devices.values()) if d and not running(d)}
    return frozenset(v for v in vips if devices.get(v) in down)


def wanted_daemons(spec: NodeSpec, uplink: str) -> tuple[list[SyncDaemon], str]:
    """The sync daemons (master and backup) for this director, and a problem
    when the groups ask for more than one: a namespace runs one daemon per
    state, so the group with the lowest sync id wins and the others are named."""
    groups = sorted({(g.sync_id, g.device or uplink) for g in spec.director_groups
                     if g.sync_id and (not g.members or spec.node in g.members) and (g.device or uplink)})
    if not groups:
        return [], ""
    sync_id, device = groups[0]
    problem = ""
    if len(groups) > 1:
        problem = (f"one sync daemon per director: sync id {sync_id} on {device} runs, "
                   f"not {', '.join(f'{i} on {d}' for i, d in groups[1:])}")
    return [SyncDaemon("master", device, sync_id), SyncDaemon("backup", device, sync_id)], problem


def announce_device(spec: NodeSpec, vip: str, uplink: str) -> str:
    for g in spec.director_groups:
        if vip in g.vips and g.device:
            return g.device
    return uplink


# --------------------------------------------------------------------------
# Shell
# --------------------------------------------------------------------------

class HaController:
    """This director's side of its groups.

    ``lease``: an ha_lease.DirectorLease; ``announce(device, vip)``: the
    takeover announcement; ``sync(wanted)``: make the sync daemons match;
    ``on_change``: wake the agent; ``clock``: monotonic seconds."""

    def __init__(self, lease: Any, announce: Callable[[str, str], None],
                 sync: Callable[[list[SyncDaemon]], None] | None = None,
                 on_change: Callable[[], None] = lambda: None, renew_every: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 resolve_uplink: Callable[[NodeSpec], str] | None = None,
                 watch: Callable[[str], Any] | None = None,
                 route_lookup: Callable[[str], str] | None = None,
                 link_running: Callable[[str], bool] = lambda device: True):
        """``resolve_uplink``: the device announcements and the sync daemon
        use when a group names none (read in this thread, not in the pass).
        ``watch(device)``: an object whose ``poll()`` returns the VIPs other
        hosts announced since the last call (announce.ArpWatcher).
        ``route_lookup(address)``: the device of the route to ``address``,
        where a NAT gateway with no declared device is held (default:
        :func:`route_device` in the agent's own namespace).
        ``link_running(device)``: whether the group's device is up with a
        carrier (announce.link_running); a director whose device is not gives
        its VIPs up like one without a healthy real server."""
        self.lease, self.announce, self.sync, self.on_change = lease, announce, sync, on_change
        self.resolve_uplink = resolve_uplink
        self.watch, self.watcher = watch, None
        self.route_lookup = route_lookup or route_device
        self.link_running = link_running
        self.gateway_devices: dict[str, str] = {}  # gateway -> device of the route to its real servers
        self.given_gateways: tuple[LocalAddress, ...] = ()  # in the spec of the last filter()
        self.announced_gateways: tuple[LocalAddress, ...] = ()
        self.renew_every, self.clock = renew_every, clock
        self.tracker = H.LeaseTracker()
        self.listed_since: float | None = None  # first successful list of the members
        self.held: frozenset[str] = frozenset()
        self.since: dict[str, str] = {}  # VIP -> when this director took it (RFC 3339 UTC)
        self.pending: set[str] = set()  # taken over, not yet announced
        self.announced_by_others: set[str] = set()
        self.spec = NodeSpec()
        self.uplink = ""
        self.takeovers = 0
        self.lease_errors = 0
        self.sync_problem = ""
        self.daemons: list[SyncDaemon] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- inputs ----------------------------------------------------------
    def update(self, spec: NodeSpec, uplink: str = "") -> None:
        """The agent's latest spec (health verdicts applied) and uplink ("":
        the spec's, else resolved in the next round)."""
        with self._lock:
            if spec.uplink != self.spec.uplink:
                self.uplink = ""
            self.spec, self.uplink = spec, uplink or spec.uplink or self.uplink

    def seen_announcement(self, vip: str) -> None:
        """Another director announced ``vip`` (its gratuitous ARP was seen)."""
        with self._lock:
            self.announced_by_others.add(vip)

    # -- outputs ---------------------------------------------------------
    def filter(self, spec: NodeSpec) -> NodeSpec:
        with self._lock:
            self.given_gateways = gateway_addresses(spec, self.held, self.gateway_devices)
            return held_spec(spec, self.held, self.gateway_devices)

    def active(self, vip: str) -> str | None:
        """Who holds ``vip`` as this director sees its group (None: unknown)."""
        with self._lock:
            pol = policies(self.spec).get(vip)
            if pol is None:
                return None
            return H.owner(vip, self.tracker.live(self.clock()), pol)

    def annotate(self, status: dict, spec: NodeSpec) -> None:
        """Add ``activeDirectors`` to a NodeState status: for each group VIP
        of ``spec`` (that object's), who holds it as this director sees the
        group and whether it is this one (the operator shows the holder)."""
        grouped = policies(self.spec)
        rows = [{"address": a.address, "director": self.active(a.address) or "",
                 "held": a.address in self.held,
                 **({"since": self.since[a.address]} if a.address in self.held and a.address in self.since else {})}
                for a in spec.director_addresses if a.address in grouped]
        if rows:
            status["activeDirectors"] = rows

    # -- one round -------------------------------------------------------
    def step(self) -> bool:
        """Renew, read, decide. True when what this director holds changed."""
        with self._lock:
            spec, uplink = self.spec, self.uplink
        vips = policies(spec)
        if not vips:
            if self.daemons:  # the groups are gone: stop the daemons we started
                self._sync(spec, uplink)
            return False
        if not uplink and self.resolve_uplink is not None:
            try:
                uplink = self.uplink = self.resolve_uplink(spec)
            except Exception as e:  # noqa: BLE001
                log.warning("no uplink for the director group: %s", e)
        bad = unserved(spec, vips) | cut_off(spec, vips, uplink, self.link_running)
        self._watch(uplink)
        moved = self._route_gateways(spec)
        try:
            self.lease.renew(self.held, bad)
        except Exception as e:  # noqa: BLE001 - the API server away: the list below freezes
            self.lease_errors += 1
            log.warning("renewing the director lease: %s", e)
        try:
            self.tracker.observe(self.lease.members(), self.clock())
            if self.listed_since is None:
                self.listed_since = self.clock()
        except Exception as e:  # noqa: BLE001
            self.tracker.unreadable()
            log.warning("reading the director leases (owners frozen): %s", e)
        # A director starting (or coming back) takes nothing before it has
        # watched the list for a Lease duration: a director that started a
        # moment earlier may hold a VIP its Lease does not list yet, and two
        # directors deciding on different views would both take it.
        grace = getattr(self.lease, "duration", 0.0)
        may_take = self.listed_since is not None and self.clock() - self.listed_since >= grace
        with self._lock:
            others = frozenset(self.announced_by_others)
            new = H.decide(spec.node, vips, self.tracker.live(self.clock()), self.held,
                           frozen=self.tracker.frozen, announced_by_others=others, may_take=may_take)
            before, self.held = self.held, new
            taken = H.takeovers(before, new)
            self.pending |= taken
            self.pending &= new
            if not self.tracker.frozen:
                self.announced_by_others.clear()  # only what was seen while cut off counts
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for vip in sorted(taken):
            self.takeovers += 1
            self.since[vip] = stamp
            log.info("took over VIP %s", vip)
        for vip in sorted(before - new):
            self.since.pop(vip, None)
            log.info("gave up VIP %s", vip)
        self._sync(spec, uplink)
        if new != before:
            try:
                self.lease.renew(new, bad)  # tell the others now, not a period later
            except Exception:  # noqa: BLE001
                self.lease_errors += 1
        if new != before or moved & new:
            self.on_change()
        return new != before

    def _route_gateways(self, spec: NodeSpec) -> frozenset[str]:
        """Look up the device of each gateway with none declared (the route
        to a real server of its VIP); the VIPs whose gateway device changed."""
        moved = set()
        for vip, (gw, declared, rip) in gateways(spec).items():
            if declared or not rip:
                continue
            try:
                device = self.route_lookup(rip)
            except Exception as e:  # noqa: BLE001 - keep what was found before
                log.warning("no route to %s for the NAT gateway %s: %s", rip, gw, e)
                continue
            with self._lock:
                if device and self.gateway_devices.get(gw) != device:
                    self.gateway_devices[gw] = device
                    moved.add(vip)
        return frozenset(moved)

    def _watch(self, uplink: str) -> None:
        """Collect the announcements of VIPs held here by other hosts."""
        if self.watch is None or not uplink:
            return
        try:
            if self.watcher is None:
                self.watcher = self.watch(uplink)
            seen = self.watcher.poll()
        except Exception as e:  # noqa: BLE001 - without CAP_NET_RAW: no watching
            log.warning("not watching gratuitous ARP on %s: %s", uplink, e)
            self.watch = None
            return
        with self._lock:
            self.announced_by_others |= seen & self.held

    def _sync(self, spec: NodeSpec, uplink: str) -> None:
        want, self.sync_problem = wanted_daemons(spec, uplink)
        if self.sync is None or want == self.daemons:
            return
        try:
            self.sync(want)
            self.daemons = want
        except Exception as e:  # noqa: BLE001
            self.sync_problem = f"sync daemon: {e}"
            log.warning("%s", self.sync_problem)

    def after_pass(self) -> None:
        """The pass that added the taken-over addresses is done: announce them."""
        with self._lock:
            todo, self.pending = sorted(self.pending), set()
            spec, uplink = self.spec, self.uplink
            new_gateways = [a for a in self.given_gateways if a not in self.announced_gateways]
            self.announced_gateways = self.given_gateways
        todo_addrs = [(announce_device(spec, vip, uplink), vip) for vip in todo]
        todo_addrs += [(a.device, a.address) for a in new_gateways]
        for device, address in todo_addrs:
            try:
                self.announce(device, address)
            except Exception as e:  # noqa: BLE001
                log.warning("announcing %s: %s", address, e)

    # -- thread ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ha", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the loop must go on
                log.exception("director HA round failed")
            self._stop.wait(self.renew_every)

    def stop(self) -> frozenset[str]:
        """Shutdown: stop deciding, hold nothing, delete the Lease so the
        others take over at once. Returns what was held (the agent removes
        those addresses in its last pass; IPVS services and the sync daemons
        stay as they are)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            was, self.held, self.pending = self.held, frozenset(), set()
        if policies(self.spec):
            try:
                self.lease.release()
            except Exception as e:  # noqa: BLE001 - it expires anyway
                log.warning("deleting the director lease: %s", e)
        return was


def route_device(address: str, netns: str | None = None) -> str:
    """The device of the kernel's route to ``address`` (``ip route get``)."""
    from .rtnl import open_iproute
    ipr = open_iproute(netns)
    try:
        (route,) = ipr.route("get", dst=address)[:1]
        return ipr.link("get", index=route.get("RTA_OIF"))[0].get("IFLA_IFNAME") or ""
    finally:
        ipr.close()


def kernel_sync(netns: str | None) -> Callable[[list[SyncDaemon]], None]:
    """``sync(wanted)`` for HaController: make the namespace's sync daemons
    match. A daemon of a state the agent wants is replaced when its settings
    differ; one of a state it neither wants nor started is left alone."""
    from .ipvs_sync import list_daemons, plan, start, stop
    from .netlink_batch import IPVSConnection
    started: set[str] = set()

    def sync(want: list[SyncDaemon]) -> None:
        with IPVSConnection(netns) as c:
            stops, starts = plan(want, list_daemons(c), {d.state for d in want} | started)
            for state in stops:
                stop(c, state)
                started.discard(state)
            for d in starts:
                start(c, d)
                started.add(d.state)
    return sync


def metrics(ha: HaController, prefix: str) -> Iterable:
    """Prometheus families: takeovers, VIPs held here, Lease write errors, the
    sync daemons this agent runs."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    yield CounterMetricFamily(f"{prefix}_director_takeovers", "VIPs this director took over", value=ha.takeovers)
    yield GaugeMetricFamily(f"{prefix}_director_owned_vips", "Group VIPs this director holds", value=len(ha.held))
    yield CounterMetricFamily(f"{prefix}_director_lease_errors", "Failed writes of this director's Lease",
                              value=ha.lease_errors)
    sync = GaugeMetricFamily(f"{prefix}_sync_daemon", "1 for each IPVS sync daemon this agent runs",
                             labels=["state", "device", "syncid"])
    for d in ha.daemons:
        sync.add_metric([d.state, d.ifname, str(d.sync_id)], 1.0)
    yield sync
