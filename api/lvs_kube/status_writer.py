"""Statuses, built and written off the reconcile path (the agent's NodeState
statuses, the operator's VirtualService and RealServer statuses).

A status pass is work in proportion to the objects (building each, and the
first time one API write each): done inline, it would hold back programming
the kernel (the next reconcile waiting for the writes). The reconcile loop
therefore only hands over a snapshot of what the statuses are
built from (``submit``); one builder thread turns the newest snapshot into the
statuses that changed, and a few writer threads send them.

Coalescing keeps the work bounded by the number of objects, not events:
snapshots submitted while the builder is busy merge into one (the newest
inputs, the union of the names to rebuild), and a status queued for an
object that is not written yet replaces the queued one. One object is never
written by two threads at once, so writes of one object keep their order.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Generic, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S")  # a snapshot of the status inputs
DRAINED = "status backlog drained"  # the log line's prefix (a user or a benchmark waits for it)


class StatusWriter(Generic[S]):
    """``build(snapshot, names)`` returns {object name: status} to write
    (``names`` None: every object); ``write(name, status)`` sends one and
    raises on failure; ``done(name, status, error)`` runs after each write;
    ``gate()`` runs before each build and write: it may wait, to let work
    that matters more go first (the agent's: programming the kernel; the
    threads share one interpreter lock)."""

    def __init__(self, build: Callable[[S, set[str] | None], dict[str, Any]],
                 write: Callable[[str, Any], None],
                 done: Callable[[str, Any, BaseException | None], None] = lambda n, s, e: None,
                 workers: int = 4, gate: Callable[[], Any] = lambda: None):
        self._build, self._write, self._done, self._gate = build, write, done, gate
        self._cv = threading.Condition()
        self._snapshot: S | None = None
        self._names: set[str] | None = set()
        self._has_job = False
        self._building = False
        self._queue: OrderedDict[str, Any] = OrderedDict()  # name -> status to write
        self._inflight: set[str] = set()
        self._stopping = False
        self.written = 0
        self.failed = 0
        # The backlog since the writer was last idle: a burst this large ends with one
        # log line, so a user (and the bench) can tell when a backfill is through.
        self._burst: tuple[float, int, int] | None = None  # (start, written, failed) when it began
        self._threads = [threading.Thread(target=self._builder, name="status-build", daemon=True)]
        self._threads += [threading.Thread(target=self._writer, name=f"status-write-{i}", daemon=True)
                          for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- the reconcile loop's side -------------------------------------------
    def submit(self, snapshot: S, names: set[str] | None) -> None:
        """Rebuild ``names`` (None: all) from ``snapshot``; returns at once."""
        with self._cv:
            self._snapshot = snapshot
            if names is None or self._names is None:
                self._names = None
            else:
                self._names |= names
            self._has_job = True
            self._cv.notify_all()

    def queued(self, name: str) -> Any | None:
        """The status waiting to be written for ``name``, if any."""
        with self._cv:
            return self._queue.get(name)

    @property
    def backlog(self) -> int:
        """Statuses built and waiting for a writer."""
        with self._cv:
            return len(self._queue)

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._queue) + len(self._inflight) + (1 if self._has_job or self._building else 0)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Whether everything submitted has been built and written (or failed)."""
        with self._cv:
            return self._cv.wait_for(self._idle, timeout)

    def _idle(self) -> bool:
        """Nothing to build or write (the caller holds the lock)."""
        return not (self._has_job or self._building or self._queue or self._inflight)

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    # -- threads -------------------------------------------------------------
    def _builder(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._has_job or self._stopping)
                if self._stopping:
                    return
                snapshot, names = self._snapshot, self._names
                self._has_job, self._names, self._building = False, set(), True
            try:
                self._gate()
                statuses = self._build(snapshot, names)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - a bad build must not stop later ones
                log.exception("building statuses failed")
                statuses = {}
            with self._cv:
                self._building = False
                for name, status in statuses.items():
                    self._queue[name] = status
                    self._queue.move_to_end(name)
                self._cv.notify_all()

    def _ready(self) -> str | None:
        """The first queued object not being written now."""
        return next((n for n in self._queue if n not in self._inflight), None)

    def _writer(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._stopping or self._ready() is not None)
                if self._stopping:
                    return
                name = self._ready()
                status = self._queue.pop(name)  # type: ignore[arg-type]
                self._inflight.add(name)  # type: ignore[arg-type]
            error: BaseException | None = None
            try:
                self._gate()
                self._write(name, status)
            except Exception as e:  # noqa: BLE001 - reported to done(), retried by the agent
                error = e
            try:
                self._done(name, status, error)
            except Exception:  # noqa: BLE001
                log.exception("status bookkeeping failed for %s", name)
            with self._cv:
                self._inflight.discard(name)
                if self._burst is None:
                    self._burst = (time.monotonic(), self.written, self.failed)
                if error is None:
                    self.written += 1
                else:
                    self.failed += 1
                if self._idle():
                    self._drained()
                self._cv.notify_all()

    BURST_LOG = 100  # writes: a smaller burst (one change's statuses) logs nothing

    def _drained(self) -> None:
        """Everything submitted is written: log a large burst's end."""
        assert self._burst is not None
        t0, w0, f0 = self._burst
        self._burst = None
        written, failed = self.written - w0, self.failed - f0
        if written + failed >= self.BURST_LOG:
            log.info("%s: %d status(es) written, %d failed in %.1fs; none left to write",
                     DRAINED, written, failed, time.monotonic() - t0)


__all__ = ["DRAINED", "StatusWriter"]
