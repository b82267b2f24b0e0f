"""A real Prometheus (Debian's package) scrapes the agent, and every PromQL
query README documents returns the series and values known traffic must give.

The agent runs in the director's namespace in the lab VM, its metrics on that
namespace's 127.0.0.1 (as the DaemonSet's hostNetwork puts them on the node's),
so Prometheus runs in the same namespace and its HTTP API is asked from there.
A VirtualService of its own (192.168.0.30:81, rr over the NAT topology's two
real servers) gets 10 connections, then one real server fails its checks and
comes back. The queries come from README's ```promql block: a query added
there without a check here fails, and so does one whose metric the agent does
not export (there was no such block, and no Prometheus, before).

Named test_zz_* to run after test_system.py on the session's system; builds
the NAT topology and the agent itself when run alone. Removes what it made.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Callable

import pytest

from lvs_e2e.system import GUEST_RUN, wait_until

REPO = Path(__file__).resolve().parents[2]
NETNS, NODE = "nat-director", "nat-director"
# A port no other e2e test uses: IPVS reuses a deleted dest (with its
# counters) when the same one is added again soon after.
VIP, PORT = "192.168.0.30", 82
SERVICE = f"tcp:{VIP}:{PORT}"
DESTS = {"rs1": "10.0.0.51:80", "rs2": "10.0.0.52:80"}
METRICS_PORT, PROM_PORT = 9477, 9090
NAMESPACE = "metrics-e2e"
LABEL = "e2e.kube-lvs.io/metrics"
CONNECTIONS = 10
PROM_DIR = f"{GUEST_RUN}/prometheus"

OBJECTS = f"""
apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: lvs.kube-lvs.io/v1alpha1
kind: VIPPool
metadata: {{name: {NAMESPACE}}}
spec:
  addresses: ["{VIP}/32"]
  namespaces: ["{NAMESPACE}"]
  realServerAddresses: ["10.0.0.0/24"]
  directorNodeSelector: {{matchLabels: {{{LABEL}: director}}}}
---
apiVersion: lvs.kube-lvs.io/v1alpha1
kind: VirtualService
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  address: {VIP}
  port: {PORT}
  protocol: tcp
  scheduler: rr
  method: nat
  natReturn: gateway
  directorSelector: {{matchLabels: {{{LABEL}: director}}}}
  healthCheck: {{type: http, path: /, expectedStatus: 200, interval: 2, timeout: 1, rise: 2, fall: 2}}
