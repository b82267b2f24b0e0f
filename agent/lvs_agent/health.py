"""Real-server health checks, run by each director's agent.

The verdicts change weights locally, without waiting for the API server: a
server that failed `fall` checks in a row gets weight 0 in the kernel (new
connections go elsewhere, established ones finish), and one that then passed
`rise` checks gets its configured weight back -- the re-add that keepalived
(#362) and kube-vip (#875) users found missing. A server nobody has checked
yet is Unknown and keeps its weight. Verdicts outlive the agent (verdicts.py:
a checker given a store loads them at start and ``persist`` writes them after
a change), so a restart changes no weight: a failed server stays at 0.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections import deque
from concurrent.futures import Future
import logging
from dataclasses import replace
from typing import Any, Callable, Hashable

from lvs_model.nodespec import MIN_HEALTH_INTERVAL, Dest, DestKey, HealthCheck, NodeSpec, ServiceKey

from .netns import move_thread
from .verdicts import DestHealth, Verdicts, step

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Probes (I/O)
# ---------------------------------------------------------------------------

def probe(hc: HealthCheck, address: str, port: int) -> tuple[bool, str]:
    """One blocking check; (passed, why not).

    Blocking on purpose: probes run in worker threads, and a worker thread can
    sit in another network namespace (setns is per thread), which is how an
    agent that programs a director namespace checks from inside it.
    """
    port = hc.port or port
    deadline = time.monotonic() + hc.timeout
    try:
        sock = socket.create_connection((address, port), timeout=hc.timeout)
    except socket.timeout:
        return False, f"timed out after {hc.timeout:g}s"
    except OSError as e:
        return False, e.strerror or str(e)
    try:
        if hc.type == "tcp":
            return True, ""
        if hc.type == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # real servers rarely carry certs for their own IPs
            sock = ctx.wrap_socket(sock)
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        host = f"[{address}]" if ":" in address else address
        sock.sendall(f"GET {hc.path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: kube-lvs\r\n\r\n".encode())
        line = sock.makefile("rb").readline(256)
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        status = int(parts[1])
        if status != hc.expected_status:
            return False, f"HTTP {status}, expected {hc.expected_status}"
        return True, ""
    except socket.timeout:
        return False, f"timed out after {hc.timeout:g}s"
    except (OSError, ssl.SSLError) as e:
        return False, getattr(e, "strerror", None) or str(e)
    finally:
        sock.close()


def paced(hc: HealthCheck, floor: float = MIN_HEALTH_INTERVAL) -> tuple[float, float]:
    """(interval, timeout) a check really runs with: never more often than
    every ``floor`` seconds (MIN_HEALTH_INTERVAL, 1 s: the node spec refuses
    less, and this clamp holds for a spec that got past it), and a probe never
    outlasts its interval (it would hold a worker past its own next turn)."""
    interval = max(hc.interval, floor)
    return interval, min(hc.timeout, interval)


def enter_netns(netns: str | None) -> Callable[[], None]:
    """A worker thread's initializer: move it into ``netns`` (setns is per thread)."""
    def enter() -> None:
        if netns:
            move_thread(netns)
    return enter


