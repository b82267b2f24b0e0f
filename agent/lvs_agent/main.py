"""`lvs-agent`: the node agent's shell.

Watches only its own node's NodeState objects (label selector), programs them
with the engine, runs the health checks, writes status, serves metrics. What
it never does: flush IPVS, reset weights on start or stop, or drop the kernel
state because the API server is away. It keeps the last objects it saw in a
cache file beside the ownership record, so a restart during an API outage
still knows what to hold and keeps health-checking.
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
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .drain import by_service
from .gcpause import GCPauses
from .health import HealthChecker, effective_spec
from .nodestate import (GROUP, PLURAL, VERSION, Merged, StatusInputs, build_status, merge, node_selector, owners_of,
                        stale_statuses, status_changed)
from .object_cache import ObjectCache, reconcile_from_cache
from .verdicts import VERDICT_RECORD, VerdictStore
from lvs_kube.backoff import Backoff
from lvs_kube.status_writer import StatusWriter
from lvs_kube.watchstream import Gone, check, follow

log = logging.getLogger("lvs-agent")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StatusSnapshot:
    """What one pass's statuses are built from; the status thread builds
    them later, while the loop goes on."""

    merged: Merged
    programmed: Any  # NodeSpec: the spec as programmed (health verdicts applied)
    errors: dict
    verdicts: dict
    checked: set
    draining: dict | None = None  # service -> dests the engine drains (drain.by_service)


class Agent:
    def __init__(self, node: str, namespace: str, engine: Any, api: Any, cache_path: Path,
                 resync: float = 30.0, conn_status_interval: float = 30.0, status_workers: int = 2,
                 patch_status: Callable[[str, str, dict], None] | None = None):
        """``patch_status(namespace, name, body)``: how statuses are written (main()
        passes a StatusPatcher; else through ``api``). ``status_workers``: two; in the
        lab VM four threads sharing one interpreter lock made each write dearer."""
        self.node, self.namespace, self.engine, self.api = node, namespace, engine, api
        self._patch = patch_status or (lambda ns, name, body: self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, ns, PLURAL, name, body))
        self.cache_path = cache_path
        self.cache = ObjectCache(cache_path)
        self.resync, self.conn_status_interval = resync, conn_status_interval
        self.objects: dict[str, dict] = {}
        self.synced = False
        # Programming from the cache file alone: no list since the start. Such
        # passes add and update only (object_cache.additive), one per resync.
        self.from_cache = False
        self._objects_lock = threading.Lock()  # the first list against a cache load
        self.stopping = False
        self.reconciles = 0
        self.reconcile_errors = 0
        self.last_duration = 0.0
        self._last_status_write: dict[str, float] = {}
        # The last status handed to the status writer per object (queued, being
        # written or written): what the next one is compared with.
        self._sent: dict[str, dict] = {}
        self._conns_due = True  # the status thread reads connection counts first
        self._last_full: float | None = None  # monotonic time of the last full reconcile
        self._swept_at: float | None = None  # monotonic time up to which the sweep has advanced
        self._sweep_cost: float | None = None  # engine seconds per swept service (moving average)
        self._round_started: float | None = None
        self.sweep_round_seconds = 0.0  # how long the last complete sweep round took
        self._pass_at = 0.0  # monotonic time of the last pass
        self._programmed = None  # the last spec handed to the engine (health verdicts applied)
        self._conns: dict = {}
        self._conns_at: float | None = None
        self._conns_cost = 0.0  # seconds the last read of the counts took
        # Objects whose new counts were held back (written too recently): the
        # counts that moved are not "moved" again on the next read, so they
        # are owed until written.
        self._conns_owed: set[str] = set()
        # Statuses to rebuild: objects the watch changed (None: all of them),
        # and the inputs the last statuses were built from.
        self._dirty: set[str] | None = None
        self._dirty_lock = threading.Lock()
        self._status_inputs: StatusInputs | None = None
        self._cache_dirty, self._cache_saved = False, 0.0
        self._cache_thread: threading.Thread | None = None
        self._merged: Merged | None = None  # the last merge: unchanged objects are not parsed again
        self._wake: asyncio.Event | None = None
        self._woken_at: float | None = None  # the first wake since the last pass began
        self._loop: asyncio.AbstractEventLoop | None = None
        # Verdicts kept beside the object cache: a restart keeps failed servers at 0 (verdicts.py).
        self.checker = HealthChecker(on_change=self.wake, netns=getattr(engine, "netns", None),
                                     store=VerdictStore(Path(cache_path).with_name(VERDICT_RECORD)))
        self.gc = GCPauses()
        # Director HA (ha_agent.HaController): the engine gets only the group VIPs held here.
        self.ha: Any = None
        # Active-active (bgp_speaker.BgpSpeaker): announces what each pass left serving.
        self.bgp: Any = None
        self._bgp_report: dict = {}  # the speaker's status after the last pass (bgp_status)
        self._bgp_read_at = -math.inf  # when the sessions were last read from BIRD
        # Set while no pass runs: status threads wait for it (at most STATUS_YIELD
        # seconds), so a burst of statuses never slows programming the kernel.
        self._idle = threading.Event()
        self._idle.set()
        self.status: StatusWriter[StatusSnapshot] = StatusWriter(
            self._build_statuses, self._patch_status, self._status_done, workers=status_workers,
            gate=lambda: self._idle.wait(self.STATUS_YIELD))

    # -- events --------------------------------------------------------------
    def wake(self) -> None:
        if self._woken_at is None:
            self._woken_at = time.monotonic()
        if self._loop and self._wake:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _touch(self, name: str | None = None) -> None:
        """Mark an object's status for rebuilding (None: every object's)."""
        with self._dirty_lock:
            if name is None or self._dirty is None:
                self._dirty = None
            else:
                self._dirty.add(name)

    def _take_dirty(self) -> set[str] | None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    def _load_cache(self) -> None:
        """Seed the objects from the cache file, only before the first list:
        a list that finished first stands (the watch resumes from its version,
        so an object it no longer has would never be deleted again)."""
        cached = self.cache.load()
        if cached is None:
            return
        with self._objects_lock:
            if self.synced:
                return
            self.objects, self.synced, self.from_cache = cached, True, True
        log.info("API server unreachable at start: using %d cached objects", len(cached))

    CACHE_EVERY = 5.0  # seconds: at 10k objects the cache is megabytes of JSON

    def _save_cache(self, now: bool = True, pause: Callable[[], object] | None = None) -> None:
        """Write the objects for a start without the API server; ``now=False``:
        only if the last write is CACHE_EVERY old (the loop writes the rest);
        ``pause``: see ObjectCache.save."""
        self._cache_dirty = True
        if not now and time.monotonic() - self._cache_saved < self.CACHE_EVERY:
            return
        self._cache_dirty = False
        self._cache_saved = time.monotonic()
        self.cache.save(self.objects, pause)

    def _save_cache_soon(self) -> None:
        """The loop's cache write, in a thread of its own: a change never waits for it."""
        if self._cache_thread is not None and self._cache_thread.is_alive():
            return
        self._cache_thread = threading.Thread(target=self._save_cache, daemon=True,
                                              kwargs={"pause": self._yield_to_pass})
        self._cache_thread.start()

    def _flush_cache(self) -> None:
        """On the way out (SIGTERM): what the watch changed since the last
        write. Without it a restart read objects up to CACHE_EVERY old."""
        if self._cache_thread is not None:
            self._cache_thread.join()
        if self._cache_dirty:
            self._save_cache()

    def _yield_to_pass(self) -> None:
        """Between slices of background work: wait while a change is programmed."""
        self._idle.wait(self.BACKGROUND_YIELD)

    def _until_cache(self) -> float:
        return max(0.0, self.CACHE_EVERY - (time.monotonic() - self._cache_saved))

    def _relist(self, selector: str) -> str:
        """List this node's objects; the resourceVersion to watch from.

        Objects the list shows unchanged keep their dicts (and so their parse:
        re-parsing 10k objects is seconds in the VM), a spec that only looks
        new keeps its mapping; only what changed is marked."""
        listed = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL,
                                                        label_selector=selector)
        first = not self.synced
        fresh: dict[str, dict] = {}
        changed: list[str] = []
        for o in listed["items"]:
            name = o["metadata"]["name"]
            old = self.objects.get(name)
            if old is not None and (old.get("metadata") or {}).get("resourceVersion") == o["metadata"].get(
                    "resourceVersion"):
                fresh[name] = old
                continue
            fresh[name] = o
            if old is not None and only_status_changed(old, o):
                o["spec"] = old.get("spec")
                continue
            changed.append(name)
        changed += [n for n in self.objects if n not in fresh]
        with self._objects_lock:
            self.objects = fresh
            self.synced, self.from_cache = True, False
        if first:
            self._sent.clear()
            self._touch()
        for name in changed:
            self._sent.pop(name, None)
            self._touch(name)
        self._save_cache()
        self.wake()
        return listed["metadata"]["resourceVersion"]

    WATCH_SECONDS = 300  # the server ends a watch after this; it is resumed, not relisted

    def _watch_forever(self) -> None:
        """List then watch, in a thread. A watch the server ends is resumed
        from the last resourceVersion seen (bookmarks keep it fresh); only an
        expired one (410) or an error relists, the latter with backoff."""
        from kubernetes.client.rest import ApiException
        backoff = Backoff()
        selector = node_selector(self.node)
        while not self.stopping:
            try:
                rv = self._relist(selector)
                backoff.reset()
                while not self.stopping:
                    rv = self._watch_once(selector, rv)
            except Exception as e:  # noqa: BLE001 - any API failure means: back off, keep the kernel
                if isinstance(e, Gone) or (isinstance(e, ApiException) and e.status == 410):
                    log.info("watch expired (410 Gone): listing again")
                    continue
                delay = backoff.next()
                log.warning("API server: %s; keeping kernel state, retrying in %.1fs", e, delay)
                time.sleep(delay)

    def _watch_once(self, selector: str, rv: str) -> str:
        """One WATCH request until the server ends it; the last resourceVersion."""
        resp = check(self.api.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, label_selector=selector, resource_version=rv,
            timeout_seconds=self.WATCH_SECONDS, allow_watch_bookmarks=True, watch=True,
            _preload_content=False, _request_timeout=(10, self.WATCH_SECONDS + 60)))
        return follow(resp, rv, self._on_event, lambda: self.stopping)

    def _on_event(self, ev: dict) -> None:
        obj, kind = ev["object"], ev["type"]
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only moves the resourceVersion
        name = obj["metadata"]["name"]
        before = self.objects.get(name)
        if kind == "DELETED":
            self.objects.pop(name, None)
        else:
            self.objects[name] = obj
        if kind != "MODIFIED":  # gone, or a new object of that name
            self._sent.pop(name, None)
        if kind != "DELETED" and only_status_changed(before, obj):
            # Our own status write coming back: nothing to program. Keeping
            # the equal spec mapping keeps its parse (nodestate.parse_object).
            obj["spec"] = before.get("spec")
            return
        self._touch(name)
        self._cache_dirty = True  # written by the loop's cache thread, never before the wake
        self.wake()

    # -- reconcile -----------------------------------------------------------
    SWEEP_TICK = 0.5  # seconds: the loop passes at least this often, each pass sweeps a slice
    # Seconds between reads of the BGP sessions for status (a birdc run each);
    # a changed announcement is reported at once.
    BGP_SESSIONS_INTERVAL = 10.0
    # Seconds a status build or write waits at most for a pass to end. While
    # passes follow each other (a mass create) each writer gets one write through
    # per wait: at 2 s, 1 status/s were written in the ten minutes 10k
    # NodeStates took to arrive, and the rest queued for minutes after them.
    STATUS_YIELD = 0.5
    # Seconds each slice of background work (the connection-count read, the
    # object cache's write) waits at most for a change's pass (a longer wait
    # held every status back for minutes while new objects kept the loop busy).
    BACKGROUND_YIELD = 0.25
    SWEEP_BUDGET = 0.2  # the largest share of the agent's time the sweep may take
    SWEEP_STARVED = 2.0  # seconds: after this long without a slice, a change's pass sweeps too
    SWEEP_SLICE_MAX = 0.1  # seconds of sweeping in one pass at most: what a change may wait for it

    def _sweep_size(self, services: int, now: float, change: bool = False) -> int:
        """How many services this pass re-checks: the sweep advances with the
        clock so that every service is re-checked once per ``resync`` seconds
        (one more: an empty spec still gets its node side checked), but takes
        at most SWEEP_BUDGET of the time at the cost measured so far: on a
        machine too slow for the table a round takes longer (the metric
        kube_lvs_sweep_round_seconds shows how long) instead of
        crowding out the changes. One slice takes SWEEP_SLICE_MAX at most
        (a slice that caught up after a long pass was what a change arriving
        then waited for).

        ``change``: a pass that programs a change sweeps nothing (the next
        tick's slice catches up), unless changes have kept the sweep from
        running for SWEEP_STARVED seconds: a slice in the same pass delays
        the change by the slice's time."""
        since = self._swept_at
        if change and since is not None and now - since < self.SWEEP_STARVED:
            return 0
        self._swept_at = now
        if since is None or self.resync <= 0:
            return 0
        n = math.ceil((services + 1) * min(1.0, (now - since) / self.resync))
        if self._sweep_cost:
            work = min((now - since) * self.SWEEP_BUDGET, self.SWEEP_SLICE_MAX)
            n = min(n, max(1, int(work / self._sweep_cost)))
        return n

    def _sweep_done(self, report: Any, now: float, learn: bool = True) -> None:
        """Time the sweep's rounds; ``learn``: a pass of the sweep alone (no
        change in it), whose time is the sweep's cost."""
        swept = getattr(report, "swept", 0) or 0
        if swept and learn:
            cost = getattr(report, "duration", 0.0) / swept
            self._sweep_cost = cost if self._sweep_cost is None else 0.8 * self._sweep_cost + 0.2 * cost
        if getattr(report, "round_done", False):
            if self._round_started is not None:
                self.sweep_round_seconds = now - self._round_started
            self._round_started = now

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
        dirty = self._take_dirty()  # before the merge: later events stay marked for the next pass
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
            self._last_full = self._swept_at = started
        elif not full:
            sweep = self._sweep_size(len(merged.spec.services), started, change=woken)
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
        self._sweep_done(report, time.monotonic(), learn=not woken)
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
        # Connection counts take a read of the whole table: on full
        # reconciles, else at most every conn_status_interval.
        now = time.monotonic()
        every = max(self.conn_status_interval, self._conns_cost / self.SWEEP_BUDGET)
        fresh_conns = full or self._conns_at is None or now - self._conns_at >= every
        if fresh_conns:
            self._conns_at, self._conns_due = now, True
        checked = self.checker.checked_services()
        draining = frozenset(getattr(self.engine, "draining", None) or ())
        inputs = StatusInputs(merged.owner, errors, dict(merged.errors),
                              {k: v.state for k, v in self.checker.verdicts.items()}, merged.grown_from, draining)
        if dirty is not None and self._status_inputs is not None:
            names: set[str] | None = dirty | stale_statuses(self._status_inputs, inputs)
        else:
            names = None  # all
        self._status_inputs = inputs
        self.status.submit(StatusSnapshot(merged, programmed, errors, dict(self.checker.verdicts), set(checked),
                                          by_service(draining)),
                           names)
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
        if status != self._bgp_report:
            self._bgp_report = status
            self._touch()

    # -- statuses (the status writer's threads) -------------------------------
    def _build_statuses(self, snap: StatusSnapshot, names: set[str] | None) -> dict[str, dict]:
        """The statuses of ``names`` (None: every object) worth writing."""
        if self._conns_due and not self.status.backlog:
            # A read of the whole table (seconds at 10k services in the VM: at most
            # SWEEP_BUDGET of the time); only the objects whose counts moved are rebuilt.
            # Not while built statuses wait for a writer: the counts would go into
            # statuses that cannot be written yet (after a mass create the read was
            # a tenth of the agent's time in the VM while thousands waited).
            self._conns_due = False
            started = time.monotonic()
            try:
                conns = self.engine.connections(pause=self._yield_to_pass)
            except Exception:  # noqa: BLE001 - keep the last counts
                log.debug("connection counts not read", exc_info=True)
            else:
                if names is not None:
                    owner = snap.merged.owner
                    moved = {k[0] for k in conns.keys() ^ self._conns.keys()}
                    moved |= {k[0] for k, v in conns.items() if self._conns.get(k, v) != v}
                    names = names | {n for k in moved for n in owners_of(owner, k)}  # every shard
                self._conns = conns
            self._conns_cost = time.monotonic() - started
        now, stamp, out = time.monotonic(), _now(), {}
        if names is not None and self._conns_owed:
            names = names | {n for n in self._conns_owed
                             if now - self._last_status_write.get(n, 0) >= self.conn_status_interval}
        for name in list(self.objects) if names is None else names:
            obj = self.objects.get(name)
            if obj is None:
                self._conns_owed.discard(name)
                continue
            parsed = snap.merged.parsed.get(name)
            if parsed is None or parsed.source is not (obj.get("spec") or parsed.source):
                continue  # changed since that merge: the next pass has it (the watch marked it)
            status = build_status(name, obj, snap.merged, snap.programmed, snap.errors, snap.verdicts,
                                  snap.checked, self._conns, stamp, snap.draining)
            if self.ha is not None:
                self.ha.annotate(status, parsed.spec)
            if self.bgp is not None and parsed.spec.bgp:
                status["bgp"] = bgp_status(parsed.spec, self._bgp_report)
            old = self._sent[name] if name in self._sent else obj.get("status")
            if not status_changed(old, status):
                self._conns_owed.discard(name)
                continue
            only_conns = not status_changed(_without_conns(old), _without_conns(status))
            if only_conns and now - self._last_status_write.get(name, 0) < self.conn_status_interval:
                self._conns_owed.add(name)
                continue
            self._conns_owed.discard(name)
            self._sent[name] = status
            self._last_status_write[name] = now
            out[name] = status
        return out

    def _patch_status(self, name: str, status: dict) -> None:
        self._patch(self.namespace, name, {"status": status})

    def _status_done(self, name: str, status: dict, error: BaseException | None) -> None:
        if error is None:
            obj = self.objects.get(name)
            if obj is not None:
                obj["status"] = status
            return
        log.warning("status of %s not written: %s", name, error)
        if self._sent.get(name) is status:
            del self._sent[name]
        self._touch(name)  # retried on the next pass

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.gc.install()
        threading.Thread(target=self._watch_forever, daemon=True).start()
        if self.ha is not None:
            self.ha.start()
        await asyncio.sleep(0)
        if not self.synced:
            await asyncio.sleep(2)
            if not self.synced:
                self._load_cache()
        tick = min(self.SWEEP_TICK, self.resync) if self.resync > 0 else self.SWEEP_TICK
        while not self.stopping:
            # The first pass is a full reconcile. Then a pass when woken (a
            # watch event, a health flip: the changed services) and at least
            # every tick (a slice of the drift sweep).
            until_tick = max(0.0, tick - (time.monotonic() - self._pass_at))
            timeout = until_tick if self.synced else self.resync
            if self._cache_dirty:
                timeout = min(timeout, self._until_cache())
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
            if self._cache_dirty and self._until_cache() == 0.0:
                self._save_cache_soon()
        if self.bgp is not None:  # withdraw every VIP first: the routers move the flows elsewhere
            await asyncio.to_thread(self.bgp.stop)
        if self.ha is not None and self.ha.stop() and self.synced:
            # Give the held VIPs up (their addresses only: the services stay,
            # nothing is flushed) so the group's next owner takes them cleanly.
            await self.reconcile_once(woken=True)
        self._flush_cache()
        await self.checker.stop()
        self.status.stop()
        self.gc.uninstall()


