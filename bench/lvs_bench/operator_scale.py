"""Part 4 of issue 7: the operator at scale, against a real API server (host only).

For each size N: a fresh ControlPlane (etcd + kube-apiserver + controller-manager
on 127.0.0.1), kube-lvs installed (`kubectl apply --server-side -k deploy/`), a
VIPPool, D director Nodes, N VirtualServices x R RealServers created as fast as
the API server takes them (a first slice by `kubectl apply` of one multi-document
file, the rest by the kubernetes Python client from a thread pool: both rates are
reported), then `lvs-operator` is started under its ServiceAccount and measured:

- time from its start until every expected NodeState (N x D) exists with the
  right content (every service and dest compared, not just counted);
- one RealServer's weight changed: NodeStates the operator rewrote (resourceVersion
  changes over a full list before/after; target: one per director) and the
  latency until those NodeStates show the new weight; other objects it wrote
  (VirtualService / RealServer statuses);
- its peak RSS (VmHWM) and CPU time.

No agent runs here (the agent's memory is measured in part 5, in the VM).
Creation time is not the metric: it only sets the scene.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import yaml

from . import report as R
from .apiserver_writes import request_counts

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "lvs.kube-lvs.io", "v1alpha1"
OPNS = "kube-lvs-system"
OPERATOR_SA = "kube-lvs-operator"
DIRECTOR_LABEL = "lvs.kube-lvs.io/director"
BENCH_NS = "bench"
FULL_SIZES = (10000,)
FIRST_PASS = "first full pass as leader"  # the operator's log line at the end of its first pass
SMOKE_SIZES = (5,)


def log(msg: str) -> None:
    print(f"[bench/operator] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# -- the workload (same addressing as lvs_bench.workload: service i is 10.1.(i>>8).(i&255):80)
def vip(i: int) -> str:
    return f"10.1.{i >> 8}.{i & 255}"


def dest_addr(i: int, j: int) -> str:
    return f"10.{64 + j}.{i >> 8}.{i & 255}"


def vs_obj(i: int) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
            "metadata": {"name": f"vs{i}", "namespace": BENCH_NS},
            "spec": {"address": vip(i), "port": 80, "protocol": "tcp", "scheduler": "wlc", "method": "nat",
                     "healthCheck": {"type": "none"},
                     "directorSelector": {"matchLabels": {DIRECTOR_LABEL: "true"}}}}


def rs_obj(i: int, j: int, weight: int = 1) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RealServer",
            "metadata": {"name": f"vs{i}-rs{j}", "namespace": BENCH_NS},
            "spec": {"virtualService": f"vs{i}", "address": dest_addr(i, j), "port": 8080, "weight": weight}}


def columns() -> list[R.Column]:
    return [
        R.Column("virtual_services", "VirtualServices", "int"),
        R.Column("real_servers", "RealServers", "int"),
        R.Column("directors", "directors", "int"),
        R.Column("nodestates", "NodeStates (verified)", "count"),
        R.Column("create_apply_us", "create: kubectl apply µs/obj", "usec"),
        R.Column("create_client_us", "create: client x8 µs/obj", "usec"),
        R.Column("to_all", "operator start to all NodeStates", "sec"),
        R.Column("to_all_per_obj_us", "µs per NodeState", "usec"),
        R.Column("change_writes", "1 change: NodeState writes", "count"),
        R.Column("change_target", "target", "count"),
        R.Column("change_latency", "1 change: latency", "sec"),
        R.Column("statuses_at_change", "statuses written by the change", "count"),
        R.Column("status_rate", "status writes/s then", "int"),
        R.Column("peak_rss_mib", "operator peak RSS MiB", "int"),
        R.Column("operator_cpu", "operator CPU", "sec"),
    ]


APPLY_VS = 100  # VirtualServices (with their RealServers) created by kubectl apply
META_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


class Api:
    """Raw JSON calls through the kubernetes client (no model decoding: fast lists)."""

    def __init__(self, kubeconfig: Path):
        from kubernetes import client, config
        self._local = threading.local()
        self._kubeconfig = str(kubeconfig)
        self._client, self._config = client, config

    def _co(self):
        co = getattr(self._local, "co", None)
        if co is None:
            api = self._config.new_client_from_config(config_file=self._kubeconfig)
            co = self._local.co = self._client.CustomObjectsApi(api)
        return co

    def create(self, plural: str, ns: str, body: dict) -> None:
        """A POST over a kept-alive connection of this thread's (lvs_kube.status_patch):
        the generated client's own CPU per call was a quarter of the API server's, on
        the same two cores, while 110k objects went in."""
        raw = getattr(self._local, "raw", None)
        if raw is None:
            from lvs_kube.status_patch import StatusPatcher
            raw = self._local.raw = StatusPatcher(self._co().api_client)
        raw.request("POST", f"/namespaces/{ns}/{plural}", body)

    def patch(self, plural: str, ns: str, name: str, body: dict) -> dict:
        return self._co().patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name, body)

    def get(self, plural: str, ns: str, name: str) -> dict:
        r = self._co().get_namespaced_custom_object(GROUP, VERSION, ns, plural, name, _preload_content=False)
        return json.loads(r.data)

    def list(self, plural: str, ns: str, page: int = 5000, meta: bool = False) -> list[dict]:
        """``meta``: metadata only (a PartialObjectMetadataList): the polls for quiet
        list 140k objects every few seconds, and full objects made those lists load
        the API server, and so slow the writes they wait for, more than the writes did."""
        items, cont = [], None
        headers = {"Accept": META_LIST} if meta else {}
        while True:
            kw = {"limit": page}
            if cont:
                kw["_continue"] = cont
            r = self._co().list_namespaced_custom_object(GROUP, VERSION, ns, plural, _preload_content=False,
                                                         _headers=headers, **kw)
            d = json.loads(r.data)
            items += d.get("items", [])
            cont = (d.get("metadata") or {}).get("continue")
            if not cont:
                return items

    def versions(self, plural: str, ns: str) -> dict[str, str]:
        """name -> resourceVersion of every object (metadata only)."""
        return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in self.list(plural, ns, meta=True)}


def status_writes(cp: Any) -> int:
    """Successful status PATCHes of VirtualServices and RealServers so far, by the
    API server's own count (its /metrics): no list of 110k objects to load it."""
    return count_status_writes(cp.kubectl("get", "--raw", "/metrics").stdout)


