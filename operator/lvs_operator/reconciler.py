"""The operator's loop: snapshot the caches, compile, write the difference.

watch.py keeps the caches (every kind listed before anything runs, so a
restarted operator never mistakes "not listed yet" for "deleted"); this
module composes the parts that turn a snapshot into writes:

- ``scope`` (pure): which VirtualServices a change can affect, so a
  RealServer change recompiles its VirtualService alone, and the periodic
  resync in slices of scoped passes;
- ``write_plan`` (pure): compile a snapshot and plan the writes;
- ``overlay``: our own writes the watch has not echoed yet, laid over the
  caches so a quick second pass neither writes twice nor posts an event twice;
- ``writer``: the writes through the API.

``Reconciler`` is the debounced loop; only the Lease holder writes. It owns
the compiler's cache (compile_cache), kept between passes. Full passes run
on leadership and whenever a change can reach beyond the VirtualServices it
names.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping

from lvs_kube.backoff import Backoff

from . import loadbalancer as LB
from . import scope as SC
from .compile_cache import CompileCache
from .overlay import Overlay
from .owned import plan_owned
from .scope import SCOPED_KINDS, Ref, scope_of_change, scoped_snapshot
from .services import derive_realservers, is_derived
from .write_plan import Writes, compile_snapshot, plan_writes
from .writer import PatchStatus, Request, Writer

log = logging.getLogger("lvs_operator")

# Defaults of the flags of the same names (main.py, operator/README.md).
DEBOUNCE = 0.3  # seconds: at most this long between a pass and the next, so a burst's events gather
RESYNC = 300.0  # seconds: every VirtualService recompiled once per this period, whatever the watch missed


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic collector off while a pass computes: a compile allocates
    many acyclic objects, each batch of which would make the collector rescan
    the whole (large, long-lived) heap; it runs once afterwards instead, so
    a cycle made meanwhile is still collected. Left off if it was off."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    RESYNC_SLICES = SC.RESYNC_SLICES

    def __init__(self, namespace: str, api_factory: Callable[[], Any], *, debounce: float = DEBOUNCE,
                 resync: float = RESYNC, is_leader: Callable[[], bool] = lambda: True,
                 identity: str = "kube-lvs-operator", patch_status: PatchStatus | None = None,
                 default_loadbalancer: bool = False, request: Request | None = None):
        """``patch_status``, ``request``: how statuses and NodeStates are written (writer.Writer).
        ``default_loadbalancer``: LoadBalancer Services that name no class are ours too."""
        self.namespace = namespace
        self.default_loadbalancer = default_loadbalancer
        self.api_factory = api_factory
        self.debounce, self.resync = debounce, resync
        self.is_leader = is_leader
        self.identity = identity
        # kind -> {(namespace, name): projected object}; None until every kind listed.
        self.caches: Mapping[str, Mapping[tuple[str, str], dict]] | None = None
        self._dirty: asyncio.Event | None = None
        # What the next pass must recompile: None = everything.
        self.scope: set[Ref] | None = None
        self.entangled: set[Ref] = set()  # from the last full pass
        self.full_passes = 0
        self.overlay = Overlay()
        self.writer = Writer(namespace, api_factory, self.overlay, identity=identity, patch_status=patch_status,
                             is_leader=is_leader, on_status_done=self._status_done, request=request)
        self.compile_cache = CompileCache()  # parses and renders kept between passes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._status_backoff = Backoff()
        self._replan_pending = False
        self.passes = 0
        self._pass_ended = -math.inf  # monotonic end of the last pass
        self._pass_took = 0.0  # seconds the last pass took
        self.resync_round = SC.ResyncRound()
        self.first_pass_pending = True  # log the first full pass after (re)gaining leadership
        self.index = SC.RefIndex()  # a scoped pass's snapshot in a few lookups
        self.last_error = ""
        self.last_ok = 0.0
        self._recheck: asyncio.TimerHandle | None = None  # the next pass a drain needs (recheck)
        self.phases: dict[str, float] = {}  # seconds per phase of the last pass (phases_line)
        self.full_pass_running = False  # a full pass is compiling or writing (resync_tick)

    @property
    def writes(self) -> int:
        """Objects written since start (the liveness probe reports it)."""
        return self.overlay.writes

    @property
    def status_failures(self) -> int:
        return self.writer.status_failures

    # -- triggering ----------------------------------------------------------
    @property
    def dirty(self) -> asyncio.Event:
        if self._dirty is None:
            self._dirty = asyncio.Event()
        return self._dirty

    def attach(self, caches: Mapping[str, Mapping[tuple[str, str], dict]]) -> None:
        """Every kind has been listed: from now on the caches are complete."""
        if self.caches is None:
            self.caches = caches
        self.kick()

    def changed(self, kind: str, key: tuple[str, str], old: dict | None, new: dict | None) -> None:
        """A cache change (from the watch): widen the next pass's scope."""
        if kind in SCOPED_KINDS:
            self.index.changed(kind, key, old, new)
        if new is None:
            self.overlay.forget((kind, *key))
        if self.overlay.is_echo((kind, *key), old, new):
            return  # the pass that wrote it planned with it already
        if kind in ("services", "endpointslices"):
            refs = SC.service_scope(kind, key, old, new, ((self.caches or {}).get("virtualservices") or {}).values(),
                                    self.default_loadbalancer)
        else:
            refs = scope_of_change(kind, key, old, new)
        if refs is None or self.scope is None:
            self.scope = None
        else:
            self.scope |= refs
        self.kick()

    def kick(self) -> None:
        self.dirty.set()

    def recheck(self, after: float) -> None:
        """A full pass in ``after`` seconds (on the loop): a drained director's
        NodeStates are due to go then (bgp_peers.plan_drain). One timer, the
        earliest; a restarted operator's first pass plans it again."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(0.0, after) + 0.5  # past the due second: the compile's clock has whole seconds
        if self._recheck is not None and self._recheck.when() <= due:
            return
        if self._recheck is not None:
            self._recheck.cancel()

        def fire() -> None:
            self._recheck = None
            self.scope = None
            self.kick()
        self._recheck = loop.call_at(due, fire)

    def leadership(self, leader: bool) -> None:
        """The elector's callback: a new leader starts with a full pass."""
        self.writer.drop_statuses()  # a follower writes nothing; a new leader plans them again
        if leader:
            self.first_pass_pending = True
            self.overlay.clear()
            self.scope = None
            self.kick()

    def resync_slice(self) -> set[Ref]:
        """The next VirtualServices of the resync round (scope.next_slice)."""
        if self.caches is None:
            return set()
        caches = self.caches
        part, self.resync_round = SC.next_slice(
            self.resync_round, lambda: SC.resync_refs((caches.get("virtualservices") or {}).keys(),
                                                      (caches.get("nodestates") or {}).values()),
            self.RESYNC_SLICES)
        return part

    def resync_tick(self) -> None:
        """One slice of the resync round into the next pass's scope; none
        while a full pass runs: it rechecks every VirtualService itself, and
        the slices gathered meanwhile (a first pass at scale takes many
        ticks) would make the next pass a full one again, planning every
        status the first one queued a second time."""
        if self.full_pass_running:
            return
        part = self.resync_slice()
        if not part:
            return
        if self.scope is not None:
            self.scope |= part
        self.kick()

    # -- snapshot -------------------------------------------------------------
    def snapshot(self, scope: set[Ref] | None = None) -> dict[str, list[dict]]:
        """The caches (with our own writes the watch has not shown yet); for a
        ``scope``: only its VirtualServices, RealServers and NodeStates."""
        caches = self.caches or {}
        snap = SC.scoped_view(caches, scope, self.index)
        self.overlay.apply(snap, caches, scope)
        return {k: list(v.values()) for k, v in snap.items()}  # type: ignore[union-attr]

    # -- the loop -------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        self._loop = asyncio.get_running_loop()

        async def resync() -> None:
            while not stop.is_set():
                await asyncio.sleep(self.resync / self.RESYNC_SLICES)
                if self.caches is not None and self.is_leader():
                    self.resync_tick()

        ticker = asyncio.create_task(resync())
        try:
            while not stop.is_set():
                waiter = asyncio.create_task(self.dirty.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if stop.is_set():
                    break
                # From the leading edge: a change after a quiet spell is compiled
                # at once. Then a pause as long as the last pass took, at most the
                # debounce window: a burst's later events gather meanwhile, and
                # the loop spends at most half its time in passes; after a small
                # scoped pass the next change waits milliseconds, not the window.
                wait = min(self.debounce, self._pass_took) - (time.monotonic() - self._pass_ended)
                if wait > 0:
                    await asyncio.sleep(wait)
                self.dirty.clear()
                if self.caches is None or not self.is_leader():
                    continue
                scope, self.scope = self.narrow(self.scope), set()
                snap = self.snapshot(scope)
                try:
                    began = time.monotonic()
                    self.full_pass_running = scope is None
                    try:
                        n = await asyncio.to_thread(self.reconcile_once, snap, scope)
                    finally:
                        self.full_pass_running = False
                        self._pass_ended = time.monotonic()
                        self._pass_took = self._pass_ended - began
                    self.passes += 1
                    self.last_ok = time.time()
                    self.last_error = ""
                    backoff.reset()
                    if self.first_pass_pending:
                        self.first_pass_pending = False
                        log.info("first full pass as leader: %d write(s) (%s)", n, self.phases_line())
                    elif n:
                        log.info("reconciled: %d write(s)", n)
                except Exception as e:  # API trouble: retry with backoff
                    self.last_error = str(e)
                    self.scope = None
                    delay = backoff.next()
                    log.warning("reconcile failed (retrying in %.0fs): %s", delay, e)
                    asyncio.get_running_loop().call_later(delay, self.kick)
        finally:
            ticker.cancel()
            self.writer.stop()

    # -- writing (in a worker thread) -------------------------------------------
    def reconcile_once(self, snap: Mapping[str, list[dict]], scope: set[Ref] | None = None) -> int:
        """One pass: everything (scope None), or only the VirtualServices in
        ``scope`` when none of them depends on another one."""
        if scope is not None:
            if not scope:
                return 0  # woken, but nothing changed
            scope = self.narrow(scope, len(snap.get("virtualservices", ())))
            if scope is not None:
                snap = scoped_snapshot(snap, scope)  # a snapshot(scope) passes unchanged
        now = now_rfc3339()
        derived_writes = 0
        clock = time.monotonic
        t = clock()
        if scope is None:  # LoadBalancer Services: VIPs are only allocated against every VirtualService
            lb = LB.plan_loadbalancers(snap.get("services", ()), snap.get("virtualservices", ()),
                                       snap.get("vippools", ()), snap.get("namespaces", ()), now,
                                       self.default_loadbalancer)
            vw = plan_owned("virtualservices", lb.virtualservices, snap.get("virtualservices", ()),
                            lambda o: LB.owner_service(o) is not None)
            snap = self.writer.write_owned(vw, snap)
            derived_writes += len(vw) + self.writer.write_service_statuses(lb, snap.get("services", ()))
        der = derive_realservers(snap.get("virtualservices", ()), snap.get("services", ()),
                                 snap.get("endpointslices", ()), snap.get("realservers", ()))
        rw = plan_owned("realservers", der.realservers, snap.get("realservers", ()), is_derived)
        snap = self.writer.write_owned(rw, snap)
        derived_writes += len(rw)
        t_derive = clock()
        with paused_gc():
            result = compile_snapshot(snap, self.namespace, now, self.compile_cache)
        t_compile = clock()
        result.events.extend(der.events + (lb.events if scope is None else []))
        if scope is None:
            self.entangled = result.entangled
            self.full_passes += 1
        else:
            result.peer_status = {}  # which nodes peer with a BGPPeer: only a full pass sees them all
        if result.recheck_after is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.recheck, result.recheck_after)
        with paused_gc():
            w = plan_writes(result, snap, self.namespace)
        t_plan = clock()
        self.phases = {"derive": t_derive - t, "compile": t_compile - t_derive, "plan": t_plan - t_compile}
        if not w:
            return derived_writes
        self.execute(w)
        self.phases["write"] = clock() - t_plan
        return len(w) + derived_writes

    def phases_line(self) -> str:
        """Where the last pass's time went: a start-up at scale is judged by it."""
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.phases.items())

    def narrow(self, scope: set[Ref] | None, known: int | None = None) -> set[Ref] | None:
        """scope.narrow against the last full pass's entanglements and the
        VirtualServices known (the caches' count once attached, else ``known``)."""
        if self.caches is not None:
            known = len(self.caches.get("virtualservices") or ())
        return SC.narrow(scope, self.entangled, known or 0)

    def execute(self, w: Writes) -> None:
        self.writer.execute(w)

    # -- statuses (written by the writer's threads) --------------------------------
    def queue_statuses(self, statuses: Iterable[tuple[str, str, str, dict]]) -> None:
        self.writer.queue_statuses(statuses)

    def statuses_idle(self, timeout: float | None = None) -> bool:
        return self.writer.statuses_idle(timeout)

    def _status_done(self, ok: bool) -> None:
        """From a status thread: a failure is planned again by a full pass after a backoff."""
        if ok:
            self._status_backoff.reset()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._replan_later)

    def _replan_later(self) -> None:
        """A full pass plans the failed statuses again, after the backoff: one pending at a time."""
        if self._replan_pending:
            return
        self._replan_pending = True

        def replan() -> None:
            self._replan_pending = False
            self.scope = None
            self.kick()
        asyncio.get_running_loop().call_later(self._status_backoff.next(), replan)
