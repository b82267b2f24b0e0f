"""Director failover end to end: three directors on one L2 segment, each the
real agent (from the image, with the DaemonSet's privileges, a Node-bound
token), the real API server as the member list (one Lease per director),
examples/director-ha applied with kubectl. Real traffic from a client
namespace: new requests every 50 ms and held connections through the VIP.

In order (they share one group, and each starts where the last ended):
- exactly one director holds the VIP and answers ARP; the others run the
  backup sync daemon; `kubectl get virtualservices -o wide` names the holder;
- the holder dies (kill -9 of its agent, its link down): exactly one other
  director takes the VIP over, the 200 held connections all answer through
  it, a Takeover Event names it; the figures are written to
  build/ha-failover-e2e.json (reported, not asserted as timings);
- the old holder comes back: nothing moves and no request fails;
- the API server stopped for two minutes: no request fails, nothing moves;
- the holder cut off from the API server while the others reach it: it loses
  the VIP to one of them (their Lease expiry, its seeing their gratuitous
  ARP), one holder at the end.

Then BGP scale-out on the same directors (a second VIP, active-active):
- every director announces it to a router namespace running BIRD 2, whose
  kernel gets one multipath route; new connections spread over the three;
- a director whose label is removed withdraws first (the operator's drain),
  its services go only after that, and no held connection drops;
- a director killed (kill -9, link down): the router drops it within the
  BGP hold time, new connections succeed.

Before director groups every selected director held the VIP (three ARP
answers) and a director's death lost its connections: the first test fails.
Before BGP nothing announced the second VIP (no route on the router).
Runs last in the e2e session: it stops the API server.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from lvs_e2e.guest_topology import BGP_VIP, HA_HOSTS, HA_VIP
from lvs_e2e.system import GUEST_RUN, wait_until

REPO = Path(__file__).resolve().parents[2]
DIRECTORS = ("ha-d1", "ha-d2", "ha-d3")  # node names, and their namespaces
GROUP_LABEL = {"lvs.kube-lvs.io/director-group": "edge"}
HOLD_PORT, HELD = 443, 200
LEASE = 6.0  # the agent's Lease duration: the tests wait a few of them to see that nothing moves
state: dict[str, str] = {}


@pytest.fixture(scope="module")
def ha(system):
    system.build_topology("ha")
    for rs in ("rs1", "rs2"):
        system.start_server("ha", rs)
    system.ctl.spawn("ha-hold-servers", [system.python, "-m", "lvs_e2e.ha_traffic", "servers", str(HOLD_PORT),
                                         "ha-rs1:rs1", "ha-rs2:rs2"], log=f"{GUEST_RUN}/ha-hold-servers.log")
    for d in DIRECTORS:
        system.add_node(d, labels=GROUP_LABEL)
        system.start_agent(d, d)
    system.kubectl("apply", "-k", str(REPO / "examples" / "director-ha"))
    yield system
    for d in DIRECTORS:
        system.stop_agent(d)
    system.kubectl("delete", "-k", str(REPO / "examples" / "director-ha"), "--wait=false", check=False)


# -- what the guest shows -------------------------------------------------------------

def holders(system, among=DIRECTORS) -> list[str]:
    """The directors that hold the VIP (kernel state, no API)."""
    return [d for d in among if f"{HA_VIP}/32" in system.g("ip", "-n", d, "-o", "addr", "show")]


def macs(system) -> dict[str, str]:
    return {system.g("ip", "netns", "exec", d, "cat", "/sys/class/net/eth0/address").strip(): d for d in DIRECTORS}


def arp_answers(system) -> set[str]:
    """Who answers the client's ARP request for the VIP."""
    out = system.g(system.python, "-m", "lvs_e2e.ha_traffic", "arp", "ha-client", HA_HOSTS["client"], HA_VIP)
    names = macs(system)
    return {names.get(m, m) for m in out.split()}


def uptime(system) -> float:
    """The guest's CLOCK_BOOTTIME, the probe's clock."""
    return float(system.g("cat", "/proc/uptime").split()[0])


def sole_holder(system, among=DIRECTORS) -> str | None:
    h = holders(system, among)
    return h[0] if len(h) == 1 else None


def active_director(system, name: str = "https") -> str:
    vs = json.loads(system.kubectl("get", "virtualservices.lvs.kube-lvs.io", "-n", "edge", name, "-o", "json"))
    return (vs.get("status") or {}).get("activeDirector", "")


