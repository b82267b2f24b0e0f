"""Director failover on the real kernel: the IPVS connection sync daemon
started over generic netlink by lvs_agent.ipvs_sync, and the takeover
announcement of lvs_agent.announce.

Two DR directors as namespaces on one bridge with the client and a real
server, the same IPVS service on both (hot standby); d1 holds the VIP and
runs the master sync daemon, d2 the backup. A client's TCP connection through
d1 shows up in d2's connection table (as ``ipvsadm -Lnc`` prints it); after
the VIP moves to d2 and d2 sends one gratuitous ARP, the client's neighbour
entry points to d2 and the same held connection echoes through d2 with d1's
link down.

Both fail before the change: there was no ipvs_sync or announce module.
Without the sync daemon the held connection cannot survive (d2 sees a mid-flow
segment with no connection entry and no sloppy_tcp: it goes to d2's own stack,
which resets it); without the ARP the client keeps d1's MAC (checked before).
"""
from __future__ import annotations

import re
import time

import pytest

from lvs_agent import announce, ipvs_sync
from lvs_agent.netlink_batch import IPVSConnection
from lvs_lab.topology import Lab, dr_backend_prepare

from engine_helpers import HoldServer
from test_engine_lifecycle import Held, lvsctl

VIP, PORT, SYNC_ID = "192.168.2.100", 8080, 5
CLIENT, D1, D2, RS = "192.168.2.1", "192.168.2.2", "192.168.2.3", "192.168.2.10"
DEADLINE = 60.0  # a bound for polling, not a performance target


@pytest.fixture
def pair():
    with Lab() as lab:
        for host, addr in (("client", CLIENT), ("d1", D1), ("d2", D2), ("rs1", RS)):
            lab.host(host)
            lab.connect(host, "lan", "eth0", [f"{addr}/24"])
        lab.ip("d1", f"addr add {VIP}/32 dev eth0")
        dr_backend_prepare(lab, "rs1", VIP)
        lab.apply()
        for d in ("d1", "d2"):
            lab.run(d, "ipvsadm", "-A", "-t", f"{VIP}:{PORT}", "-s", "rr")
            lab.run(d, "ipvsadm", "-a", "-t", f"{VIP}:{PORT}", "-r", f"{RS}:{PORT}", "-g")
        server = HoldServer(lab.ns("rs1"), "rs1", PORT, echo=True)
        yield lab
        server.close()
        for d in ("d1", "d2"):
            with IPVSConnection(lab.ns(d)) as c:
                for running in ipvs_sync.list_daemons(c):
                    ipvs_sync.stop(c, running.state)


def conns(lab: Lab, host: str) -> list[str]:
    return lab.run(host, "ipvsadm", "-Lnc").stdout.splitlines()


def wait_for(fn, what: str, deadline: float = DEADLINE):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {deadline} s: {what}")


def neighbour_mac(lab: Lab, host: str, ip: str) -> str | None:
    m = re.search(r"lladdr ([0-9a-f:]{17})", lab.run(host, "ip", "neigh", "show", ip).stdout)
    return m.group(1) if m else None


def mac_of(lab: Lab, host: str) -> str:
    return announce.hw_address("eth0", lab.ns(host)).hex(":")


