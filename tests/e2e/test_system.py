"""The whole system, as a user drives it: kubectl and the examples/ YAML on the
host, real traffic between namespaces in the VM. The tests run in order and
share one system (booting it costs minutes under TCG)."""
from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from lvs_e2e.sandbox import writable_mounts
from lvs_e2e.system import AGENT_FROM_ENV, GUEST_RUN, wait_until

REPO = Path(__file__).resolve().parents[2]
NAT_VIP, TUN_VIP = "192.168.0.30", "192.168.1.3"


def realservers(system, ns: str) -> dict[str, dict]:
    out = json.loads(system.kubectl("get", "realservers.lvs.kube-lvs.io", "-n", ns, "-o", "json"))
    return {o["metadata"]["name"]: o.get("status") or {} for o in out["items"]}


def healths(system, ns: str) -> dict[str, str]:
    return {n: s.get("health", "") for n, s in realservers(system, ns).items()}


@pytest.fixture(scope="module")
def nat(system):
    system.build_topology("nat")
    for rs in ("rs1", "rs2"):
        system.start_server("nat", rs)
    # A foreign IPVS service (kube-proxy's, keepalived's or hand-made) on the director.
    system.ipvsadm("nat-director", "-A", "-t", "192.168.0.30:8080", "-s", "wlc")
    system.ipvsadm("nat-director", "-a", "-t", "192.168.0.30:8080", "-r", "10.0.0.51:8080", "-m", "-w", "7")
    system.start_agent("nat-director", "nat-director", metrics_port=9477)
    system.kubectl("apply", "-k", str(REPO / "examples" / "seed-nat"))
    return system


def test_seed_nat_balances_and_reports_healthy(nat):
    names = wait_until("NAT service answering from both real servers",
                       lambda: (lambda n: n if set(n) == {"rs1", "rs2"} else None)(nat.requests("nat", NAT_VIP, 4)),
                       timeout=240, every=2)
    assert names[0] != names[1] and names[1] != names[2], f"rr must alternate: {names}"
    wait_until("both RealServers Healthy", lambda: healths(nat, "web") == {"rs1": "Healthy", "rs2": "Healthy"},
               timeout=120, every=2)
    out = nat.kubectl("get", "realservers.lvs.kube-lvs.io", "-n", "web")
    assert "Healthy" in out and "10.0.0.51" in out
    vs = json.loads(nat.kubectl("get", "virtualservices.lvs.kube-lvs.io", "-n", "web", "http", "-o", "json"))
    conds = {c["type"]: c["status"] for c in vs["status"]["conditions"]}
    assert conds.get("Ready") == "True", vs["status"]
    # Connection counts reach `kubectl get realservers` (closed HTTP/1.0
    # connections linger as InActConn in IPVS for a while).
    nat.requests("nat", NAT_VIP, 6)
    wait_until("connection counts in RealServer status",
               lambda: all(s.get("inactiveConns", 0) + s.get("activeConns", 0) > 0
                           for s in realservers(nat, "web").values()), timeout=150, every=3)


def assert_daemonset_privileges(system, node: str) -> None:
    """``node``'s agent runs as deploy/base/agent.yaml says: exactly its
    capabilities (effective, permitted, bounding; none inheritable or ambient),
    no_new_privs, /proc/sys read-only, the node's /proc/sys/net writable at
    the manifest's mount path, and nothing else writable but /proc, /dev and
    the state directory when the root filesystem is read-only."""
    sb = system.sandbox

    def running():
        caps, mountinfo, cmdline = system.agent_privileges(node)
        return (caps, mountinfo) if "lvs-agent" in cmdline else None
    caps, mountinfo = wait_until(f"{node}'s agent exec'd", running, timeout=60, every=1)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == sb.cap_mask, (caps, sb.capabilities)
    assert caps["CapInh"] == 0 and caps["CapAmb"] == 0, caps
    assert caps["NoNewPrivs"] == int(sb.no_new_privs), caps
    options = {f[4]: f[5].split(",") for f in (ln.split() for ln in mountinfo.splitlines())}
    net, state = system.agent_mounts(node)
    assert "ro" in options["/proc/sys"], mountinfo
    assert "rw" in options[net] and "rw" in options[state], mountinfo
    if sb.read_only_root:
        others = set(writable_mounts(mountinfo)) - {net, state, "/proc", "/dev"}
        assert all(m.startswith("/dev/") for m in others), others


