"""Kubernetes Services as real servers, end to end (issue 19): the operator on
the host follows a Service's EndpointSlices (written here with kubectl, as an
EndpointSlice controller would), the director's agent in the VM programs its
kernel, and real traffic from the client namespace follows the slices as the
test scales them up and down. The endpoints are the NAT topology's real
servers (namespaces 10.0.0.51/52 in the VM).

Runs after test_system.py (file order) on the same system, or alone (it then
builds the NAT topology and starts the director's agent itself). Before issue
19 the VirtualService's spec.backend was pruned by the API server and the
service had no real server: every request here failed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lvs_e2e.system import GUEST_RUN, wait_until

REPO = Path(__file__).resolve().parents[2]

NS, VIP, PORT = "web", "192.168.0.30", 82  # the seed pool's VIP for namespace web; a port of our own
SERVICE = "backends"
RS1, RS2 = "10.0.0.51", "10.0.0.52"
TARGET = 8081  # the endpoints' port: LONG_SERVER, which keeps an idle connection open

# The lab's name servers answer (and close) after 2 s even without a request;
# a connection that must stay established while its endpoint drains needs a
# server that waits for the request as long as the client likes.
LONG_SERVER = r"""
import socketserver, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(socketserver.BaseRequestHandler):
    def handle(self):
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            buf += chunk
        body = f"{name} {self.client_address[0]}\n".encode()
        self.request.sendall(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\n" + body)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("0.0.0.0", port), H).serve_forever()
"""


@pytest.fixture(scope="module")
def svc_nat(system):
    if "nat" not in system.topologies:
        system.build_topology("nat")
    for rs in ("rs1", "rs2"):
        if not system.ctl.alive(f"server-nat-{rs}"):
            system.start_server("nat", rs)
        if not system.ctl.alive(f"long-server-{rs}"):
            system.ctl.spawn(f"long-server-{rs}", ["ip", "netns", "exec", f"nat-{rs}", system.python, "-c",
                                                   LONG_SERVER, rs, str(TARGET)],
                             log=f"{GUEST_RUN}/long-server-{rs}.log")
    if not system.ctl.alive("agent-nat-director"):
        system.start_agent("nat-director", "nat-director")
    # nat-director directs (an earlier test of the session may have moved the label to tun-director).
    system.kubectl("label", "node", "tun-director", "lvs.kube-lvs.io/director-")
    system.kubectl("label", "node", "nat-director", "lvs.kube-lvs.io/director=true", "--overwrite")
    system.kubectl("apply", "-f", str(REPO / "examples" / "seed-nat" / "vippool.yaml"))
    system.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": NS}}))
    system.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS},
         "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},  # no selector: slices by hand
        {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "VirtualService",
         "metadata": {"name": "svc-backed", "namespace": NS},
         "spec": {"address": VIP, "port": PORT, "protocol": "tcp", "scheduler": "rr", "method": "nat",
                  "natReturn": "gateway", "backend": {"service": SERVICE, "portName": "http"},
                  "healthCheck": {"type": "tcp", "interval": 2, "timeout": 1, "rise": 1, "fall": 2},
                  "directorSelector": {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}}}]}))
    return system


def set_endpoints(system, **endpoints: dict) -> None:
    """The Service's one EndpointSlice with ``address=conditions`` endpoints."""
    system.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{SERVICE}-1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": TARGET, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": c} for a, c in endpoints.items()]}))


READY = {"ready": True}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


def answers(system, want: set[str], what: str, port: int = PORT, vip: str = VIP) -> list[str]:
    return wait_until(what, lambda: (lambda n: n if set(n) == want else None)(
        system.requests("nat", vip, 4, port=port)), timeout=180, every=2)


def dest_weights(system, port: int = PORT) -> dict[str, int]:
    """address -> weight of our service's dests in the director's kernel."""
    out, inside = {}, False
    for line in system.ipvsadm("nat-director", "-Ln").splitlines():
        f = line.split()
        if f and f[0] in ("TCP", "UDP", "SCTP", "FWM"):
            inside = f[1] == f"{VIP}:{port}"
        elif inside and f and f[0] == "->" and ":" in f[1]:
            out[f[1].rsplit(":", 1)[0]] = int(f[3])
    return out


# Holds a connection through the VIP open (bash's /dev/tcp) until the .go marker
# appears, then sends its request and prints the answer's body line.
_HOLD = ('exec 3<>"/dev/tcp/$1/$2" && touch "$3.open" && while [ ! -e "$3.go" ]; do sleep 0.2; done; '
         'printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3; tail -n 1 <&3')