class FairPool:
    """Worker threads shared by every service's probes, handed out fairly.

    One FIFO pool let one service starve all others: a tenant whose targets
    all hang queued hundreds of probes, each holding a thread for its whole
    timeout, and every other service's probe waited behind them (failover in
    minutes). Here each service (``key``) has a queue of its own and at most
    ``per_key`` jobs in flight, and free workers take the next job from the
    services in turn (round robin). A service with nothing in flight whose job
    finds every worker busy gets a spare thread (up to ``spare`` of them, each
    gone after IDLE_EXIT idle seconds), so hung probes of other services never
    delay its verdict past its own interval.
    """

    IDLE_EXIT = 30.0  # seconds a spare thread waits for work before it ends

    def __init__(self, workers: int = 16, per_key: int = 4, spare: int = 16,
                 initializer: Callable[[], None] = lambda: None):
        self.workers, self.per_key, self.spare = workers, per_key, spare
        self._init = initializer
        self._cv = threading.Condition()
        self._queues: dict[Hashable, deque] = {}
        self._inflight: dict[Hashable, int] = {}
        self._ring: deque = deque()  # keys with a queued job and room in flight, in turn order
        self._in_ring: set = set()
        self._threads = self._idle = 0
        self._closed = False

    def submit(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` in a worker, in ``key``'s turn."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("pool shut down")
            self._queues.setdefault(key, deque()).append((fut, fn, args))
            self._ready(key)
            limit = self.workers if self._inflight.get(key, 0) else self.workers + self.spare
            if len(self._ring) > self._idle and self._threads < limit:
                self._threads += 1
                threading.Thread(target=self._work, name="probe", daemon=True).start()
            self._cv.notify()
        return fut

    def in_flight(self, key: Hashable) -> int:
        return self._inflight.get(key, 0)

    @property
    def threads(self) -> int:
        return self._threads

    def _ready(self, key: Hashable) -> None:
        """Put ``key`` at the back of the ring if it has a job and room (lock held)."""
        if (key not in self._in_ring and self._queues.get(key)
                and self._inflight.get(key, 0) < self.per_key):
            self._ring.append(key)
            self._in_ring.add(key)

    def _take(self) -> tuple[Hashable, tuple] | None:
        """The next job in turn; None when this thread should end (lock held)."""
        while not self._ring:
            if self._closed:
                return None
            spare = self._threads > self.workers
            self._idle += 1
            woke = self._cv.wait(self.IDLE_EXIT if spare else None)
            self._idle -= 1
            if not woke and not self._ring and self._threads > self.workers:
                return None
        key = self._ring.popleft()
        self._in_ring.discard(key)
        job = self._queues[key].popleft()
        self._inflight[key] = self._inflight.get(key, 0) + 1
        self._ready(key)  # its next job waits for the other services' turns
        return key, job

    def _done(self, key: Hashable) -> None:
        """A job of ``key`` finished: its next one may go (lock held)."""
        self._inflight[key] -= 1
        if self._queues[key]:
            self._ready(key)
            self._cv.notify()
        elif not self._inflight[key]:  # nothing left of a service: forget it
            del self._queues[key], self._inflight[key]

    def _work(self) -> None:
        self._init()
        with self._cv:
            while (taken := self._take()) is not None:
                key, (fut, fn, args) = taken
                self._cv.release()
                try:
                    if fut.set_running_or_notify_cancel():
                        try:
                            fut.set_result(fn(*args))
                        except BaseException as e:  # noqa: BLE001 - handed to the waiter
                            fut.set_exception(e)
                finally:
                    self._cv.acquire()
                    self._done(key)
            self._threads -= 1

    def shutdown(self) -> None:
        """Cancel queued jobs and let the workers end (running probes finish)."""
        with self._cv:
            self._closed = True
            for q in self._queues.values():
                for fut, _, _ in q:
                    fut.cancel()
                q.clear()
            self._ring.clear()
            self._in_ring.clear()
            self._cv.notify_all()


class HealthChecker:
    """Runs one task per checked dest; calls `on_change` when a verdict flips.

    Probes run in a FairPool keyed by service: a service whose targets hang
    holds at most ``per_service`` workers, and checks never run more often
    than every ``min_interval`` seconds whatever the spec says (see paced)."""

    def __init__(self, on_change: Callable[[], None] | None = None, netns: str | None = None,
                 workers: int = 16, per_service: int = 4, min_interval: float = MIN_HEALTH_INTERVAL,
                 pool: Any = None, store: Any = None):
        """``pool``: anything with FairPool's ``submit(key, fn, *args)`` and
        ``shutdown()`` (default: a FairPool entering ``netns``). ``store``:
        a verdicts.VerdictStore; the verdicts start as it holds them."""
        self._store = store
        self.verdicts: Verdicts = store.load() if store is not None else {}
        self._dirty = False  # verdicts changed since the store last had them
        self._tasks: dict[tuple[ServiceKey, DestKey], tuple[HealthCheck, asyncio.Task]] = {}
        self._checked: dict[ServiceKey, int] = {}  # service -> dests with a running check
        self._on_change = on_change or (lambda: None)
        self._pool = pool or FairPool(workers, per_service, initializer=enter_netns(netns))
        self.min_interval = min_interval
        self._spec: NodeSpec | None = None  # the spec of the last update

    def checked(self, skey: ServiceKey) -> bool:
        return skey in self._checked

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def checked_services(self) -> set[ServiceKey]:
        """Every service with a check running. Safe from another thread (the
        metrics scrape): the dict is copied in C, not walked in Python while
        the event loop changes it."""
        return set(self._checked.copy())

    def update(self, spec: NodeSpec) -> None:
        """Start, restart or stop checks to match the spec (call in the event loop)."""
        if spec is self._spec:  # the very same spec: a walk over 10k services for nothing
            return
        self._spec = spec
        want: dict[tuple[ServiceKey, DestKey], tuple[HealthCheck, Dest]] = {}
        for s in spec.services:
            if s.health.type != "none":
                for d in s.dests:
                    want[(s.key, d.key)] = (s.health, d)
        for k in list(self._tasks):
            hc, task = self._tasks[k]
            if k not in want or want[k][0] != hc:
                task.cancel()
                self._forget(k)
        for k in [k for k in self.verdicts if k not in want]:  # also loaded ones nobody checks now
            del self.verdicts[k]
            self._dirty = True
        for k, (hc, d) in want.items():
            if k not in self._tasks:
                self._tasks[k] = (hc, asyncio.get_running_loop().create_task(self._run(k, hc, d)))
                self._checked[k[0]] = self._checked.get(k[0], 0) + 1

    def _forget(self, k: tuple[ServiceKey, DestKey]) -> None:
        del self._tasks[k]
        n = self._checked[k[0]] - 1
        if n:
            self._checked[k[0]] = n
        else:
            del self._checked[k[0]]

    async def _run(self, k, hc: HealthCheck, d: Dest) -> None:
        interval, timeout = paced(hc, self.min_interval)
        if timeout != hc.timeout:
            hc = replace(hc, timeout=timeout)
        while True:
            started = time.monotonic()
            ok, why = await asyncio.wrap_future(self._pool.submit(k[0], probe, hc, d.address, d.port))
            old = self.verdicts.get(k, DestHealth())
            new = step(old, ok, hc.rise, hc.fall, time.time(), why)
            self.verdicts[k] = new
            if new.state != old.state:
                self._dirty = True
                self._on_change()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    def persist(self) -> None:
        """Write the verdicts to the store if one changed since the last
        write. The agent calls this before it programs the weights the
        verdicts give, so the kernel never holds a weight its record on
        disk would not give again after a restart."""
        if self._store is None or not self._dirty:
            return
        self._dirty = False
        try:
            self._store.save(dict(self.verdicts))
        except OSError as e:
            self._dirty = True
            log.warning("health verdicts not saved to %s: %s", self._store.path, e)

    async def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        self._checked.clear()
        self._pool.shutdown()


__all__ = ["FairPool", "HealthChecker", "enter_netns", "paced", "probe"]