# Where a test claims that no request fails, a request fails when it has no
# answer in PATIENCE seconds: a client's patience, past TCP's first SYN
# retransmission. A VIP that moved, a table emptied or a flapping ARP answer
# fails requests for longer than that; a scheduler stall of the probe itself
# does not. The failover probe keeps 0.5 s: it times the takeover.
PATIENCE = 2.0


class Probe:
    """lvs_e2e.ha_traffic probe in the client namespace: held connections and
    a loop of new requests."""

    def __init__(self, system, name: str, held: int, vip: str = HA_VIP, timeout: float = 0.5):
        self.system, self.name, self.dir = system, name, f"{GUEST_RUN}/{name}"
        system.ctl.spawn(name, [system.python, "-m", "lvs_e2e.ha_traffic", "probe", self.dir, "ha-client", vip,
                                str(HOLD_PORT), str(held), str(timeout)], log=f"{GUEST_RUN}/{name}.log")
        got = wait_until(f"{name}: {held} held connections", lambda: self._read("held.json"), 180, 1)
        self.ports = {f"{HA_HOSTS['client']}:{p}" for p in got["ports"]}

    def _read(self, name: str) -> dict | None:
        r = self.system.ctl.run(["cat", f"{self.dir}/{name}"])
        return json.loads(r.out) if r.rc == 0 and r.out.strip() else None

    def answering(self, label: str) -> int:
        self.system.g("touch", f"{self.dir}/check-{label}")
        return wait_until(f"{self.name}: held connections checked", lambda: self._read(f"check-{label}.json"),
                          180, 1)["answering"]

    def log(self) -> list[tuple[float, bool, float]]:
        """(start on the guest's CLOCK_BOOTTIME, answered, seconds taken) of each request."""
        out = self.system.ctl.run(["cat", f"{self.dir}/requests.log"]).out
        return [(float(t), ok == "1", float(took)) for t, ok, took in
                (ln.split() for ln in out.splitlines() if len(ln.split()) == 3)]

    def requests(self) -> list[tuple[float, bool]]:
        return [(t, ok) for t, ok, _ in self.log()]

    def failed(self, since: float = 0.0) -> int:
        return sum(1 for t, ok in self.requests() if t >= since and not ok)

    def stop(self) -> None:
        self.system.g("touch", f"{self.dir}/stop")
        self.system.ctl.signal(self.name, wait=30)


def synced(system, standby: str, ports: set[str]) -> bool:
    """Every held connection is in ``standby``'s connection table (the sync daemon)."""
    lines = system.ipvsadm(standby, "-Lnc").splitlines()
    return ports <= {ln.split()[3] for ln in lines if len(ln.split()) > 4 and f":{HOLD_PORT}" in ln.split()[4]}


# -- the scenarios ----------------------------------------------------------------------

def test_one_director_holds_the_vip_and_answers_arp(ha):
    holder = wait_until("one director holds the VIP", lambda: sole_holder(ha), 300, 2)
    wait_until("the VIP answers", lambda: set(ha.requests("ha", HA_VIP, 4)) == {"rs1", "rs2"}, 120, 2)
    assert arp_answers(ha) == {holder}
    assert holders(ha) == [holder]
    for d in set(DIRECTORS) - {holder}:
        assert "backup sync daemon" in ha.g("ip", "netns", "exec", d, "ipvsadm", "-L", "--daemon"), d
        assert f"{HA_VIP}:443" in ha.ipvsadm(d, "-Ln"), f"{d} keeps the service as hot standby"
    wait_until("status.activeDirector names the holder", lambda: active_director(ha) == holder, 120, 2)
    assert holder in ha.kubectl("get", "virtualservices.lvs.kube-lvs.io", "-n", "edge", "-o", "wide")
    state["holder"] = holder


