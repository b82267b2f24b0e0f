"""Issue 22 item 7: every feature that was programmed but never under traffic,
under real traffic between namespaces, with the ENGINE programming both the
director and (for DR/TUN) the real servers.

Table-driven in the style of moby/ipvs' tests: each scheduler row holds what
the kernel's own formula (net/netfilter/ipvs/ip_vs_*.c, 6.1) predicts for a
sequence of held connections, and the assertion compares the whole sequence,
so each row fails for the schedulers it is not (the rows check that their
predictions differ from each other's before comparing).

Three topologies, each built once per module (a build costs seconds under
TCG): the seed's NAT network (schedulers, thresholds, persistence netmask,
SCTP), one IPv4 subnet for TUN with GUE and GRE real servers (and one-packet
scheduling over them), and one IPv6 subnet for IPv6 DR, TUN (ip6ip6) and GUE.
Each scheduler row programs a service on a port of its own, so its
connection counters start at zero.

What failed on the code before these tests: GUE real servers (no FOU port
opened), IPv6 GUE and GRE real servers (IPv4 devices), GRE with checksums
(gre0 without icsum). The scheduler, threshold, persistence, one-packet and
SCTP rows put features the engine already programmed under traffic for the
first time; they passed on it, and each fails for the behaviours it is not.
"""
from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from lvs_agent.engine import Engine
from lvs_agent.observe import read_ipvs
from lvs_lab import topology
from lvs_model.nodespec import NodeSpec
from lvs_lab.servers import SctpServer, hold_tcp, reset_close, sctp_replies, udp_names_one_socket

from engine_helpers import HoldServer, reconcile_ok

OTHER_NET_CLIENT = "192.168.5.1"  # the client's address in another /24
SAME_NET_CLIENT = "192.168.0.2"
GUE_PORT = 6080


# ------------------------------------------------------------------------------ the kernel's formulas

def least_connection_picks(scheduler: str, order: list[int], weights: list[int], count: int) -> list[int]:
    """Which dest (index into ``weights``) each of ``count`` new held
    connections gets, starting from no connections, as ip_vs_{lc,wlc,sed,nq}.c
    compute it. ``order``: the service's dest list as the kernel keeps it
    (ties go to the first). Overheads: lc and wlc (active << 8) + inactive
    (no inactive here), sed and nq active + 1; wlc/sed/nq compare them
    divided by the weight; nq takes an idle server at once."""
    active = [0] * len(weights)
    picks = []
    for _ in range(count):
        best = None
        for i in (i for i in order if weights[i] > 0):
            if scheduler == "nq" and active[i] == 0:
                best = i
                break
            if best is None:
                best = i
            elif scheduler == "lc":
                if active[i] < active[best]:
                    best = i
            elif scheduler == "wlc":
                if (active[best] << 8) * weights[i] > (active[i] << 8) * weights[best]:
                    best = i
            elif (active[best] + 1) * weights[i] > (active[i] + 1) * weights[best]:  # sed, nq
                best = i
        picks.append(best)
        active[best] += 1
    return picks


def test_the_least_connection_predictions_differ():
    """Pure: for both list orders, the scenario of the kernel rows gives four
    different sequences (else passing would prove nothing)."""
    for order in ([0, 1], [1, 0]):
        seqs = {s: tuple(least_connection_picks(s, order, [1, 2], 5)) for s in ("lc", "wlc", "sed", "nq")}
        assert len(set(seqs.values())) == 4, seqs


# ------------------------------------------------------------------------------ NAT topology

