"""Scheduler behaviour, observable in real traffic, with the engine programming IPVS.

One seed NAT topology for the whole module (building one costs seconds under
TCG); each test reconciles the director's engine to its own spec, which also
removes the previous test's services (the engine deletes what it owns and no
longer wants). Extra client source addresses give sh and persistence several
clients; extra VIPs held by the engine on its dummy device give dh several
destinations behind one firewall-mark service (marked by nftables in the
director's namespace).
"""
from __future__ import annotations

import shutil
import socket
from collections import Counter

import pytest

from lvs_agent.engine import Engine
from lvs_lab import topology
from lvs_lab.servers import hold_tcp as hold, tcp_names, wait_tcp  # hold: open and keep a connection
from lvs_model.nodespec import parse_node_spec

from engine_helpers import HoldServer

SOURCES = [f"192.168.0.{i}" for i in range(1, 9)]  # .1 is the client's own address
DH_VIPS = [f"192.168.0.{i}" for i in range(40, 48)]
FWM_VIP = "192.168.0.60"
HOLD_PORT = 8080


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    assert shutil.which("nft"), "nft (Debian package nftables) is needed for firewall-mark tests"
    t = topology.seed_nat(serve=True)
    try:
        t.lab.ip("client", *[f"addr add {a}/24 dev eth0" for a in SOURCES[1:]])
        t.lab.apply()
        rules = (
            "table ip lvsmark {\n"
            " chain pre {\n  type filter hook prerouting priority -150;\n"
            f"  ip daddr {{ {', '.join(DH_VIPS)} }} tcp dport 80 meta mark set 1\n"
            f"  ip daddr {FWM_VIP} tcp dport 80 meta mark set 2\n"
            " }\n}\n")
        t.lab.run(t.director, "nft", "-f", "-", input=rules)
        holds = [HoldServer(ns, name, HOLD_PORT) for ns, name in zip(t.real_servers, t.names)]
        engine = Engine(tmp_path_factory.mktemp("sched") / "director.json", netns=t.director)
        yield t, engine, holds
        engine.reconcile(parse_node_spec({})[0])
        engine.close()
        for h in holds:
            h.close()
    finally:
        t.close()


def program(engine: Engine, services: list[dict], addresses: list[str] = ()) -> None:
    spec, errors = parse_node_spec({"services": services, "directorAddresses": list(addresses)})
    assert not errors, errors
    r = engine.reconcile(spec)
    assert r.ok, (r.service_errors, r.problems, r.errors)


def service(t, scheduler: str, port: int = 80, weights=(1, 1), **extra) -> dict:
    return {"address": t.vip, "port": port, "scheduler": scheduler, **extra,
            "dests": [{"address": rip, "port": port, "weight": w, "method": "nat"}
                      for rip, w in zip(t.rips, weights)]}


def test_rr_alternates(env):
    t, engine, _ = env
    program(engine, [service(t, "rr")])
    t.wait_tcp()
    names = t.tcp_names(6)
    assert None not in names and set(names) == set(t.names), names
    assert all(a != b for a, b in zip(names, names[1:])), names


def test_wrr_honours_3_to_1(env):
    t, engine, _ = env
    program(engine, [service(t, "wrr", weights=(3, 1))])
    t.wait_tcp()
    # wrr's sequence has period 4 (rs1 x3, rs2 x1): any 8 consecutive picks are 6:2.
    assert Counter(t.tcp_names(8)) == {"rs1": 6, "rs2": 2}


def test_sh_sticks_per_source_address(env):
    t, engine, _ = env
    program(engine, [service(t, "sh")])
    t.wait_tcp()
    chosen = {}
    for src in SOURCES:
        names = t.tcp_names(3, source=src)
        assert None not in names and len(set(names)) == 1, (src, names)
        chosen[src] = names[0]
    assert set(chosen.values()) == set(t.names), chosen  # the sources spread over both


def test_dh_by_destination(env):
    t, engine, _ = env
    # One firewall-mark service in front of 8 VIPs; dh hashes the destination address.
    program(engine, [{"fwmark": 1, "scheduler": "dh",
                      "dests": [{"address": rip, "method": "nat"} for rip in t.rips]}],
            addresses=DH_VIPS)
    wait_tcp(t.client, DH_VIPS[0], 80)
    chosen = {}
    for vip in DH_VIPS:
        names = tcp_names(t.client, vip, 80, 3)
        assert None not in names and len(set(names)) == 1, (vip, names)
        chosen[vip] = names[0]
    assert set(chosen.values()) == set(t.names), chosen


def test_firewall_mark_service_balances(env):
    t, engine, _ = env
    program(engine, [{"fwmark": 2, "scheduler": "rr",
                      "dests": [{"address": rip, "method": "nat"} for rip in t.rips]}],
            addresses=[FWM_VIP])
    wait_tcp(t.client, FWM_VIP, 80)
    names = tcp_names(t.client, FWM_VIP, 80, 6)
    assert None not in names and set(names) == set(t.names), names
    assert all(a != b for a, b in zip(names, names[1:])), names


def test_persistence_sticks_within_timeout(env):
    t, engine, _ = env
    program(engine, [service(t, "rr")])
    t.wait_tcp()
    names = t.tcp_names(4)
    assert len(set(names)) == 2, names  # control: without persistence rr alternates
    # Same service, now persistent: the engine edits it in place (SetService).
    spec, _ = parse_node_spec({"services": [service(t, "rr", persistence={"timeout": 60})]})
    r = engine.reconcile(spec)
    assert [type(op).__name__ for op in r.ops] == ["SetService"], r.ops
    for src in SOURCES[:4]:
        names = t.tcp_names(5, source=src)
        assert None not in names and len(set(names)) == 1, (src, names)


@pytest.mark.parametrize("scheduler", ["lc", "wlc", "sed", "nq"])
def test_least_connection_family_follows_held_connections(env, scheduler):
    t, engine, holds = env
    conns: list[socket.socket] = []

    def open_held(n: int) -> list[str | None]:
        names = []
        for _ in range(n):
            name, sock = hold(t.client, t.vip, HOLD_PORT)
            names.append(name)
            if sock:
                conns.append(sock)
        return names

    try:
        # rs2 drained: three held connections all land on rs1.
        program(engine, [service(t, scheduler, HOLD_PORT, weights=(1, 0))])
        assert open_held(3) == ["rs1"] * 3
        # rs2 back: every new connection goes to the server with fewer active ones
        # (rr would alternate).
        program(engine, [service(t, scheduler, HOLD_PORT, weights=(1, 1))])
        assert open_held(3) == ["rs2"] * 3, scheduler
        table = t.ipvsadm("-Ln", "-t", f"{t.vip}:{HOLD_PORT}").stdout
        for rip in t.rips:  # three active connections each
            line = next(x for x in table.splitlines() if f"{rip}:{HOLD_PORT}" in x)
            assert line.split()[4] == "3", table
    finally:
        for c in conns:
            c.close()
        for h in holds:
            h.drop_all()
