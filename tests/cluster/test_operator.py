"""The operator against the real API server, running as its own ServiceAccount.

`lvs-operator` runs as a subprocess with a kubeconfig for
system:serviceaccount:kube-lvs-system:kube-lvs-operator (the RBAC of deploy/),
against the session's etcd + kube-apiserver. Nodes are plain API objects here
(no kubelet): directors and backends are made up with labels and addresses.
Agents are simulated by patching NodeState status the way lvs-agent does.

The tests share one operator and build on each other's objects in the order
written (pytest runs a module's tests in file order).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lvs_model import channel as C

ROOT = Path(__file__).resolve().parents[2]
OPNS = C.DEFAULT_NAMESPACE
SA = "kube-lvs-operator"
SELECT = {"matchLabels": {"lvs-test.kube-lvs.io/director": "true"}}
RUN = uuid.uuid4().hex[:4]
NS1, NS2, NS3, NS4 = (f"lvs-{n}-{RUN}" for n in ("methods", "team-a", "team-b", "reports"))
D1, D2, D3, B1, B2, B3 = "lvs-d1", "lvs-d2", "lvs-d3", "lvs-b1", "lvs-b2", "lvs-b3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout=30.0, what="condition", interval=0.2):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # API hiccups while things settle
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


class Operator:
    """One `lvs-operator` replica as a subprocess."""

    def __init__(self, kubeconfig: Path, logdir: Path, identity: str):
        self.identity = identity
        self.log = logdir / f"operator-{identity}.log"
        exe = Path(sys.executable).with_name("lvs-operator")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lvs_operator.main"]
        self.port = _free_port()
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.proc = subprocess.Popen(
            cmd + ["--namespace", OPNS, "--identity", identity, "--liveness",
                   f"http://127.0.0.1:{self.port}/healthz", "--lease-duration", "8", "--lease-renew", "2",
                   "--debounce", "0.2"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(logdir))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Env:
    def __init__(self, cp, api, core, logdir, kubeconfig):
        self.cp, self.api, self.core, self.logdir, self.kubeconfig = cp, api, core, logdir, kubeconfig
        self.operators: list[Operator] = []

    # -- operators ---------------------------------------------------------
    def start_operator(self, identity: str) -> Operator:
        op = Operator(self.kubeconfig, self.logdir, identity)
        self.operators.append(op)
        return op

    def lease_holder(self) -> str:
        lease = self.api.get_namespaced_custom_object("coordination.k8s.io", "v1", OPNS, "leases", "kube-lvs-operator")
        return (lease.get("spec") or {}).get("holderIdentity") or ""

    # -- objects -------------------------------------------------------------
    def apply(self, *objs):
        self.cp.apply(list(objs))

    def nodestates(self, **labels) -> dict[str, dict]:
        sel = ",".join(f"{k}={v}" for k, v in labels.items())
        items = self.api.list_namespaced_custom_object(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL,
                                                       label_selector=sel or None)["items"]
        return {o["metadata"]["name"]: o for o in items}

    def get(self, plural, ns, name):
        return self.api.get_namespaced_custom_object(C.GROUP, C.VERSION, ns, plural, name)

    def conditions(self, plural, ns, name) -> dict[str, dict]:
        return {c["type"]: c for c in (self.get(plural, ns, name).get("status") or {}).get("conditions") or []}

    def events(self, ns) -> list[dict]:
        return self.api.list_namespaced_custom_object("events.k8s.io", "v1", ns, "events")["items"]

    def rvs(self, namespaces) -> dict[tuple, str]:
        out = {}
        for name, o in self.nodestates().items():
            out[("nodestate", name)] = o["metadata"]["resourceVersion"]
        for ns in namespaces:
            for plural in (C.VIRTUALSERVICE_PLURAL, C.REALSERVER_PLURAL):
                for o in self.api.list_namespaced_custom_object(C.GROUP, C.VERSION, ns, plural)["items"]:
                    out[(plural, ns, o["metadata"]["name"])] = o["metadata"]["resourceVersion"]
        for o in self.api.list_cluster_custom_object(C.GROUP, C.VERSION, C.VIPPOOL_PLURAL)["items"]:
            out[("pool", o["metadata"]["name"])] = o["metadata"]["resourceVersion"]
        return out


def node(name, ip, ip6=None, director=False, role="backend"):
    labels = {"lvs-test.kube-lvs.io/role": role}
    if director:
        labels["lvs-test.kube-lvs.io/director"] = "true"
    addrs = [{"type": "InternalIP", "address": ip}] + ([{"type": "InternalIP", "address": ip6}] if ip6 else [])
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"addresses": addrs}}


def ns(name):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pool(name, addresses=(), namespaces=(), fwmarks=()):
    spec = {"namespaces": list(namespaces)}
    if addresses:
        spec["addresses"] = list(addresses)
    if fwmarks:
        spec["fwmarks"] = [{"first": a, "last": b} for a, b in fwmarks]
    return {"apiVersion": C.API_VERSION, "kind": "VIPPool", "metadata": {"name": name}, "spec": spec}


def vs(namespace, name, **spec):
    spec.setdefault("directorSelector", SELECT)
    return {"apiVersion": C.API_VERSION, "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def rs(namespace, name, virtual_service, address, **spec):
    return {"apiVersion": C.API_VERSION, "kind": "RealServer", "metadata": {"name": name, "namespace": namespace},
            "spec": {"virtualService": virtual_service, "address": address, **spec}}


@pytest.fixture(scope="module")
def env(kube_lvs, tmp_path_factory, request):
    cp = kube_lvs
    cp.apply([node(D1, "10.10.0.30", "fd00:10::30", director=True, role="director"),
              node(D2, "10.10.0.31", "fd00:10::31", director=True, role="director"),
              node(D3, "10.10.0.32", role="director-spare"),
              node(B1, "10.10.0.51", "fd00:10::51"), node(B2, "10.10.0.52", "fd00:10::52"),
              node(B3, "10.10.0.53")] + [ns(n) for n in (NS1, NS2, NS3, NS4)])
    from kubernetes import client
    admin = cp.api_client()
    kubeconfig = cp.kubeconfig_for_serviceaccount(OPNS, SA)
    logdir = tmp_path_factory.mktemp("operator")
    e = Env(cp, client.CustomObjectsApi(admin), client.CoreV1Api(admin), logdir, kubeconfig)
    first = e.start_operator("op-a")
    wait_for(lambda: e.lease_holder() == "op-a", 30, "op-a to hold the Lease")
    wait_for(first.healthy, 30, "the liveness endpoint")
    yield e
    for op in e.operators:
        op.stop()
    if request.session.testsfailed:
        for op in e.operators:
            print(f"\n----- {op.log} (tail) -----\n" + "\n".join(op.text().splitlines()[-40:]))
    cp.kubectl("delete", "namespace", NS1, NS2, NS3, NS4, "--wait=false", "--ignore-not-found", check=False)
    cp.kubectl("delete", "node", D1, D2, D3, B1, B2, B3, "--ignore-not-found", check=False)


# --------------------------------------------------------------------------
# Compiled NodeStates, exactly
# --------------------------------------------------------------------------

def _labels(node_, vs_ns, vs_name):
    return {C.LABEL_NODE: node_, C.LABEL_VS_NAMESPACE: vs_ns, C.LABEL_VS_NAME: vs_name,
            C.LABEL_MANAGED_BY: C.MANAGED_BY}


def expected_methods() -> dict[str, dict]:
    """NodeState name -> spec, for the five services of test_methods."""
    nat = {"name": f"{NS1}/nat", "protocol": "tcp", "address": "192.168.10.1", "port": 80, "scheduler": "rr",
           "dests": [{"address": "10.10.0.51", "port": 8080, "weight": 1, "method": "nat"},
                     {"address": "10.10.0.52", "port": 8080, "weight": 2, "method": "nat"}]}
    dr = {"name": f"{NS1}/dr", "protocol": "tcp", "address": "192.168.10.2", "port": 443, "scheduler": "wlc",
          "persistence": {"timeout": 600},
          "dests": [{"address": "10.10.0.51", "port": 443, "weight": 1, "method": "dr"},
                    {"address": "10.10.0.53", "port": 443, "weight": 1, "method": "dr"}]}
    tun = {"name": f"{NS1}/tun", "protocol": "tcp", "address": "192.168.10.3", "port": 80, "scheduler": "wlc",
           "dests": [{"address": "10.20.0.10", "port": 80, "weight": 1, "method": "tun"},
                     {"address": "10.20.0.11", "port": 80, "weight": 1, "method": "tun",
                      "tunnel": {"type": "gue", "port": 6080}}]}
    fw = {"name": f"{NS1}/fw", "fwmark": 1001, "family": "ipv4", "scheduler": "rr", "persistence": {"timeout": 300},
          "dests": [{"address": "10.10.0.51", "port": 0, "weight": 1, "method": "dr"},
                    {"address": "10.10.0.52", "port": 0, "weight": 1, "method": "dr"}]}
    v6 = {"name": f"{NS1}/v6", "protocol": "udp", "address": "2001:db8:10::1", "port": 53, "scheduler": "mh",
          "schedulerFlags": ["mh-fallback", "mh-port"], "onePacket": True,
          "healthCheck": {"type": "tcp", "port": 53, "path": "/", "expectedStatus": 200, "interval": 2,
                          "timeout": 1, "rise": 2, "fall": 3},
          "dests": [{"address": "fd00:10::51", "port": 53, "weight": 1, "method": "tun"},
                    {"address": "fd00:10::52", "port": 53, "weight": 3, "method": "tun"}]}
    out: dict[str, dict] = {}
    for svc, vip in ((nat, "192.168.10.1"), (dr, "192.168.10.2"), (tun, "192.168.10.3"), (fw, None),
                     (v6, "2001:db8:10::1")):
        short = svc["name"].split("/")[1]
        for d in (D1, D2):
            spec = {"node": d, "services": [svc]}
            if vip:
                spec["directorAddresses"] = [{"address": vip}]
            out[f"{d}-{NS1}-{short}"] = spec
    # NAT with natReturn policy-route: the backends route replies via both directors.
    out[f"{B1}-{NS1}-nat"] = {"node": B1, "services": [], "replyRoutes": [
        {"address": "10.10.0.51", "port": 8080, "protocol": "tcp", "via": ["10.10.0.30", "10.10.0.31"]}]}
    out[f"{B2}-{NS1}-nat"] = {"node": B2, "services": [], "replyRoutes": [
        {"address": "10.10.0.52", "port": 8080, "protocol": "tcp", "via": ["10.10.0.30", "10.10.0.31"]}]}
    # DR: the VIP on lo of each backend node.
    out[f"{B1}-{NS1}-dr"] = {"node": B1, "services": [], "backendVips": [{"address": "192.168.10.2", "method": "dr"}]}
    out[f"{B3}-{NS1}-dr"] = {"node": B3, "services": [], "backendVips": [{"address": "192.168.10.2", "method": "dr"}]}
    # TUN: ipip on B2, GUE on B3 (its RealServer overrides the tunnel).
    out[f"{B2}-{NS1}-tun"] = {"node": B2, "services": [], "backendVips": [{"address": "192.168.10.3", "method": "tun"}]}
    out[f"{B3}-{NS1}-tun"] = {"node": B3, "services": [],
                              "backendVips": [{"address": "192.168.10.3", "method": "tun", "tunnelType": "gue",
                                               "tunnelPort": 6080}]}
    out[f"{B1}-{NS1}-v6"] = {"node": B1, "services": [],
                             "backendVips": [{"address": "2001:db8:10::1", "method": "tun"}]}
    out[f"{B2}-{NS1}-v6"] = {"node": B2, "services": [],
                             "backendVips": [{"address": "2001:db8:10::1", "method": "tun"}]}
    return out


def test_methods_compile_to_exact_nodestates(env):
    env.apply(
        pool(f"lvs-methods-{RUN}", ["192.168.10.0/24", "2001:db8:10::/64"], [NS1], fwmarks=[(1000, 1099)]),
        vs(NS1, "nat", address="192.168.10.1", port=80, protocol="tcp", scheduler="rr", method="nat",
           natReturn="policy-route"),
        rs(NS1, "nat-1", "nat", "10.10.0.51", port=8080, nodeName=B1),
        rs(NS1, "nat-2", "nat", "10.10.0.52", port=8080, weight=2, nodeName=B2),
        vs(NS1, "dr", address="192.168.10.2", port=443, method="dr", persistence={"timeout": 600}),
        rs(NS1, "dr-1", "dr", "10.10.0.51", nodeName=B1),
        rs(NS1, "dr-3", "dr", "10.10.0.53", nodeName=B3),
        vs(NS1, "tun", address="192.168.10.3", port=80, method="tun"),
        rs(NS1, "tun-1", "tun", "10.20.0.10", nodeName=B2),
        rs(NS1, "tun-2", "tun", "10.20.0.11", nodeName=B3, tunnel={"type": "gue", "port": 6080}),
        vs(NS1, "fw", fwmark=1001, scheduler="rr", method="dr", persistence={}),
        rs(NS1, "fw-1", "fw", "10.10.0.51"),
        rs(NS1, "fw-2", "fw", "10.10.0.52", port=0),
        vs(NS1, "v6", address="2001:db8:10::1", port=53, protocol="udp", scheduler="mh",
           schedulerFlags=["mh-fallback", "mh-port"], method="tun", onePacket=True,
           healthCheck={"type": "tcp", "port": 53, "interval": 2, "timeout": 1}),
        rs(NS1, "v6-1", "v6", "fd00:10::51", nodeName=B1),
        rs(NS1, "v6-2", "v6", "fd00:10::52", nodeName=B2, weight=3),
    )
    want = expected_methods()

    def specs():
        got = env.nodestates(**{C.LABEL_VS_NAMESPACE: NS1})
        return {n: o["spec"] for n, o in got.items()}
    got: dict = {}
    try:  # the operator may pass through partial states while the objects arrive
        wait_for(lambda: got.clear() or got.update(specs()) or got == want, 30, "the NodeStates of the 5 services")
    except AssertionError:
        pass
    assert sorted(got) == sorted(want)
    for name in sorted(want):
        assert got[name] == want[name], name
    objs = env.nodestates(**{C.LABEL_VS_NAMESPACE: NS1})
    for name, o in objs.items():
        node_, vs_name = o["spec"]["node"], name[len(o["spec"]["node"]) + len(NS1) + 2:]
        assert o["metadata"]["labels"] == _labels(node_, NS1, vs_name)
        assert o["metadata"]["annotations"][C.ANNOTATION_VIRTUALSERVICE] == f"{NS1}/{vs_name}"
    assert not any(o["spec"]["node"] == D3 for o in objs.values())  # not selected as a director
    st = env.get(C.VIRTUALSERVICE_PLURAL, NS1, "v6")["status"]
    assert (st["service"], st["directors"], st["protocol"]) == ("udp:[2001:db8:10::1]:53", "0/2", "udp")
    assert env.get(C.VIRTUALSERVICE_PLURAL, NS1, "fw")["status"]["service"] == "fwm:1001"


def test_one_realserver_change_rewrites_only_its_nodestates(env):
    before = {n: o["metadata"]["resourceVersion"] for n, o in env.nodestates().items()}
    env.cp.kubectl("patch", "realservers.lvs.kube-lvs.io", "dr-3", "-n", NS1, "--type=merge",
                   "-p", json.dumps({"spec": {"weight": 5}}))

    def updated():
        for d in (D1, D2):
            dests = env.nodestates()[f"{d}-{NS1}-dr"]["spec"]["services"][0]["dests"]
            if [x["weight"] for x in dests] != [1, 5]:
                return False
        return True
    wait_for(updated, 20, "the directors of dr to get weight 5")
    time.sleep(1.5)  # let any other (wrong) write land
    after = {n: o["metadata"]["resourceVersion"] for n, o in env.nodestates().items()}
    assert set(after) == set(before)
    assert sorted(n for n in after if after[n] != before[n]) == sorted([f"{D1}-{NS1}-dr", f"{D2}-{NS1}-dr"])


# --------------------------------------------------------------------------
# Conflicts and pools
# --------------------------------------------------------------------------

def test_conflict_and_pool_denial_show_in_status(env):
    env.apply(pool(f"lvs-teams-{RUN}", ["192.168.20.0/24"], [NS2, NS3]),
              vs(NS2, "first", address="192.168.20.1", port=80))
    wait_for(lambda: f"{D1}-{NS2}-first" in env.nodestates(), 20, "the first VirtualService to be programmed")
    time.sleep(1.1)  # creationTimestamp has one-second resolution: make "second" younger
    env.apply(vs(NS3, "second", address="192.168.20.1", port=80),
              vs(NS2, "outside", address="203.0.113.9", port=80))

    def conflicted():
        c = env.conditions(C.VIRTUALSERVICE_PLURAL, NS3, "second")
        return c if c.get("Conflict", {}).get("status") == "True" else None
    c = wait_for(conflicted, 20, "Conflict=True on the younger VirtualService")
    assert f"{NS2}/first" in c["Conflict"]["message"] and "tcp:192.168.20.1:80" in c["Conflict"]["message"]
    assert (c["Accepted"]["status"], c["Accepted"]["reason"]) == ("False", "Conflict")
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Conflict")
    win = env.conditions(C.VIRTUALSERVICE_PLURAL, NS2, "first")
    assert win["Conflict"]["status"] == "False" and f"{NS3}/second" in win["Conflict"]["message"]
    ev = wait_for(lambda: [e for e in env.events(NS3) if e["regarding"]["name"] == "second"], 10, "a Warning event")
    assert [(e["type"], e["reason"]) for e in ev] == [("Warning", "Conflict")]
    assert f"{NS2}/first" in ev[0]["note"]

    def denied():
        c = env.conditions(C.VIRTUALSERVICE_PLURAL, NS2, "outside")
        return c if c.get("Accepted", {}).get("reason") == "NoPool" else None
    c = wait_for(denied, 20, "NoPool on the VirtualService outside every pool")
    msg = c["Accepted"]["message"]
    assert "203.0.113.9" in msg and f"vippools.{C.GROUP}" in msg and NS2 in msg
    assert c["Programmed"]["status"] == "False"
    assert not [n for n in env.nodestates() if n.endswith(f"-{NS2}-outside") or n.endswith(f"-{NS3}-second")]
    assert [e["reason"] for e in env.events(NS2) if e["regarding"]["name"] == "outside"] == ["NoPool"]

    # The admin opens a pool: the service is programmed. The winner goes: the loser takes over.
    env.apply(pool(f"lvs-extra-{RUN}", ["203.0.113.9"], [NS2]))
    wait_for(lambda: f"{D2}-{NS2}-outside" in env.nodestates(), 20, "outside to be programmed")
    # NodeStates are written before statuses: wait for the status too.
    wait_for(lambda: env.conditions(C.VIRTUALSERVICE_PLURAL, NS2, "outside").get("Accepted", {}).get("status")
             == "True", 20, "outside to be Accepted")
    env.cp.kubectl("delete", "virtualservices.lvs.kube-lvs.io", "first", "-n", NS2)
    wait_for(lambda: {f"{D1}-{NS3}-second", f"{D2}-{NS3}-second"} <= set(env.nodestates())
             and f"{D1}-{NS2}-first" not in env.nodestates(), 20, "second to take over")
    c = wait_for(lambda: (lambda c: c if c.get("Conflict", {}).get("status") == "False" else None)(
        env.conditions(C.VIRTUALSERVICE_PLURAL, NS3, "second")), 20, "second's Conflict to clear")
    assert c["Conflict"]["status"] == "False" and c["Accepted"]["status"] == "True"


# --------------------------------------------------------------------------
# Agent reports -> status columns
# --------------------------------------------------------------------------

def _agent_report(env, name, dests):
    o = env.nodestates()[name]
    key = "tcp:192.168.30.1:80"
    status = {"observedGeneration": o["metadata"]["generation"], "appliedAt": "2026-11-24T12:00:00Z",
              "services": [{"key": key, "programmed": True, "error": ""}],
              "dests": [{"service": key, "address": a, "port": 80, "health": h, "weight": w,
                         "activeConns": act, "inactiveConns": ina} for a, h, w, act, ina in dests],
              "conditions": [{"type": "Programmed", "status": "True", "reason": "Applied",
                              "message": "all services programmed", "observedGeneration": o["metadata"]["generation"],
                              "lastTransitionTime": "2026-11-24T12:00:00Z"}]}
    env.api.patch_namespaced_custom_object_status(C.GROUP, C.VERSION, OPNS, C.NODESTATE_PLURAL, name,
                                                  {"status": status})


def test_simulated_agent_reports_aggregate_into_kubectl_columns(env):
    env.apply(pool(f"lvs-reports-{RUN}", ["192.168.30.0/24"], [NS4]),
              vs(NS4, "web", address="192.168.30.1", port=80, scheduler="wrr"),
              rs(NS4, "a", "web", "10.30.0.1", weight=2), rs(NS4, "b", "web", "10.30.0.2"),
              rs(NS4, "c", "web", "10.30.0.3", weight=0))
    names = [f"{D1}-{NS4}-web", f"{D2}-{NS4}-web"]
    # Report on the final spec (the operator may have written it before all three RealServers existed).
    wait_for(lambda: all(len(env.nodestates()[n]["spec"]["services"][0]["dests"]) == 3 for n in names), 20,
             "the reports NodeStates with their three dests")
    _agent_report(env, names[0], [("10.30.0.1", "Healthy", 2, 3, 1), ("10.30.0.2", "Unhealthy", 0, 0, 4),
                                  ("10.30.0.3", "Draining", 0, 1, 0)])
    _agent_report(env, names[1], [("10.30.0.1", "Healthy", 2, 4, 2), ("10.30.0.2", "Healthy", 1, 1, 0),
                                  ("10.30.0.3", "Draining", 0, 0, 0)])

    # NAME VIRTUALSERVICE ADDRESS PORT WEIGHT METHOD HEALTH ACTIVE INACTIVE AGE
    want = {"a": ["a", "web", "10.30.0.1", "80", "2", "nat", "Healthy", "7", "3"],
            "b": ["b", "web", "10.30.0.2", "80", "1", "nat", "Unhealthy", "1", "4"],
            "c": ["c", "web", "10.30.0.3", "80", "0", "nat", "Draining", "1", "0"]}
    table: dict = {}

    def rows():
        out = env.cp.kubectl("get", "realservers", "-n", NS4, "--no-headers").stdout
        table.clear()
        table.update({line.split()[0]: line.split()[:9] for line in out.splitlines() if line.strip()})
        return table == want
    try:
        wait_for(rows, 20, "both directors' reports in the columns")
    except AssertionError:
        pass
    assert table == want  # the difference, if it never got there

    def vs_row():
        out = env.cp.kubectl("get", f"virtualservices.{C.GROUP}", "-n", NS4, "--no-headers").stdout.split()
        return out if out[6:8] == ["2/2", "1/3"] else None
    out = wait_for(vs_row, 20, "the Directors and RealServers columns")
    # NAME VIP PORT PROTOCOL SCHEDULER METHOD DIRECTORS REALSERVERS AGE
    assert out[:8] == ["web", "192.168.30.1", "80", "tcp", "wrr", "nat", "2/2", "1/3"]
    c = env.conditions(C.VIRTUALSERVICE_PLURAL, NS4, "web")
    assert c["Programmed"]["status"] == "True" and c["Ready"]["status"] == "True"
    b = env.get(C.REALSERVER_PLURAL, NS4, "b")["status"]
    assert [(d["node"], d["health"]) for d in b["directors"]] == [(D1, "Unhealthy"), (D2, "Healthy")]
    listed = env.cp.kubectl("get", "kube-lvs", "-n", NS4, "-o", "name").stdout.split()
    # The category lists every kind of ours (the cluster-scoped VIPPools too).
    assert {f"virtualservice.{C.GROUP}/web"} | {f"realserver.{C.GROUP}/{n}" for n in "abc"} <= set(listed)
    assert f"vippool.{C.GROUP}/lvs-reports-{RUN}" in listed


# --------------------------------------------------------------------------
# Restarts, replicas, deletion
# --------------------------------------------------------------------------

def test_second_replica_waits_and_a_restart_rewrites_nothing(env):
    a = env.operators[0]
    b = env.start_operator("op-b")
    wait_for(b.healthy, 30, "op-b's liveness endpoint")
    time.sleep(3)  # op-b has listed everything and tried the Lease at least once
    assert env.lease_holder() == "op-a"
    assert "acquired leadership" not in b.text()
    before = env.rvs([NS1, NS2, NS3, NS4])
    assert a.stop() == 0  # SIGTERM: op-a releases the Lease on the way out
    wait_for(lambda: env.lease_holder() == "op-b", 15, "op-b to take the Lease over")
    wait_for(lambda: "first full pass as leader" in b.text(), 20, "op-b's first pass")
    time.sleep(1.0)
    assert "first full pass as leader: 0 write(s)" in b.text(), b.text()[-2000:]
    assert env.rvs([NS1, NS2, NS3, NS4]) == before
    assert "created NodeState" not in b.text() and "deleted NodeState" not in b.text()
    # op-b now does the work.
    env.apply(rs(NS4, "d", "web", "10.30.0.4"))
    wait_for(lambda: len(env.nodestates()[f"{D1}-{NS4}-web"]["spec"]["services"][0]["dests"]) == 4, 20,
             "op-b to program the new real server")
    wait_for(lambda: "updated NodeState" in b.text(), 10, "op-b's log of that write")  # the log is flushed apart


def test_deleting_a_virtualservice_removes_everything_it_produced(env):
    mine = {n for n in env.nodestates() if f"-{NS1}-tun" in n}
    assert mine == {f"{D1}-{NS1}-tun", f"{D2}-{NS1}-tun", f"{B2}-{NS1}-tun", f"{B3}-{NS1}-tun"}
    others = {n: o["metadata"]["resourceVersion"] for n, o in env.nodestates().items() if n not in mine}
    env.cp.kubectl("delete", f"virtualservices.{C.GROUP}", "tun", "-n", NS1)
    wait_for(lambda: not mine & set(env.nodestates()), 20, "the tun NodeStates to go")
    time.sleep(1.0)
    assert {n: o["metadata"]["resourceVersion"] for n, o in env.nodestates().items()} == others
    c = wait_for(lambda: (env.conditions(C.REALSERVER_PLURAL, NS1, "tun-1").get("Accepted", {}).get("reason")
                          == "VirtualServiceNotFound"), 20, "the orphaned RealServer's condition")
    assert c
    # A whole namespace going takes its NodeStates with it.
    env.cp.kubectl("delete", "namespace", NS4, "--wait=false")
    wait_for(lambda: not [n for n in env.nodestates() if f"-{NS4}-" in n], 60, "the namespace's NodeStates to go")


def test_operator_rbac_is_least_privilege(env):
    def can(*args):
        r = env.cp.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{OPNS}:{SA}", check=False)
        return r.stdout.strip() == "yes"
    assert can("list", f"virtualservices.{C.GROUP}", "-A")
    assert can("patch", f"virtualservices.{C.GROUP}", "--subresource=status", "-n", NS1)
    assert can("create", f"nodestates.{C.GROUP}", "-n", OPNS)
    assert can("update", "leases.coordination.k8s.io/kube-lvs-operator", "-n", OPNS)
    assert not can("get", "secrets", "-n", OPNS)
    assert not can("list", "secrets", "-A")
    # It writes the VirtualServices and RealServers it derives from Services (issue 19); the
    # tenants' own stay out of its reach by admission policy (tests/cluster/test_services.py).
    assert not can("patch", f"virtualservices.{C.GROUP}", "-n", NS1)
    assert not can("delete", f"vippools.{C.GROUP}")
    assert not can("create", f"nodestates.{C.GROUP}", "-n", "default")  # only in its own namespace
    assert not can("update", "leases.coordination.k8s.io/someone-else", "-n", OPNS)
    assert not can("create", "pods", "-n", OPNS)
