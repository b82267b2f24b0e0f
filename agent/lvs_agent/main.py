"""`lvs-agent`: the node agent's shell: the pass loop, composing its parts.

Watches only its own node's NodeState objects (store.py), programs them
with the engine, runs the health checks (health.py), writes status
(status_reporter.py), serves metrics. What it never does: flush IPVS, reset
weights on start or stop, or drop the kernel state because the API server is
away. It keeps the last objects it saw in a cache file beside the ownership
record, so a restart during an API outage still knows what to hold and keeps
health-checking.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from lvs_model.channel import GROUP, NODESTATE_PLURAL as PLURAL, VERSION

from .drain import by_service
from .gcpause import GCPauses
from .health import HealthChecker
from .nodestate import Merged, StatusInputs, merge
from .object_cache import reconcile_from_cache
from .status_reporter import StatusReporter, StatusSnapshot, bgp_status
from .store import NodeStates, only_status_changed
from .sweep import Sweep
from .verdicts import VERDICT_RECORD, VerdictStore, effective_spec

log = logging.getLogger("lvs-agent")

# Seconds between loop passes at most: each pass sweeps a slice, so the sweep
# advances in steps this small and a change never waits for a long one.
SWEEP_TICK = 0.5
# Seconds between reads of the BGP sessions for status (a birdc run each);
# a changed announcement is reported at once.
BGP_SESSIONS_INTERVAL = 10.0
# Seconds a status build or write waits at most for a pass to end: while
# passes follow each other each writer still gets one write through per
# wait, so statuses keep flowing during a burst of changes.
STATUS_YIELD = 0.5
# Seconds each slice of background work (the connection-count read, the
# object cache's write) waits at most for a change's pass: shorter than
# STATUS_YIELD, since background work must not hold the statuses back.
BACKGROUND_YIELD = 0.25
# Threads writing statuses: writes wait on the network, not the interpreter,
# but every thread shares one interpreter lock with the pass; two overlap the
# round trips without taking the interpreter from the pass.
STATUS_WORKERS = 2
# Seconds, the interpreter's switch interval: what a thread back from a
# syscall waits for the interpreter while a background thread computes. The
# pass makes many netlink calls in a row, so it is kept well below Python's
# 5 ms default, or a change's latency would be dozens of such waits.
SWITCH_INTERVAL = 0.001


class Agent:
    """The pass loop: the store's objects merged, health verdicts applied,
    the engine run on what changed plus a slice of the drift sweep, the
    statuses handed to the reporter."""

    # The loop's tuning, per instance for tests (the module constants say why).
    SWEEP_TICK, STATUS_YIELD, BACKGROUND_YIELD = SWEEP_TICK, STATUS_YIELD, BACKGROUND_YIELD
    BGP_SESSIONS_INTERVAL = BGP_SESSIONS_INTERVAL

    def __init__(self, node: str, namespace: str, engine: Any, api: Any, cache_path: Path,
                 resync: float = 30.0, conn_status_interval: float = 30.0, status_workers: int = STATUS_WORKERS,
                 patch_status: Callable[[str, str, dict], None] | None = None):
        """``patch_status(namespace, name, body)``: how statuses are written (main()
        passes a StatusPatcher; else through ``api``)."""
        self.node, self.namespace, self.engine, self.api = node, namespace, engine, api
        patch = patch_status or (lambda ns, name, body: self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, name, body))
        self.cache_path = cache_path
        self.stopping = False
        self.reconciles = 0
        self.reconcile_errors = 0
        self.last_duration = 0.0
        self._last_full: float | None = None  # monotonic time of the last full reconcile
        self.sweep = Sweep(resync)
        self._pass_at = 0.0  # monotonic time of the last pass
        self._programmed = None  # the last spec handed to the engine (health verdicts applied)
        self._merged: Merged | None = None  # the last merge: unchanged objects are not parsed again
        self._wake: asyncio.Event | None = None
        self._woken_at: float | None = None  # the first wake since the last pass began
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bgp_read_at = -math.inf  # when the sessions were last read from BIRD
        # Set while no pass runs: status threads wait for it (at most STATUS_YIELD
        # seconds), so a burst of statuses never slows programming the kernel.
        self._idle = threading.Event()
        self._idle.set()
        self.reporter = StatusReporter(engine, lambda: self.store.objects,
                                       lambda name, body: patch(self.namespace, name, body),
                                       lambda name: self.store.touch(name),
                                       conn_status_interval=conn_status_interval, workers=status_workers,
                                       gate=lambda: self._idle.wait(self.STATUS_YIELD), pause=self._yield_to_pass)
        self.store = NodeStates(api, namespace, node, cache_path, wake=self.wake, forget=self.reporter.forget,
                                stopped=lambda: self.stopping)
        self.status = self.reporter.writer
        # Verdicts kept beside the object cache: a restart keeps failed servers at 0 (verdicts.py).
        self.checker = HealthChecker(on_change=self.wake, netns=getattr(engine, "netns", None),
                                     store=VerdictStore(Path(cache_path).with_name(VERDICT_RECORD)))
        self.gc = GCPauses()

    # The watched objects, and the parts the loop hands to the reporter, read
    # and set here (tests and metrics see one agent).
    objects = property(lambda self: self.store.objects, lambda self, v: setattr(self.store, "objects", v))
    synced = property(lambda self: self.store.synced, lambda self, v: setattr(self.store, "synced", v))
    from_cache = property(lambda self: self.store.from_cache)
    resync = property(lambda self: self.sweep.resync, lambda self, v: setattr(self.sweep, "resync", v))
    sweep_round_seconds = property(lambda self: self.sweep.round_seconds)
    # Director HA (ha_agent.HaController): the engine gets only the group VIPs held here.
    ha = property(lambda self: self.reporter.ha, lambda self, v: setattr(self.reporter, "ha", v))
    # Active-active (bgp_speaker.BgpSpeaker): announces what each pass left serving.
    bgp = property(lambda self: self.reporter.bgp, lambda self, v: setattr(self.reporter, "bgp", v))

    # -- events --------------------------------------------------------------
    def wake(self) -> None:
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        if self._loop and self._wake:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _touch(self, name: str | None = None) -> None:
        """Mark an object's status for rebuilding (None: every object's)."""
        self.store.touch(name)

    def _yield_to_pass(self) -> None:
        """Between slices of background work: wait while a change is programmed."""
        self._idle.wait(self.BACKGROUND_YIELD)

    # -- reconcile -----------------------------------------------------------
    async def reconcile_once(self, full: bool = False, woken: bool = True) -> None:
        """One pass: the services changed since the last one (watch events,
        health flips) and a slice of the sweep that re-checks every service
        for drift once per ``resync`` seconds, then the statuses that may
        change. ``full``: the engine's full reconcile instead (the first
        pass). ``woken=False``: nothing changed, only the sweep moves on.
        Status threads wait while a change is programmed, not for the sweep
        (both are background work)."""
        if woken or full:
            self._idle.clear()
        try:
            await self._pass(full, woken)
        finally:
            self._idle.set()

    async def _pass(self, full: bool, woken: bool) -> None:
        began, woken_at, self._woken_at = time.monotonic(), self._woken_at, None
        dirty = self.store.take_dirty()  # before the merge: later events stay marked for the next pass
        if woken or self._merged is None or self._programmed is None or dirty is None or dirty:
            # A copy: the watch thread adds and deletes objects meanwhile (a merge
            # iterating the live map met a name deleted under it: KeyError, and the
            # loop was gone). Events after the copy stay marked for the next pass.
            objects = dict(self.objects)
            try:
                merged = self._merged = merge(objects, self.node, self._merged, dirty)
                if merged.health_checked or self.checker.running:
                    self.checker.update(merged.spec)
                programmed = self._programmed = effective_spec(merged.spec, self.checker.verdicts)
                if self.ha is not None:
                    self.ha.update(programmed)
                    programmed = self._programmed = self.ha.filter(programmed)
                self.checker.persist()  # on disk before the kernel gets the weights they give
            except Exception:  # noqa: BLE001 - a bad merge must not end the loop: all again next pass
                self.reconcile_errors += 1
                self._merged = None
                self._touch()
                log.exception("merge of the NodeStates failed; merging all of them again next pass")
                return
        else:
            merged, programmed = self._merged, self._programmed
        started = self._pass_at = time.monotonic()
        sweep = 0
        hold = self.from_cache  # no list yet: adds and updates only, the first full pass to come
        if full and not hold:
            # Even if it fails: the engine goes full by itself after a failure,
            # and the loop must not spin on a failing reconcile.
            self._last_full = started
            self.sweep.restart(started)
        elif not full:
            sweep = self.sweep.size(len(merged.spec.services), started, change=woken)
        if full or hold:
            self.gc.before_full_pass()
        try:
            if hold:
                report = await asyncio.to_thread(reconcile_from_cache, self.engine, programmed)
            elif full:
                report = await asyncio.to_thread(self.engine.reconcile, programmed)
            else:
                report = await asyncio.to_thread(self.engine.reconcile, programmed, incremental=True,
                                                 sweep=sweep)
            self.reconciles += 1
            if self.ha is not None:
                self.ha.after_pass()  # announce the VIPs this pass added
        except Exception:  # noqa: BLE001
            self.reconcile_errors += 1
            log.exception("reconcile failed")
            self._touch()  # statuses not written: all of them next time
            return
        finally:
            self.last_duration = time.monotonic() - started
        self.sweep.done(getattr(report, "swept", 0) or 0, getattr(report, "duration", 0.0),
                        getattr(report, "round_done", False), time.monotonic(), learn=not woken)
        if self.bgp is not None:
            await self._announce(programmed, report)
        n_ops = len(getattr(report, "ops", []) or [])
        if self.reconciles == 1:
            log.info("first reconcile done: %d services, %d ops", len(merged.spec.services), n_ops)
        if n_ops:
            # Where a change's time went: waiting for the loop, the merge (parse,
            # health verdicts), the engine (read, plan, apply).
            log.info("reconciled: %d ops, %d failed in %.3fs (waited %.3fs, merge %.3fs, engine %.3fs, "
                     "swept %d; %s)",
                     n_ops, len(getattr(report, "failed", []) or []), time.monotonic() - began,
                     began - woken_at if woken_at is not None else 0.0, started - began, self.last_duration,
                     getattr(report, "swept", 0) or 0, _names(dirty))
        else:
            log.debug("reconciled: nothing to do")
        errors = dict(getattr(report, "service_errors", {}) or {})
        for key, why in (getattr(report, "problems", {}) or {}).items():
            errors.setdefault(key, why)
        checked = self.checker.checked_services()
        draining = frozenset(getattr(self.engine, "draining", None) or ())
        inputs = StatusInputs(merged.owner, errors, dict(merged.errors),
                              {k: v.state for k, v in self.checker.verdicts.items()}, merged.grown_from, draining)
        self.reporter.submit(StatusSnapshot(merged, programmed, errors, dict(self.checker.verdicts), set(checked),
                                            by_service(draining)),
                             dirty, inputs, full)
        if not woken:  # a pass that programmed no change: a change never waits for this
            self.gc.settle()
        else:
            self.gc.freeze_starved()

    async def _announce(self, programmed: Any, report: Any) -> None:
        """The BGP speaker after a pass: announce what now serves, withdraw
        the rest (its failures are logged and counted, never raised). A
        changed decision rewrites the statuses of every object."""
        before = self.bgp.decisions
        if not programmed.bgp and not before and not self.bgp.running:
            return  # not an active-active director: no walk over every service per pass
        await asyncio.to_thread(self.bgp.after_pass, programmed, report, self.stopping)
        now = time.monotonic()
        if self.bgp.decisions == before and now - self._bgp_read_at < self.BGP_SESSIONS_INTERVAL:
            return
        self._bgp_read_at = now
        status = await asyncio.to_thread(self.bgp.status)  # reads the sessions from BIRD
        if status != self.reporter.bgp_report:
            self.reporter.bgp_report = status
            self._touch()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.gc.install()
        threading.Thread(target=self.store.run, daemon=True).start()
        if self.ha is not None:
            self.ha.start()
        await asyncio.sleep(0)
        if not self.synced:
            await asyncio.sleep(2)
            if not self.synced:
                self.store.load_cache()
        tick = min(self.SWEEP_TICK, self.resync) if self.resync > 0 else self.SWEEP_TICK
        while not self.stopping:
            # The first pass is a full reconcile. Then a pass when woken (a
            # watch event, a health flip: the changed services) and at least
            # every tick (a slice of the drift sweep).
            until_tick = max(0.0, tick - (time.monotonic() - self._pass_at))
            timeout = until_tick if self.synced else self.resync
            if self.store.cache_dirty:
                timeout = min(timeout, self.store.until_cache())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            woken = self._wake.is_set()
            self._wake.clear()
            # From the cache alone only health changes: an (adds-only, full) pass per resync.
            due = time.monotonic() - self._pass_at >= (max(tick, self.resync) if self.from_cache else tick)
            if self.synced and not self.stopping and (woken or due):
                await self.reconcile_once(full=self._last_full is None, woken=woken)
            if self.store.cache_dirty and self.store.until_cache() == 0.0:
                self.store.save_cache_soon(pause=self._yield_to_pass)
        if self.bgp is not None:  # withdraw every VIP first: the routers move the flows elsewhere
            await asyncio.to_thread(self.bgp.stop)
        if self.ha is not None and self.ha.stop() and self.synced:
            # Give the held VIPs up (their addresses only: the services stay,
            # nothing is flushed) so the group's next owner takes them cleanly.
            await self.reconcile_once(woken=True)
        self.store.flush_cache()
        await self.checker.stop()
        self.reporter.stop()
        self.gc.uninstall()


def _names(dirty: set[str] | None, most: int = 3) -> str:
    """The objects that woke a pass, for the log (a change is traced by its objects' names)."""
    if dirty is None:
        return "all objects"
    if not dirty:
        return "no object changed"
    shown = sorted(dirty)[:most]
    return ", ".join(shown) + (f" (+{len(dirty) - most} more)" if len(dirty) > most else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lvs-agent", description="kube-lvs node agent")
    p.add_argument("--node", default=os.environ.get("NODE_NAME", ""), help="this node's name (env NODE_NAME)")
    p.add_argument("--namespace", default=os.environ.get("KUBE_LVS_NAMESPACE", "kube-lvs-system"))
    p.add_argument("--state-dir", default=os.environ.get("KUBE_LVS_STATE_DIR", "/var/lib/kube-lvs"))
    p.add_argument("--netns", default=os.environ.get("KUBE_LVS_NETNS") or None,
                   help="program this network namespace instead of the agent's own")
    p.add_argument("--uplink", default=os.environ.get("KUBE_LVS_UPLINK", ""))
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--resync", type=float, default=30.0,
                   help="seconds in which every service is re-checked for drift (a slice every "
                        "half second); watch events reconcile only the services they change")
    p.add_argument("--metrics-port", type=int, default=int(os.environ.get("KUBE_LVS_METRICS_PORT", "9477")),
                   help="Prometheus port; 0 disables")
    p.add_argument("--metrics-address", default=os.environ.get("KUBE_LVS_METRICS_ADDRESS", "127.0.0.1"),
                   help="address the metrics endpoint listens on (default %(default)s, env "
                        "KUBE_LVS_METRICS_ADDRESS). It has no authentication and the agent runs on the host "
                        "network: to scrape from elsewhere give the node's InternalIP and protect the port "
                        "(a NetworkPolicy, or a kube-rbac-proxy sidecar in front of 127.0.0.1)")
    p.add_argument("--sysctl-root", default=os.environ.get("KUBE_LVS_SYSCTL_ROOT") or "/proc/sys",
                   help="where the sysctl tree is mounted (env KUBE_LVS_SYSCTL_ROOT): the "
                        "unprivileged DaemonSet mounts the host's /proc/sys/net at "
                        "/host/proc/sys/net, /proc/sys being read-only in a container")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(SWITCH_INTERVAL)
    if not args.node:
        p.error("--node (or env NODE_NAME from the downward API) is required")
    if not os.path.isdir(os.path.join(args.sysctl_root, "net")):
        p.error(f"--sysctl-root {args.sysctl_root}: no net/ below it (mount the host's /proc/sys/net there)")
    from .sysctl import set_sysctl_root
    set_sysctl_root(args.sysctl_root)

    from kubernetes import client, config
    if args.kubeconfig:
        config.load_kube_config(args.kubeconfig)
    else:
        config.load_incluster_config()
    from .engine import DRAIN_RECORD, Engine
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    from .state import AGENT_RECORD, hold_record
    # Held for the agent's lifetime: `lvsctl apply --state` with this record is
    # refused while the agent runs (a full reconcile with it deletes our services).
    record_lock = hold_record(state_dir / AGENT_RECORD, f"lvs-agent (pid {os.getpid()}, node {args.node})",
                              wait=True, waiting=lambda why: log.warning("%s: waiting for it", why))
    engine = Engine(state_dir / AGENT_RECORD, netns=args.netns, uplink=args.uplink,
                    drain_path=state_dir / DRAIN_RECORD)
    from lvs_kube.status_patch import StatusPatcher
    api = client.CustomObjectsApi()
    agent = Agent(args.node, args.namespace, engine, api, state_dir / "nodestates.json",
                  resync=args.resync, patch_status=functools.partial(StatusPatcher(api.api_client).patch, PLURAL))
    from . import announce as announcer
    from .ha_agent import HaController, kernel_sync, route_device
    from .ha_lease import DirectorLease
    agent.ha = HaController(DirectorLease(api, args.namespace, args.node),
                            lambda device, vip: announcer.announce(device, vip, args.netns, count=3),
                            sync=kernel_sync(args.netns), on_change=lambda: (agent.store.touch(), agent.wake()),
                            resolve_uplink=engine.resolve_uplink,
                            watch=lambda device: announcer.ArpWatcher(device, args.netns),
                            route_lookup=functools.partial(route_device, netns=args.netns),
                            link_running=functools.partial(announcer.link_running, netns=args.netns))
    from .bgp_speaker import DEFAULT_SECRET_DIR, BgpSpeaker
    # BIRD runs only while the NodeStates give this node BGP peers (active-active directors).
    agent.bgp = BgpSpeaker(state_dir / "bgp", netns=args.netns,
                           secret_dir=Path(os.environ.get("KUBE_LVS_BGP_SECRET_DIR") or DEFAULT_SECRET_DIR))
    if args.metrics_port:
        from .metrics import serve
        serve(agent, args.metrics_port, args.metrics_address)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Leave the kernel exactly as it is: no flush, no weight changes.
            loop.add_signal_handler(sig, lambda: (setattr(agent, "stopping", True), agent.wake()))
        await agent.run()

    asyncio.run(run())
    record_lock.release()
    log.info("stopped; kernel state left as it is")
    return 0


# bgp_status and only_status_changed: where their callers and tests have found them.
__all__ = ["Agent", "bgp_status", "main", "only_status_changed"]


if __name__ == "__main__":
    raise SystemExit(main())