def test_the_holder_dies_its_connections_live_on(ha):
    old = state["holder"]
    others = tuple(d for d in DIRECTORS if d != old)
    probe = Probe(ha, "ha-probe-failover", HELD)
    try:
        for d in others:
            wait_until(f"all {HELD} held connections synced to {d}", lambda d=d: synced(ha, d, probe.ports), 180, 2)
        time.sleep(2)
        ha.stop_agent(old, 9)  # kill -9: the kernel still forwards until the link goes
        ha.g("ip", "-n", old, "link", "set", "eth0", "down")
        killed = uptime(ha)  # from here on only the others can answer
        new = wait_until("exactly one other director takes the VIP over", lambda: sole_holder(ha, others), 180, 0.5)
        first_ok = wait_until("a new request through the new holder",
                              lambda: next((t for t, ok in probe.requests() if t > killed and ok), None), 180, 0.5)
        answering = probe.answering("after")
        after = [(t, ok) for t, ok in probe.requests() if killed < t < first_ok]
    finally:
        probe.stop()
    figures = {"method": "dr", "directors": len(DIRECTORS), "lease_store": "kube-apiserver",
               "takeover_seconds": round(first_ok - killed, 2), "failed_requests_meanwhile": sum(not ok for _, ok in after),
               "requests_meanwhile": len(after), "held_connections": HELD, "held_connections_answering": answering,
               "lease_duration_seconds": LEASE, "renew_every_seconds": 2.0}
    print("failover figures:", json.dumps(figures))
    out = REPO / "build" / "ha-failover-e2e.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n")

    assert answering == HELD, figures
    assert arp_answers(ha) == {new}
    assert ha.g("ip", "netns", "exec", "ha-client", "ip", "neigh", "show", HA_VIP).split("lladdr ")[1].split()[0] \
        == {v: k for k, v in macs(ha).items()}[new]
    wait_until("status.activeDirector follows", lambda: active_director(ha) == new, 120, 2)
    events = ha.kubectl("get", "events", "-n", "edge", "--field-selector", "reason=Takeover", "-o", "json")
    assert any(new in e.get("message", "") for e in json.loads(events)["items"]), events
    state.update(holder=new, dead=old)


def test_the_old_holder_returns_nothing_moves(ha):
    holder, old = state["holder"], state["dead"]
    probe = Probe(ha, "ha-probe-return", 20, timeout=PATIENCE)
    try:
        started = uptime(ha)
        # Its kernel still has the VIP on eth0 (kill -9 left it there): its new
        # agent removes it before the link comes back (the relay keeps the API
        # reachable with eth0 down), so the returning node never answers ARP.
        ha.start_agent(old, old)
        wait_until(f"{old}'s new agent drops the VIP it no longer holds", lambda: not holders(ha, (old,)), 180, 1)
        ha.g("ip", "-n", old, "link", "set", "eth0", "up")
        time.sleep(3 * LEASE)  # past its start-up grace and several rounds
        assert holders(ha) == [holder]
        assert arp_answers(ha) == {holder}
        assert probe.answering("returned") == 20
        assert probe.failed(since=started) == 0
    finally:
        probe.stop()


def test_api_server_away_two_minutes_nothing_fails(ha):
    holder = state["holder"]
    probe = Probe(ha, "ha-probe-api-away", 20, timeout=PATIENCE)
    try:
        stopped = uptime(ha)
        ha.cp.stop_apiserver()
        try:
            time.sleep(120)
            during = holders(ha)
        finally:
            started = uptime(ha)
            ha.cp.start_apiserver()
        time.sleep(3 * 2.0)  # a few rounds with the member list readable again
        log = probe.log()
        failed = [round(t - stopped, 2) for t, ok, _ in log if not ok]
        slowest = sorted(((round(took, 2), round(t - stopped, 2)) for t, _, took in log), reverse=True)[:5]
        print("api away figures:", json.dumps({"requests": len(log), "failed": len(failed),
                                               "failed_at_seconds_after_stop": failed,
                                               "api_back_at_seconds_after_stop": round(started - stopped, 2),
                                               "slowest_seconds_and_start": slowest}))
        assert not failed and log
        assert during == [holder] and holders(ha) == [holder]
        assert probe.answering("api-back") == 20
    finally:
        probe.stop()


def test_a_director_cut_off_from_the_api_server_gives_up_the_vip(ha):
    """The holder loses the API server (its relay stopped), the others do not:
    they see its Lease expire and one of them takes the VIP over with
    gratuitous ARP; the cut-off holder, frozen, sees that announcement and
    drops the VIP. One holder at the end."""
    cut = state["holder"]
    others = tuple(d for d in DIRECTORS if d != cut)
    ha.ctl.signal(f"api-relay-{cut}")
    try:
        new = wait_until("one of the others takes the VIP over", lambda: sole_holder(ha, others), 180, 1)
        wait_until(f"{cut} drops the VIP it no longer owns", lambda: holders(ha) == [new], 120, 1)
        assert arp_answers(ha) == {new}
        wait_until("the VIP answers through the new holder",
                   lambda: set(ha.requests("ha", HA_VIP, 4)) == {"rs1", "rs2"}, 120, 2)
    finally:
        ha._start_api_relay(cut)
    time.sleep(3 * LEASE)  # back in the member list: no fail-back
    assert holders(ha) == [new] and arp_answers(ha) == {new}


