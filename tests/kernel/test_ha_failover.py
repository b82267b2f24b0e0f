"""Director failover on the real kernel with real traffic: DR, NAT with the
real servers' gateway moving with the VIP, TUN (ipip), and three directors.

Directors (namespaces d1, d2[, d3]) on one L2 segment with the client, real
servers behind them, each director running the agent's director side for one
group (ha_director.py: engine + HaController, the same defaults as the
agent), the node spec listing the VIP, d1 preferred. Scenarios (one Lab
builder and one test body, parametrized):

- ``dr``: two directors, DR real servers on the client's segment;
- ``nat``: two directors with an inside segment (eth1) where the real
  servers' default route goes via 10.0.0.1, the group's NAT gateway
  (``directorGroups[].gateway``): nobody holds it but the VIP's holder, on
  the device of its route to the real servers (eth1), announced there;
- ``tun``: two directors, ipip real servers (tunl0 with the VIP);
- ``dr3``: three directors, DR.

Checked in each: exactly one director answers ARP for the VIP (an ARP
request from the client, every reply's sender MAC collected) and only it
holds the address; 200 held TCP connections through it are synced to the
others; kill -9 of the holder's process and its links down (a node death):
exactly one other director takes the VIP over (its Lease logic, its
gratuitous ARP), the client's neighbour entry moves to it, new requests
succeed through it, and every held connection still answers. NAT besides:
before, only d1 answers ARP for the gateway on the inside segment and the
real servers' entry for it is d1's eth1; after, it is the new holder's.

The figures (time from the kill and link down to the first successful new
request, failed requests meanwhile, held connections answering) are printed
and written to build/ha-failover-<scenario>.json; they are reported, not
asserted (no timed assertions).

What fails before which change: before director HA every director held the
VIP (two ARP answers) and nothing carried the connections (all four fail).
``nat`` fails before the NAT gateway change: nothing held 10.0.0.1, so the
real servers' replies had no route back and no request through the VIP was
answered (the first wait fails). ``tun`` and ``dr3`` extend the proof to
cases the director-group code already handled: they guard it, they did not
fail just before this change.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from lvs_agent import announce
from lvs_lab.arp import arp_answers as lab_arp_answers
from lvs_lab.servers import tcp_replies
from lvs_lab.topology import Lab, dr_backend_prepare, tun_backend_prepare

from engine_helpers import HoldServer
from test_engine_lifecycle import Held
from test_ha_sync import wait_for as wait_until

VIP, HOLD_PORT, SYNC_ID, HELD = "192.168.2.100", 8080, 5, 200
HOSTS = {"client": "192.168.2.1", "d1": "192.168.2.2", "d2": "192.168.2.3", "d3": "192.168.2.4",
         "rs1": "192.168.2.10", "rs2": "192.168.2.11"}
INSIDE = {"d1": "10.0.0.2", "d2": "10.0.0.3", "rs1": "10.0.0.10", "rs2": "10.0.0.11"}  # NAT's eth1 segment
GATEWAY = "10.0.0.1"  # the NAT real servers' default gateway, held with the VIP
DEADLINE = 120.0  # a bound for polling, not a performance target
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str  # dr | nat | tun
    directors: tuple[str, ...] = ("d1", "d2")

    def rip(self, r: str) -> str:
        return INSIDE[r] if self.method == "nat" else HOSTS[r]


SCENARIOS = {s.name: s for s in (Scenario("dr", "dr"), Scenario("nat", "nat"), Scenario("tun", "tun"),
                                  Scenario("dr3", "dr", ("d1", "d2", "d3")))}


def node_doc(node: str, sc: Scenario = SCENARIOS["dr"]) -> dict:
    dests = lambda port: [{"address": sc.rip(r), "port": port, "method": sc.method} for r in ("rs1", "rs2")]  # noqa: E731
    group = {"name": "g", "members": list(sc.directors), "vips": [VIP], "syncId": SYNC_ID, "preferred": "d1"}
    if sc.method == "nat":
        group["gateway"] = GATEWAY  # no gatewayDevice: the device of the route to the real servers (eth1)
    return {"node": node, "uplink": "eth0",
            "services": [{"address": VIP, "port": 80, "scheduler": "rr", "dests": dests(80)},
                         {"address": VIP, "port": HOLD_PORT, "scheduler": "rr", "dests": dests(HOLD_PORT)}],
            "directorAddresses": [VIP], "directorGroups": [group]}


def arp_answers(lab: Lab, host: str, ip: str, wait: float = 1.0, source: str = "") -> set[str]:
    """Sender MACs of every ARP reply for ``ip`` to one request from ``host``
    (from its eth0 address ``source``, default its address on the client's segment)."""
    return lab_arp_answers(lab.ns(host), source or HOSTS[host], ip, wait=wait)


def wait_for(fn, what: str):
    return wait_until(fn, what, DEADLINE)


def holds_vip(lab: Lab, host: str, address: str = VIP) -> bool:
    return f" {address}/32" in lab.run(host, "ip", "-o", "addr", "show").stdout


def holders(lab: Lab, sc: Scenario, address: str = VIP, among: tuple[str, ...] = ()) -> list[str]:
    """The directors (of ``among``, default all) whose namespace holds ``address``
    (a dead director's kernel keeps its addresses: judge the survivors)."""
    return [d for d in among or sc.directors if holds_vip(lab, d, address)]


def hold(lab: Lab) -> Held:
    """One held connection through the VIP; a connect lost to a full accept
    queue of the (slow, emulated) server is tried again, it is not what is tested."""
    for attempt in range(3):
        try:
            return Held(lab.ns("client"), VIP, HOLD_PORT)
        except TimeoutError:
            if attempt == 2:
                raise


def mac(lab: Lab, host: str, dev: str = "eth0") -> str:
    return announce.hw_address(dev, lab.ns(host)).hex(":")


def neighbour(lab: Lab, host: str, address: str) -> str:
    """The MAC ``host``'s neighbour table has for ``address`` ("" : none)."""
    out = lab.run(host, "ip", "neigh", "show", address).stdout
    return out.split("lladdr ")[1].split()[0] if "lladdr " in out else ""


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


def build(lab: Lab, sc: Scenario) -> None:
    """The scenario's hosts: everyone on the client's segment ("lan", eth0);
    for NAT the directors and real servers also on "in" (eth1 / the real
    servers' eth0), real servers routing by default via the floating gateway."""
    hosts = ["client", *sc.directors, "rs1", "rs2"]
    for host in hosts:
        lab.host(host)
        if not (sc.method == "nat" and host.startswith("rs")):
            lab.connect(host, "lan", "eth0", [f"{HOSTS[host]}/24"])
    if sc.method == "nat":
        for d in sc.directors:
            lab.connect(d, "in", "eth1", [f"{INSIDE[d]}/24"])
        for r in ("rs1", "rs2"):
            lab.connect(r, "in", "eth0", [f"{INSIDE[r]}/24"])
            lab.ip(r, f"route add default via {GATEWAY}")
    for r in ("rs1", "rs2"):
        if sc.method == "dr":
            dr_backend_prepare(lab, r, VIP)
        elif sc.method == "tun":
            tun_backend_prepare(lab, r, VIP)
    lab.apply()


@pytest.fixture
def group(request, tmp_path):
    """The scenario ``request.param`` names (default dr) with its directors running."""
    sc = SCENARIOS[getattr(request, "param", "dr")]
    with Lab() as lab:
        build(lab, sc)
        for r in ("rs1", "rs2"):
            lab.serve(r, port=80)
        servers = [HoldServer(lab.ns(r), r, HOLD_PORT, echo=True) for r in ("rs1", "rs2")]
        procs = {}

        def start(d: str) -> None:
            spec = tmp_path / f"{d}.json"
            spec.write_text(json.dumps(node_doc(d, sc)))
            procs[d] = lab.popen(d, sys.executable, str(HERE / "ha_director.py"), str(spec),
                                 str(tmp_path / "leases.json"), str(tmp_path / d),
                                 stdout=open(tmp_path / f"{d}.log", "a"), stderr=subprocess.STDOUT)
        for d in sc.directors:
            start(d)
        lab.start_director = start
        lab.scenario = sc
        yield lab, procs, tmp_path
        for p in procs.values():
            p.kill()
        for d in sc.directors:  # shown by pytest when the test failed
            print(f"--- {d}.log (tail) ---\n" + "\n".join((tmp_path / f"{d}.log").read_text().splitlines()[-15:]))
            print(lab.run(d, "ipvsadm", "-Ln", "--stats", check=False).stdout)
        for h in servers:
            h.close()
        for d in sc.directors:  # the sync daemons live in the namespaces: gone with them
            lab.run(d, "ipvsadm", "--stop-daemon", "master", check=False)
            lab.run(d, "ipvsadm", "--stop-daemon", "backup", check=False)


@pytest.mark.parametrize("group", list(SCENARIOS), indirect=True)
def test_failover_keeps_held_connections_and_moves_the_vip(group):
    lab, procs, tmp = group
    sc: Scenario = lab.scenario
    others = [d for d in sc.directors if d != "d1"]
    macs = {mac(lab, h): h for h in ("client", *sc.directors)}
    wait_for(lambda: holds_vip(lab, "d1"), "d1 (preferred) holds the VIP")
    wait_for(lambda: tcp_replies(lab.ns("client"), VIP, 80, timeout=1.0)[0], "the VIP answers")

    # Exactly one director answers ARP, and only it holds the address.
    assert {macs.get(m, m) for m in arp_answers(lab, "client", VIP)} == {"d1"}
    assert holders(lab, sc) == ["d1"]
    for d in others:
        assert "backup sync daemon" in lab.run(d, "ipvsadm", "-L", "--daemon").stdout

    held = [hold(lab) for _ in range(HELD)]
    assert all(h.echo("before") == "before" for h in held)
    if sc.method == "nat":  # the gateway: held by d1 only, on its inside device, the real servers use it
        inside = {mac(lab, d, "eth1"): d for d in sc.directors}
        assert holders(lab, sc, GATEWAY) == ["d1"]
        assert f" {GATEWAY}/32" in lab.run("d1", "ip", "-o", "addr", "show", "dev", "eth1").stdout
        assert {inside.get(m, m) for m in arp_answers(lab, "rs1", GATEWAY, source=INSIDE["rs1"])} == {"d1"}
        for r in ("rs1", "rs2"):  # both answered held connections (rr): both have an entry
            assert inside.get(neighbour(lab, r, GATEWAY)) == "d1"
    ports = {f"{HOSTS['client']}:{h.sock.getsockname()[1]}" for h in held}

    def synced() -> bool:
        for d in others:
            lines = lab.run(d, "ipvsadm", "-Lnc").stdout.splitlines()
            if not ports <= {ln.split()[3] for ln in lines if len(ln.split()) > 3 and f":{HOLD_PORT}" in ln}:
                return False
        return True
    wait_for(synced, f"all {HELD} held connections on every other director")

    requests = Requests(lab)
    time.sleep(2)
    procs["d1"].kill()  # kill -9: the kernel still forwards until the links go
    for dev in ("eth0", "eth1") if sc.method == "nat" else ("eth0",):
        lab.run("d1", "ip", "link", "set", dev, "down")
    killed = time.monotonic()  # from here on only the others can answer
    new = wait_for(lambda: holders(lab, sc, among=others) and holders(lab, sc, among=others)[0],
                   "another director takes the VIP over")
    wait_for(lambda: any(ok for t, ok in requests.log if t > killed), f"a new request through {new}")
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
    figures = {"scenario": sc.name, "method": sc.method, "directors": len(sc.directors), "new_holder": new,
               "takeover_seconds": round(first_ok - killed, 2),
               "failed_requests_meanwhile": failed, "requests_meanwhile": sum(1 for t, _ in after if t < first_ok),
               "held_connections": HELD, "held_connections_answering": answering,
               "lease_duration_seconds": 6.0, "renew_every_seconds": 2.0}
    print("failover figures:", json.dumps(figures))
    out = REPO / "build" / f"ha-failover-{sc.name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")

    assert holders(lab, sc, among=others) == [new]  # exactly one of the others
    assert {macs.get(m, m) for m in arp_answers(lab, "client", VIP)} == {new}
    assert neighbour(lab, "client", VIP) == mac(lab, new)
    if sc.method == "nat":  # the gateway moved with the VIP, and the real servers were told
        assert holders(lab, sc, GATEWAY, among=others) == [new]
        assert f" {GATEWAY}/32" in lab.run(new, "ip", "-o", "addr", "show", "dev", "eth1").stdout
        assert {inside.get(m, m) for m in arp_answers(lab, "rs1", GATEWAY, source=INSIDE["rs1"])} == {new}
        for r in ("rs1", "rs2"):
            assert inside.get(neighbour(lab, r, GATEWAY)) == new
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
    macs = {mac(lab, h): h for h in ("client", "d1", "d2")}
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