def assert_runs_from_the_image(system, node: str) -> None:
    """``node``'s agent is the image's: its root is the exported image's tree
    and its executable (the image's Python) lies in it, not the host's venv.
    Before issue 22 item 6 the agents ran from the host's virtualenv."""
    if os.environ.get(AGENT_FROM_ENV) == "venv":
        pytest.skip(f"{AGENT_FROM_ENV}=venv: the agents run from this checkout's virtualenv")
    assert system.image is not None, "make e2e runs the agents from the image"
    root, exe = system.agent_executable(node)
    assert system.image.exe_of(root, exe), (root, exe, system.image.path)
    assert not Path(exe).is_relative_to(Path(system.python).parents[1]), exe


def test_agent_runs_with_the_daemonsets_privileges(nat):
    assert_daemonset_privileges(nat, "nat-director")
    assert_runs_from_the_image(nat, "nat-director")


SNAT_PORT = 81


def snat_objects() -> str:
    """A second VirtualService on the seed's VIP with natReturn: snat (the
    director masquerades, through its nftables table) over the same servers."""
    vs = {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "VirtualService",
          "metadata": {"name": "http-snat", "namespace": "web"},
          "spec": {"address": NAT_VIP, "port": SNAT_PORT, "protocol": "tcp", "scheduler": "rr", "method": "nat",
                   "natReturn": "snat",
                   "directorSelector": {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}}}
    rss = [{"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "RealServer",
            "metadata": {"name": f"snat-{rs}", "namespace": "web"},
            "spec": {"virtualService": "http-snat", "address": addr, "port": 80}}
           for rs, addr in (("rs1", "10.0.0.51"), ("rs2", "10.0.0.52"))]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [vs, *rss]})


def test_snat_virtualservice_from_the_image_masquerades(nat):
    """Issue 22 item 6: the image lacked nft, so a natReturn: snat service
    made the director's whole reconcile fail. From the image, its agent now
    programs the SNAT table: the servers see the director's inside address
    on the SNAT service and the client's on the gateway one, the NodeState
    reports both programmed, and deleting the service deletes the table."""
    nat.kubectl("apply", "-f", "-", input=snat_objects())
    seen = wait_until("SNAT service answering from both real servers",
                      lambda: (lambda r: r if {x.split("@")[0] for x in r} == {"rs1", "rs2"} else None)(
                          nat.requests("nat", NAT_VIP, 4, port=SNAT_PORT, peers=True)),
                      timeout=180, every=2)
    assert {x.split("@")[1] for x in seen} == {"10.0.0.30"}, seen  # masqueraded to the director's DIP
    assert {x.split("@")[1] for x in nat.requests("nat", NAT_VIP, 2, peers=True)} == {"192.168.0.1"}
    table = nat.g("ip", "netns", "exec", "nat-director", "nft", "list", "table", "inet", "kube-lvs")
    assert "masquerade" in table and f"proto-dst {SNAT_PORT}" in table, table
    nodestates = nat.kubectl("get", "nodestates.lvs.kube-lvs.io", "-n", "kube-lvs-system", "-o", "json")
    assert "needs nft" not in nodestates
    nat.kubectl("delete", "-f", "-", input=snat_objects())
    wait_until("the SNAT table deleted with its service",
               lambda: nat.ctl.run(["ip", "netns", "exec", "nat-director", "nft", "list", "table", "inet",
                                    "kube-lvs"]).rc != 0, timeout=120, every=2)
    assert set(nat.requests("nat", NAT_VIP, 4)) == {"rs1", "rs2"}


