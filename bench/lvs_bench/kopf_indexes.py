"""kopf's own caches (indexes + event handlers) against the operator's list+watch caches.

    PYTHONPATH=bench .venv/bin/python -m lvs_bench.kopf_indexes [--sizes 1000,10000] [--trials 2]

One real control plane (lvs_cluster), loaded as bench part 4 loads it
(lvs_bench.operator_scale: N VirtualServices x R RealServers, a VIPPool, D
director Nodes). Each size's objects are added to the same API server, then
two kinds of child process are started in turn, each fresh, on the same data:

- ``caches``: the operator's ``Caches`` over ``operator_kinds`` (its own LIST +
  WATCH threads, objects projected by ``objects.project``);
- ``kopf``: ``kopf.operator`` (standalone, cluster-wide, no peering, no posting)
  with one ``@kopf.index`` per operator kind (same projection, keyed like the
  caches) and one ``@kopf.on.event`` handler per kind.

Each child reports, in wall-clock time from just before it was spawned: every
kind held in memory (caches: all listed; kopf: its first event handler call,
which kopf holds back until every index is populated), then ``compile_snapshot``
on a snapshot of what it holds, and (kopf) every listed object's event handled.
The parent then patches one RealServer's weight and the child reports when its
cache/index shows it. Peak RSS (ru_maxrss) and CPU time of the child close each
run. Writes bench/results/kopf-indexes.{md,json}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import operator_scale as S

CRITERION = 1.5  # the architecture issue's bar: kopf's own caches replace ours if within this factor
MODES = ("caches", "kopf")


def emit(ev: str, **kw: Any) -> None:
    print(json.dumps({"ev": ev, "t": time.time(), **kw}), flush=True)


def usage() -> dict:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"maxrss_mib": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}


def snapshot_compile(snap: dict[str, list[dict]], namespace: str) -> None:
    from lvs_operator.write_plan import compile_snapshot
    t0 = time.perf_counter()
    result = compile_snapshot(snap, namespace, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    emit("compiled", compile_s=time.perf_counter() - t0, nodestates=len(result.nodestates))


def changed_to(obj: dict | None, weight: int) -> bool:
    return ((obj or {}).get("spec") or {}).get("weight") == weight


# -- child: the operator's caches ------------------------------------------------------------
async def child_caches(kubeconfig: str, namespace: str, target: tuple[str, str], weight: int) -> None:
    from kubernetes import config
    from lvs_operator.watch import Caches, operator_kinds
    client = config.new_client_from_config(config_file=kubeconfig)
    seen = asyncio.Event()

    def on_change(kind: str, key: Any, old: dict | None, new: dict | None) -> None:
        if kind == "realservers" and key == target and changed_to(new, weight):
            emit("changed")
            seen.set()

    caches = Caches(operator_kinds(namespace), on_change=on_change)
    stop = threading.Event()
    caches.start(lambda: client, stop)
    await caches.ready.wait()
    emit("held", sizes={k: len(v) for k, v in caches.data.items()})
    snapshot_compile({k: list(v.values()) for k, v in caches.data.items()}, namespace)
    emit("settled")
    await seen.wait()
    emit("usage", **usage())
    stop.set()


# -- child: kopf's indexes and event handlers ----------------------------------------------
def kopf_registry(namespace: str, target: tuple[str, str], weight: int, state: dict) -> Any:
    """One index and one event handler per operator kind; ``state`` collects what they see."""
    import kopf
    from lvs_operator.objects import key_of, project
    from lvs_operator.watch import operator_kinds
    reg = kopf.OperatorRegistry()
    kinds = operator_kinds(namespace)
    state.update(indexes={}, events=0, held=asyncio.Event(), seen=asyncio.Event(), settled=asyncio.Event())

    @kopf.on.startup(registry=reg)
    async def startup(settings: kopf.OperatorSettings, **kw: Any) -> None:
        settings.posting.enabled = False
        settings.scanning.disabled = True
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        state["indexes"] = {k.plural: kw[f"idx_{k.plural}"] for k in kinds}

    @kopf.on.login(registry=reg)
    def login(**kw: Any) -> Any:
        return kopf.login_via_client(**kw)

    def add(plural: str, group: str, version: str) -> None:
        @kopf.index(group, version, plural, registry=reg, id=f"idx_{plural}")
        def index(body: Any, **_: Any) -> dict:
            return {key_of(body): project(plural, body)}

        @kopf.on.event(group, version, plural, registry=reg, id=f"ev_{plural}")
        def event(body: Any, **_: Any) -> None:
            state["events"] += 1
            state["held"].set()
            if state["settled"].is_set() is False and state.get("total") and state["events"] >= state["total"]:
                state["settled"].set()
            if plural == "realservers" and key_of(body) == target:
                store = state["indexes"][plural].get(target) or ()
                if any(changed_to(v, weight) for v in store):
                    state["seen"].set()

    for k in kinds:
        add(k.plural, k.group, k.version)
    return reg


def index_snapshot(indexes: dict[str, Any]) -> dict[str, list[dict]]:
    return {plural: [v for store in idx.values() for v in store] for plural, idx in indexes.items()}


async def child_kopf(kubeconfig: str, namespace: str, target: tuple[str, str], weight: int) -> None:
    import logging

    import kopf
    logging.basicConfig(level=logging.WARNING)
    state: dict = {}
    reg = kopf_registry(namespace, target, weight, state)
    stop = asyncio.Event()
    op = asyncio.create_task(kopf.operator(registry=reg, standalone=True, clusterwide=True, stop_flag=stop))

    async def measure() -> None:
        await state["held"].wait()  # kopf calls no event handler before every index is populated
        sizes = {k: len(v) for k, v in state["indexes"].items()}
        emit("held", sizes=sizes)
        state["total"] = sum(sizes.values())
        snapshot_compile(index_snapshot(state["indexes"]), namespace)
        if state["events"] >= state["total"]:
            state["settled"].set()
        await state["settled"].wait()
        emit("settled", events=state["events"])
        await state["seen"].wait()
        emit("changed")
        emit("usage", **usage())
        stop.set()

    m = asyncio.create_task(measure())
    done, _ = await asyncio.wait({op, m}, return_when=asyncio.FIRST_COMPLETED)
    if op in done and not m.done():
        op.result()
        raise RuntimeError("kopf.operator ended before the measurement")
    await asyncio.wait_for(op, 60)


def child_main(args: argparse.Namespace) -> None:
    ns, _, name = args.target.partition("/")
    run = child_caches if args.mode == "caches" else child_kopf
    asyncio.run(run(args.kubeconfig, args.namespace, (ns, name), args.weight))
    sys.stdout.flush()
    os._exit(0)  # daemon watch threads and kopf's leftovers need no orderly teardown


# -- parent ---------------------------------------------------------------------------------
class Child:
    """One measured process; its JSON lines in a queue."""

    def __init__(self, mode: str, kubeconfig: Path, namespace: str, target: str, weight: int, log: Path):
        env = dict(os.environ, KUBECONFIG=str(kubeconfig),  # read by kubernetes.config at import
                   PYTHONPATH=os.pathsep.join([str(S.REPO / "bench"), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "lvs_bench.kopf_indexes", "--child", mode, "--kubeconfig", str(kubeconfig),
               "--namespace", namespace, "--target", target, "--weight", str(weight)]
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log.open("wb"), env=env,
                                     start_new_session=True, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass
        self.lines.put(None)

    def expect(self, ev: str, timeout: float) -> dict:
        deadline = time.time() + timeout
        while True:
            try:
                d = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                raise TimeoutError(f"no '{ev}' within {timeout:.0f}s") from None
            if d is None:
                raise RuntimeError(f"child exited ({self.proc.wait()}) before '{ev}'")
            if d["ev"] == ev:
                return d

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def measure(mode: str, kubeconfig: Path, api: S.Api, target: tuple[str, str], weight: int, log: Path,
            timeout: float) -> dict:
    """One child process: seconds from its spawn to each stage, the change's latency, its usage."""
    c = Child(mode, kubeconfig, S.OPNS, "/".join(target), weight, log)
    out: dict[str, Any] = {"mode": mode}
    try:
        held = c.expect("held", timeout)
        out["to_held"], out["sizes"] = held["t"] - c.t0, held["sizes"]
        comp = c.expect("compiled", timeout)
        out["compile_s"], out["to_compiled"], out["nodestates"] = comp["compile_s"], comp["t"] - c.t0, comp["nodestates"]
        out["to_settled"] = c.expect("settled", timeout)["t"] - c.t0
        t_patch = time.time()
        api.patch("realservers", target[0], target[1], {"spec": {"weight": weight}})
        out["change_s"] = c.expect("changed", 120)["t"] - t_patch
        u = c.expect("usage", 30)
        out["peak_rss_mib"], out["cpu_s"] = u["maxrss_mib"], u["cpu_s"]
    except (TimeoutError, RuntimeError) as e:
        out["error"] = str(e)
        out["stderr_tail"] = log.read_text(errors="replace")[-1500:]
    finally:
        c.stop()
    S.log(f"{mode}: {json.dumps({k: v for k, v in out.items() if k not in ('sizes', 'stderr_tail')})}")
    return out


