"""NAT reply paths made real by the engine, proven with traffic.

The topology is the seed's NAT plan with one change: the real servers' default
gateway is a router (10.0.0.1), not the director, so a NAT reply goes straight
to the client with the real server's address and is refused (the control).

    client 192.168.0.1 --out-- director 192.168.0.30 (VIP) / 10.0.0.30 --in-- rs1 10.0.0.51
                        \\-- router 192.168.0.254 / 10.0.0.1 --in--/         rs2 10.0.0.52

- policy route: the engine on each backend adds ``from RIP ipproto tcp sport 80
  lookup 0x4c56`` and ``default via 10.0.0.30 table 0x4c56``; requests succeed
  and the real servers still see the client's address.
- SNAT: the real servers have no route to the client at all; the engine on the
  director masquerades in its own nft table; requests succeed and the real
  servers see the director's address.
- Removing the spec removes our rules, routes and table, and leaves a foreign
  ``ip rule`` (even one at our priority) and foreign nft tables untouched.
"""
from __future__ import annotations

import json
import shutil


from lvs_agent import ops as O
from lvs_agent.plan import NFT_TABLE, REPLY_RULE_PRIORITY, REPLY_TABLE_BASE
from lvs_lab.netns import read_sysctl
from lvs_lab.topology import Topology

from engine_helpers import converged, reconcile_ok, spec

VIP, DIP, ROUTER_IN = "192.168.0.30", "10.0.0.30", "10.0.0.1"
FOREIGN_NFT = "table inet someone-else {\n\tchain post {\n\t\ttype filter hook postrouting priority 0; policy accept;\n\t\tcounter\n\t}\n}\n"


def nat_behind_router(lab, real_servers: int = 2) -> Topology:
    client = lab.host("client")
    director = lab.host("director")
    router = lab.host("router")
    lab.connect("client", "out", "eth0", ["192.168.0.1/24"])
    lab.connect("director", "out", "eth0", [f"{VIP}/24"])
    lab.connect("director", "in", "eth1", [f"{DIP}/24"])
    lab.sysctl("director", {"net.ipv4.ip_forward": 1})
    lab.connect("router", "out", "eth0", ["192.168.0.254/24"])
    lab.connect("router", "in", "eth1", [f"{ROUTER_IN}/24"])
    lab.sysctl("router", {"net.ipv4.ip_forward": 1})
    rss, rips, names = [], [], []
    for i in range(real_servers):
        name, rip = f"rs{i + 1}", f"10.0.0.{51 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "in", "eth0", [f"{rip}/24"])
        lab.ip(name, f"route add default via {ROUTER_IN}")
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("nat-behind-router", lab, client, director, rss, "192.168.0.1", VIP, rips,
                 dip=DIP, router=router, names=names)
    t.serve_all()
    return t


def director_doc(t: Topology, snat: bool) -> dict:
    return {"services": [{"address": t.vip, "port": 80, "scheduler": "rr", "snat": snat,
                          "dests": [{"address": rip, "method": "nat"} for rip in t.rips]}]}


def backend_doc(rip: str) -> dict:
    return {"replyRoutes": [{"address": rip, "port": 80, "protocol": "tcp", "via": [DIP]}]}


def all_fail(t: Topology) -> None:
    assert t.tcp_replies(2, timeout=1.0) == [None, None]


def all_succeed(t: Topology) -> list:
    first = t.wait_tcp(deadline=15)
    replies = [first] + t.tcp_replies(3)
    assert None not in replies, replies
    assert {r.name for r in replies} == set(t.names)
    return replies


def ip_rules(t: Topology, host: str) -> str:
    return t.lab.run(host, "ip", "rule", "show").stdout


def table_routes(t: Topology, host: str) -> str:
    return t.lab.run(host, "ip", "route", "show", "table", str(REPLY_TABLE_BASE)).stdout


def nft_tables(t: Topology, host: str) -> str:
    return t.lab.run(host, "nft", "list", "tables").stdout