def test_metrics_endpoint_reports_the_kernel(nat):
    # The agent is in the director's network namespace (as hostNetwork puts it
    # in the node's), listening on its loopback.
    text = nat.g("ip", "netns", "exec", "nat-director", "curl", "-s", "--max-time", "10",
                 "http://127.0.0.1:9477/metrics")
    assert 'kube_lvs_service_connections_total{service="tcp:192.168.0.30:80"}' in text
    assert 'kube_lvs_dest_health{dest="10.0.0.51:80",service="tcp:192.168.0.30:80",state="Healthy"} 1.0' in text
    assert "kube_lvs_reconciles_total" in text
    assert "192.168.0.30:8080" not in text  # the foreign service is not ours to report


def probes_to_client(system) -> int:
    """SYNs the director sent to the client's port 80 (an nftables counter in
    the client's namespace): what a health check of that address would send."""
    out = system.g("ip", "netns", "exec", "nat-client", "nft", "-j", "list", "table", "inet", "e2e_probe")
    rules = [i["rule"] for i in json.loads(out)["nftables"] if "rule" in i]
    return sum(e["counter"]["packets"] for r in rules for e in r["expr"] if "counter" in e)


def test_a_tenant_real_server_outside_the_pool_is_neither_programmed_nor_probed(nat):
    """Issue 16: the seed pool limits real servers to 10.0.0.0/24. A tenant's
    RealServer at the client's address (any host the director can reach)
    gets AddressNotAllowed; the director's kernel never gets the dest and its
    agent never probes the address, while the allowed servers keep working."""
    for cmd in ("add table inet e2e_probe",
                "add chain inet e2e_probe input { type filter hook input priority 0 ; }",
                "add rule inet e2e_probe input ip saddr { 192.168.0.30, 10.0.0.30 } tcp dport 80 "
                "tcp flags syn counter"):
        nat.g("ip", "netns", "exec", "nat-client", "nft", *cmd.split())
    nat.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "RealServer",
        "metadata": {"name": "outside", "namespace": "web"},
        "spec": {"virtualService": "http", "address": "192.168.0.1", "port": 80}}))
    try:
        def refused():
            conds = {c["type"]: c for c in realservers(nat, "web").get("outside", {}).get("conditions", [])}
            return conds.get("Accepted", {}).get("reason") == "AddressNotAllowed" and conds["Accepted"]
        cond = wait_until("the RealServer refused", refused, timeout=90, every=2)
        assert "spec.realServerAddresses" in cond["message"]
        # Several health-check intervals (2 s) and a sweep later: nothing reached the kernel or the address.
        assert set(nat.requests("nat", NAT_VIP, 4)) == {"rs1", "rs2"}
        import time
        time.sleep(8)
        assert "192.168.0.1:80" not in nat.ipvsadm("nat-director", "-Ln")
        assert probes_to_client(nat) == 0
        nodestates = nat.kubectl("get", "nodestates.lvs.kube-lvs.io", "-n", "kube-lvs-system", "-o", "json")
        assert "192.168.0.1\"" not in nodestates.replace(" ", "")
        # The counter counts: one SYN from the director to that address shows up.
        nat.g("ip", "netns", "exec", "nat-director", "bash", "-c",
              "exec 3<>/dev/tcp/192.168.0.1/80 || true")
        assert probes_to_client(nat) >= 1
    finally:
        nat.kubectl("delete", "realservers.lvs.kube-lvs.io", "-n", "web", "outside", "--ignore-not-found")
        nat.g("ip", "netns", "exec", "nat-client", "nft", "delete", "table", "inet", "e2e_probe")


