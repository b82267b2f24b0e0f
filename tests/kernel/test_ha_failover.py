"""Director failover, DR, on the real kernel with real traffic.

Two directors (namespaces d1, d2) on one L2 segment with the client and two
DR real servers, each running the agent's director side for one group
(ha_director.py: engine + HaController, the same defaults as the agent),
the node spec listing the VIP, d1 preferred. Checked:

- exactly one director answers ARP for the VIP (an ARP request from the
  client, every reply's sender MAC collected), and only it holds the address;
- 200 held TCP connections through it are synced to the other director;
- kill -9 of the holder's process and its link down (a node death): the
  other takes the VIP over (its Lease logic, its gratuitous ARP), new
  requests succeed through it, and every held connection still answers.

The figures (time from the kill and link down to the first successful new request, failed
requests meanwhile, held connections answering) are printed and written to
build/ha-failover-dr.json; they are reported, not asserted (no timed
assertions). Before the change both directors held the VIP (two ARP
answers) and nothing moved it or carried the connections: the first
assertion and the held-connection count fail.
"""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lvs_agent import announce
from lvs_lab.netns import call_in_netns
from lvs_lab.servers import tcp_replies
from lvs_lab.topology import Lab, dr_backend_prepare

from engine_helpers import HoldServer
from test_engine_lifecycle import Held
from test_ha_sync import wait_for as wait_until

VIP, HOLD_PORT, SYNC_ID, HELD = "192.168.2.100", 8080, 5, 200
HOSTS = {"client": "192.168.2.1", "d1": "192.168.2.2", "d2": "192.168.2.3", "rs1": "192.168.2.10",
         "rs2": "192.168.2.11"}
DEADLINE = 120.0  # a bound for polling, not a performance target
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def node_doc(node: str) -> dict:
    dests = lambda port: [{"address": HOSTS[r], "port": port, "method": "dr"} for r in ("rs1", "rs2")]  # noqa: E731
    return {"node": node, "uplink": "eth0",
            "services": [{"address": VIP, "port": 80, "scheduler": "rr", "dests": dests(80)},
                         {"address": VIP, "port": HOLD_PORT, "scheduler": "rr", "dests": dests(HOLD_PORT)}],
            "directorAddresses": [VIP],
            "directorGroups": [{"name": "g", "members": ["d1", "d2"], "vips": [VIP], "syncId": SYNC_ID,
                                "preferred": "d1"}]}


def arp_answers(lab: Lab, host: str, ip: str, wait: float = 1.0) -> set[str]:
    """Sender MACs of every ARP reply for ``ip`` to one request from ``host``."""
    me = socket.inet_aton(HOSTS[host])

    def probe() -> set[str]:
        mac = announce.hw_address("eth0")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(announce.ETH_P_ARP))
        s.bind(("eth0", announce.ETH_P_ARP))
        s.settimeout(0.1)
        frame = (announce.BROADCAST + mac + struct.pack("!H", announce.ETH_P_ARP)
                 + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, me, b"\0" * 6, socket.inet_aton(ip)))
        s.send(frame)
        out, end = set(), time.monotonic() + wait
        while time.monotonic() < end:
            try:
                data = s.recv(128)
            except socket.timeout:
                continue
            op, sha, spa = struct.unpack_from("!H6s4s", data, 20)
            if op == 2 and spa == socket.inet_aton(ip):
                out.add(sha.hex(":"))
        s.close()
        return out
    return call_in_netns(lab.ns(host), probe)


def wait_for(fn, what: str):
    return wait_until(fn, what, DEADLINE)


def holds_vip(lab: Lab, host: str) -> bool:
    return f"{VIP}/32" in lab.run(host, "ip", "-o", "addr", "show").stdout


class Requests:
    """New HTTP requests to the VIP, one every 50 ms, 0.5 s timeout each."""

    def __init__(self, lab: Lab):
        self.lab, self.log, self.stop = lab, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            started = time.monotonic()
            ok = tcp_replies(self.lab.ns("client"), VIP, 80, timeout=0.5)[0] is not None
            self.log.append((started, ok))
            time.sleep(max(0.0, 0.05 - (time.monotonic() - started)))

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def group(tmp_path):
    with Lab() as lab:
        for host, addr in HOSTS.items():
            lab.host(host)
            lab.connect(host, "lan", "eth0", [f"{addr}/24"])
        for r in ("rs1", "rs2"):
            dr_backend_prepare(lab, r, VIP)
        lab.apply()
        for r in ("rs1", "rs2"):
            lab.serve(r, port=80)
        holders = [HoldServer(lab.ns(r), r, HOLD_PORT, echo=True) for r in ("rs1", "rs2")]
        procs = {}

        def start(d: str) -> None:
            spec = tmp_path / f"{d}.json"
            spec.write_text(json.dumps(node_doc(d)))
            procs[d] = lab.popen(d, sys.executable, str(HERE / "ha_director.py"), str(spec),
                                 str(tmp_path / "leases.json"), str(tmp_path / d),
                                 stdout=open(tmp_path / f"{d}.log", "a"), stderr=subprocess.STDOUT)
        for d in ("d1", "d2"):
            start(d)
        lab.start_director = start
        yield lab, procs, tmp_path
        for p in procs.values():
            p.kill()
        for h in holders:
            h.close()
        for d in ("d1", "d2"):  # the sync daemons live in the namespaces: gone with them
            lab.run(d, "ipvsadm", "--stop-daemon", "master", check=False)
            lab.run(d, "ipvsadm", "--stop-daemon", "backup", check=False)