""" + "".join(f"""---
apiVersion: lvs.kube-lvs.io/v1alpha1
kind: RealServer
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec: {{virtualService: web, address: {dest.split(':')[0]}, port: 80, weight: 1}}
""" for name, dest in DESTS.items())


def readme_queries() -> dict[str, str]:
    """README's ```promql block: title (the comment line) -> query."""
    block = re.search(r"```promql\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no ```promql block"
    out, title = {}, None
    for line in block.group(1).splitlines():
        if line.startswith("# "):
            title = line[2:].strip()
        elif line.strip():
            assert title and title not in out, f"README promql: a query without a title of its own: {line}"
            out[title] = line.strip()
            title = None
    return out


# ---------------------------------------------------------------- the VM side

def prom_query(system, query: str) -> list[dict]:
    """Prometheus's instant query result (a vector), asked inside the namespace."""
    out = system.g("ip", "netns", "exec", NETNS, "curl", "-sf", "--max-time", "20", "-G",
                   f"http://127.0.0.1:{PROM_PORT}/api/v1/query", "--data-urlencode", f"query={query}")
    body = json.loads(out)
    assert body["status"] == "success", body
    return body["data"]["result"]


def by(result: list[dict], *labels: str) -> dict[tuple, float]:
    """{(label values...): value} of a vector, for our service only where it has one."""
    return {tuple(r["metric"].get(k, "") for k in labels): float(r["value"][1]) for r in result
            if r["metric"].get("service", SERVICE) == SERVICE}


def kernel_stats(system) -> dict[str, dict[str, int]]:
    """ipvsadm's exact counters of our service ("service") and each dest."""
    out = system.ipvsadm(NETNS, "-Ln", "--stats", "--exact", "-t", f"{VIP}:{PORT}")
    keys = ("conns", "inpkts", "outpkts", "inbytes", "outbytes")
    stats = {}
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "TCP":
            stats["service"] = dict(zip(keys, map(int, f[2:7])))
        elif f and f[0] == "->" and f[1][0].isdigit():
            stats[f[1]] = dict(zip(keys, map(int, f[2:7])))
    return stats


def agent_metrics(system) -> str:
    return system.g("ip", "netns", "exec", NETNS, "curl", "-sf", "--max-time", "10",
                    f"http://127.0.0.1:{METRICS_PORT}/metrics")


def healthy_line(dest: str) -> str:
    return f'kube_lvs_dest_health{{dest="{dest}",service="{SERVICE}",state="Healthy"}} 1.0'


def ensure_agent_and_servers(system) -> None:
    if "nat" not in system.topologies:
        system.build_topology("nat")
    for rs in DESTS:
        if not system.ctl.alive(f"server-nat-{rs}"):
            system.start_server("nat", rs)
    alive = system.ctl.alive(f"agent-{NODE}")
    try:
        if alive:
            agent_metrics(system)
            return
    except Exception:  # noqa: BLE001 - running without metrics: restart it with them
        system.stop_agent(NODE)
    system.start_agent(NODE, NETNS, metrics_port=METRICS_PORT)


def start_prometheus(system) -> None:
    config = (f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
              f"scrape_configs:\n- job_name: kube-lvs-agent\n"
              f"  static_configs: [{{targets: ['127.0.0.1:{METRICS_PORT}'], labels: {{node: {NODE}}}}}]\n")
    system.g("sh", "-c", f"rm -rf {PROM_DIR} && mkdir -p {PROM_DIR}/data && "
                         f"printf %s {shlex.quote(config)} > {PROM_DIR}/prometheus.yml")
    system.ctl.spawn("prometheus", ["ip", "netns", "exec", NETNS, "prometheus",
                                    f"--config.file={PROM_DIR}/prometheus.yml",
                                    f"--storage.tsdb.path={PROM_DIR}/data",
                                    f"--web.listen-address=127.0.0.1:{PROM_PORT}"],
                     log=f"{GUEST_RUN}/prometheus.log")
    wait_until("Prometheus scraping the agent",
               lambda: by(prom_query(system, 'up{job="kube-lvs-agent"}')) == {(): 1.0},
               timeout=300, every=2)


# ---------------------------------------------------------------- the checks

Check = Callable[[list[dict], dict], None]


def _rate_positive(*labels: str, want: set[tuple]) -> Check:
    def check(result, kernel):
        got = by(result, *labels)
        assert want <= set(got) and all(got[k] > 0 for k in want), got
    return check


def _equals_kernel(labels: tuple[str, ...], expected: Callable[[dict], dict[tuple, float]]) -> Check:
    def check(result, kernel):
        want = expected(kernel)
        got = {k: v for k, v in by(result, *labels).items() if k in want}
        assert got == want, (got, want)
    return check


DIRS = ("in", "out")
CHECKS: dict[str, Check] = {
    "Connections per second, per service":
        _rate_positive("service", want={(SERVICE,)}),
    "Connections each real server got since its service was programmed":
        _equals_kernel(("service", "dest"), lambda k: {(SERVICE, d): k[d]["conns"] for d in DESTS.values()}),
    "Packets in and out per service since it was programmed":
        _equals_kernel(("service", "direction"),
                       lambda k: {(SERVICE, x): k["service"][f"{x}pkts"] for x in DIRS}),
    "Bytes per second in and out, per real server":
        _rate_positive("service", "dest", "direction", want={(SERVICE, d, x) for d in DESTS.values() for x in DIRS}),
    "Bytes in and out per real server since its service was programmed":
        _equals_kernel(("service", "dest", "direction"),
                       lambda k: {(SERVICE, d, x): k[d][f"{x}bytes"] for d in DESTS.values() for x in DIRS}),
}


def test_prometheus_scrapes_the_agent_and_the_documented_queries_hold(system):
    queries = readme_queries()
    flips, failing, reconcile = (queries.get(t) for t in (
        "Health flips per real server in the last hour", "Real servers failing their health checks now",
        "How long the agent's last reconcile took, in seconds"))
    assert set(queries) == set(CHECKS) | {"Health flips per real server in the last hour",
                                          "Real servers failing their health checks now",
                                          "How long the agent's last reconcile took, in seconds"}, \
        "each README query needs its check here"
    ensure_agent_and_servers(system)
    system.kubectl("label", "node", NODE, f"{LABEL}=director", "--overwrite")
    system.kubectl("apply", "-f", "-", input=OBJECTS)
    try:
        wait_until("both real servers healthy in the agent's metrics",
                   lambda: all(healthy_line(d) in agent_metrics(system) for d in DESTS.values()),
                   timeout=240, every=2)
        # Prometheus starts once both are healthy: its first samples are the
        # steady state, so a flip it counts is one the test made.
        start_prometheus(system)
        names = system.requests("nat", VIP, CONNECTIONS, port=PORT)
        assert sorted(names) == ["rs1"] * 5 + ["rs2"] * 5, names  # rr: 5 each
        # The kernel folds its per-CPU counters into the totals on its rate
        # estimator's tick (every 2 s): read them once they hold all 10.
        kernel = wait_until("the kernel counting the 10 connections",
                            lambda: (k := kernel_stats(system))["service"]["conns"] == CONNECTIONS and k,
                            timeout=60, every=1)
        assert all(kernel[d]["conns"] == 5 for d in DESTS.values()) and kernel["service"]["outpkts"] > 0, kernel

        def holds(title: str) -> bool:
            # The kernel read again each time: a connection's last packets
            # may still be counted after the client is done.
            CHECKS[title](prom_query(system, queries[title]), kernel_stats(system))
            return True
        for title in CHECKS:
            wait_until(f"README query {title!r}", lambda: holds(title), timeout=120, every=2)
        assert by(prom_query(system, queries["Connections each real server got since its service was programmed"]),
                  "dest") == {(d,): 5.0 for d in DESTS.values()}
        assert prom_query(system, failing) == [] or by(prom_query(system, failing)) == {}
        reconciles = prom_query(system, reconcile)
        assert len(reconciles) == 1 and float(reconciles[0]["value"][1]) >= 0, reconciles

        # rs2 fails its checks and comes back: one flip each way.
        system.stop_server("nat", "rs2")
        wait_until("rs2 failing, seen by Prometheus",
                   lambda: set(by(prom_query(system, failing), "dest")) == {(DESTS["rs2"],)}, timeout=120, every=2)
        system.start_server("nat", "rs2")
        wait_until("rs2 back, seen by Prometheus", lambda: by(prom_query(system, failing)) == {},
                   timeout=120, every=2)
        wait_until("two flips for rs2, none for rs1",
                   lambda: by(prom_query(system, flips), "dest") == {(DESTS["rs1"],): 0.0, (DESTS["rs2"],): 2.0},
                   timeout=60, every=2)
    finally:
        if system.ctl.alive("prometheus"):
            system.ctl.signal("prometheus")
        if not system.ctl.alive("server-nat-rs2"):
            system.start_server("nat", "rs2")
        system.kubectl("delete", "-f", "-", "--ignore-not-found", "--wait=false", input=OBJECTS, check=False)
        system.kubectl("label", "node", NODE, f"{LABEL}-", check=False)


@pytest.fixture(autouse=True)
def _prometheus_installed():
    if not Path("/usr/bin/prometheus").exists():
        pytest.fail("prometheus is not installed: run bash lab/setup.sh (it installs Debian's package)")