def test_policy_route_on_backends(lab, engines, tmp_path):
    t = nat_behind_router(lab)
    # Foreign rules on rs1: one at our own priority pointing into our table range,
    # one elsewhere. Neither matches the test traffic; neither may be touched.
    foreign = [f"pref {REPLY_RULE_PRIORITY} from 10.0.0.99 lookup {REPLY_TABLE_BASE + 1}",
               "pref 1000 from 10.0.0.77 lookup main"]
    for rule in foreign:
        t.lab.run(t.real_servers[0], "ip", "rule", "add", *rule.split())
    rules_before = ip_rules(t, t.real_servers[0])

    d = engines(t.director, "director")
    reconcile_ok(d, director_doc(t, snat=False))
    all_fail(t)  # control: replies take the router, not the director

    backends = []
    for ns, name, rip in zip(t.real_servers, t.names, t.rips):
        b = engines(ns, name)
        r = reconcile_ok(b, backend_doc(rip))
        assert sorted(type(op).__name__ for op in r.ops) == ["AddRoute", "AddRule"]
        backends.append(b)
    replies = all_succeed(t)
    assert {r.peer for r in replies} == {t.client_ip}  # policy routing keeps the client address
    for b, rip in zip(backends, t.rips):
        converged(b, backend_doc(rip))
    rules = ip_rules(t, t.real_servers[0])
    assert (f"{REPLY_RULE_PRIORITY}:\tfrom 10.0.0.51 ipproto tcp sport 80 lookup {REPLY_TABLE_BASE} "
            "proto 76") in rules, rules
    assert f"default via {DIP} " in table_routes(t, t.real_servers[0])
    own = json.loads((tmp_path / "rs1.json").read_text())
    assert own["rules"] == [["ipv4", REPLY_RULE_PRIORITY, "10.0.0.51", "tcp", 80, REPLY_TABLE_BASE]]
    assert own["routes"] == [["ipv4", REPLY_TABLE_BASE, DIP, 1]]

    # Drift: our route deleted by hand comes back.
    t.lab.run(t.real_servers[1], "ip", "route", "flush", "table", str(REPLY_TABLE_BASE))
    r = reconcile_ok(backends[1], backend_doc(t.rips[1]))
    assert [type(op).__name__ for op in r.ops] == ["AddRoute"]

    # Spec gone: ours removed, the foreign rules stay, replies fail again.
    for b in backends:
        r = reconcile_ok(b, {})
        assert sorted(type(op).__name__ for op in r.ops) == ["DelRoute", "DelRule"]
        converged(b, {})
    assert ip_rules(t, t.real_servers[0]) == rules_before
    for ns in t.real_servers:
        assert f"lookup {REPLY_TABLE_BASE} " not in ip_rules(t, ns)
        assert table_routes(t, ns).strip() == ""
    assert json.loads((tmp_path / "rs1.json").read_text())["rules"] == []
    all_fail(t)


def test_snat_on_director(lab, engines, tmp_path):
    assert shutil.which("nft"), "nft (Debian package nftables) is needed for SNAT"
    t = nat_behind_router(lab)
    for ns in t.real_servers:  # no way back to the client at all
        t.lab.run(ns, "ip", "route", "del", "default")
    t.lab.run(t.director, "nft", "-f", "-", input=FOREIGN_NFT)
    conntrack_before = read_sysctl(t.director, "net.ipv4.vs.conntrack").strip()
    assert conntrack_before == "0"

    d = engines(t.director, "director")
    reconcile_ok(d, director_doc(t, snat=False))
    all_fail(t)  # control

    r = reconcile_ok(d, director_doc(t, snat=True))
    assert [type(op).__name__ for op in r.ops] == ["SetSysctl", "ReplaceNftTable"]
    assert read_sysctl(t.director, "net.ipv4.vs.conntrack").strip() == "1"
    replies = all_succeed(t)
    assert {x.peer for x in replies} == {DIP}  # masqueraded to the director's inside address
    converged(d, director_doc(t, snat=True))
    assert f"table inet {NFT_TABLE}" in nft_tables(t, t.director)

    # Drift: our rule flushed by hand -> the table is replaced, traffic flows again.
    t.lab.run(t.director, "nft", "flush", "chain", "inet", NFT_TABLE, "postrouting")
    r = reconcile_ok(d, director_doc(t, snat=True))
    assert [type(op).__name__ for op in r.ops] == ["ReplaceNftTable"]
    all_succeed(t)
    # One dest fewer: table replaced in place, only rs2 reachable, still masqueraded.
    one = {"services": [{**director_doc(t, True)["services"][0],
                         "dests": [{"address": t.rips[1], "method": "nat"}]}]}
    r = reconcile_ok(d, one)
    assert sorted(type(op).__name__ for op in r.ops) == ["DelDest", "ReplaceNftTable"]
    assert {x.name for x in t.tcp_replies(2)} == {"rs2"}

    # snat off: our table goes, the foreign one stays, conntrack restored.
    r = reconcile_ok(d, director_doc(t, snat=False))
    assert sorted(type(op).__name__ for op in r.ops) == ["AddDest", "DelNftTable", "SetSysctl"]
    tables = nft_tables(t, t.director)
    assert NFT_TABLE not in tables and "table inet someone-else" in tables
    assert read_sysctl(t.director, "net.ipv4.vs.conntrack").strip() == conntrack_before
    assert t.lab.run(t.director, "nft", "list", "table", "inet", "someone-else").stdout.count("counter") == 1
    all_fail(t)
    assert json.loads((tmp_path / "director.json").read_text())["nftTables"] == []

    # A table of our name that someone else made is never taken over nor deleted.
    t.lab.run(t.director, "nft", "add", "table", "inet", NFT_TABLE)
    r = d.reconcile(spec(director_doc(t, snat=True)))
    assert r.problems and "not created by kube-lvs" in next(iter(r.problems.values()))
    assert not any(isinstance(op, (O.ReplaceNftTable, O.DelNftTable)) for op in r.ops)
    r = reconcile_ok(d, {})
    assert not any(isinstance(op, O.DelNftTable) for op in r.ops)
    assert f"table inet {NFT_TABLE}" in nft_tables(t, t.director)