# -- BGP scale-out (active-active) ------------------------------------------------------

ROUTER_ASN, DIRECTOR_ASN, HOLD = 64512, 64513, 3  # hold time: the shortest BGP allows, so the test is short
BGP_LABEL = {"lvs.kube-lvs.io/bgp": "true"}
ADDR = {d: HA_HOSTS[d.removeprefix("ha-")] for d in DIRECTORS}


def bgp_objects() -> list[dict]:
    peer = {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "BGPPeer", "metadata": {"name": "e2e-router"},
            "spec": {"peerAddress": HA_HOSTS["router"], "peerASN": ROUTER_ASN, "myASN": DIRECTOR_ASN,
                     "holdTime": HOLD, "keepaliveTime": 1, "nodeSelector": {"matchLabels": BGP_LABEL}}}
    pool = {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "VIPPool", "metadata": {"name": "e2e-bgp"},
            "spec": {"addresses": [f"{BGP_VIP}/32"], "namespaces": ["edge"],
                     "realServerAddresses": ["192.168.30.0/24"], "directorNodeSelector": {"matchLabels": BGP_LABEL}}}
    out = [peer, pool]
    for name, port in (("bgp-http", 80), ("bgp-https", HOLD_PORT)):
        out.append({"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "VirtualService",
                    "metadata": {"name": name, "namespace": "edge",
                                 "labels": {"lvs.kube-lvs.io/failover": "active-active"}},
                    "spec": {"address": BGP_VIP, "port": port, "protocol": "tcp", "scheduler": "mh", "method": "dr",
                             "directorSelector": {"matchLabels": BGP_LABEL},
                             "healthCheck": {"type": "tcp", "interval": 2, "timeout": 1, "rise": 1, "fall": 2}}})
        out += [{"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "RealServer",
                 "metadata": {"name": f"{name}-{rs}", "namespace": "edge"},
                 "spec": {"virtualService": name, "address": HA_HOSTS[rs], "port": port}} for rs in ("rs1", "rs2")]
    return out


def router_conf() -> str:
    """The upstream router: learns the VIP from every director, installs one
    multipath route in its kernel, announces nothing."""
    peers = "".join(f"protocol bgp {d.replace('-', '_')} {{\n  local as {ROUTER_ASN};\n"
                    f"  neighbor {a} as {DIRECTOR_ASN};\n  hold time {HOLD};\n  keepalive time 1;\n"
                    "  graceful restart off;\n  ipv4 { import all; export none; };\n}\n" for d, a in ADDR.items())
    return (f"log stderr all;\nrouter id {HA_HOSTS['router']};\nprotocol device {{}}\n"
            "protocol kernel {\n  ipv4 { import none; export all; };\n  merge paths on;\n}\n" + peers)


def next_hops(system) -> set[str]:
    """The directors the router's kernel sends the VIP's flows to."""
    out = system.g("ip", "-n", "ha-router", "route", "show", f"{BGP_VIP}/32")
    by_addr = {a: d for d, a in ADDR.items()}
    return {by_addr.get(a, a) for a in re.findall(r"via (\S+)", out)}


def bgp_conns(system, d: str) -> int:
    out = system.ipvsadm(d, "-Ln", "--stats", "--exact")
    line = next((ln for ln in out.splitlines() if ln.split()[:2] == ["TCP", f"{BGP_VIP}:80"]), "")
    return int(line.split()[2]) if line else 0


