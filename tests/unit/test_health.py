"""Health checks: the rise/fall state machine, and real probes on loopback."""
from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from lvs_agent import health
from lvs_agent.health import FairPool, HealthChecker, paced, probe
from lvs_agent.verdicts import DRAINING, HEALTHY, UNHEALTHY, UNKNOWN, DestHealth, dest_health, effective_spec, step
from lvs_model.nodespec import MIN_HEALTH_INTERVAL, Dest, HealthCheck, NodeSpec, Service


def run(results, rise=2, fall=3):
    h = DestHealth()
    states = []
    for ok in results:
        h = step(h, ok, rise, fall, 0.0, "" if ok else "refused")
        states.append(h.state)
    return states


def test_first_success_is_healthy_and_fall_failures_make_unhealthy():
    assert run([True]) == [HEALTHY]
    assert run([True, False, False, False]) == [HEALTHY, HEALTHY, HEALTHY, UNHEALTHY]


def test_recovered_server_comes_back_after_rise():
    s = run([False, False, False, True, True, True])
    assert s == [UNKNOWN, UNKNOWN, UNHEALTHY, UNHEALTHY, HEALTHY, HEALTHY]


def test_flapping_below_thresholds_changes_nothing():
    assert run([True, False, False, True, False, False, True]) == [HEALTHY] * 7


def test_effective_spec_zeroes_only_unhealthy_checked_dests():
    hc = HealthCheck(type="tcp")
    a, b = Dest("10.0.0.1", 80, weight=5), Dest("10.0.0.2", 80, weight=7)
    checked = Service(address="1.1.1.1", port=80, dests=(a, b), health=hc)
    unchecked = Service(address="1.1.1.2", port=80, dests=(a,))
    verdicts = {(checked.key, a.key): DestHealth(UNHEALTHY), (checked.key, b.key): DestHealth(HEALTHY),
                (unchecked.key, a.key): DestHealth(UNHEALTHY)}
    out = effective_spec(NodeSpec(services=(checked, unchecked)), verdicts)
    assert [d.weight for d in out.services[0].dests] == [0, 7]
    assert out.services[1] == unchecked
    assert dest_health(Dest("10.0.0.3", 80, weight=0), None, True) == DRAINING
    assert dest_health(a, None, False) == HEALTHY


# ---- real probes against servers on loopback --------------------------------