def test_sync_daemon_started_by_our_module_is_what_ipvsadm_lists(pair):
    lab = pair
    with IPVSConnection(lab.ns("d1")) as c:
        ipvs_sync.start(c, ipvs_sync.SyncDaemon("master", "eth0", SYNC_ID))
        ours = ipvs_sync.list_daemons(c)
    with IPVSConnection(lab.ns("d2")) as c:
        ipvs_sync.start(c, ipvs_sync.SyncDaemon("backup", "eth0", SYNC_ID))
        ipvs_sync.start(c, ipvs_sync.SyncDaemon("master", "eth0", SYNC_ID))  # one of each per namespace
        both = ipvs_sync.list_daemons(c)
        with pytest.raises(OSError):  # EEXIST: a second master
            ipvs_sync.start(c, ipvs_sync.SyncDaemon("master", "eth0", SYNC_ID))
    assert [(d.state, d.ifname, d.sync_id) for d in ours] == [("master", "eth0", SYNC_ID)]
    assert {d.state for d in both} == {"master", "backup"}
    listed = lab.run("d1", "ipvsadm", "-L", "--daemon").stdout
    assert f"master sync daemon (mcast=eth0, syncid={SYNC_ID}" in listed
    assert ipvs_sync.format_daemon(ours[0]) in listed  # the same line, field for field
    backup_listed = lab.run("d2", "ipvsadm", "-L", "--daemon").stdout
    assert f"backup sync daemon (mcast=eth0, syncid={SYNC_ID}" in backup_listed
    ours_listed = lvsctl("list", "--daemon", "--netns", lab.ns("d2")).stdout
    assert sorted(ours_listed.splitlines()) == sorted(backup_listed.splitlines())  # lvsctl = ipvsadm
    with IPVSConnection(lab.ns("d2")) as c:
        ipvs_sync.stop(c, "master")
        assert [d.state for d in ipvs_sync.list_daemons(c)] == ["backup"]
    assert "master" not in lab.run("d2", "ipvsadm", "-L", "--daemon").stdout


def test_held_connection_is_synced_to_the_backup_and_survives_the_move_after_garp(pair):
    lab = pair
    with IPVSConnection(lab.ns("d1")) as c:
        ipvs_sync.start(c, ipvs_sync.SyncDaemon("master", "eth0", SYNC_ID))
    with IPVSConnection(lab.ns("d2")) as c:
        ipvs_sync.start(c, ipvs_sync.SyncDaemon("backup", "eth0", SYNC_ID))

    held = Held(lab.ns("client"), VIP, PORT)
    assert held.server == "rs1"
    assert held.echo("through d1") == "through d1"
    sport = held.sock.getsockname()[1]
    mine = f"{CLIENT}:{sport}"

    on_d1 = [ln for ln in conns(lab, "d1") if mine in ln]
    assert on_d1 and f"{VIP}:{PORT}" in on_d1[0] and f"{RS}:{PORT}" in on_d1[0]
    on_d2 = wait_for(lambda: [ln for ln in conns(lab, "d2") if mine in ln], "connection on the backup")
    assert f"{VIP}:{PORT}" in on_d2[0] and f"{RS}:{PORT}" in on_d2[0]  # same virtual and real server

    # Control: the client reaches the VIP through d1's MAC.
    assert neighbour_mac(lab, "client", VIP) == mac_of(lab, "d1")

    # Takeover: the VIP moves to d2, which announces it; d1 goes dark.
    lab.run("d1", "ip", "addr", "del", f"{VIP}/32", "dev", "eth0")
    lab.run("d2", "ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    announce.announce("eth0", VIP, lab.ns("d2"))
    wait_for(lambda: neighbour_mac(lab, "client", VIP) == mac_of(lab, "d2"), "client's entry updated by GARP")
    lab.run("d1", "ip", "link", "set", "eth0", "down")

    assert held.echo("through d2") == "through d2"
    after = [ln for ln in conns(lab, "d2") if mine in ln]
    assert after and "ESTABLISHED" in after[0]
    held.close()


def test_garp_alone_moves_the_clients_entry(pair):
    """The announcement without any sync: the neighbour entry follows the
    frame (the entry existed; no ARP request from the client in between)."""
    lab = pair
    lab.run("client", "ip", "neigh", "replace", VIP, "lladdr", mac_of(lab, "d1"), "dev", "eth0", "nud", "stale")
    announce.send_garp("eth0", VIP, lab.ns("d2"))
    wait_for(lambda: neighbour_mac(lab, "client", VIP) == mac_of(lab, "d2"), "client's entry updated by GARP")