def count_status_writes(metrics: str) -> int:
    """Successful VirtualService and RealServer status PATCHes so far."""
    counts = request_counts(metrics, GROUP)
    return sum(counts.get((kind, "status", "PATCH"), 0) for kind in ("virtualservices", "realservers"))


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def stat_cpu_seconds(stat: str, ticks: float) -> float:
    """utime + stime (fields 14 and 15) of one /proc/<pid>/stat line, in seconds."""
    f = stat.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / ticks


def _cpu_seconds(pid: int) -> float | None:
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return None


def expected_nodestates(n: int, per_vs: int, directors: list[str],
                        weights: dict[tuple[int, int], int] | None = None) -> dict[str, dict]:
    """NodeState name -> the (service, dests) it must carry."""
    weights = weights or {}
    out = {}
    for i in range(n):
        dests = {(dest_addr(i, j), 8080): weights.get((i, j), 1) for j in range(per_vs)}
        for d in directors:
            out[f"{d}-{BENCH_NS}-vs{i}"] = {"address": vip(i), "port": 80, "dests": dests}
    return out


def content_errors(items: list[dict], expected: dict[str, dict], limit: int = 3) -> list[str]:
    """What is missing or wrong among the NodeStates (empty = all right)."""
    errs: list[str] = []
    have = {o["metadata"]["name"]: o for o in items}
    missing = [k for k in expected if k not in have]
    if missing:
        errs.append(f"{len(missing)} NodeState(s) missing, e.g. {missing[:limit]}")
    extra = [k for k in have if k not in expected]
    if extra:
        errs.append(f"{len(extra)} unexpected NodeState(s), e.g. {extra[:limit]}")
    bad = []
    for name, want in expected.items():
        o = have.get(name)
        if o is None:
            continue
        svcs = (o.get("spec") or {}).get("services") or []
        ok = len(svcs) == 1 and svcs[0].get("address") == want["address"] and svcs[0].get("port") == want["port"]
        if ok:
            got = {(d.get("address"), d.get("port")): d.get("weight", 1) for d in svcs[0].get("dests") or []}
            ok = got == want["dests"]
        if not ok:
            bad.append(name)
    if bad:
        errs.append(f"{len(bad)} NodeState(s) with wrong content, e.g. {bad[:limit]}")
    return errs


