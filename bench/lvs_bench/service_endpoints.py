"""Issue 19's scale part: a Service with E endpoints behind one VirtualService
(host only: real API server and operator, no agent).

For each size E: a fresh control plane with kube-lvs installed, D director
Nodes, a Service without a selector whose EndpointSlices (100 endpoints each,
as kube-controller-manager cuts them) list E endpoints, a VirtualService
backed by it, and beside it a VirtualService with E hand-written RealServers.
Then the operator starts and is measured:

- time until both services' NodeStates list all E dests on every director;
- C endpoint changes, one at a time (an endpoint turns terminating: one
  EndpointSlice rewritten): latency until every director's NodeState holding
  that dest shows weight 0 for it, and the NodeStates written per change
  (every NodeState's resourceVersion before and after; target: one per
  director);
- the same C changes made through a hand-written RealServer (weight patched
  to 0), side by side;
- how many NodeStates each director gets for the service (above 1,000 dests
  its shards, ``lvs_operator.shards``) and the largest one's size: what one
  change rewrites.

The kernel half (``--kernel``, lab VM): the whole system of the e2e tier
(control plane and operator on the host, the ``nat`` topology's director and
its agent in the VM), the same two services at E endpoints, and C changes of
each kind timed from the host's write until the dest's weight 0 is in the
director's IPVS table. Detection as in part 5 (``end_to_end``): a watcher per
service in the guest reads that service over IPVS netlink every
``WATCH_EVERY`` seconds and logs each dest whose weight changed with the
guest's clock, mapped to the host's by a measured offset.

``python -m lvs_bench.service_endpoints`` writes bench/results/service_endpoints.*
(``--kernel``: service_endpoints_kernel.*).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from . import report as R
from .end_to_end import percentile
from .operator_scale import (BENCH_NS, DIRECTOR_LABEL, GROUP, OPERATOR_SA, OPNS, REPO, VERSION, Api, Operator,
                             _wait, create_many, log)

SLICE = 100
FULL_SIZES = (1000, 10000)
SMOKE_SIZES = (20, 1500)  # one NodeState per director, then shards


def endpoint(k: int) -> str:
    return f"10.{96 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"


def hand_address(k: int) -> str:
    return f"10.{112 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}"


def slice_body(s: int, e: int, terminating: frozenset[int] = frozenset()) -> dict:
    eps = []
    for k in range(s * SLICE, min(e, (s + 1) * SLICE)):
        cond = ({"ready": False, "serving": True, "terminating": True} if k in terminating else {"ready": True})
        eps.append({"addresses": [endpoint(k)], "conditions": cond})
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"app-{s}", "namespace": BENCH_NS, "labels": {"kubernetes.io/service-name": "app"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": eps}


def vs_body(name: str, address: str, backend: bool) -> dict:
    spec: dict[str, Any] = {"address": address, "port": 80, "protocol": "tcp", "scheduler": "wlc", "method": "nat",
                            "natReturn": "snat", "healthCheck": {"type": "none"},
                            "directorSelector": {"matchLabels": {DIRECTOR_LABEL: "true"}}}
    if backend:
        spec["backend"] = {"service": "app", "portName": "http"}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": BENCH_NS}, "spec": spec}


def columns() -> list[R.Column]:
    return [
        R.Column("endpoints", "endpoints", "int"),
        R.Column("directors", "directors", "int"),
        R.Column("first_sync", "all dests in NodeStates (both services)", "sec"),
        R.Column("settled", "statuses settled", "sec"),
        R.Column("shards", "NodeStates per director", "int"),
        R.Column("nodestate_kib", "largest NodeState (KiB)", "int"),
        R.Column("ep_p50", "endpoint change to NodeState p50", "sec"),
        R.Column("ep_p99", "endpoint change p99", "sec"),
        R.Column("ep_writes", "NodeStates written per endpoint change", "int"),
        R.Column("rs_p50", "RealServer change to NodeState p50", "sec"),
        R.Column("rs_p99", "RealServer change p99", "sec"),
        R.Column("rs_writes", "NodeStates written per RealServer change", "int"),
    ]


def settle(api: Api, timeout: float, window: float = 5.0) -> float:
    """When the RealServers' statuses (the operator writes them) stopped
    changing: no resourceVersion moved over ``window``."""
    prev, t_prev, deadline = None, time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        cur = api.versions("realservers", BENCH_NS)
        if cur == prev:
            return t_prev
        prev, t_prev = cur, t
        time.sleep(window)
    raise TimeoutError(f"RealServer statuses still changing after {timeout:.0f}s")


def _nodestates(api: Api, vs: str) -> list[dict]:
    """Every NodeState compiled from VirtualService ``vs`` (all directors, all shards)."""
    from lvs_model import channel as C
    r = api._co().list_namespaced_custom_object(GROUP, VERSION, OPNS, "nodestates", _preload_content=False,
                                                label_selector=f"{C.LABEL_VS_NAME}={vs}")
    return json.loads(r.data)["items"]


def _dest_weights(objs: list[dict], node: str | None = None) -> dict[str, int]:
    return {d["address"]: d["weight"] for o in objs if node is None or o["spec"].get("node") == node
            for s in o["spec"]["services"] for d in s.get("dests", [])}


def _holders(objs: list[dict], address: str, port: int = 8080) -> list[str]:
    """The NodeState on each director that holds ``address`` (its shard's, by the
    operator's own hash): one small object to poll, not the whole service."""
    from lvs_operator import shards as S
    out = []
    for o in objs:
        m = o["metadata"]
        i, _, k = str((m.get("annotations") or {}).get(S.ANNOTATION_SHARD) or "0/1").partition("/")
        if int(k) == 1 or S.bucket(address, port, int(k)) == int(i):
            out.append(m["name"])
    return out


def _weight(api: Api, name: str, address: str) -> int | None:
    o = api.get("nodestates", OPNS, name)
    return _dest_weights([o]).get(address)


def run_size(e: int, directors: int, changes: int, workdir: Path, timeout: float) -> tuple[dict, dict]:
    from kubernetes import client

    from lvs_cluster.control_plane import ControlPlane
    row: dict[str, Any] = {c.key: None for c in columns()}
    row.update(endpoints=e, directors=directors)
    details: dict[str, Any] = {"size": e}
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cp = ControlPlane(workdir / "control-plane")
    op: Operator | None = None
    try:
        cp.start()
        cp.kubectl("apply", "--server-side", "-k", str(REPO / "deploy"))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/virtualservices.lvs.kube-lvs.io",
                   "crd/realservers.lvs.kube-lvs.io", "crd/nodestates.lvs.kube-lvs.io")
        nodes = [f"director{k}" for k in range(directors)]
        cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BENCH_NS}},
                  {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VIPPool", "metadata": {"name": "bench"},
                   "spec": {"addresses": ["10.1.0.0/16"], "namespaces": [BENCH_NS]}},
                  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": BENCH_NS},
                   "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
                  vs_body("backed", "10.1.0.1", True), vs_body("hand", "10.1.0.2", False)]
                 + [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": d, "labels": {DIRECTOR_LABEL: "true"}}}
                    for d in nodes])
        admin = cp.api_client()
        disc = client.DiscoveryV1Api(admin)
        for s in range((e + SLICE - 1) // SLICE):
            disc.create_namespaced_endpoint_slice(BENCH_NS, slice_body(s, e))
        api = Api(cp.admin_kubeconfig)
        create_many(api, [("realservers", BENCH_NS, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RealServer",
            "metadata": {"name": f"hand-{k}", "namespace": BENCH_NS},
            "spec": {"virtualService": "hand", "address": hand_address(k), "port": 8080, "weight": 1}})
            for k in range(e)])
        t_start = time.perf_counter()
        op = Operator(cp.kubeconfig_for_serviceaccount(OPNS, OPERATOR_SA, path=workdir / "operator.kubeconfig"),
                      workdir / "operator.log")

        def synced():
            return all(len(_dest_weights(_nodestates(api, vs), d)) == e for vs in ("backed", "hand") for d in nodes)
        _, row["first_sync"] = _wait("all dests in the NodeStates", synced, timeout, 1.0)
        # Changes are measured in a steady state: once the operator's statuses of the
        # 2E RealServers are written (at 10k its passes until then plan thousands of
        # them again each, seconds per pass, and a change waits for the pass).
        row["settled"] = settle(api, timeout) - t_start
        objs = {vs: _nodestates(api, vs) for vs in ("backed", "hand")}
        row["shards"] = len(objs["backed"]) // directors
        row["nodestate_kib"] = max(len(json.dumps(o)) for o in objs["backed"]) // 1024
        details["nodestates"] = {vs: len(v) for vs, v in objs.items()}

        def measure(change, vs: str, address: str) -> tuple[float, int]:
            names = _holders(objs[vs], address)
            assert len(names) == directors, (vs, address, names)
            before = api.versions("nodestates", OPNS)
            t0 = time.perf_counter()
            change()
            _wait(f"weight 0 for {address}", lambda: all(_weight(api, n, address) == 0 for n in names),
                  60, 0.02)
            took = time.perf_counter() - t0
            time.sleep(0.5)
            after = api.versions("nodestates", OPNS)
            return took, sum(1 for k, v in after.items() if before.get(k) != v)

        ep_t, ep_w, rs_t, rs_w = [], [], [], []
        terminating: set[int] = set()
        for c in range(changes):
            k = (c * 37) % e
            terminating.add(k)
            s = k // SLICE
            body = slice_body(s, e, frozenset(terminating))
            t, w = measure(lambda: disc.replace_namespaced_endpoint_slice(body["metadata"]["name"], BENCH_NS, body),
                           "backed", endpoint(k))
            ep_t.append(t)
            ep_w.append(w)
            t, w = measure(lambda: api.patch("realservers", BENCH_NS, f"hand-{k}", {"spec": {"weight": 0}}),
                           "hand", hand_address(k))
            rs_t.append(t)
            rs_w.append(w)
        row.update(ep_p50=percentile(ep_t, 50), ep_p99=percentile(ep_t, 99), ep_writes=max(ep_w),
                   rs_p50=percentile(rs_t, 50), rs_p99=percentile(rs_t, 99), rs_writes=max(rs_w))
        details.update(endpoint_changes=ep_t, realserver_changes=rs_t, endpoint_writes=ep_w, realserver_writes=rs_w)
        log(f"E={e}: endpoint change p50 {row['ep_p50']:.3f}s p99 {row['ep_p99']:.3f}s ({max(ep_w)} writes); "
            f"RealServer change p50 {row['rs_p50']:.3f}s p99 {row['rs_p99']:.3f}s ({max(rs_w)} writes)")
    except Exception as ex:  # noqa: BLE001 - the report says what failed
        row["first_sync"] = row["first_sync"] if row["first_sync"] is not None else R.error(str(ex)[:300])
        details["error"] = str(ex)
    finally:
        if op is not None:
            details["operator_log_tail"] = op.tail(30)
            op.stop()
        cp.stop()
    return row, details