def test_traffic_follows_the_endpointslice_as_it_scales(svc_nat):
    s = svc_nat
    set_endpoints(s, **{RS1: READY})
    answers(s, {"rs1"}, "one endpoint: rs1 answers")
    assert set(json.loads(s.kubectl("get", "realservers.lvs.kube-lvs.io", "-n", NS, "-o", "json",
                                    "-l", "lvs.kube-lvs.io/derived-from=service"))["items"][0]["spec"].items()) >= \
        {("address", RS1), ("port", TARGET)}
    set_endpoints(s, **{RS1: READY, RS2: READY})
    names = answers(s, {"rs1", "rs2"}, "scaled up: both answer")
    assert names[0] != names[1], f"rr must alternate: {names}"
    set_endpoints(s, **{RS2: READY})
    answers(s, {"rs2"}, "scaled down to rs2")
    out = s.kubectl("get", "realservers.lvs.kube-lvs.io", "-n", NS)
    assert f"svc-backed-{RS2.replace('.', '-')}-{TARGET}" in out


def test_a_terminating_endpoint_keeps_its_established_connection(svc_nat):
    """rs2 is the only endpoint, so a connection opened now is rs2's. It turns
    terminating (weight 0: new connections go to rs1 only), then leaves the
    slice (the agent drains it: the dest stays at weight 0 while the
    connection lives); the held connection still gets rs2's answer, and the
    dest is deleted once it has closed."""
    s = svc_nat
    set_endpoints(s, **{RS2: READY})
    answers(s, {"rs2"}, "rs2 alone")
    holder = f"{GUEST_RUN}/svc-held"
    s.ctl.spawn("svc-held-conn", ["ip", "netns", "exec", "nat-client", "bash", "-c", _HOLD, "hold", VIP,
                                  str(PORT), holder], log=f"{GUEST_RUN}/svc-held.log")
    wait_until("connection held", lambda: s.ctl.run(["test", "-e", holder + ".open"]).rc == 0, 60, 1)

    set_endpoints(s, **{RS1: READY, RS2: TERMINATING})
    wait_until("rs2 at weight 0 in the kernel", lambda: dest_weights(s) == {RS1: 1, RS2: 0}, 120, 2)
    assert set(s.requests("nat", VIP, 4, port=PORT)) == {"rs1"}  # no new connection to the terminating one

    set_endpoints(s, **{RS1: READY})  # gone from the slice
    wait_until("derived RealServer of rs2 deleted", lambda: RS2.replace(".", "-") not in s.kubectl(
        "get", "realservers.lvs.kube-lvs.io", "-n", NS, "-o", "name"), 60, 2)
    time.sleep(6)  # a sweep and more: the drain keeps the dest while the connection lives
    assert dest_weights(s) == {RS1: 1, RS2: 0}, s.ipvsadm("nat-director", "-Ln")

    s.g("touch", holder + ".go")
    assert wait_until("held connection answered", lambda: s.ctl.run(["cat", f"{GUEST_RUN}/svc-held.log"])
                      .out.strip() or None, 60, 1).split()[0] == "rs2"
    wait_until("the drained dest deleted once its connection closed", lambda: dest_weights(s) == {RS1: 1},
               120, 2)
    assert set(s.requests("nat", VIP, 4, port=PORT)) == {"rs1"}


def test_loadbalancer_service_gets_the_pools_vip_and_carries_traffic(svc_nat):
    """A LoadBalancer Service of our class in namespace web: the seed pool's
    one VIP (free once the hand-made VirtualService is gone), status ingress,
    and traffic on the Service's port through the director (natReturn snat,
    the LoadBalancer default: the servers see the director's address)."""
    s = svc_nat
    s.kubectl("delete", "virtualservices.lvs.kube-lvs.io", "-n", NS, "svc-backed", "--ignore-not-found")
    for vs in ("http", "http-snat"):  # test_system's, if it left them
        s.kubectl("delete", "virtualservices.lvs.kube-lvs.io", "-n", NS, vs, "--ignore-not-found")
    s.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": NS},
         "spec": {"type": "LoadBalancer", "loadBalancerClass": "lvs.kube-lvs.io/lvs",
                  "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "lb-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "lb"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
         "endpoints": [{"addresses": [a], "conditions": READY} for a in (RS1, RS2)]}]}))

    def ingress():
        svc = json.loads(s.kubectl("get", "service", "lb", "-n", NS, "-o", "json"))
        return ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")
    assert wait_until("the Service's ingress", ingress, 120, 2) == [{"ip": VIP, "ipMode": "Proxy"}]
    seen = wait_until("the LoadBalancer answering from both", lambda: (lambda r: r if {
        x.split("@")[0] for x in r} == {"rs1", "rs2"} else None)(s.requests("nat", VIP, 4, port=80, peers=True)),
        timeout=180, every=2)
    assert {x.split("@")[1] for x in seen} == {"10.0.0.30"}, seen  # masqueraded by the director
    s.kubectl("delete", "service", "lb", "-n", NS)
    # Token by token: "192.168.0.30:80" is a prefix of the foreign 192.168.0.30:8080 service
    # that test_system leaves on the director.
    wait_until("everything of the LoadBalancer released", lambda: f"{VIP}:80" not in s.ipvsadm(
        "nat-director", "-Ln").split(), 120, 2)
