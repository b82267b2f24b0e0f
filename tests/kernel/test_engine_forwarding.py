"""Every forwarding method delivers, with the ENGINE programming both sides.

Director: IPVS services, the VIP (on the engine's dummy device where the
topology does not already hold it) and the director sysctls. Real servers
(DR/TUN): a backend NodeSpec with backendVips, so the engine brings tunl0 up,
puts the VIP on tunl0 or lo and sets ARP/rp_filter scoped to the uplink.
Nothing is configured by hand beyond the topology's plain addressing.
"""
from __future__ import annotations


from lvs_lab import topology
from lvs_lab.netns import read_sysctl

from engine_helpers import converged, reconcile_ok


def alternates(names: list, expected: list[str]) -> None:
    assert None not in names, names
    assert set(names) == set(expected), names
    assert all(a != b for a, b in zip(names, names[1:])), names


def backend_doc(vip: str, method: str, uplink: str = "eth0") -> dict:
    return {"backendVips": [{"address": vip, "method": method}], "uplink": uplink}


def test_nat_with_port_mapping(seed_nat, engines):
    t = seed_nat
    t.serve_all(port=8080)
    d = engines(t.director, "director")
    doc = {"services": [{"address": t.vip, "port": 80, "scheduler": "rr",
                         "dests": [{"address": rip, "port": 8080, "method": "nat"} for rip in t.rips]}],
           "directorAddresses": [t.vip]}
    r = reconcile_ok(d, doc)
    # The seed's director already holds the VIP on eth0: the engine adds no second copy.
    assert not any(type(op).__name__ == "AddAddress" for op in r.ops)
    first = t.wait_tcp()
    alternates([first.name] + t.tcp_names(3), t.names)
    assert {x.peer for x in t.tcp_replies(2)} == {t.client_ip}  # NAT keeps the client address
    assert read_sysctl(t.director, "net.ipv4.vs.expire_nodest_conn").strip() == "1"
    converged(d, doc)


def test_udp_nat(udp_nat, engines):
    t = udp_nat
    d = engines(t.director, "director")
    doc = {"services": [{"address": t.vip, "port": 80, "protocol": "udp", "scheduler": "rr",
                         "dests": [{"address": rip, "method": "nat"} for rip in t.rips]}]}
    reconcile_ok(d, doc)
    first = t.wait_udp()
    alternates([first.name] + t.udp_names(3), t.names)
    converged(d, doc)


def test_ipv6_nat(nat6, engines):
    t = nat6
    d = engines(t.director, "director")
    doc = {"services": [{"address": t.vip, "port": 80, "scheduler": "rr",
                         "dests": [{"address": rip, "method": "nat"} for rip in t.rips]}]}
    reconcile_ok(d, doc)
    assert read_sysctl(t.director, "net.ipv6.conf.all.forwarding").strip() == "1"
    first = t.wait_tcp()
    alternates([first.name] + t.tcp_names(3), t.names)
    converged(d, doc)


def _tun_or_dr(t, engines, method: str):
    d = engines(t.director, "director")
    doc = {"services": [{"address": t.vip, "port": 80, "scheduler": "rr",
                         "dests": [{"address": rip, "method": method} for rip in t.rips]}],
           "directorAddresses": [t.vip]}
    r = reconcile_ok(d, doc)
    # The topology was built without the VIP on the director: the engine holds it.
    assert any(type(op).__name__ == "AddAddress" for op in r.ops)
    backends = []
    for ns, name in zip(t.real_servers, t.names):
        b = engines(ns, name)
        reconcile_ok(b, backend_doc(t.vip, method))
        backends.append(b)
    first = t.wait_tcp()
    alternates([first.name] + t.tcp_names(3), t.names)
    # Replies come straight from the real servers; the client address is kept.
    assert {x.peer for x in t.tcp_replies(2)} == {t.client_ip}
    converged(d, doc)
    for b in backends:
        converged(b, backend_doc(t.vip, method))
    return d, backends


def _assert_backend_sysctls(ns: str, method: str) -> None:
    assert read_sysctl(ns, "net.ipv4.conf.eth0.arp_ignore").strip() == "1"
    assert read_sysctl(ns, "net.ipv4.conf.eth0.arp_announce").strip() == "2"
    # Scoped, never global (kubernetes#71555).
    assert read_sysctl(ns, "net.ipv4.conf.all.arp_ignore").strip() == "0"
    if method == "tun":
        for dev in ("all", "tunl0", "eth0"):
            assert read_sysctl(ns, f"net.ipv4.conf.{dev}.rp_filter").strip() == "0"


def test_dr(engines):
    with topology.dr(serve=True, vip_on_director=False) as t:
        d, backends = _tun_or_dr(t, engines, "dr")
        _assert_backend_sysctls(t.real_servers[0], "dr")
        vip_on_lo = t.lab.run(t.real_servers[0], "ip", "-o", "addr", "show", "dev", "lo").stdout
        assert f"{t.vip}/32" in vip_on_lo
        # Backends removed from the spec: the engine takes back exactly what it did.
        for b in backends:
            reconcile_ok(b, {})
        assert f"{t.vip}/32" not in t.lab.run(t.real_servers[0], "ip", "-o", "addr", "show").stdout
        assert read_sysctl(t.real_servers[0], "net.ipv4.conf.eth0.arp_ignore").strip() == "0"
        reconcile_ok(d, {})
        assert t.ipvsadm("-Sn").stdout == ""


def test_tun_one_subnet(engines):
    with topology.tun_one_subnet(serve=True, vip_on_director=False) as t:
        d, backends = _tun_or_dr(t, engines, "tun")
        _assert_backend_sysctls(t.real_servers[0], "tun")
        link = t.lab.run(t.real_servers[0], "ip", "-o", "addr", "show", "dev", "tunl0").stdout
        assert f"{t.vip}/32" in link
        for b in backends:
            reconcile_ok(b, {})
        # tunl0 is the ipip module's own device: the engine brought it up and now down.
        out = t.lab.run(t.real_servers[0], "ip", "-o", "link", "show", "tunl0").stdout
        assert "UP" not in out.split(">")[0]
        reconcile_ok(d, {})


def test_tun_cross_subnet(tun_cross_subnet, engines):
    t = tun_cross_subnet  # VIP held by the director's eth0 (the topology's default)
    d = engines(t.director, "director")
    doc = {"services": [{"address": t.vip, "port": 80, "scheduler": "rr",
                         "dests": [{"address": rip, "method": "tun"} for rip in t.rips]}]}
    reconcile_ok(d, doc)
    for ns, name in zip(t.real_servers, t.names):
        reconcile_ok(engines(ns, name), backend_doc(t.vip, "tun"))
    first = t.wait_tcp()
    alternates([first.name] + t.tcp_names(3), t.names)
    assert {x.peer for x in t.tcp_replies(2)} == {t.client_ip}
    converged(d, doc)