def run(sizes: list[int], directors: int = 3, changes: int = 20, timeout: float = 1800,
        workdir: Path | None = None) -> tuple[R.Table, dict]:
    workdir = workdir or REPO / "build" / "bench-service-endpoints"
    rows, details = [], []
    for e in sizes:
        r, d = run_size(e, directors, changes, workdir / f"e{e}", timeout)
        rows.append(r)
        details.append(d)
    notes = ["one VirtualService backed by a Service (EndpointSlices of 100), beside one with as many "
             "hand-written RealServers; a change = one endpoint turned terminating (weight 0) / one RealServer "
             "weight patched to 0; latency until the NodeState holding the dest shows it on every director",
             "above 1,000 dests a director's NodeStates for one service are shards (a hash of each dest): "
             "a change rewrites the one holding its dest",
             "no agent here: the kernel half is --kernel (service_endpoints_kernel.*)"]
    table = R.Table("service_endpoints", "Service endpoints (issue 19): endpoint change vs RealServer change",
                    columns(), rows, notes)
    return table, {"details": details}


def _commit() -> str:
    import subprocess
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def write_results(table: R.Table, extra: dict, stem: Path, commit: str) -> None:
    """``stem``.json/.md/.txt in the report's layout (bench/results); ``commit``: the one measured."""
    import platform
    machine = {"host": platform.node(), "cpus": __import__("os").cpu_count(), "commit": commit,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    stem.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(R.report_json([table], machine))
    data["details"] = extra
    stem.with_suffix(".json").write_text(json.dumps(data, indent=1))
    stem.with_suffix(".md").write_text(R.render_report_markdown([table], machine))
    stem.with_suffix(".txt").write_text(R.render_report_text([table], machine))


# ---------------------------------------------------------------------------
# The kernel half: the agent in the lab VM
# ---------------------------------------------------------------------------

K_NS, K_POOL = "bench-se", "bench-se"
VIP_BACKED, VIP_HAND = "10.3.0.1", "10.3.0.2"
WATCH_EVERY = 0.1  # a read of a 10k-dest service is itself a dump of 10k dests in the TCG guest


def kernel_columns() -> list[R.Column]:
    return [
        R.Column("endpoints", "endpoints", "int"),
        R.Column("in_kernel", "all dests of both services in the kernel", "sec"),
        R.Column("settled", "statuses settled", "sec"),
        R.Column("ep_p50", "endpoint change to kernel p50", "sec"),
        R.Column("ep_p99", "endpoint change to kernel p99", "sec"),
        R.Column("ep_max", "endpoint change max", "sec"),
        R.Column("rs_p50", "RealServer change to kernel p50", "sec"),
        R.Column("rs_p99", "RealServer change to kernel p99", "sec"),
        R.Column("rs_max", "RealServer change max", "sec"),
        R.Column("clock_err", "clock offset ±", "sec"),
    ]


def _kernel_dests(system, director: str) -> dict[str, int]:
    """Dests per service (hex VIP:port as /proc/net/ip_vs writes it) in the director's table."""
    from .end_to_end import _ip_vs
    out: dict[str, int] = {}
    svc = None
    for line in _ip_vs(system, director).splitlines():
        p = line.split()
        if len(p) >= 2 and p[0] == "TCP":
            svc = p[1]
            out[svc] = 0
        elif svc and len(p) >= 4 and p[0] == "->":
            out[svc] += 1
    return out


def _k_settle(api: Api, timeout: float, window: float = 5.0) -> float:
    """When the NodeStates (the agent writes their status) and the RealServers
    (the operator does) stopped changing."""
    prev, t_prev, deadline = None, time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        cur = api.versions("nodestates", OPNS), api.versions("realservers", K_NS)
        if cur == prev:
            return t_prev
        prev, t_prev = cur, t
        time.sleep(window)
    raise TimeoutError(f"statuses still changing after {timeout:.0f}s")


def kernel_size(system, e: int, changes: int, timeout: float) -> tuple[dict, dict]:
    """One size on a running System (its nat director and agent up)."""
    from kubernetes import client

    from lvs_e2e.system import wait_until

    from .end_to_end import NETNS, WATCHER, clock_offset, hexkey
    row: dict[str, Any] = {c.key: None for c in kernel_columns()}
    row["endpoints"] = e
    details: dict[str, Any] = {"size": e}
    watchers: list[str] = []
    try:
        t0 = time.perf_counter()
        selector = {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}

        def vs(name: str, address: str, backend: bool) -> dict:
            body = vs_body(name, address, backend)
            body["metadata"]["namespace"] = K_NS
            body["spec"].update(natReturn="gateway", directorSelector=selector)
            return body
        system.cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": K_NS}},
                         {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VIPPool", "metadata": {"name": K_POOL},
                          "spec": {"addresses": ["10.3.0.0/24"], "namespaces": [K_NS]}},
                         {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app", "namespace": K_NS},
                          "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
                         vs("backed", VIP_BACKED, True), vs("hand", VIP_HAND, False)])
        disc = client.DiscoveryV1Api(system.cp.api_client())

        def slice_(s: int, terminating: frozenset[int] = frozenset()) -> dict:
            body = slice_body(s, e, terminating)
            body["metadata"]["namespace"] = K_NS
            return body
        for s in range((e + SLICE - 1) // SLICE):
            disc.create_namespaced_endpoint_slice(K_NS, slice_(s))
        api = Api(system.cp.admin_kubeconfig)
        create_many(api, [("realservers", K_NS, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "RealServer", "metadata": {"name": f"hand-{k}", "namespace": K_NS},
            "spec": {"virtualService": "hand", "address": hand_address(k), "port": 8080, "weight": 1}})
            for k in range(e)])
        keys = {hexkey(VIP_BACKED, 80), hexkey(VIP_HAND, 80)}
        seen = [{}]

        def complete():
            seen[0] = _kernel_dests(system, NETNS)
            return all(seen[0].get(k) == e for k in keys)
        wait_until("both services complete in the director's kernel", complete, timeout, max(2.0, e / 2000))
        row["in_kernel"] = time.perf_counter() - t0
        log(f"E={e}: both services in the kernel after {row['in_kernel']:.1f}s")
        row["settled"] = _k_settle(api, timeout) - t0
        log(f"E={e}: statuses settled after {row['settled']:.1f}s")

        logs = {}
        for name, address in (("backed", VIP_BACKED), ("hand", VIP_HAND)):
            w = f"bench-se-watch-{name}"
            logs[name] = f"/tmp/e2e/{w}.log"
            target = f"/tmp/e2e/{w}.target"
            system.ctl.run(["rm", "-f", logs[name], target])
            system.ctl.run(["sh", "-c", f"echo '{address} 80 0' > {target}"])
            system.ctl.spawn(w, ["ip", "netns", "exec", NETNS, system.python, "-c", WATCHER, logs[name], target,
                                 str(WATCH_EVERY)], log=f"/tmp/e2e/{w}.err")
            watchers.append(w)

        def grep(path: str, pattern: str) -> str | None:
            r = system.ctl.run(["grep", "-m1", "-e", pattern, path])
            return r.out.strip() if r.rc == 0 and r.out.strip() else None
        for name, address in (("backed", VIP_BACKED), ("hand", VIP_HAND)):
            wait_until(f"the {name} watcher's first read", lambda: grep(logs[name], f" TARGET {address} 80 0$"),
                       120, 0.5)
        off1, err1 = clock_offset(system)
        lat: dict[str, list[tuple[float, float]]] = {"backed": [], "hand": []}
        missed: list[str] = []
        terminating: set[int] = set()
        for c in range(changes):
            k = (c * 37) % e
            terminating.add(k)
            body = slice_(k // SLICE, frozenset(terminating))
            for name, address, dest, change in (
                    ("backed", VIP_BACKED, endpoint(k),
                     lambda: disc.replace_namespaced_endpoint_slice(body["metadata"]["name"], K_NS, body)),
                    ("hand", VIP_HAND, hand_address(k),
                     lambda: api.patch("realservers", K_NS, f"hand-{k}", {"spec": {"weight": 0}}))):
                needle = f" {address}:80 {dest}:8080 0$"
                t_host = time.time()
                change()
                seen_at = None
                end = time.perf_counter() + 120
                while time.perf_counter() < end:
                    line = grep(logs[name], needle)
                    if line:
                        seen_at = float(line.split()[0])
                        break
                    time.sleep(0.2)
                if seen_at is None:
                    missed.append(f"{name} {dest}")
                else:
                    lat[name].append((t_host, seen_at))
        off2, err2 = clock_offset(system)
        off = (off1 + off2) / 2
        for name, short in (("backed", "ep"), ("hand", "rs")):
            xs = [g - off - h for h, g in lat[name]]
            details[f"{name}_latencies"] = [round(x, 4) for x in xs]
            row[f"{short}_p50"], row[f"{short}_p99"] = percentile(xs, 50), percentile(xs, 99)
            row[f"{short}_max"] = max(xs) if xs else None
        row["clock_err"] = max(err1, err2) + abs(off2 - off1) / 2
        details.update(offset_before=off1, offset_after=off2, missed=missed)
        if missed:
            row["ep_max"] = R.error(f"{len(missed)} change(s) never seen within 120s, e.g. {missed[:3]}")
        log(f"E={e}: endpoint change to kernel p50 {row['ep_p50']} p99 {row['ep_p99']}; "
            f"RealServer change p50 {row['rs_p50']} p99 {row['rs_p99']} (clock ±{row['clock_err']:.3f}s)")
    except Exception as ex:  # noqa: BLE001 - the report says what failed
        log(f"E={e} failed: {ex}")
        row["in_kernel"] = row["in_kernel"] if row["in_kernel"] is not None else R.error(str(ex)[:300])
        details["error"] = str(ex)
    finally:
        for w in watchers:
            try:
                system.ctl.signal(w, 15, wait=20)
            except Exception:  # noqa: BLE001
                pass
        system.kubectl("delete", "namespace", K_NS, "--ignore-not-found", "--wait=false", check=False)
        system.kubectl("delete", "vippool.lvs.kube-lvs.io", K_POOL, "--ignore-not-found", check=False)
    return row, details


def run_kernel(sizes: list[int], changes: int = 20, timeout: float = 1800,
               workdir: Path | None = None) -> tuple[R.Table, dict]:
    """Boot the whole system once (one director, the nat topology) and measure
    each size in turn, each from an empty namespace."""
    from lvs_e2e.system import System, wait_until

    from .end_to_end import NETNS, ensure_director
    workdir = workdir or REPO / "build" / "bench-service-endpoints-kernel"
    shutil.rmtree(workdir / "control-plane", ignore_errors=True)
    rows, details = [], []
    s = System(workdir=workdir, log=log)
    try:
        s.start_control_plane()
        s.start_operator()
        s.add_node(NETNS, True)
        s.boot()
        ensure_director(s)
        for k, e in enumerate(sizes):
            if k:
                wait_until("the previous size's services gone", lambda: not _kernel_dests(s, NETNS), 600, 2)
                wait_until("its namespace gone", lambda: not s.kubectl(
                    "get", "namespace", K_NS, "--ignore-not-found", "-o", "name").strip(), 600, 1)
            r, d = kernel_size(s, e, changes, timeout)
            rows.append(r)
            details.append(d)
    except Exception as ex:  # noqa: BLE001
        rows += [{**{c.key: None for c in kernel_columns()}, "endpoints": e, "in_kernel": R.error(str(ex)[:300])}
                 for e in sizes[len(rows):]]
    finally:
        s.close()
    notes = ["the same two services in the director's kernel (lab VM, one director, the agent as in the e2e "
             "tier); latency from the host's write (EndpointSlice replaced / RealServer patched) until the "
             f"dest's weight 0 is read from the kernel (a watcher per service, every {WATCH_EVERY}s)"]
    table = R.Table("service_endpoints_kernel",
                    "Service endpoints (issue 19): endpoint change vs RealServer change, to the kernel",
                    kernel_columns(), rows, notes)
    return table, {"details": details}


def main() -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, FULL_SIZES)))
    ap.add_argument("--smoke", action="store_true", help=f"sizes {SMOKE_SIZES}, 3 changes")
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--kernel", action="store_true", help="the kernel half (lab VM; wrap in flock /tmp/lab-vm.lock)")
    ap.add_argument("--out", default=None, help="results stem (.json, .md, .txt); '' writes none")
    args = ap.parse_args()
    sizes = list(SMOKE_SIZES) if args.smoke else [int(x) for x in args.sizes.split(",")]
    measure = run_kernel if args.kernel else run
    commit = _commit()
    table, extra = measure(sizes, changes=3 if args.smoke else args.changes)
    if args.out is None:
        args.out = str(REPO / "bench" / "results" / ("service_endpoints_kernel" if args.kernel else "service_endpoints"))
    print(R.render_text(table))
    if args.out:
        write_results(table, extra, Path(args.out), commit)
    return 0 if not table.errors() else 1


if __name__ == "__main__":
    raise SystemExit(main())