async def http_server(status: int, tls: ssl.SSLContext | None = None):
    async def handle(reader, writer):
        await reader.readline()
        writer.write(f"HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


def self_signed(tmp_path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rs")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return ctx


def test_probes_tcp_http_https(tmp_path):
    async def main():
        ok_srv, ok_port = await http_server(200)
        bad_srv, bad_port = await http_server(503)
        tls_srv, tls_port = await http_server(200, self_signed(tmp_path))
        try:
            check = lambda hc, port: asyncio.to_thread(probe, hc, "127.0.0.1", port)  # noqa: E731
            assert await check(HealthCheck(type="tcp", timeout=1), ok_port) == (True, "")
            assert await check(HealthCheck(type="http", timeout=1), ok_port) == (True, "")
            ok, why = await check(HealthCheck(type="http", timeout=1), bad_port)
            assert not ok and "503" in why
            assert await check(HealthCheck(type="https", timeout=1), tls_port) == (True, "")
            ok, why = await check(HealthCheck(type="http", timeout=1, expected_status=204), ok_port)
            assert not ok and "expected 204" in why
        finally:
            for s in (ok_srv, bad_srv, tls_srv):
                s.close()
        ok_srv.close()
        await ok_srv.wait_closed()
        ok, why = await asyncio.to_thread(probe, HealthCheck(type="tcp", timeout=1), "127.0.0.1", ok_port)
        assert not ok and why
    asyncio.run(main())


def test_checker_marks_down_and_back_up_on_a_real_server():
    async def main():
        srv, port = await http_server(200)
        hc = HealthCheck(type="http", interval=0.05, timeout=0.04, rise=2, fall=2)
        svc = Service(address="127.0.0.1", port=port, dests=(Dest("127.0.0.1", port),), health=hc)
        key = (svc.key, svc.dests[0].key)
        changes = []
        checker = HealthChecker(on_change=lambda: changes.append(checker.verdicts[key].state), min_interval=0.01)
        checker.update(NodeSpec(services=(svc,)))

        async def wait_for(state):
            for _ in range(200):
                if checker.verdicts.get(key, DestHealth()).state == state:
                    return
                await asyncio.sleep(0.02)
            pytest.fail(f"never became {state}: {checker.verdicts.get(key)}")

        await wait_for(HEALTHY)
        srv.close()
        await srv.wait_closed()
        await wait_for(UNHEALTHY)
        srv2 = await asyncio.start_server(
            lambda r, w: (w.write(b"HTTP/1.0 200 OK\r\n\r\n"), w.close()), "127.0.0.1", port)
        await wait_for(HEALTHY)
        srv2.close()
        checker.update(NodeSpec())
        assert checker.verdicts == {}
        await checker.stop()
        assert changes == [HEALTHY, UNHEALTHY, HEALTHY]
    asyncio.run(main())


# ---- pacing and fairness ----------------------------------------------------

def test_interval_floor_and_timeout_within_interval():
    assert HealthChecker().min_interval == MIN_HEALTH_INTERVAL == 1.0
    assert paced(HealthCheck(type="tcp", interval=0.1, timeout=0.1)) == (1.0, 0.1)
    assert paced(HealthCheck(type="tcp", interval=0.1, timeout=5)) == (1.0, 1.0)
    assert paced(HealthCheck(type="tcp", interval=10, timeout=2)) == (10, 2)


class ProbeLog:
    """Wraps the real probe: which (port) was probed when, and how many of a
    group of ports were in flight at once."""

    def __init__(self, group: set[int] = frozenset()):
        self.calls: list[tuple[int, float, float, bool]] = []
        self.group, self.in_group, self.most_in_group = group, 0, 0
        self._lock = threading.Lock()

    def __call__(self, hc, address, port):
        with self._lock:
            if port in self.group:
                self.in_group += 1
                self.most_in_group = max(self.most_in_group, self.in_group)
        began = time.monotonic()
        try:
            ok, why = probe(hc, address, port)
        finally:
            with self._lock:
                if port in self.group:
                    self.in_group -= 1
        self.calls.append((port, began, time.monotonic(), ok))
        return ok, why

    def of(self, port: int) -> list[tuple[int, float, float, bool]]:
        return [c for c in self.calls if c[0] == port]


def test_tenant_interval_below_the_floor_is_clamped(monkeypatch):
    """A 0.1 s interval asked for: probes at most once a second (the old
    checker probed ten times a second)."""
    log = ProbeLog()
    monkeypatch.setattr(health, "probe", log)

    async def main():
        srv, port = await http_server(200)
        hc = HealthCheck(type="http", interval=0.1, timeout=0.1)
        checker = HealthChecker()
        checker.update(NodeSpec(services=(Service(address="127.0.0.1", port=port,
                                                  dests=(Dest("127.0.0.1", port),), health=hc),)))
        await asyncio.sleep(1.6)
        await checker.stop()
        srv.close()
    asyncio.run(main())
    assert 1 <= len(log.calls) <= 3


async def hanging_server():
    """Accepts TCP and never answers: an HTTP check against it times out."""
    async def handle(reader, writer):
        try:
            await reader.read()  # until the prober gives up and closes
        except asyncio.CancelledError:  # the test's loop ends first
            pass
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


class FifoPool:
    """The old design: one thread pool, first come first served."""

    def __init__(self, workers: int):
        self._ex = ThreadPoolExecutor(workers)

    def submit(self, key, fn, *args):
        return self._ex.submit(fn, *args)

    def shutdown(self):
        self._ex.shutdown(wait=False, cancel_futures=True)


def slow_and_fast_tenants(pool_for, monkeypatch, seconds: float = 3.0):
    """Service A: 16 targets that accept and never answer (0.5 s timeout);
    service B: one healthy target, checked every 0.2 s. 4 workers, at most 2
    of them for one service. The probe log and B's final verdict."""
    async def main():
        hung = [await hanging_server() for _ in range(16)]
        ok_srv, ok_port = await http_server(200)
        log = ProbeLog({p for _, p in hung})
        monkeypatch.setattr(health, "probe", log)
        slow = Service(address="192.0.2.1", port=80, health=HealthCheck(type="http", interval=0.5, timeout=0.5),
                       dests=tuple(Dest("127.0.0.1", p) for _, p in hung))
        fast = Service(address="192.0.2.2", port=80, health=HealthCheck(type="http", interval=0.2, timeout=0.2),
                       dests=(Dest("127.0.0.1", ok_port),))
        checker = HealthChecker(min_interval=0.05, pool=pool_for())
        checker.update(NodeSpec(services=(slow, fast)))
        started = time.monotonic()
        await asyncio.sleep(seconds)
        verdict = checker.verdicts.get((fast.key, fast.dests[0].key), DestHealth()).state
        await checker.stop()
        for s, _ in hung + [(ok_srv, ok_port)]:
            s.close()
        return log, ok_port, verdict, started
    return asyncio.run(main())


def test_a_tenant_whose_targets_hang_cannot_starve_another(monkeypatch):
    """While A's probes hang, B is checked about every interval: B's first
    verdict comes within its interval + timeout (generous bound), B is probed
    at least 8 times in 3 s (every 0.2 s: ~15), and A never held more than
    its 2 workers, though it always had more probes due."""
    log, ok_port, verdict, started = slow_and_fast_tenants(
        lambda: FairPool(workers=4, per_key=2, spare=0), monkeypatch)
    b = log.of(ok_port)
    assert verdict == HEALTHY
    assert len(b) >= 8, [round(c[1] - started, 2) for c in b]
    assert b[0][2] - started < 1.5
    assert log.most_in_group == 2  # saturated, and capped


def test_the_old_single_fifo_pool_starves_the_healthy_tenant(monkeypatch):
    """The same two tenants on one first-come-first-served pool of 4 threads
    (the checker before this change): A's 16 hung probes queue ahead of B's,
    each holding a thread for 0.5 s, so every B probe waits ~2 s behind a
    round of A's. B's first verdict comes only after A's first round, and B
    is probed at most a few times in 3 s: the fairness test above fails on it."""
    log, ok_port, _, started = slow_and_fast_tenants(lambda: FifoPool(4), monkeypatch)
    b = log.of(ok_port)
    assert len(b) <= 4
    assert not b or b[0][1] - started > 1.0
    assert log.most_in_group == 4  # A held every thread


def test_fair_pool_takes_services_in_turn():
    """One worker, a backlog of A's jobs queued before B's: they run A, B, A, B."""
    pool = FairPool(workers=1, per_key=4, spare=0)
    gate, order = threading.Event(), []
    blocker = pool.submit("x", gate.wait, 5)
    futs = [pool.submit(k, order.append, f"{k}{i}") for k in "AB" for i in range(3)]
    gate.set()
    for f in [blocker, *futs]:
        f.result(5)
    assert order == ["A0", "B0", "A1", "B1", "A2", "B2"]
    pool.shutdown()


def test_fair_pool_caps_a_service_and_lends_a_spare_thread():
    """A's and C's hung jobs hold at most per_key (1) worker each, so both
    base workers are busy; B, with nothing in flight, gets the spare thread
    at once instead of waiting for a hung job."""
    pool = FairPool(workers=2, per_key=1, spare=1)
    gate = threading.Event()
    hung = [pool.submit(k, gate.wait, 5) for k in "AC" for _ in range(3)]
    deadline = time.monotonic() + 5
    while (pool.in_flight("A"), pool.in_flight("C")) != (1, 1) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (pool.in_flight("A"), pool.in_flight("C")) == (1, 1)
    assert pool.submit("B", lambda: "checked").result(2) == "checked"  # while A and C still hang
    assert not any(f.done() for f in hung)
    assert (pool.in_flight("A"), pool.in_flight("C"), pool.threads) == (1, 1, 3)
    gate.set()
    for f in hung:
        assert f.result(5) is True
    pool.shutdown()