def test_dr_failover_keeps_held_connections_and_moves_the_vip(group):
    lab, procs, tmp = group
    macs = {announce.hw_address("eth0", lab.ns(h)).hex(":"): h for h in HOSTS}
    d1_mac, d2_mac = (announce.hw_address("eth0", lab.ns(d)).hex(":") for d in ("d1", "d2"))
    wait_for(lambda: holds_vip(lab, "d1"), "d1 (preferred) holds the VIP")
    wait_for(lambda: tcp_replies(lab.ns("client"), VIP, 80, timeout=1.0)[0], "the VIP answers")

    # Exactly one director answers ARP, and only it holds the address.
    assert {macs.get(m, m) for m in arp_answers(lab, "client", VIP)} == {"d1"}
    assert not holds_vip(lab, "d2")
    assert "backup sync daemon" in lab.run("d2", "ipvsadm", "-L", "--daemon").stdout

    held = [Held(lab.ns("client"), VIP, HOLD_PORT) for _ in range(HELD)]
    assert all(h.echo("before") == "before" for h in held)
    ports = {f"{HOSTS['client']}:{h.sock.getsockname()[1]}" for h in held}

    def synced() -> bool:
        lines = lab.run("d2", "ipvsadm", "-Lnc").stdout.splitlines()
        return ports <= {ln.split()[3] for ln in lines if len(ln.split()) > 3 and f":{HOLD_PORT}" in ln}
    wait_for(synced, f"all {HELD} held connections on the backup")

    requests = Requests(lab)
    time.sleep(2)
    procs["d1"].kill()  # kill -9: the kernel still forwards until the link goes
    lab.run("d1", "ip", "link", "set", "eth0", "down")
    killed = time.monotonic()  # from here on only d2 can answer
    wait_for(lambda: holds_vip(lab, "d2"), "d2 takes the VIP over")
    wait_for(lambda: any(ok for t, ok in requests.log if t > killed), "a new request through d2")
    time.sleep(2)
    requests.close()

    after = [(t, ok) for t, ok in requests.log if t > killed]
    first_ok = next(t for t, ok in after if ok)
    failed = sum(1 for t, ok in after if not ok and t < first_ok)
    answering = 0
    for h in held:
        try:
            answering += h.echo("after") == "after"
        except OSError:
            pass
    figures = {"method": "dr", "takeover_seconds": round(first_ok - killed, 2),
               "failed_requests_meanwhile": failed, "requests_meanwhile": sum(1 for t, _ in after if t < first_ok),
               "held_connections": HELD, "held_connections_answering": answering,
               "lease_duration_seconds": 6.0, "renew_every_seconds": 2.0}
    print("failover figures:", json.dumps(figures))
    out = REPO / "build" / "ha-failover-dr.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")

    assert announce.hw_address("eth0", lab.ns("d2")).hex(":") == d2_mac
    assert lab.run("client", "ip", "neigh", "show", VIP).stdout.split("lladdr ")[1].split()[0] == d2_mac
    assert answering == HELD, figures
    for h in held:
        h.close()


def wait_serving(lab: Lab) -> None:
    wait_for(lambda: holds_vip(lab, "d1"), "d1 (preferred) holds the VIP")
    wait_for(lambda: tcp_replies(lab.ns("client"), VIP, 80, timeout=1.0)[0], "the VIP answers")


def test_api_server_away_then_old_owner_back_nothing_moves(group):
    """The control plane stopped for four Lease durations with both directors
    healthy: not one request fails and the holder stays. Then the holder dies
    (VIP to d2) and comes back: no fail-back by default, d2 keeps the VIP and
    a connection held through d2 keeps working. Before the change nothing
    moved the VIP at all (both directors held it)."""
    lab, procs, tmp = group
    macs = {announce.hw_address("eth0", lab.ns(h)).hex(":"): h for h in HOSTS}
    wait_serving(lab)
    requests = Requests(lab)
    (tmp / "leases.down").touch()
    time.sleep(4 * 6.0)
    (tmp / "leases.down").unlink()
    time.sleep(3 * 2.0)  # a few rounds with the list readable again
    requests.close()
    failed = sum(1 for _, ok in requests.log if not ok)
    print("api away figures:", json.dumps({"requests": len(requests.log), "failed": failed}))
    assert failed == 0 and len(requests.log) > 0
    assert holds_vip(lab, "d1") and not holds_vip(lab, "d2")

    procs["d1"].kill()
    lab.run("d1", "ip", "link", "set", "eth0", "down")
    wait_for(lambda: holds_vip(lab, "d2"), "d2 takes the VIP over")
    wait_for(lambda: tcp_replies(lab.ns("client"), VIP, 80, timeout=1.0)[0], "the VIP answers through d2")
    held = Held(lab.ns("client"), VIP, HOLD_PORT)
    assert held.echo("via d2") == "via d2"

    # d1 comes back (link up, a new process with a clean start): nothing moves.
    lab.run("d1", "ip", "link", "set", "eth0", "up")
    lab.start_director("d1")
    wait_for(lambda: "holds" in (tmp / "d1.log").read_text().split("ready")[-1], "d1 decided once")
    time.sleep(3 * 6.0)  # past d1's start-up grace and several rounds
    assert holds_vip(lab, "d2") and not holds_vip(lab, "d1")
    assert {macs.get(m, m) for m in arp_answers(lab, "client", VIP)} == {"d2"}
    assert held.echo("still via d2") == "still via d2"
    held.close()
