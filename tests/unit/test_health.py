"""Health checks: the rise/fall state machine, and real probes on loopback."""
from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest

from lvs_agent.health import (
    DRAINING, HEALTHY, UNHEALTHY, UNKNOWN, DestHealth, HealthChecker, dest_health,
    effective_spec, probe, step,
)
from lvs_model.nodespec import Dest, HealthCheck, NodeSpec, Service


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
        checker = HealthChecker(on_change=lambda: changes.append(checker.verdicts[key].state))
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