def nat6_behind_router(lab) -> Topology:
    vip, dip = "fd00::30", "fd00:1::30"
    client, director, router = lab.host("client"), lab.host("director"), lab.host("router")
    lab.connect("client", "out", "eth0", ["fd00::1/64"])
    lab.connect("director", "out", "eth0", [f"{vip}/64"])
    lab.connect("director", "in", "eth1", [f"{dip}/64"])
    lab.sysctl("director", {"net.ipv6.conf.all.forwarding": 1})
    lab.connect("router", "out", "eth0", ["fd00::fe/64"])
    lab.connect("router", "in", "eth1", ["fd00:1::1/64"])
    lab.sysctl("router", {"net.ipv6.conf.all.forwarding": 1})
    rss, rips, names = [], [], []
    for i in range(2):
        name, rip = f"rs{i + 1}", f"fd00:1::{51 + i}"
        rss.append(lab.host(name))
        lab.connect(name, "in", "eth0", [f"{rip}/64"])
        lab.ip(name, "route add default via fd00:1::1")
        rips.append(rip)
        names.append(name)
    lab.apply()
    t = Topology("nat6-behind-router", lab, client, director, rss, "fd00::1", vip, rips,
                 dip=dip, router=router, names=names, family=6)
    t.serve_all()
    return t


def test_ipv6_policy_route_then_snat(lab, engines):
    t = nat6_behind_router(lab)
    d = engines(t.director, "director")
    reconcile_ok(d, director_doc(t, snat=False))
    all_fail(t)
    backends = [engines(ns, name) for ns, name in zip(t.real_servers, t.names)]
    docs = [{"replyRoutes": [{"address": rip, "port": 80, "protocol": "tcp", "via": [t.dip]}]}
            for rip in t.rips]
    for b, doc in zip(backends, docs):
        reconcile_ok(b, doc)
    assert {x.peer for x in all_succeed(t)} == {t.client_ip}
    for b, doc in zip(backends, docs):
        converged(b, doc)
    assert f"from {t.rips[0]} ipproto tcp sport 80 lookup {REPLY_TABLE_BASE}" in \
        t.lab.run(t.real_servers[0], "ip", "-6", "rule", "show").stdout
    for b in backends:
        reconcile_ok(b, {})
        converged(b, {})
    assert t.lab.run(t.real_servers[0], "ip", "-6", "route", "show", "table",
                     str(REPLY_TABLE_BASE)).stdout.strip() == ""
    all_fail(t)

    for ns in t.real_servers:
        t.lab.run(ns, "ip", "-6", "route", "del", "default")
    reconcile_ok(d, director_doc(t, snat=True))
    assert {x.peer for x in all_succeed(t)} == {t.dip}
    converged(d, director_doc(t, snat=True))
    reconcile_ok(d, {})
    assert NFT_TABLE not in nft_tables(t, t.director)


def test_snat_fwmark_service(lab, engines):
    t = nat_behind_router(lab)
    for ns in t.real_servers:
        t.lab.run(ns, "ip", "route", "del", "default")
    mark = ("table ip lvsmark {\n chain pre {\n  type filter hook prerouting priority -150;\n"
            f"  ip daddr {VIP} tcp dport 80 meta mark set 7\n }}\n}}\n")
    t.lab.run(t.director, "nft", "-f", "-", input=mark)
    d = engines(t.director, "director")
    doc = {"services": [{"fwmark": 7, "scheduler": "rr", "snat": True,
                         "dests": [{"address": rip, "port": 80} for rip in t.rips]}]}
    reconcile_ok(d, doc)
    assert {x.peer for x in all_succeed(t)} == {DIP}
    converged(d, doc)
    reconcile_ok(d, {})
    tables = nft_tables(t, t.director)
    assert NFT_TABLE not in tables and "table ip lvsmark" in tables