def median(xs: list[float]) -> float | None:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


FIGURES = (("to_held", "start to every kind in memory", "s"),
           ("compile_s", "compile_snapshot", "s"),
           ("to_compiled", "start to compiled (all NodeStates computed)", "s"),
           ("to_settled", "start to settled (kopf: every listed object's event handled)", "s"),
           ("change_s", "1 change: patch to seen in the cache/index", "s"),
           ("peak_rss_mib", "peak RSS", "MiB"),
           ("cpu_s", "CPU time to the end", "s"))


def summarize(runs: list[dict]) -> dict:
    """mode -> figure -> median over the trials without error."""
    out: dict[str, dict] = {}
    for mode in MODES:
        ok = [r for r in runs if r["mode"] == mode and "error" not in r]
        out[mode] = {k: median([r.get(k) for r in ok]) for k, _, _ in FIGURES}
        out[mode]["trials_ok"] = len(ok)
    return out


def verdict(med: dict) -> dict:
    """The issue's criterion on start-to-all-NodeStates (computed) and on one change."""
    out = {}
    for key in ("to_compiled", "change_s"):
        a, b = med["caches"].get(key), med["kopf"].get(key)
        out[key] = None if not a or b is None else b / a
    out["within"] = all(v is not None and v <= CRITERION for v in (out["to_compiled"], out["change_s"]))
    return out


