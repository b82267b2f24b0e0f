"""Smoke tests of the lab itself: real IPVS, real traffic between namespaces.

They drive IPVS by hand with Debian's ipvsadm (from the host root) in the director's
namespace, as the seed notes do, so a failure here is the lab's, not the engine's.
"""

from __future__ import annotations

import pytest

from lvs_lab.netns import read_file_in_netns


def _add_service(t, proto_flag: str, sched: str, fwd_flag: str, port: int = 80) -> None:
    rules = [f"-A {proto_flag} {t.service(port)} -s {sched}"]
    rules += [f"-a {proto_flag} {t.service(port)} -r {t.rip_port(i, port)} {fwd_flag} -w 1"
              for i in range(len(t.rips))]
    t.ipvsadm_restore(rules)


def _assert_alternates(names, expected):
    assert None not in names, f"unanswered requests: {names}"
    assert set(names) == set(expected), names
    for a, b in zip(names, names[1:]):
        assert a != b, f"rr did not alternate: {names}"


def _rx_packets(ns: str, dev: str) -> int:
    for line in read_file_in_netns(ns, "/proc/net/dev").splitlines():
        name, sep, rest = line.partition(":")
        if sep and name.strip() == dev:
            return int(rest.split()[1])
    raise AssertionError(f"no {dev} in {ns}")


def test_seed_nat_rr_alternates(seed_nat):
    t = seed_nat
    # Control: nothing listens on the VIP before the service exists.
    assert t.tcp_names(1, timeout=1.0) == [None]
    _add_service(t, "-t", "rr", "-m")
    first = t.wait_tcp()
    names = [first.name] + t.tcp_names(5)
    _assert_alternates(names, t.names)
    # NAT keeps the client's address: the real servers saw 192.168.0.1.
    assert {r.peer for r in t.tcp_replies(2)} == {t.client_ip}
    table = t.ipvs_table()
    assert "Masq" in table and "C0A8001E:0050" in table  # 192.168.0.30:80
    t.ipvsadm("-D", "-t", t.service())


def test_seed_nat_weights_and_quiesce(seed_nat):
    t = seed_nat
    _add_service(t, "-t", "wrr", "-m")
    t.wait_tcp()
    # weight 0 on rs2 (quiesce): new connections only go to rs1
    t.ipvsadm("-e", "-t", t.service(), "-r", t.rip_port(1), "-m", "-w", "0")
    assert t.tcp_names(4) == ["rs1"] * 4


def test_tun_one_subnet_ipip(tun_one_subnet_prepared):
    t = tun_one_subnet_prepared
    before = [_rx_packets(ns, "tunl0") for ns in t.real_servers]
    _add_service(t, "-t", "rr", "-i")
    first = t.wait_tcp()
    names = [first.name] + t.tcp_names(3)
    _assert_alternates(names, t.names)
    after = [_rx_packets(ns, "tunl0") for ns in t.real_servers]
    # Every real server received encapsulated (ipip) packets on tunl0.
    assert all(a > b for a, b in zip(after, before)), (before, after)
    # Replies come straight from the real servers, source VIP; client address kept.
    assert {r.peer for r in t.tcp_replies(2)} == {t.client_ip}


def test_tun_one_subnet_unprepared_backends_do_not_answer(tun_one_subnet):
    # Without tunl0 + VIP on the real servers, TUN cannot work: proves the test above
    # depends on backend_prepare, i.e. on real decapsulation.
    t = tun_one_subnet
    _add_service(t, "-t", "rr", "-i")
    assert t.tcp_names(2, timeout=1.0) == [None, None]


@pytest.mark.parametrize("encap,tun_type", [("gue", 1), ("gre", 2)])
def test_tun_gue_and_gre(lab, encap, tun_type):
    # ipvsadm 1.31 (Debian 12) has no --tun-type: program the dests with pyroute2.
    import socket

    from pyroute2 import IPVS, IPVSDest, IPVSService

    from lvs_lab import topology

    t = topology.tun_one_subnet(lab=lab, backend_prepare=True, serve=True, encap=encap)
    dev = "gre0" if encap == "gre" else "tunl0"  # GUE's inner IPIP lands on tunl0
    before = [_rx_packets(ns, dev) for ns in t.real_servers]
    with IPVS(netns=t.director) as ipvs:
        svc = IPVSService(addr=t.vip, port=80, protocol=socket.IPPROTO_TCP, sched_name="rr")
        ipvs.service("add", service=svc)
        for rip in t.rips:
            kw = {"tun_port": socket.htons(topology.GUE_PORT)} if encap == "gue" else {}
            ipvs.dest("add", service=svc, dest=IPVSDest(
                addr=rip, port=80, fwd_method=2, weight=1, tun_type=tun_type, **kw))
    first = t.wait_tcp()
    _assert_alternates([first.name] + t.tcp_names(3), t.names)
    after = [_rx_packets(ns, dev) for ns in t.real_servers]
    assert all(a > b for a, b in zip(after, before)), (dev, before, after)


def test_tun_cross_subnet_ipip(tun_cross_subnet_prepared):
    t = tun_cross_subnet_prepared
    _add_service(t, "-t", "rr", "-i")
    first = t.wait_tcp()
    names = [first.name] + t.tcp_names(3)
    _assert_alternates(names, t.names)


def test_dr_one_segment(dr_prepared):
    t = dr_prepared
    _add_service(t, "-t", "rr", "-g")
    first = t.wait_tcp()
    names = [first.name] + t.tcp_names(3)
    _assert_alternates(names, t.names)


def test_two_topologies_side_by_side(make_topology):
    # Distinct prefixes keep two labs apart; each has its own director and IPVS table.
    a = make_topology("seed_nat")
    b = make_topology("dr", prefix="lbb-", backend_prepare=True)
    assert a.director == "lab-director" and b.director == "lbb-director"
    _add_service(a, "-t", "rr", "-m")
    _add_service(b, "-t", "rr", "-g")
    assert a.wait_tcp().name in a.names and b.wait_tcp().name in b.names
    assert "C0A80264" not in a.ipvs_table()  # b's VIP 192.168.2.100 is not in a's table


def test_udp_echo_through_nat(udp_nat):
    t = udp_nat
    _add_service(t, "-u", "rr", "-m")
    first = t.wait_udp()
    names = [first.name] + t.udp_names(3)
    _assert_alternates(names, t.names)
    assert "UDP" in t.ipvs_table()


def test_ipv6_nat(nat6):
    t = nat6
    assert t.family == 6
    _add_service(t, "-t", "rr", "-m")
    first = t.wait_tcp()
    names = [first.name] + t.tcp_names(3)
    _assert_alternates(names, t.names)
    assert {r.peer for r in t.tcp_replies(2)} == {t.client_ip}


SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"]


def test_every_scheduler_module_loads(lab):
    # Each scheduler is its own module; the runner preloads them (request_module()
    # would otherwise run the initramfs's modprobe, which cannot find them).
    ns = lab.host("d")
    lab.apply()
    rules = [f"-A -t 10.9.9.{i}:80 -s {sched}" for i, sched in enumerate(SCHEDULERS, 1)]
    lab.run("d", "ipvsadm", "-R", input="\n".join(rules) + "\n")
    rows = [line.split()[:3] for line in lab.ipvs_table(ns).splitlines()]
    for i, sched in enumerate(SCHEDULERS, 1):
        assert ["TCP", f"0A0909{i:02X}:0050", sched] in rows, (sched, rows)
