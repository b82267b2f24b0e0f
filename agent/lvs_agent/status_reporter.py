"""The NodeStates' statuses: built from a pass's snapshot in the status
writer's threads (``lvs_kube.status_writer``), compared with what was last
handed over for each object, and written only when they differ.

Connection counts are a read of the whole IPVS table, so they are read at
most every ``conn_status_interval`` seconds (longer if the read itself would
take more than the background budget, ``sweep.BUDGET``), only the objects
whose counts moved are rebuilt, and a status whose counts alone changed is
written at most once per interval: the counts held back are owed until then.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from lvs_kube.status_writer import StatusWriter

from .nodestate import Merged, StatusInputs, build_status, owners_of, stale_statuses, status_changed
from .sweep import BUDGET

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


class StatusReporter:
    """``objects()``: the NodeStates as the watch has them; ``patch(name,
    body)``: one status write; ``touch(name)``: mark an object for the next
    pass (a failed write); ``gate()``: what a build or write waits for first
    (the pass in progress); ``pause()``: between slices of the counts' read."""

    def __init__(self, engine: Any, objects: Callable[[], dict[str, dict]], patch: Callable[[str, dict], None],
                 touch: Callable[[str | None], None], *, conn_status_interval: float = 30.0, workers: int = 2,
                 gate: Callable[[], object] | None = None, pause: Callable[[], object] | None = None):
        self.engine, self.objects, self._patch, self._touch = engine, objects, patch, touch
        self.conn_status_interval = conn_status_interval
        self.pause = pause
        self.ha: Any = None  # ha_agent.HaController: annotates each status with the group's view
        self.bgp: Any = None  # bgp_speaker.BgpSpeaker: its report goes into each active-active status
        self.bgp_report: dict = {}  # the speaker's status after the last pass (bgp_status)
        self.last_write: dict[str, float] = {}
        # The last status handed to the status writer per object (queued, being
        # written or written): what the next one is compared with.
        self.sent: dict[str, dict] = {}
        self.conns_due = True  # the status thread reads connection counts first
        self.conns: dict = {}
        self.conns_at: float | None = None
        self.conns_cost = 0.0  # seconds the last read of the counts took
        # Objects whose new counts were held back (written too recently): the
        # counts that moved are not "moved" again on the next read, so they
        # are owed until written.
        self.conns_owed: set[str] = set()
        self.inputs: StatusInputs | None = None  # what the last statuses were built from
        self.writer: StatusWriter[StatusSnapshot] = StatusWriter(self.build, self._write, self._done,
                                                                 workers=workers, gate=gate)

    def forget(self, name: str | None) -> None:
        """What was sent for ``name`` (None: every object) no longer counts:
        the object is new or gone."""
        if name is None:
            self.sent.clear()
        else:
            self.sent.pop(name, None)

    def submit(self, snap: StatusSnapshot, dirty: set[str] | None, inputs: StatusInputs, full: bool) -> None:
        """After a pass: the statuses of the objects it changed (``dirty``,
        None: all) and of those whose inputs moved; a full pass, or an
        interval since the last read, reads the connection counts again."""
        now = time.monotonic()
        every = max(self.conn_status_interval, self.conns_cost / BUDGET)
        if full or self.conns_at is None or now - self.conns_at >= every:
            self.conns_at, self.conns_due = now, True
        if dirty is not None and self.inputs is not None:
            names: set[str] | None = dirty | stale_statuses(self.inputs, inputs)
        else:
            names = None  # all
        self.inputs = inputs
        self.writer.submit(snap, names)

    def _read_conns(self, snap: StatusSnapshot, names: set[str] | None) -> set[str] | None:
        """Read the whole table's counts; ``names`` and every shard of the services whose counts moved."""
        self.conns_due = False
        started = time.monotonic()
        try:
            conns = self.engine.connections(pause=self.pause)
        except Exception:  # noqa: BLE001 - keep the last counts
            log.debug("connection counts not read", exc_info=True)
        else:
            if names is not None:
                owner = snap.merged.owner
                moved = {k[0] for k in conns.keys() ^ self.conns.keys()}
                moved |= {k[0] for k, v in conns.items() if self.conns.get(k, v) != v}
                names = names | {n for k in moved for n in owners_of(owner, k)}  # every shard
            self.conns = conns
        self.conns_cost = time.monotonic() - started
        return names

    def build(self, snap: StatusSnapshot, names: set[str] | None) -> dict[str, dict]:
        """The statuses of ``names`` (None: every object) worth writing (a status writer's thread)."""
        if self.conns_due and not self.writer.backlog:
            # Not while built statuses wait for a writer: the counts would go
            # into statuses that cannot be written yet.
            names = self._read_conns(snap, names)
        objects = self.objects()
        now, stamp, out = time.monotonic(), _now(), {}
        if names is not None and self.conns_owed:
            names = names | {n for n in self.conns_owed
                             if now - self.last_write.get(n, 0) >= self.conn_status_interval}
        for name in list(objects) if names is None else names:
            obj = objects.get(name)
            if obj is None:
                self.conns_owed.discard(name)
                continue
            parsed = snap.merged.parsed.get(name)
            if parsed is None or parsed.source is not (obj.get("spec") or parsed.source):
                continue  # changed since that merge: the next pass has it (the watch marked it)
            status = build_status(name, obj, snap.merged, snap.programmed, snap.errors, snap.verdicts,
                                  snap.checked, self.conns, stamp, snap.draining)
            if self.ha is not None:
                self.ha.annotate(status, parsed.spec)
            if self.bgp is not None and parsed.spec.bgp:
                status["bgp"] = bgp_status(parsed.spec, self.bgp_report)
            old = self.sent[name] if name in self.sent else obj.get("status")
            if not status_changed(old, status):
                self.conns_owed.discard(name)
                continue
            only_conns = not status_changed(without_conns(old), without_conns(status))
            if only_conns and now - self.last_write.get(name, 0) < self.conn_status_interval:
                self.conns_owed.add(name)
                continue
            self.conns_owed.discard(name)
            self.sent[name] = status
            self.last_write[name] = now
            out[name] = status
        return out

    def _write(self, name: str, status: dict) -> None:
        self._patch(name, {"status": status})

    def _done(self, name: str, status: dict, error: BaseException | None) -> None:
        if error is None:
            obj = self.objects().get(name)
            if obj is not None:
                obj["status"] = status
            return
        log.warning("status of %s not written: %s", name, error)
        if self.sent.get(name) is status:
            del self.sent[name]
        self._touch(name)  # retried on the next pass

    def stop(self) -> None:
        self.writer.stop()


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


def without_conns(status: dict | None) -> dict:
    """The status without its dests' connection counts."""
    s = dict(status or {})
    s["dests"] = [{k: v for k, v in d.items() if k not in ("activeConns", "inactiveConns")}
                  for d in s.get("dests", [])]
    return s


__all__ = ["StatusReporter", "StatusSnapshot", "bgp_status", "without_conns"]