def fmt(x: Any, unit: str) -> str:
    if x is None:
        return "—"
    if unit == "MiB":
        return f"{x:,.0f} MiB"
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.1f} s"


def render(result: dict) -> str:
    lines = ["# kopf's indexes + event handlers vs the operator's caches", "",
             "`PYTHONPATH=bench .venv/bin/python -m lvs_bench.kopf_indexes` (module docstring: the method).", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in result["machine"].items()]
    for size in result["sizes"]:
        med, v = size["median"], size["verdict"]
        lines += ["", f"## {size['virtual_services']:,} VirtualServices x {size['per_vs']} RealServers "
                      f"({size['objects']:,} objects in the kinds read), medians of {size['trials']} trial(s)", "",
                  "| figure | caches | kopf | kopf / caches |", "|---|---:|---:|---:|"]
        for k, label, unit in FIGURES:
            a, b = med["caches"].get(k), med["kopf"].get(k)
            r = f"{b / a:.2f}x" if a and b is not None else "—"
            lines.append(f"| {label} | {fmt(a, unit)} | {fmt(b, unit)} | {r} |")
        lines += ["", "Every trial:", "", "| mode | " + " | ".join(label for _, label, _ in FIGURES) + " | error |",
                  "|---|" + "---:|" * len(FIGURES) + "---|"]
        for r in size["runs"]:
            lines.append(f"| {r['mode']} | " + " | ".join(fmt(r.get(k), u) for k, _, u in FIGURES)
                         + f" | {r.get('error', '')} |")
        tc, ch = v["to_compiled"], v["change_s"]
        lines += ["", f"Criterion (kopf within {CRITERION}x of the caches on start to all NodeStates and on one "
                      f"change): start {'—' if tc is None else f'{tc:.2f}x'}, change "
                      f"{'—' if ch is None else f'{ch:.2f}x'}: **{'met' if v['within'] else 'not met'}**."]
    if len(result["sizes"]) > 1:
        lines += ["", "## Growth: start to compiled (all NodeStates computed), medians", ""]
        lines += growth_lines(result["sizes"])
    lines += ["", "## Conclusion", "", result["conclusion"]] + [f"\n{x}" for x in result.get("findings", [])]
    lines += ["", "## Method", ""] + [f"- {n}" for n in NOTES]
    return "\n".join(lines) + "\n"