@pytest.fixture(scope="module")
def bgp(ha):
    for d in DIRECTORS:
        ha.kubectl("label", "node", d, "lvs.kube-lvs.io/bgp=true", "--overwrite")
        ha.kubectl("patch", "node", d, "--subresource=status", "--type=merge", "-p",
                   json.dumps({"status": {"addresses": [{"type": "InternalIP", "address": ADDR[d]}]}}))
    conf = f"{GUEST_RUN}/router-bird.conf"
    ha.ctl.run(["sh", "-c", f"cat > {conf}"], input=router_conf()).check()
    ha.ctl.spawn("ha-router-bird", ["ip", "netns", "exec", "ha-router", "bird", "-f", "-c", conf,
                                    "-s", f"{GUEST_RUN}/router-bird.ctl"], log=f"{GUEST_RUN}/ha-router-bird.log")
    ha.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": bgp_objects()}))
    yield ha
    ha.ctl.signal("ha-router-bird")


def test_bgp_every_director_announces_and_flows_spread(bgp):
    try:
        wait_until("a multipath route through the three directors", lambda: next_hops(bgp) == set(DIRECTORS),
                   300, 2)
    except TimeoutError:
        print(bgp.guest_log("ha-router-bird.log", 30))
        raise
    before = {d: bgp_conns(bgp, d) for d in DIRECTORS}
    names = bgp.requests("ha", BGP_VIP, 60)
    assert names.count("-") == 0, names  # (mh hashes the source address: one client, one real server)
    spread = wait_until("the directors' counters hold all 60",
                        lambda: (lambda c: c if sum(c.values()) >= 60 else None)(
                            {d: bgp_conns(bgp, d) - before[d] for d in DIRECTORS}), 60, 2)
    print("bgp spread:", json.dumps(spread))
    assert all(n > 0 for n in spread.values()), spread  # every director carried flows
    vs = json.loads(bgp.kubectl("get", "virtualservices.lvs.kube-lvs.io", "-n", "edge", "bgp-http", "-o", "json"))
    wait_until("status.announcedBy names the three", lambda: sorted(json.loads(bgp.kubectl(
        "get", "virtualservices.lvs.kube-lvs.io", "-n", "edge", "bgp-http", "-o", "json"))["status"].get(
        "announcedBy", "").split(",")) == sorted(DIRECTORS), 120, 2)
    assert vs["spec"]["scheduler"] == "mh"


def test_bgp_a_drained_director_withdraws_before_its_services_go(bgp):
    """The label removed: the operator drains (the director withdraws, keeps
    its services), then removes its services; the held connections it
    carried moved with the route (mh, sloppy TCP) and none drops."""
    drained = DIRECTORS[0]
    probe = Probe(bgp, "bgp-probe-drain", 30, vip=BGP_VIP, timeout=PATIENCE)
    try:
        bgp.kubectl("label", "node", drained, "lvs.kube-lvs.io/bgp-")
        wait_until(f"{drained} withdrawn", lambda: next_hops(bgp) == set(DIRECTORS[1:]), 120, 0.5)
        assert f"{BGP_VIP}:{HOLD_PORT}" in bgp.ipvsadm(drained, "-Ln"), "withdrawn first, services still there"
        wait_until(f"{drained}'s services removed after the drain",
                   lambda: f"{BGP_VIP}:{HOLD_PORT}" not in bgp.ipvsadm(drained, "-Ln"), 180, 1)
        answering = probe.answering("drained")
        failed = probe.failed()
    finally:
        probe.stop()
    print("bgp drain figures:", json.dumps({"held": 30, "answering": answering, "failed_requests": failed}))
    assert answering == 30 and failed == 0


def test_bgp_a_dead_director_is_dropped_within_the_hold_time(bgp):
    """A node death: its link goes first (so its BIRD cannot close the
    session), then its agent (kill -9); the router notices at the hold time."""
    dead = DIRECTORS[1]
    bgp.g("ip", "-n", dead, "link", "set", "eth0", "down")
    killed = time.monotonic()
    bgp.stop_agent(dead, 9)
    survivors = set(DIRECTORS) - {DIRECTORS[0], dead}  # the first was drained by the test before
    wait_until(f"the router drops {dead}", lambda: dead not in next_hops(bgp), 60, 0.2)
    took = time.monotonic() - killed
    # The route through the survivors (not merely no route through the dead one) before new requests.
    wait_until(f"the route through {sorted(survivors)}", lambda: next_hops(bgp) == survivors, 60, 0.2)
    names = bgp.requests("ha", BGP_VIP, 20)
    print("bgp withdraw figures:", json.dumps({"hold_time": HOLD, "dropped_after_seconds": round(took, 2),
                                                "new_requests": len(names), "failed": names.count("-")}))
    assert names.count("-") == 0, names