def test_stopped_server_turns_unhealthy_and_comes_back(nat):
    nat.stop_server("nat", "rs2")
    wait_until("rs2 Unhealthy", lambda: healths(nat, "web").get("rs2") == "Unhealthy", timeout=120, every=2)
    # Weight 0 in the kernel right away (locally, not via the API server).
    table = nat.ipvsadm("nat-director", "-Ln")
    rs2_line = next(line for line in table.splitlines() if "10.0.0.52:80" in line)
    assert rs2_line.split()[3] == "0", table
    assert set(nat.requests("nat", NAT_VIP, 6)) == {"rs1"}
    nat.start_server("nat", "rs2")
    wait_until("rs2 back", lambda: healths(nat, "web").get("rs2") == "Healthy", timeout=120, every=2)
    wait_until("rs2 answering again", lambda: "rs2" in nat.requests("nat", NAT_VIP, 4), timeout=60, every=2)


def test_weight_patch_changes_distribution(nat):
    nat.kubectl("patch", "realservers.lvs.kube-lvs.io", "-n", "web", "rs1", "--type=merge",
                "-p", '{"spec":{"weight":3}}')
    nat.kubectl("patch", "virtualservices.lvs.kube-lvs.io", "-n", "web", "http", "--type=merge",
                "-p", '{"spec":{"scheduler":"wrr"}}')
    wait_until("kernel weight 3 and wrr",
               lambda: "wrr" in (t := nat.ipvsadm("nat-director", "-Ln"))
               and any("10.0.0.51:80" in line and line.split()[3] == "3" for line in t.splitlines()),
               timeout=90, every=2)
    counts = Counter(nat.requests("nat", NAT_VIP, 16))
    assert counts["rs1"] == 12 and counts["rs2"] == 4, counts


def test_operator_down_traffic_continues(nat):
    nat.stop_operator()
    assert set(nat.requests("nat", NAT_VIP, 4)) == {"rs1", "rs2"}
    nat.start_operator()


def settled_table(system, node: str, quiet: float = 4.0, timeout: float = 120) -> str:
    """``ipvsadm -Sn`` once it has not changed for ``quiet`` seconds: what
    earlier tests changed (an operator restarted just before) has landed."""
    import time
    last, since = None, time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        now = system.ipvsadm(node, "-Sn")
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
        time.sleep(1)
    raise AssertionError(f"{node}'s table kept changing for {timeout}s")


def test_agent_restart_keeps_established_connection(nat):
    before = settled_table(nat, "nat-director")
    # Open a connection through the VIP and keep it open across the restart.
    holder = f"{GUEST_RUN}/held"
    nat.ctl.spawn("held-conn", ["ip", "netns", "exec", "nat-client", nat.python, "-c", _HOLD, NAT_VIP, holder],
                  log=f"{GUEST_RUN}/held.log")
    wait_until("connection held", lambda: nat.ctl.run(["test", "-e", holder + ".open"]).rc == 0, 60, 1)
    assert nat.stop_agent("nat-director", signal.SIGKILL) is not None
    nat.start_agent("nat-director", "nat-director", metrics_port=9477)
    log = f"{GUEST_RUN}/agent-nat-director.log"
    wait_until("the restarted agent reconciled",
               lambda: nat.ctl.run(["grep", "-c", "first reconcile done", log]).out.strip() == "2",
               timeout=120, every=2)
    firsts = [ln for ln in nat.ctl.run(["cat", log]).out.splitlines() if "first reconcile done" in ln]
    assert firsts[-1].endswith(", 0 ops"), firsts  # the restarted agent found nothing to change
    assert nat.ipvsadm("nat-director", "-Sn") == before, "restart changed the kernel"
    nat.g("touch", holder + ".go")
    wait_until("held connection answered",
               lambda: nat.ctl.run(["cat", f"{GUEST_RUN}/held.log"]).out.strip().startswith("rs"), 60, 1)