NOTES = [
    "one control plane (etcd + kube-apiserver + controller-manager on the host, lvs_cluster), objects "
    "created as bench part 4 creates them (lvs_bench.operator_scale.create_objects); sizes are added to the "
    "same API server in turn; no operator runs, so there are no NodeStates and no statuses",
    "each trial is a fresh child process (admin kubeconfig for both modes; kopf needs cluster-wide "
    "NodeStates, the operator watches one namespace, where they all are); modes alternate "
    "caches, kopf, caches, kopf",
    "start = just before the parent spawns the child (imports included, the same for both)",
    "caches: every kind in memory = Caches.ready (every kind listed, pages of Watcher.PAGE); "
    "kopf: its first @kopf.on.event call (kopf runs no such handler before every index holds every "
    "listed object); the sizes held are reported and must match between the modes",
    "compiled = compile_snapshot on a snapshot of the caches' / indexes' values, on the event loop, the "
    "in-memory NodeStates of a full pass (writing them is the same API work in both designs and is not timed)",
    "settled (kopf): every listed object's event handler has run, the point from which a change is "
    "handled without a backlog; the change is made after it (caches: after the compile)",
    "1 change: one RealServer's weight patched (a new value each trial), until the child's cache "
    "(Caches.on_change) / index (checked in the RealServer's event handler, which kopf runs after "
    "the object's index handlers) holds the new weight; both are wall clock on the same host",
    "peak RSS = the child's ru_maxrss; CPU = its user + system time at the end",
    "kopf runs with its default settings but for those the operator sets (no posting, no scanning, "
    "its watch timeouts)",
    "a mode whose trial takes longer than --budget (300 s) gets no more trials at that size nor any "
    "at larger sizes; medians are over the trials that ran",
]


def run_size(cp: Any, api: S.Api, n: int, per_vs: int, trials: int, workdir: Path, timeout: float,
             weight_base: int, timed_out: set[str], budget: float) -> dict:
    """``timed_out``: modes that ran out of time, or took more than ``budget`` seconds, at this or
    a smaller size; they are not run again (a larger data set cannot take less), and are added
    to when a trial does."""
    S.log(f"N={n}: creating {n} VirtualServices x {per_vs} RealServers")
    cr = S.create_objects(cp, api, n, per_vs, workdir)
    S.log(f"N={n}: created {cr}")
    target = (S.BENCH_NS, f"vs{n // 2}-rs0")
    runs = []
    for t in range(trials):
        for i, mode in enumerate(MODES):
            if mode in timed_out:
                runs.append({"mode": mode, "error": f"not run: over {budget:.0f} s (or out of time) at this or a smaller size"})
                continue
            w = weight_base + 2 * t + i
            r = measure(mode, cp.admin_kubeconfig, api, target, w, workdir / f"{mode}-{n}-{t}.log", timeout)
            if "within" in r.get("error", "") or (r.get("to_settled") or 0) > budget:
                timed_out.add(mode)
            runs.append(r)
    sizes = {r["mode"]: r.get("sizes") for r in runs if r.get("sizes")}
    med = summarize(runs)
    return {"virtual_services": n, "per_vs": per_vs, "trials": trials, "create": cr, "runs": runs,
            "sizes_held": sizes, "sizes_match": len(set(json.dumps(s, sort_keys=True) for s in sizes.values())) <= 1,
            "objects": sum((next(iter(sizes.values()), None) or {}).values()), "median": med, "verdict": verdict(med)}


def machine_info() -> dict:
    import kopf  # noqa: F401
    from importlib.metadata import version
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpu": f"{cpu} ({os.cpu_count()} CPUs)",
            "memory": f"{int(mem) // 1024 // 1024} GiB", "python": platform.python_version(),
            "kopf": version("kopf"), "kubernetes client": version("kubernetes"), "kernel": platform.release()}


def growth(sizes: list[dict], mode: str, key: str = "to_compiled") -> list[tuple[int, float, float | None]]:
    """(VirtualServices, median seconds, exponent k of t ~ n^k from the previous size) per measured size."""
    import math
    out: list[tuple[int, float, float | None]] = []
    for size in sizes:
        t = size["median"][mode].get(key)
        if t is None:
            continue
        n = size["virtual_services"]
        k = math.log(t / out[-1][1]) / math.log(n / out[-1][0]) if out and t > 0 and n != out[-1][0] else None
        out.append((n, t, k))
    return out


