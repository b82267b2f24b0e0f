"""Real-server health checks, run by each director's agent.

The verdicts change weights locally, without waiting for the API server: a
server that failed `fall` checks in a row gets weight 0 in the kernel (new
connections go elsewhere, established ones finish), and one that then passed
`rise` checks gets its configured weight back -- the re-add that keepalived
(#362) and kube-vip (#875) users found missing. A server nobody has checked
yet is Unknown and keeps its weight, so an agent restart changes nothing.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable

from lvs_model.nodespec import Dest, DestKey, HealthCheck, NodeSpec, Service, ServiceKey

HEALTHY, UNHEALTHY, DRAINING, UNKNOWN = "Healthy", "Unhealthy", "Draining", "Unknown"


@dataclass(frozen=True)
class DestHealth:
    state: str = UNKNOWN
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    last_error: str = ""
    changed_at: float = 0.0


def step(h: DestHealth, ok: bool, rise: int, fall: int, now: float, error: str = "") -> DestHealth:
    """One check result in; the new verdict out (pure)."""
    if ok:
        succ, fail = h.successes + 1, 0
        state = HEALTHY if (h.state == UNKNOWN or succ >= rise) else h.state
    else:
        succ, fail = 0, h.failures + 1
        state = UNHEALTHY if fail >= fall else h.state
    changed = now if state != h.state else h.changed_at
    return DestHealth(state, succ, fail, "" if ok else error, changed)


Verdicts = dict[tuple[ServiceKey, DestKey], DestHealth]


def dest_health(d: Dest, h: DestHealth | None, checked: bool) -> str:
    """The health column a user sees for one dest."""
    if d.weight == 0:
        return DRAINING
    if not checked:
        return HEALTHY if h is None else h.state  # unchecked services count as up
    return (h or DestHealth()).state


def effective_spec(spec: NodeSpec, verdicts: Verdicts) -> NodeSpec:
    """The spec with failed servers' weights at 0 (pure). A service with no
    failed server stays the same object (the engine's incremental reconcile
    looks for changed services by identity first)."""
    if not verdicts:
        return spec
    services = []
    for s in spec.services:
        if s.health.type == "none":
            services.append(s)
            continue
        key = s.key
        down = {d.key for d in s.dests if verdicts.get((key, d.key), DestHealth()).state == UNHEALTHY}
        if not down:
            services.append(s)
            continue
        services.append(replace(s, dests=tuple(replace(d, weight=0) if d.key in down else d for d in s.dests)))
    return replace(spec, services=tuple(services))


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


def netns_executor(netns: str | None, workers: int = 16) -> ThreadPoolExecutor:
    """Worker threads for probes, each moved into `netns` when one is given."""
    def enter() -> None:
        if netns:
            from pyroute2 import netns as nsmod
            nsmod.setns(netns)
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe", initializer=enter)


class HealthChecker:
    """Runs one task per checked dest; calls `on_change` when a verdict flips."""

    def __init__(self, on_change: Callable[[], None] | None = None, netns: str | None = None):
        self.verdicts: Verdicts = {}
        self._tasks: dict[tuple[ServiceKey, DestKey], tuple[HealthCheck, asyncio.Task]] = {}
        self._on_change = on_change or (lambda: None)
        self._pool = netns_executor(netns)
        self._spec: NodeSpec | None = None  # the spec of the last update

    def checked(self, skey: ServiceKey) -> bool:
        return any(k[0] == skey for k in self._tasks)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    def checked_services(self) -> set[ServiceKey]:
        """Every service with a check running (one pass, not one per service)."""
        return {k[0] for k in self._tasks}

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
                del self._tasks[k]
                if k not in want:
                    self.verdicts.pop(k, None)
        for k, (hc, d) in want.items():
            if k not in self._tasks:
                self._tasks[k] = (hc, asyncio.get_running_loop().create_task(self._run(k, hc, d)))

    async def _run(self, k, hc: HealthCheck, d: Dest) -> None:
        while True:
            started = time.monotonic()
            ok, why = await asyncio.get_running_loop().run_in_executor(
                self._pool, probe, hc, d.address, d.port)
            old = self.verdicts.get(k, DestHealth())
            new = step(old, ok, hc.rise, hc.fall, time.time(), why)
            self.verdicts[k] = new
            if new.state != old.state:
                self._on_change()
            await asyncio.sleep(max(0.0, hc.interval - (time.monotonic() - started)))

    async def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in self._tasks.values()), return_exceptions=True)
        self._tasks.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