@dataclass
class Nat:
    t: topology.Topology
    engine: Engine
    holds: dict[int, list[HoldServer]] = field(default_factory=dict)
    conns: list[socket.socket] = field(default_factory=list)

    def program(self, *services: dict) -> None:
        reconcile_ok(self.engine, {"services": list(services)})

    def service(self, port: int, scheduler: str, weights=(1, 1), flags=(), dest_extra=None, **extra) -> dict:
        """A NAT service on VIP:port; a hold server answers on port on every real server."""
        if port not in self.holds:
            self.holds[port] = [HoldServer(ns, name, port) for ns, name in zip(self.t.real_servers, self.t.names)]
        dests = [{"address": rip, "port": port, "weight": w, "method": "nat", **((dest_extra or {}).get(rip, {}))}
                 for rip, w in zip(self.t.rips, weights)]
        return {"address": self.t.vip, "port": port, "scheduler": scheduler,
                **({"schedulerFlags": list(flags)} if flags else {}), **extra, "dests": dests}

    def hold(self, port: int, count: int = 1, source: str | None = None, sport: int = 0) -> list[str | None]:
        names = []
        for i in range(count):
            name, sock = hold_tcp(self.t.client, self.t.vip, port, source=source,
                                  sport=sport + i if sport else 0)
            names.append(name)
            if sock:
                self.conns.append(sock)
        return names

    def reset(self, socks: list[socket.socket]) -> None:
        for s in socks:
            reset_close(s)
            self.conns.remove(s)

    def order(self, port: int) -> list[int]:
        """The service's dests in the kernel's list order (as indices of t.rips)."""
        svc = read_ipvs(self.t.director).services  # the dump's order (ipvsadm -L sorts)
        key = next(k for k in svc if k.port == port and k.protocol == "tcp")
        return [self.t.rips.index(d.address) for d in svc[key].dests]

    def conn_counts(self, port: int) -> dict[str, int]:
        """name -> active + inactive connections of that dest (what thresholds count)."""
        table = self.t.ipvsadm("-Ln", "-t", f"{self.t.vip}:{port}").stdout
        out = {}
        for line in table.splitlines():
            parts = line.split()
            if parts and parts[0] == "->" and parts[1].rsplit(":", 1)[0] in self.t.rips:
                out[self.t.names[self.t.rips.index(parts[1].rsplit(":", 1)[0])]] = int(parts[4]) + int(parts[5])
        return out

    def wait_conn_count(self, port: int, name: str, want: int, deadline: float = 90.0) -> None:
        """Until the kernel expires the reset connections (its CLOSE state lasts 10 s)."""
        end = time.monotonic() + deadline
        while self.conn_counts(port).get(name) != want:
            assert time.monotonic() < end, (name, want, self.conn_counts(port))
            time.sleep(0.5)


@pytest.fixture(scope="module")
def nat_env(tmp_path_factory):
    t = topology.seed_nat(serve=True, prefix="lbn-")  # alive beside the other tests' lab- topologies
    try:
        t.lab.ip("client", f"addr add {SAME_NET_CLIENT}/24 dev eth0", f"addr add {OTHER_NET_CLIENT}/24 dev eth0")
        t.lab.ip("director", f"route add 192.168.5.0/24 via {t.client_ip}")
        t.lab.apply()
        t.serve_all(port=81)
        engine = Engine(tmp_path_factory.mktemp("features") / "director.json", netns=t.director)
        env = Nat(t, engine)
        yield env
        engine.reconcile(NodeSpec())
        engine.close()
        for hs in env.holds.values():
            for h in hs:
                h.close()
    finally:
        t.close()


@pytest.fixture
def nat(nat_env):
    yield nat_env
    for s in nat_env.conns:
        s.close()
    nat_env.conns.clear()


LEAST_CONNECTION_PORTS = {"lc": 8101, "wlc": 8102, "sed": 8103, "nq": 8104}


@pytest.mark.parametrize("scheduler", sorted(LEAST_CONNECTION_PORTS))
def test_least_connection_schedulers_told_apart(nat, scheduler):
    """Weights rs1=1, rs2=2 and five held connections: lc alternates, wlc
    weighs active connections, sed adds one to each, nq first fills idle
    servers; each sequence is the kernel formula's and no other's."""
    port = LEAST_CONNECTION_PORTS[scheduler]
    nat.program(nat.service(port, scheduler, weights=(1, 2)))
    order = nat.order(port)
    want = {s: [nat.t.names[i] for i in least_connection_picks(s, order, [1, 2], 5)] for s in LEAST_CONNECTION_PORTS}
    assert len({tuple(v) for v in want.values()}) == 4, want
    assert nat.hold(port, 5) == want[scheduler], (order, want)


@pytest.mark.parametrize("scheduler,expected", [
    # fo: always the highest weight available.
    ("fo", ["rs1"] * 6),
    # ovf: the highest weight until its active connections exceed its weight
    # (rs1 takes 3 with weight 2, rs2 2 with weight 1), then nobody.
    ("ovf", ["rs1"] * 3 + ["rs2"] * 2 + [None]),
])
def test_fo_and_ovf_told_apart(nat, scheduler, expected):
    port = {"fo": 8110, "ovf": 8111}[scheduler]
    nat.program(nat.service(port, scheduler, weights=(2, 1)))
    assert nat.hold(port, 6) == expected