def growth_lines(sizes: list[dict], target: int = 10000) -> list[str]:
    lines = ["| mode | " + " | ".join(f"{s['virtual_services']:,} VS" for s in sizes) + " | exponent, last step |",
             "|---|" + "---:|" * len(sizes) + "---:|"]
    for mode in MODES:
        g = {n: (t, k) for n, t, k in growth(sizes, mode)}
        last = growth(sizes, mode)[-1:] if g else []
        exp = last[0][2] if last else None
        lines.append(f"| {mode} | " + " | ".join(fmt(g.get(s["virtual_services"], (None,))[0], "s") for s in sizes)
                     + f" | {'—' if exp is None else f'{exp:.2f}'} |")
        if last and exp is not None and last[0][0] < target:
            n, t, _ = last[0]
            lines.append(f"| {mode}, extrapolated to {target:,} VS (t x ({target:,}/{n:,})^{exp:.2f}) | "
                         + " | ".join("" for _ in sizes) + f" | {fmt(t * (target / n) ** exp, 's')} |")
    return lines


def conclusion(sizes: list[dict]) -> str:
    """The verdict at the largest size where both modes were measured; larger sizes where
    kopf was not (out of time or budget) cannot bring it within the factor."""
    both = [s for s in sizes if s["verdict"]["to_compiled"] is not None] or sizes[-1:]
    last = both[-1]
    v, n = last["verdict"], last["virtual_services"]
    tc, ch = v["to_compiled"], v["change_s"]
    figs = (f"at {n:,} VirtualServices x {last['per_vs']}: kopf / caches = "
            f"{'—' if tc is None else f'{tc:.2f}x'} on start to all NodeStates (computed), "
            f"{'—' if ch is None else f'{ch:.2f}x'} on one change")
    beyond = [s["virtual_services"] for s in sizes if s["virtual_services"] > n]
    if beyond:
        figs += "; kopf not measured at " + ", ".join(f"{b:,}" for b in beyond) + " (over its time budget)"
    if v["within"] and not beyond:
        return f"Within {CRITERION}x ({figs}): the criterion says use kopf's indexes and event handlers."
    return f"Not within {CRITERION}x ({figs}): the criterion says keep the operator's own caches."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_bench.kopf_indexes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000", help="VirtualServices, comma-separated, added in turn")
    ap.add_argument("--per-vs", type=int, default=10, help="RealServers per VirtualService")
    ap.add_argument("--directors", type=int, default=3)
    ap.add_argument("--trials", type=int, default=2, help="child processes per mode and size")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds a child may take to each stage")
    ap.add_argument("--budget", type=float, default=300,
                    help="a mode whose trial takes longer runs no more trials at that size nor at larger ones")
    ap.add_argument("--workdir", default=str(S.REPO / "build" / "bench-kopf-indexes"))
    ap.add_argument("--out", default=str(S.REPO / "bench" / "results" / "kopf-indexes"), help="stem of .md/.json")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    ap.add_argument("--namespace", default=S.OPNS, help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    ap.add_argument("--weight", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rerender", metavar="JSON", help="write the .md again from a run's .json, adding "
                    "--finding paragraphs (kept in the .json)")
    ap.add_argument("--finding", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rerender:
        path = Path(args.rerender)
        result = json.loads(path.read_text())
        result["conclusion"] = conclusion(result["sizes"])
        result["findings"] = result.get("findings", []) + args.finding
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")
        path.with_suffix(".md").write_text(render(result))
        return 0
    if args.child:
        args.mode = args.child
        child_main(args)
        return 0
    import shutil

    from lvs_cluster.control_plane import ControlPlane
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    cp = ControlPlane(workdir / "control-plane")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the control plane on the way out
    result: dict[str, Any] = {"machine": {**machine_info(), "command": " ".join(["python -m lvs_bench.kopf_indexes",
                                                                              *(argv or sys.argv[1:])])},
                              "sizes": []}
    try:
        cp.start()
        S.prepare(cp, args.directors)
        api = S.Api(cp.admin_kubeconfig)
        timed_out: set[str] = set()
        for k, n in enumerate(int(x) for x in args.sizes.split(",")):
            size = run_size(cp, api, n, args.per_vs, args.trials, workdir, args.timeout, 2 + 10 * k, timed_out,
                            args.budget)
            result["sizes"].append(size)
            result["conclusion"] = conclusion(result["sizes"])
            stem = Path(args.out)
            stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
            stem.with_suffix(".md").write_text(render(result))
            print(render(result).split("## Conclusion")[0].rsplit("\n## ", 1)[1], file=sys.stderr)
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
