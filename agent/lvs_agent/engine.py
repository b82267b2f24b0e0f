"""The node engine: make one network namespace's kernel match a NodeSpec.

``Engine.reconcile(spec)`` follows the contract of plan.py:

    load ownership -> observe -> plan -> claim -> save -> apply -> settle -> save

Recording the claim before applying means a crash mid-apply still knows its
strays; settling afterwards drops whatever failed to appear. Drift is judged
against the kernel as it is now. Nothing is ever flushed and nothing the
ownership record does not list is changed or removed.

``reconcile(spec, incremental=True)`` runs the same contract over only the
services changed since the last reconcile (incremental.py): they alone are
read from the kernel (one netlink get + dest dump each), planned
(plan_services), claimed and settled, and their records merged back into the
whole ownership record. It falls back to the full contract whenever the
change may reach beyond those services' IPVS entries.

``reconcile(spec, incremental=True, sweep=n)`` also re-reads and repairs the
next ``n`` services of a rotating sweep over every desired and owned service,
and, at the start of each round, the node side (links, addresses, sysctls,
reply routes, the SNAT table). A full reconcile grows with the table, and a
change arriving meanwhile waits for it; swept a slice per pass, drift is
still found within one round and a change waits at most for a slice.

``Engine(..., drain_path=...)`` (the agent) drains before it deletes
(drain.py): a dest that leaves the spec while its service stays is kept at
weight 0 until its active connections reach 0 or the service's
``drain_timeout`` passes, its start kept in a record of its own at
``drain_path``. Every reconcile of a service decides for its leaving dests
(their active counts read from the kernel, one get and dest dump per such
service); an incremental one also re-checks every service with a draining
dest once per ``drain_recheck`` seconds, so a drained dest goes soon after
its last connection closes. Without ``drain_path`` (``lvsctl apply``, a
one-shot run with no later pass to finish a drain) a dest is deleted at once.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from lvs_model.nodespec import NodeSpec, Service, ServiceKey, effective_sysctls, local_addresses

from . import drain as D
from . import incremental as I
from . import ops as O
from . import tools
from .apply import Applier
from .ipvs_timeouts import observe_keys as observe_timeout_keys
from .ipvs_codec import IPVSTable
from .netns import in_netns
from .observe import observe, read_ipvs, read_ipvs_services
from .rtnl import resolve_default_uplink
from .plan import (NFT_FAMILY, NFT_TABLE, REPLY_TABLE_BASE, REPLY_TABLE_COUNT, Plan, claim, claim_services,
                   plan, plan_services, settle)
from .state import Observed, Ownership, OwnershipStore

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/lib/kube-lvs"
DRAIN_RECORD = "drain.json"  # the agent's drain records, beside its ownership record
# Seconds between two re-checks of the services with a draining dest (their
# active connection counts read again): how long a drained dest may outlive
# its last connection.
DRAIN_RECHECK = 1.0


def default_state_path(netns: str | None = None) -> Path:
    name = "ownership.json" if not netns else f"ownership.{os.path.basename(netns)}.json"
    return Path(os.environ.get("KUBE_LVS_STATE_DIR", DEFAULT_STATE_DIR)) / name


@dataclass
class Report:
    """What one reconcile did."""

    results: list[tuple[O.Op, str | None]] = field(default_factory=list)
    # Desired services that could not be (fully) programmed, with why.
    service_errors: dict[ServiceKey, str] = field(default_factory=dict)
    # Desired services whose kernel state now matches the spec.
    programmed: list[ServiceKey] = field(default_factory=list)
    # Planner problems (e.g. the key is held by a foreign service).
    problems: dict[ServiceKey, str] = field(default_factory=dict)
    # Failed ops not tied to a desired service (links, addresses, sysctls, deletions).
    errors: list[str] = field(default_factory=list)
    uplink: str = ""
    duration: float = 0.0
    swept: int = 0  # services a sweep slice re-checked
    round_done: bool = False  # the sweep has just re-checked the last service of its round

    @property
    def ops(self) -> list[O.Op]:
        return [op for op, _ in self.results]

    @property
    def failed(self) -> list[tuple[O.Op, str]]:
        return [(op, e) for op, e in self.results if e]

    @property
    def ok(self) -> bool:
        return not (self.service_errors or self.problems or self.errors)


def kernel_forced(obs: Observed, spec: NodeSpec) -> Observed:
    """Undo what the kernel changed on its own so it does not look like drift.

    IPVS turns a dest whose address is local to the node into LOCALNODE
    whatever method was asked for; a SetDest cannot change that, so without
    this every reconcile would try again.
    """
    for svc in spec.services:
        have = obs.services.get(svc.key)
        if have is None or not any(d.method == "local" for d in have.dests):
            continue
        want = {d.key: d for d in svc.dests}
        dests = tuple(replace(d, method=want[d.key].method, tunnel_type=want[d.key].tunnel_type,
                              tunnel_port=want[d.key].tunnel_port, tunnel_csum=want[d.key].tunnel_csum)
                      if d.method == "local" and d.key in want else d for d in have.dests)
        obs.services[svc.key] = replace(have, dests=dests)
    return obs


def build_report(spec: NodeSpec, p: Plan, results: list[tuple[O.Op, str | None]], uplink: str,
                 desired: list[ServiceKey] | None = None) -> Report:
    """``desired``: the spec's service keys, when the caller has them (an
    incremental reconcile: computing 10k keys is not free)."""
    r = Report(results=results, problems=dict(p.problems), uplink=uplink)
    keys = desired if desired is not None else [s.key for s in spec.services]
    failed = [(op, err) for op, err in results if err]
    desired_set = set(keys) if failed else set()  # a set of every key only when some op failed
    per_service: dict[ServiceKey, list[str]] = {}
    for op, err in failed:
        k = O.service_key(op)
        line = f"{O.describe(op)}: {err}"
        if k is not None and k in desired_set:
            per_service.setdefault(k, []).append(line)
        else:
            r.errors.append(line)
    r.service_errors = {k: "; ".join(v) for k, v in per_service.items()}
    bad = r.service_errors.keys() | r.problems.keys()
    r.programmed = [k for k in keys if k not in bad] if bad else list(keys)
    return r


class Engine:
    """Programs one network namespace (None: the engine's own)."""

    def __init__(self, state_path: str | os.PathLike | None = None, netns: str | None = None,
                 uplink: str = "", drain_path: str | os.PathLike | None = None):
        """``drain_path``: drain leaving dests, with their records there (module doc)."""
        self.netns = netns or None
        self.uplink = uplink
        self.store = OwnershipStore(state_path or default_state_path(self.netns))
        self.applier = Applier(self.netns)
        self._lock = threading.RLock()
        self.last_table: IPVSTable | None = None
        self._owned: tuple[tuple | None, Ownership] | None = None
        self._memory: I.Memory | None = None  # the last reconcile, for incremental ones
        self._round: list[ServiceKey] = []  # this sweep round's services, in order
        self._round_pos = 0
        self.drains = D.DrainStore(drain_path) if drain_path is not None else None
        self._drain_records: D.Records = self.drains.load() if self.drains is not None else {}
        self.drain_recheck = DRAIN_RECHECK
        self._drain_checked_at = time.monotonic()

    # -- ownership record ----------------------------------------------------
    def _file_sig(self) -> tuple | None:
        try:
            st = os.stat(self.store.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load_owned(self) -> Ownership:
        """The ownership record; parsed again only when the file changed (its
        JSON grows with the table, and most passes change nothing)."""
        sig = self._file_sig()
        if self._owned is not None and self._owned[0] == sig and sig is not None:
            return self._owned[1]
        own = self.store.load()
        self._owned = (sig, own)
        return own

    def save_owned(self, own: Ownership) -> None:
        self.store.save(own)
        self._owned = (self._file_sig(), own)

    # -- helpers -------------------------------------------------------------
    def resolve_uplink(self, spec: NodeSpec | None = None) -> str:
        """The spec's uplink, else the engine's, else the default route's device."""
        if spec is not None and spec.uplink:
            return spec.uplink
        if self.uplink:
            return self.uplink
        return resolve_default_uplink(self.netns)

    @staticmethod
    def missing_tools(spec: NodeSpec, owned: Ownership) -> frozenset[str]:
        """The agent's programs (tools.py) that ``spec`` or the record needs and
        this host lacks: the planner fails only the services that need them."""
        needs_nft = bool(owned.nft_tables) or any(s.snat for s in spec.services)
        return tools.missing(["nft"]) if needs_nft else frozenset()

    def _observe(self, spec: NodeSpec, owned: Ownership, with_stats: bool = False, ipvs_table: bool = True,
                 missing: frozenset[str] | None = None):
        # The uplink only scopes backend ARP/rp_filter sysctls: resolve it (a
        # route dump) only for a spec with backend VIPs.
        uplink = self.resolve_uplink(spec) if spec.backend_vips or spec.uplink or self.uplink else ""
        names = set(effective_sysctls(spec, uplink)) | set(owned.sysctls) | observe_timeout_keys(spec, owned)
        need_net = bool(local_addresses(spec) or owned.addresses or owned.links)
        # Rules, routes and nftables are read only when reply paths are (or were) in play.
        routing = ((REPLY_TABLE_BASE, REPLY_TABLE_BASE + REPLY_TABLE_COUNT)
                   if spec.reply_routes or owned.rules or owned.routes else None)
        missing = self.missing_tools(spec, owned) if missing is None else missing
        nft = ([(NFT_FAMILY, NFT_TABLE)]
               if (any(s.snat for s in spec.services) or owned.nft_tables) and "nft" not in missing else [])
        extra = {"need_routing": routing, "nft_tables": nft}
        conn = self.applier.batch_conn()
        try:
            obs, table = observe(self.netns, names, with_stats=with_stats,
                                 need_net=need_net, conn=conn, runtime=with_stats, ipvs_table=ipvs_table,
                                 **extra)
        except OSError:
            # A broken socket: drop it, read once more through a fresh one.
            self.applier.close()
            obs, table = observe(self.netns, names, with_stats=with_stats, need_net=need_net,
                                 ipvs_table=ipvs_table, **extra)
        if ipvs_table:
            kernel_forced(obs, spec)
            self.last_table = table
        return obs, table, uplink

    # -- public --------------------------------------------------------------
    def table(self, with_stats: bool = False) -> IPVSTable:
        """The whole IPVS table with counters (for lvsctl list and metrics)."""
        with self._lock:
            return read_ipvs(self.netns, with_stats=with_stats, conn=self.applier.batch_conn())

    def connections(self, pause: Callable[[], object] | None = None,
                    ) -> dict[tuple[ServiceKey, str, int], tuple[int, int]]:
        """(service key, dest address, dest port) -> (active, inactive).

        Read through a socket of its own, without the engine's lock: the read
        grows with the table, and a reconcile must not wait for it (the
        agent's status thread calls this). ``pause`` is
        called between slices of the read: the agent's waits while a change
        is programmed, so the two do not share the interpreter meanwhile."""
        t = read_ipvs(self.netns, pause=pause)
        return {(k, dk.address, dk.port): (rt.active, rt.inactive)
                for (k, dk), rt in t.dest_runtime.items()}

    def plan(self, spec: NodeSpec) -> tuple[Plan, Observed, Ownership, str]:
        """Dry run: what reconcile would do now."""
        with self._lock:
            owned = self.load_owned()
            missing = self.missing_tools(spec, owned)
            obs, _, uplink = self._observe(spec, owned, missing=missing)
            return plan(spec, obs, owned, uplink, missing=missing), obs, owned, uplink

    def reconcile(self, spec: NodeSpec, incremental: bool = False, sweep: int = 0) -> Report:
        """Make the kernel match ``spec``. ``incremental``: re-read and re-plan
        only the services changed since the last reconcile (incremental.py
        says which, or why this one must be full), plus ``sweep`` services of
        the sweep round (module doc); drift elsewhere waits for its turn."""
        started = time.monotonic()
        with self._lock:
            owned = self.load_owned()
            mem, self._memory = self._memory, None  # kept again only on success
            d, node_side, check, done = None, False, [], False
            if incremental:
                if mem is not None and sweep > 0:
                    check, node_side, done = self._sweep_slice(mem, owned, sweep)
                drains = self._drain_due() if mem is not None else []
                d = I.delta(mem, spec, self._owned[0] if self._owned else None, [*check, *drains])
            uplink = mem.uplink if mem is not None else ""
            if d is None or d.full:
                if d is not None:
                    log.debug("full reconcile: %s", d.full)
                report, p, uplink = self._reconcile_full(spec, owned)
                self._round, self._round_pos = [], 0  # a full reconcile is a whole round
            else:
                report, p, uplink = self._reconcile_services(spec, d, owned, mem, node_side or bool(d.node))
                report.swept, report.round_done = len(check), done
            retry = I.retry_after(p, report.results)
            sig = self._owned[0] if self._owned else None
            if retry is not None:  # None: an op beyond IPVS failed, the next reconcile is full
                self._memory = (I.remember(spec, uplink, sig, retry) if d is None or d.full
                                else I.advance(mem, d, spec, sig, retry, uplink))
        report.duration = time.monotonic() - started
        if report.failed or report.problems:
            log.warning("reconcile: %d ops, %d failed, %d problems", len(report.results),
                        len(report.failed), len(report.problems))
        return report

    def _reconcile_full(self, spec: NodeSpec, owned: Ownership) -> tuple[Report, Plan, str]:
        missing = self.missing_tools(spec, owned)
        obs, _, uplink = self._observe(spec, owned, missing=missing)
        want = self._drain(spec.services, obs.services, owned, None)
        p = plan(spec, obs, owned, uplink, services=want, missing=missing)
        results = self._claim_apply_settle(p, owned, claim(owned, p, obs, spec, uplink, services=want,
                                                           missing=missing))
        return build_report(spec, p, results, uplink), p, uplink

    # -- drain (drain.py) ----------------------------------------------------
    @property
    def draining(self) -> dict[D.DrainKey, float]:
        """The dests now draining -> the wall-clock second each drain began."""
        return dict(self._drain_records)

    def _drain_due(self) -> list[ServiceKey]:
        """The services with a draining dest, when a re-check is due."""
        now = time.monotonic()
        if not self._drain_records or now - self._drain_checked_at < self.drain_recheck:
            return []
        self._drain_checked_at = now
        return sorted({k for k, _ in self._drain_records})

    def _drain(self, desired, observed: dict[ServiceKey, Service], owned: Ownership,
               keys: frozenset[ServiceKey] | None) -> tuple[Service, ...]:
        """The services to plan: ``desired`` with each draining dest kept at
        weight 0 (drain.decide); the records of ``keys`` (None: all) replaced
        and saved if they changed. Without drain_path: ``desired`` as it is."""
        desired = tuple(desired)
        if self.drains is None:
            return desired
        going = D.leaving(desired, observed, owned.dests)
        if not going and not self._drain_records:
            return desired
        active: dict[D.DrainKey, int] = {}
        if going:
            try:
                active = D.read_active(self.netns, {k for k, _ in going}, conn=self.applier.batch_conn())
            except OSError as e:  # counts unknown: those dests drain until their timeout
                log.warning("connection counts of draining dests not read: %s", e)
        dec = D.decide(desired, observed, owned.dests, active, self._drain_records, time.time())
        old = self._drain_records
        records = dict(dec.records) if keys is None else D.merge_records(old, dec.records, keys)
        if records != old:
            for k in sorted(records.keys() - old.keys()):
                log.info("draining dest %s of %s (%d active connections)", k[1], k[0], active.get(k, -1))
            for k in sorted(dec.delete & old.keys()):
                log.info("dest %s of %s drained (%d active connections): deleting it", k[1], k[0],
                         active.get(k, -1))
            self.drains.save(records)
            self._drain_records = records
        return dec.services

    def _sweep_slice(self, mem: I.Memory, owned: Ownership, n: int) -> tuple[list[ServiceKey], bool, bool]:
        """The next ``n`` services of the sweep round, whether the round starts
        here (the node side is checked with its first slice), whether it ends."""
        start = self._round_pos >= len(self._round)
        if start:
            # Desired services, then owned ones no longer desired (strays to remove).
            self._round = [*mem.index, *(k for k in owned.services if k not in mem.index)]
            self._round_pos = 0
        keys = self._round[self._round_pos:self._round_pos + n]
        self._round_pos += len(keys)
        return keys, start, self._round_pos >= len(self._round)

    def _reconcile_services(self, spec: NodeSpec, d: I.Delta, owned: Ownership, mem: I.Memory,
                            node_side: bool = False) -> tuple[Report, Plan, str]:
        """The full contract, restricted to ``d.keys``: only those services are
        read, planned, claimed and settled; the rest of the record is kept.
        ``node_side``: the node side too (read, planned and claimed whole)."""
        keys, uplink = d.keys, mem.uplink
        p = Plan()
        results: list = []
        if node_side:
            part = I.restrict_owned(owned, keys, node=True)
            missing = self.missing_tools(spec, part)
            obs, _, uplink = self._observe(spec, part, ipvs_table=False, missing=missing)
            obs.services = self._read_services(keys) if keys else {}
            kernel_forced(obs, NodeSpec(services=d.want))
            want = self._drain(d.want, obs.services, part, keys)
            p = plan(spec, obs, part, uplink, services=want, missing=missing)
            results = self._claim_apply_settle(p, part, claim(part, p, obs, spec, uplink, services=want,
                                                              missing=missing),
                                               lambda rec: I.merge_owned(owned, rec, keys, node=True))
        elif keys:
            obs = Observed(services=self._read_services(keys))
            kernel_forced(obs, NodeSpec(services=d.want))
            part = I.restrict_owned(owned, keys)
            want = self._drain(d.want, obs.services, part, keys)
            p = plan_services(want, obs.services, part)
            results = self._claim_apply_settle(p, part, claim_services(part, p, obs, want),
                                               lambda rec: I.merge_owned(owned, rec, keys))
        return build_report(spec, p, results, uplink, desired=list(d.index)), p, uplink

    def _read_services(self, keys: frozenset[ServiceKey]) -> dict[ServiceKey, Service]:
        conn = self.applier.batch_conn()
        try:
            return read_ipvs_services(self.netns, keys, conn=conn)
        except OSError:
            self.applier.close()  # a broken socket: once more through a fresh one
            return read_ipvs_services(self.netns, keys, conn=self.applier.batch_conn())

    def _claim_apply_settle(self, p: Plan, owned: Ownership, claimed: Ownership,
                            whole: Callable[[Ownership], Ownership] = lambda rec: rec) -> list:
        """Save the claim, apply, save what settled; each save only if the
        record changed (``whole``: the record to save for a partial one)."""
        if claimed != owned:
            self.save_owned(whole(claimed))
        results = self.applier.apply(p.ops) if p.ops else []
        settled = settle(claimed, results)
        if settled != claimed:
            self.save_owned(whole(settled))
        return results

    def close(self) -> None:
        self.applier.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["DRAIN_RECORD", "Engine", "Report", "build_report", "default_state_path", "in_netns"]