def test_upper_threshold_until_below_the_lower(nat):
    """fo prefers rs1 (weight 2) until it holds its upper threshold (3); it
    then gets nothing new until its connections fall below the lower
    threshold (1): at 2 it is still skipped, where the kernel's rule without
    a lower threshold (below 3/4 of the upper) would already take it back."""
    port = 8120
    nat.program(nat.service(port, "fo", weights=(2, 1),
                            dest_extra={nat.t.rips[0]: {"upperThreshold": 3, "lowerThreshold": 1}}))
    assert nat.hold(port, 3) == ["rs1"] * 3
    rs1_conns = list(nat.conns)
    assert nat.hold(port) == ["rs2"]  # rs1 is at its upper threshold
    nat.reset(rs1_conns[:2])
    nat.wait_conn_count(port, "rs1", 1)
    assert nat.hold(port) == ["rs2"]  # 1 connection: not below the lower threshold
    nat.reset(rs1_conns[2:])
    nat.wait_conn_count(port, "rs1", 0)
    assert nat.hold(port) == ["rs1"]


@pytest.mark.parametrize("scheduler,expected", [
    # All connections go to one destination address (the VIP). lblc sends it
    # to one server until that one is overloaded (active > weight) while
    # another is at most half loaded, then moves the address to that one
    # for good; lblcr adds the other to the address's set and takes the
    # least loaded of the set; dh keeps the address on its hash's server.
    ("lblc", ["a", "a", "b", "b", "b", "b"]),
    ("lblcr", ["a", "a", "b", "b", "b", "a"]),
    ("dh", ["a"] * 6),
])
def test_locality_schedulers_told_apart(nat, scheduler, expected):
    port = {"lblc": 8130, "lblcr": 8131, "dh": 8132}[scheduler]
    nat.program(nat.service(port, scheduler))
    names = nat.hold(port, 6)
    assert None not in names, names
    a = names[0]
    b = next(n for n in nat.t.names if n != a)
    assert names == [{"a": a, "b": b}[x] for x in expected]


@pytest.mark.parametrize("scheduler", ["sh", "mh"])
def test_hash_by_source_port_flag(nat, scheduler):
    """Without the -port flag every connection of one client address goes to
    one server; with it (sh-port, mh-port) the source port is hashed too and
    one client's connections spread (mh's table is keyed at random per
    service: 16 ports all on one server would be a 2^-15 chance)."""
    port = {"sh": 8140, "mh": 8141}[scheduler]
    nat.program(nat.service(port, scheduler))
    plain = nat.hold(port, 8, source=nat.t.client_ip, sport=40000)
    assert None not in plain and len(set(plain)) == 1, plain
    nat.reset(list(nat.conns))
    nat.program(nat.service(port, scheduler, flags=[f"{scheduler}-port"]))
    spread = nat.hold(port, 16, source=nat.t.client_ip, sport=41000)
    assert None not in spread and set(spread) == set(nat.t.names), spread


@pytest.mark.parametrize("scheduler", ["sh", "mh"])
@pytest.mark.parametrize("fallback", [False, True])
def test_hash_fallback_flag(nat, scheduler, fallback):
    """Both servers with upper threshold 1: one held connection makes the
    client's hashed server unavailable. A second connection of the same
    client then fails without the -fallback flag and reaches the other server
    with it (sh-fallback, mh-fallback)."""
    port = {"sh": 8150, "mh": 8152}[scheduler] + fallback
    one = {"upperThreshold": 1}
    nat.program(nat.service(port, scheduler, flags=[f"{scheduler}-fallback"] if fallback else [],
                            dest_extra={rip: one for rip in nat.t.rips}))
    first = nat.hold(port)[0]
    assert first in nat.t.names
    second = nat.hold(port)[0]
    assert second == (next(n for n in nat.t.names if n != first) if fallback else None)


def test_persistence_netmask(nat):
    """rr with persistence: without a netmask two clients of one /24 get a
    template each (rr: different servers); with 255.255.255.0 they share one
    template and stick to one server, while a client of another /24 gets its
    own template (rr: the other server)."""
    t = nat.t
    nat.program({"address": t.vip, "port": 80, "scheduler": "rr", "persistence": {"timeout": 60},
                 "dests": [{"address": rip, "method": "nat"} for rip in t.rips]},
                {"address": t.vip, "port": 81, "scheduler": "rr",
                 "persistence": {"timeout": 60, "netmask": "255.255.255.0"},
                 "dests": [{"address": rip, "port": 81, "method": "nat"} for rip in t.rips]})
    t.wait_tcp()
    host = t.tcp_names(2, source=t.client_ip) + t.tcp_names(2, source=SAME_NET_CLIENT)
    assert None not in host and host[0] == host[1] and host[2] == host[3] and host[0] != host[2], host
    t.wait_tcp(port=81)
    net = (t.tcp_names(2, port=81, source=t.client_ip) + t.tcp_names(2, port=81, source=SAME_NET_CLIENT)
           + t.tcp_names(2, port=81, source=OTHER_NET_CLIENT))
    assert None not in net and len(set(net[:4])) == 1 and net[4] == net[5] != net[0], net