_HOLD = r"""
import socket, sys, time, os
vip, marker = sys.argv[1], sys.argv[2]
s = socket.create_connection((vip, 80), timeout=5)
open(marker + ".open", "w").close()
while not os.path.exists(marker + ".go"):
    time.sleep(0.2)
s.settimeout(10)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.split(b"\r\n\r\n", 1)[-1].decode().strip(), flush=True)
"""


def test_apiserver_down_traffic_continues_and_agent_catches_up(nat):
    pid = nat.cp.pids["kube-apiserver"]
    os.kill(pid, signal.SIGSTOP)
    try:
        assert set(nat.requests("nat", NAT_VIP, 4)) == {"rs1", "rs2"}
    finally:
        os.kill(pid, signal.SIGCONT)
    nat.kubectl("patch", "realservers.lvs.kube-lvs.io", "-n", "web", "rs2", "--type=merge",
                "-p", '{"spec":{"weight":2}}')
    wait_until("agent caught up after the API server returned",
               lambda: any("10.0.0.52:80" in line and line.split()[3] == "2"
                           for line in nat.ipvsadm("nat-director", "-Ln").splitlines()),
               timeout=120, every=2)


def test_delete_virtualservice_removes_ours_and_keeps_foreign(nat):
    nat.kubectl("delete", "virtualservices.lvs.kube-lvs.io", "-n", "web", "http")
    wait_until("our service gone", lambda: "-A -t 192.168.0.30:80 " not in nat.ipvsadm("nat-director", "-Sn"),
               timeout=120, every=2)
    table = nat.ipvsadm("nat-director", "-Sn")
    assert "-A -t 192.168.0.30:8080 -s wlc" in table and "-r 10.0.0.51:8080 -m -w 7" in table, table
    assert nat.kubectl("get", "nodestates.lvs.kube-lvs.io", "-n", "kube-lvs-system",
                       "-l", "lvs.kube-lvs.io/vs-name=http", "-o", "name").strip() == ""


def test_seed_tun_with_agents_on_the_real_servers(system):
    s = system
    s.build_topology("tun")
    for rs in ("rs1", "rs2"):
        s.start_server("tun", rs)
        s.start_agent(rs, f"tun-{rs}")
        # The admin lets the pool's tenants name these nodes (the pool's backendNodeSelector).
        s.kubectl("label", "node", rs, "lvs.kube-lvs.io/role=backend", "--overwrite")
    s.kubectl("label", "node", "nat-director", "lvs.kube-lvs.io/director-")
    s.kubectl("label", "node", "tun-director", "lvs.kube-lvs.io/director=true")
    s.start_agent("tun-director", "tun-director")
    s.kubectl("apply", "-k", str(REPO / "examples" / "seed-tun"))
    wait_until("TUN service answering from both real servers",
               lambda: set(s.requests("tun", TUN_VIP, 4)) == {"rs1", "rs2"}, timeout=300, every=3)
    # The agents configured the backends: VIP on tunl0, ARP and rp_filter scoped.
    addr = s.g("ip", "-n", "tun-rs1", "-o", "addr", "show", "dev", "tunl0")
    assert TUN_VIP in addr
    arp = s.g("ip", "netns", "exec", "tun-rs1", "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore")
    assert arp.strip() == "1"  # written through the mounted sysctl root: its /proc/sys is read-only
    for node in ("rs1", "tun-director"):
        assert_daemonset_privileges(s, node)
        assert_runs_from_the_image(s, node)
    wait_until("TUN RealServers Healthy", lambda: healths(s, "web-tun") == {"rs1": "Healthy", "rs2": "Healthy"},
               timeout=120, every=2)
    # Remove it: the backends are put back as they were.
    s.kubectl("delete", "-k", str(REPO / "examples" / "seed-tun"))
    wait_until("backend VIP removed",
               lambda: TUN_VIP not in s.g("ip", "-n", "tun-rs1", "-o", "addr", "show", "dev", "tunl0"),
               timeout=120, every=2)
    assert s.g("ip", "netns", "exec", "tun-rs1", "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").strip() == "0"