def phase_lines(text: str) -> list[str]:
    """The operator's own split of its start (log lines with their timestamps):
    every kind listed, then the first pass's derive, compile, plan and write."""
    return [line.strip() for line in text.splitlines() if "caches populated" in line or FIRST_PASS in line
            or "NodeStates: " in line][:3]


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float) -> tuple[Any, float]:
    t0 = time.perf_counter()
    last: Any = None
    while time.perf_counter() - t0 < timeout:
        try:
            last = check()
            if last:
                return last, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - API hiccups under load: keep polling
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def create_many(api: Api, items: list[tuple[str, str, dict]], threads: int = 8, group: int = 1) -> None:
    """Create (plural, namespace, body) objects from a thread pool; an object
    that already exists counts as created; retried while the API server is busy.
    ``group``: runs of that many items are created in order by one thread (a
    VirtualService before its RealServers, as a user's manifest has them: a
    RealServer created first is compiled, reported and evented as orphaned)."""
    errors: list[str] = []

    def one(item):
        plural, ns, body = item
        for attempt in range(5):
            try:
                api.create(plural, ns, body)
                return
            except Exception as e:  # noqa: BLE001
                if getattr(e, "status", None) == 409:
                    return
                if attempt == 4 or getattr(e, "status", None) == 404:  # no namespace: retrying cannot help
                    errors.append(f"{body['metadata']['name']}: {e}"[:300])
                    return
                time.sleep(0.5 * (attempt + 1))
    def run(start: int) -> None:
        for item in items[start:start + group]:
            one(item)
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(run, range(0, len(items), group), chunksize=max(1, 16 // group)))
    if errors:
        raise RuntimeError(f"{len(errors)} object(s) not created, e.g. {errors[:3]}")


def create_objects(cp, api: Api, n: int, per_vs: int, workdir: Path, threads: int = 8) -> dict:
    """VirtualServices and RealServers: a slice by kubectl apply, the rest by the client."""
    objs = []
    for i in range(n):
        objs.append(("virtualservices", vs_obj(i)))
        objs += [("realservers", rs_obj(i, j)) for j in range(per_vs)]
    # Whole VirtualServices with their RealServers: a tenth, at most 100 of them (kubectl
    # applies one object at a time, ~10 ms each: a tenth of 10k took 107 s of the hour).
    cut = max(1, min(n // 10, APPLY_VS)) * (1 + per_vs)
    first, rest = objs[:cut], objs[cut:]
    path = workdir / "apply-slice.yaml"
    path.write_text(yaml.safe_dump_all([o for _, o in first]))
    t0 = time.perf_counter()
    cp.kubectl("apply", "-f", str(path), timeout=3600)
    t_apply = time.perf_counter() - t0
    t0 = time.perf_counter()
    create_many(api, [(plural, BENCH_NS, body) for plural, body in rest], threads, group=1 + per_vs)
    t_client = time.perf_counter() - t0
    return {"apply_objs": len(first), "apply_s": t_apply, "client_objs": len(rest), "client_s": t_client}


class Operator:
    def __init__(self, kubeconfig: Path, logfile: Path):
        exe = Path(sys.executable).with_name("lvs-operator")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lvs_operator.main"]
        env = dict(os.environ, KUBECONFIG=str(kubeconfig))
        self.logfile = logfile
        self.proc = subprocess.Popen(cmd + ["--namespace", OPNS, "--liveness", ""],
                                     stdout=logfile.open("wb"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def prepare(cp: Any, directors: int) -> list[str]:
    """kube-lvs's CRDs and RBAC, the bench namespace, a VIPPool and the
    director Nodes in a started control plane; the directors' names."""
    cp.kubectl("apply", "--server-side", "-k", str(REPO / "deploy"))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
               "crd/virtualservices.lvs.kube-lvs.io", "crd/realservers.lvs.kube-lvs.io",
               "crd/vippools.lvs.kube-lvs.io", "crd/nodestates.lvs.kube-lvs.io")
    nodes = [f"director{k}" for k in range(directors)]
    cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": BENCH_NS}},
              {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VIPPool", "metadata": {"name": "bench"},
               "spec": {"addresses": ["10.1.0.0/16"], "namespaces": [BENCH_NS]}}]
             + [{"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": d, "labels": {DIRECTOR_LABEL: "true"}}} for d in nodes])
    return nodes


def run_size(n: int, per_vs: int, directors: int, workdir: Path, timeout: float) -> tuple[dict, dict]:
    """One size in a fresh control plane: (row, details)."""
    from lvs_cluster.control_plane import ControlPlane
    row: dict[str, Any] = {"virtual_services": n, "real_servers": n * per_vs, "directors": directors,
                           "change_target": directors}
    for c in columns():
        row.setdefault(c.key, None)
    details: dict[str, Any] = {"size": n}
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cp = ControlPlane(workdir / "control-plane")
    op: Operator | None = None
    try:
        t0 = time.perf_counter()
        cp.start()
        nodes = prepare(cp, directors)
        details["control_plane_s"] = round(time.perf_counter() - t0, 2)
        opkc = cp.kubeconfig_for_serviceaccount(OPNS, OPERATOR_SA, path=workdir / "operator.kubeconfig")
        api = Api(cp.admin_kubeconfig)
        log(f"N={n}: creating {n} VirtualServices x {per_vs} RealServers")
        cr = create_objects(cp, api, n, per_vs, workdir)
        details["create"] = cr
        row["create_apply_us"] = cr["apply_s"] / cr["apply_objs"] * 1e6
        row["create_client_us"] = cr["client_s"] / cr["client_objs"] * 1e6 if cr["client_objs"] else None
        log(f"N={n}: created: kubectl apply {cr['apply_objs']} objs in {cr['apply_s']:.1f}s, "
            f"client x8 {cr['client_objs']} in {cr['client_s']:.1f}s")
        nvs, nrs = len(api.versions("virtualservices", BENCH_NS)), len(api.versions("realservers", BENCH_NS))
        if (nvs, nrs) != (n, n * per_vs):
            row["nodestates"] = R.error(f"workload incomplete: {nvs} VirtualServices, {nrs} RealServers")
            return row, details

        expected = expected_nodestates(n, per_vs, nodes)
        op = Operator(opkc, workdir / "operator.log")
        t_start = time.perf_counter()
        progress = {"count": 0}

        def says(marker: str) -> Callable[[], bool]:
            def check() -> bool:
                if not op.alive():
                    raise RuntimeError(f"operator exited: {op.tail()}")
                return marker in op.text()
            return check

        def complete():
            if not op.alive():
                raise RuntimeError(f"operator exited: {op.tail()}")
            items = api.list("nodestates", OPNS)
            progress["count"] = len(items)
            if len(items) < len(expected):
                return None
            return not content_errors(items, expected) or None
        # Waiting reads the operator's log (its summary line after the NodeStates, or
        # the end of its first pass), not repeated full lists, which at 30k NodeStates
        # would load the API server more than the operator does; a full list then
        # verifies every NodeState, and lists are polled only if that is not yet right.
        try:
            _wait("the operator's NodeStates line", lambda: says("NodeStates: ")() or says(FIRST_PASS)(),
                  timeout, 0.1)
            to_all = time.perf_counter() - t_start
            if not complete():
                _wait("all NodeStates", complete, timeout, max(1.0, len(expected) / 5000))
                to_all = time.perf_counter() - t_start
        except (TimeoutError, RuntimeError) as e:
            row["nodestates"] = R.error(f"{progress['count']} of {len(expected)} NodeStates: {e}"[:400])
            return row, details
        items = api.list("nodestates", OPNS)
        errs = content_errors(items, expected)
        if errs:
            row["nodestates"] = R.error("; ".join(errs))
            return row, details
        row["nodestates"] = len(items)
        row["to_all"] = to_all
        row["to_all_per_obj_us"] = to_all / len(items) * 1e6
        log(f"N={n}: {len(items)} NodeStates right after {to_all:.1f}s")

        # The change is made once the first pass has ended. The operator writes every
        # VirtualService's and RealServer's status after the NodeStates (n x 11 writes,
        # minutes at 10k on this host; the agent's statuses settling is part 5's): the
        # change goes in while they are written, as a user's edit after a mass import
        # would. Only the operator writes NodeStates here (no agent), so their
        # resourceVersions still count the change's writes exactly.
        try:
            _wait("the end of the operator's first pass", says(FIRST_PASS), timeout, 0.5)
        except (TimeoutError, RuntimeError) as e:
            row["change_writes"] = R.error(str(e)[:300])
            return row, details
        details["operator_phases"] = phase_lines(op.text())
        for line in details["operator_phases"]:
            log(f"N={n}: operator: {line}")
        before = api.versions("nodestates", OPNS)
        statuses0, t_statuses0 = status_writes(cp), time.perf_counter()
        k = n // 2
        rs_name = f"vs{k}-rs0"
        affected = [f"{d}-{BENCH_NS}-vs{k}" for d in nodes]

        def shows_weight():
            for name in affected:
                o = api.get("nodestates", OPNS, name)
                ds = o["spec"]["services"][0]["dests"]
                if not any(d["address"] == dest_addr(k, 0) and d.get("weight") == 5 for d in ds):
                    return False
            return True
        t0 = time.perf_counter()
        api.patch("realservers", BENCH_NS, rs_name, {"spec": {"weight": 5}})
        try:
            _, _ = _wait("the changed weight in the NodeStates", shows_weight, 120, 0.02)
            row["change_latency"] = time.perf_counter() - t0
        except TimeoutError as e:
            row["change_latency"] = R.error(str(e)[:300])
        time.sleep(5)  # anything else the operator would write for this change
        after_items = api.list("nodestates", OPNS)
        after = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in after_items}
        changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
        statuses1 = status_writes(cp)
        row["statuses_at_change"] = statuses0
        row["status_rate"] = round((statuses1 - statuses0) / (time.perf_counter() - t_statuses0))
        details["change"] = {"nodestates_written": changed, "statuses_to_write": n * (1 + per_vs)}
        errs = content_errors(after_items, expected_nodestates(n, per_vs, nodes, {(k, 0): 5}))
        if errs:
            row["change_writes"] = R.error("after the change: " + "; ".join(errs))
        else:
            row["change_writes"] = len(changed)
        st = _proc_status(op.proc.pid)
        if "VmHWM" in st:
            row["peak_rss_mib"] = int(st["VmHWM"].split()[0]) // 1024
        row["operator_cpu"] = _cpu_seconds(op.proc.pid)
        log(f"N={n}: change: {len(changed)} NodeState write(s) {changed[:5]}, latency {row['change_latency']}, "
            f"statuses {statuses0}..{statuses1} of {n * (1 + per_vs)}, peak RSS {row['peak_rss_mib']} MiB")
        return row, details
    except Exception as e:  # noqa: BLE001 - one size failing is an error cell, not a crash
        log(f"N={n}: failed: {e}")
        if row.get("nodestates") is None:
            row["nodestates"] = R.error(str(e)[:400])
        return row, details
    finally:
        if op is not None:
            if not op.alive():
                details["operator_exit"] = op.proc.returncode
            op.stop()
            details["operator_log_tail"] = op.tail(5)
        cp.stop()


STANDING_NOTES = [
    "fresh control plane per size (etcd + kube-apiserver v1.37 + controller-manager on the host); "
    "VIPPool 10.1.0.0/16, directors = Node objects labelled lvs.kube-lvs.io/director=true (no kubelet), "
    "VirtualService i = 10.1.(i>>8).(i&255):80 wlc nat, health checks off",
    f"create (not the metric): the first tenth of the objects, at most {APPLY_VS} VirtualServices with "
    "their RealServers, by one kubectl apply of a multi-document "
    "file, the rest by the kubernetes Python client from 8 threads (each VirtualService before its RealServers)",
    "operator start to all NodeStates: lvs-operator (its ServiceAccount, kopf for the process, its own "
    "list+watch caches) spawned with every object present, until its log says the NodeStates are "
    "written (log polled every 0.1 s); then one full list must show N x directors NodeStates, each "
    "with the right service and dests (else lists are polled until it does)",
    "1 change: one RealServer's weight patched once the operator's first pass has ended, while it "
    "writes the VirtualServices' and RealServers' statuses (after the NodeStates; statuses settling "
    "end to end is part 5's); NodeState writes = resourceVersion changes over a full list (metadata "
    "only) before and 5 s after (target: one per director; only the operator writes NodeStates "
    "here); latency = patch until every affected NodeState shows it (polled every 20 ms)",
    "statuses written by the change: the API server's count of successful VirtualService and "
    "RealServer status PATCHes (apiserver_request_total) when the change was made, of N x 11 to "
    "write; status writes/s then: that count's rate from the change to the end of the size",
    "no agent here (its memory is measured in part 5, in the VM); peak RSS = VmHWM of the operator process",
]


def build_table(rows: list[dict], notes: list[str], per_vs: int = 10) -> R.Table:
    return R.Table("operator_scale", f"4. Operator scale (N VirtualServices x {per_vs} RealServers, real API server)",
                   columns(), rows, STANDING_NOTES + notes)


def run(sizes: list[int], per_vs: int = 10, directors: int = 3, timeout: float = 1800,
        workdir: Path | None = None) -> tuple[R.Table, dict]:
    workdir = workdir or REPO / "build" / "bench-operator"
    rows, details, notes = [], [], []
    t0 = time.perf_counter()
    for n in sizes:
        r, d = run_size(n, per_vs, directors, workdir / f"n{n}", timeout)
        rows.append(r)
        details.append(d)
        c = d.get("create") or {}
        if c:
            notes.append(f"N={n:,}: created {c['apply_objs']:,} objects by kubectl apply in {c['apply_s']:.1f} s, "
                         f"{c['client_objs']:,} by the client in {c['client_s']:.1f} s")
    return build_table(rows, notes, per_vs), {"details": details, "wall_seconds": round(time.perf_counter() - t0, 1)}