def test_sctp_nat(nat):
    """An SCTP service (rr, NAT): associations alternate between the real
    servers, which see the client's address."""
    t = nat.t
    try:
        servers = [SctpServer(ns, name, rip, 9000) for ns, name, rip in zip(t.real_servers, t.names, t.rips)]
    except OSError as e:  # the socket itself: no sctp module in this kernel
        pytest.skip(f"SCTP sockets cannot be made in this kernel: {e}")
    try:
        nat.program({"address": t.vip, "port": 9000, "protocol": "sctp", "scheduler": "rr",
                     "dests": [{"address": rip, "method": "nat"} for rip in t.rips]})
        replies = sctp_replies(t.client, t.vip, 9000, 4, source=t.client_ip)
        assert None not in replies, replies
        names = [r.name for r in replies]
        assert set(names) == set(t.names) and all(a != b for a, b in zip(names, names[1:])), names
        assert {r.peer for r in replies} == {t.client_ip}
        assert "SCTP" in t.ipvsadm("-Ln").stdout
    finally:
        for s in servers:
            s.close()


# ------------------------------------------------------------------------------ TUN: GUE and GRE

def fou_ports(t: topology.Topology, ns: str) -> str:
    return t.lab.run(ns, "ip", "fou", "show").stdout


def test_gue_and_gre_backends_configured_by_the_agent(engines):
    """rs1 takes GUE (UDP 6080), rs2 GRE; the only set-up on each is what its
    engine did from a backend node spec: rs1 opens the FOU/GUE port (failed
    before: the agent opened none, so GUE packets met a closed port), brings
    tunl0 up with the VIP; rs2 puts the VIP on gre0 with rp_filter off. Then
    UDP over the same tunnels: with one-packet scheduling each datagram of
    one flow is scheduled anew (rr alternates), without it the flow sticks."""
    with topology.tun_one_subnet(serve=True) as t:
        tunnels = [{"type": "gue", "port": GUE_PORT}, {"type": "gre"}]
        dests = [{"address": rip, "method": "tun", "tunnel": tun} for rip, tun in zip(t.rips, tunnels)]
        d = engines(t.director, "director")
        tcp = {"address": t.vip, "port": 80, "scheduler": "rr", "dests": dests}
        udp = {**tcp, "protocol": "udp", "onePacket": True}
        reconcile_ok(d, {"services": [tcp, udp]})
        backends = [{"backendVips": [{"address": t.vip, "method": "tun", "tunnelType": "gue",
                                      "tunnelPort": GUE_PORT}], "uplink": "eth0"},
                    {"backendVips": [{"address": t.vip, "method": "tun", "tunnelType": "gre"}], "uplink": "eth0"}]
        engs = [engines(ns, name) for ns, name in zip(t.real_servers, t.names)]
        for e, doc in zip(engs, backends):
            reconcile_ok(e, doc)
        t.wait_tcp()
        names = t.tcp_names(4)
        assert set(names) == set(t.names) and all(a != b for a, b in zip(names, names[1:])), names
        assert {r.peer for r in t.tcp_replies(2)} == {t.client_ip}  # replies straight from the servers
        assert f"port {GUE_PORT} gue" in fou_ports(t, t.real_servers[0])
        assert f"{t.vip}/32" in t.lab.run(t.real_servers[1], "ip", "-o", "addr", "show", "dev", "gre0").stdout
        assert fou_ports(t, t.real_servers[1]).strip() == ""

        t.wait_udp()
        flow = udp_names_one_socket(t.client, t.vip, 80, 6)
        assert set(flow) == set(t.names) and all(a != b for a, b in zip(flow, flow[1:])), flow
        reconcile_ok(d, {"services": [tcp, {**udp, "onePacket": False}]})
        flow = udp_names_one_socket(t.client, t.vip, 80, 6)
        assert None not in flow and len(set(flow)) == 1, flow

        # The GUE spec gone: the engine closes the port it opened.
        reconcile_ok(engs[0], {})
        assert fou_ports(t, t.real_servers[0]).strip() == ""
        for e in engs[1:]:
            reconcile_ok(e, {})
        reconcile_ok(d, {})