def bgp_status(spec: Any, report: dict) -> dict:
    """One NodeState's ``status.bgp``: the speaker's decisions on its own
    VIPs and the sessions with its own peers (the speaker reports the node's
    merge); a VIP the speaker has not decided on yet is Pending."""
    vips = [v for part in spec.bgp for v in part.vips]
    peers = {p.address for part in spec.bgp for p in part.peers}
    decided = {v.get("address"): v for v in report.get("vips") or ()}
    out = {"vips": [decided.get(v) or {"address": v, "announced": False, "reason": "Pending",
                                        "message": "the BGP speaker has not decided yet"} for v in vips],
           "peers": [p for p in report.get("peers") or () if p.get("address") in peers]}
    if report.get("problems"):
        out["problems"] = list(report["problems"])
    return out


def only_status_changed(old: dict | None, new: dict) -> bool:
    """Whether a watch event changes nothing but status (and bookkeeping)."""
    if old is None:
        return False
    skip = ("resourceVersion", "managedFields")
    meta = lambda o: {k: v for k, v in (o.get("metadata") or {}).items() if k not in skip}  # noqa: E731
    return old.get("spec") == new.get("spec") and meta(old) == meta(new)


def _names(dirty: set[str] | None, most: int = 3) -> str:
    """The objects that woke a pass, for the log (bench part 5 traces a change by them)."""
    if dirty is None:
        return "all objects"
    if not dirty:
        return "no object changed"
    shown = sorted(dirty)[:most]
    return ", ".join(shown) + (f" (+{len(dirty) - most} more)" if len(dirty) > most else "")


def _without_conns(status: dict | None) -> dict:
    s = dict(status or {})
    s["dests"] = [{k: v for k, v in d.items() if k not in ("activeConns", "inactiveConns")}
                  for d in s.get("dests", [])]
    return s


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
    # A thread back from a syscall waits up to this long for the interpreter
    # while a background thread computes; a pass makes dozens of netlink
    # calls, and the default 5 ms each added up to tenths of a second in the VM.
    sys.setswitchinterval(0.001)
    if not args.node:
        p.error("--node (or env NODE_NAME from the downward API) is required")
    if not os.path.isdir(os.path.join(args.sysctl_root, "net")):
        p.error(f"--sysctl-root {args.sysctl_root}: no net/ below it (mount the host's /proc/sys/net there)")
    from .observe import set_sysctl_root
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
                            sync=kernel_sync(args.netns), on_change=lambda: (agent._touch(), agent.wake()),
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


if __name__ == "__main__":
    raise SystemExit(main())