@pytest.mark.parametrize("tunnel", [{"type": "gue", "port": GUE_PORT, "checksum": "csum"},
                                    {"type": "gue", "port": GUE_PORT, "checksum": "remcsum"},
                                    {"type": "gre", "checksum": "csum"}])
def test_tunnel_checksum_options_deliver(engines, tunnel):
    """The tunnels' checksum options (UDP/GRE checksum, GUE remote checksum
    offload) reach a real server the engine set up, which decapsulates them.
    GRE with checksums failed before: gre0 expects none and the kernel drops
    every checksummed packet as a CRC error; now the engine sets icsum on
    gre0 for such a backend VIP, and takes it back with the VIP."""
    with topology.tun_one_subnet(serve=True, real_servers=1) as t:
        d = engines(t.director, "director")
        reconcile_ok(d, {"services": [{"address": t.vip, "port": 80, "scheduler": "rr", "dests": [
            {"address": t.rips[0], "method": "tun", "tunnel": tunnel}]}]})
        gre = tunnel["type"] == "gre"
        vip = {"address": t.vip, "method": "tun", "tunnelType": tunnel["type"],
               **({"tunnelPort": tunnel["port"]} if "port" in tunnel else {}),
               **({"tunnelChecksum": "csum"} if gre else {})}
        backend = engines(t.real_servers[0], "rs1")
        reconcile_ok(backend, {"backendVips": [vip], "uplink": "eth0"})
        t.wait_tcp()
        assert t.tcp_names(3) == ["rs1"] * 3
        if gre:
            gre0 = ["ip", "-d", "link", "show", "gre0"]
            assert " icsum " in t.lab.run(t.real_servers[0], *gre0).stdout
            reconcile_ok(backend, {})
            assert " icsum " not in t.lab.run(t.real_servers[0], *gre0).stdout
        reconcile_ok(d, {})


def test_a_gue_port_opened_by_hand_is_left_open(engines):
    """A FOU port the engine did not open is used, never closed."""
    with topology.tun_one_subnet(real_servers=1) as t:
        ns = t.real_servers[0]
        t.lab.run(ns, "ip", "fou", "add", "port", str(GUE_PORT), "gue")
        e = engines(ns, "rs1")
        doc = {"backendVips": [{"address": t.vip, "method": "tun", "tunnelType": "gue", "tunnelPort": GUE_PORT}],
               "uplink": "eth0"}
        r = reconcile_ok(e, doc)
        assert not any(type(op).__name__ == "AddFouPort" for op in r.ops)
        reconcile_ok(e, {})
        assert f"port {GUE_PORT} gue" in fou_ports(t, ns)


# ------------------------------------------------------------------------------ IPv6 DR and TUN

@pytest.mark.parametrize("method,tunnel,device", [
    ("dr", None, "lo"),
    ("tun", None, "ip6tnl0"),
    # ip6ip6 inside GUE over IPv6: a fou6 port, the inner packet on ip6tnl0
    # (failed before: the model put an IPv6 GUE VIP on tunl0 and opened no port).
    ("tun", {"type": "gue", "port": GUE_PORT}, "ip6tnl0"),
    # IPv6 GRE: ip6_gre's fallback device (failed before: the VIP went to gre0,
    # IPv4's GRE device, and ip6gre0 stayed down).
    ("tun", {"type": "gre"}, "ip6gre0"),
])
def test_ipv6_dr_and_tun(engines, method, tunnel, device):
    with topology.lan6(serve=True) as t:
        d = engines(t.director, "director")
        dest = {"method": method, **({"tunnel": tunnel} if tunnel else {})}
        reconcile_ok(d, {"services": [{"address": t.vip, "port": 80, "scheduler": "rr",
                                       "dests": [{"address": rip, **dest} for rip in t.rips]}],
                         "directorAddresses": [t.vip]})
        vip = {"address": t.vip, "method": method}
        if tunnel:
            vip.update(tunnelType=tunnel["type"], **({"tunnelPort": tunnel["port"]} if "port" in tunnel else {}))
        for ns, name in zip(t.real_servers, t.names):
            reconcile_ok(engines(ns, name), {"backendVips": [vip], "uplink": "eth0"})
        t.wait_tcp()
        names = t.tcp_names(4)
        assert set(names) == set(t.names) and all(a != b for a, b in zip(names, names[1:])), names
        assert {r.peer for r in t.tcp_replies(2)} == {t.client_ip}
        held = t.lab.run(t.real_servers[0], "ip", "-o", "addr", "show", "dev", device).stdout
        assert f"{t.vip}/128" in held, held
        reconcile_ok(d, {})
