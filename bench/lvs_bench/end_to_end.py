"""Part 5 of issue 7: end to end, `kubectl patch` of a RealServer on the host until
the dest's new weight is in the director's kernel (lab VM).

The whole system of the e2e tier (`lvs_e2e.system.System`): control plane and
lvs-operator on the host, the `nat` topology in the VM and the nat-director's
lvs-agent (`--netns nat-director`). M VirtualServices (VIPs from a VIPPool of
their own, 2 RealServers each, health checks off, no traffic) are created and
awaited in the kernel, then, one at a time, C weight changes: `kubectl patch`
from the host (admin kubeconfig; process start included) until the new weight
shows in the director's IPVS table.

Detection: a watcher process inside the guest, in the director's namespace,
reads the one service about to change over IPVS netlink every 10 ms (a get and
a dest dump: its cost does not grow with the table, unlike /proc/net/ip_vs,
which at 1k services kept a TCG vCPU busy; no process spawned per poll, no
host round trip) and logs every dest whose weight changed with the guest's
wall clock. The host points it at the next service first and patches once it
has logged that service's current weights.
The host converts those times to its own clock with an offset measured over
the command channel (`date` in the guest between two host timestamps, best of
several; its uncertainty, half the best round trip, is reported) and paces the
changes (next patch once the previous one was seen).

"Statuses settled" is set against the API server's own floor for the writes
the settle took (counted by the server, `apiserver_writes`; the floor measured
after the changes, `write_floor`): a settle time is only as good as its
distance from the time the server needs for those writes alone.
"""
from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import yaml

from . import apiserver_writes as W
from . import report as R

GROUP, VERSION = "lvs.kube-lvs.io", "v1alpha1"
NS = "bench-e2e"
POOL = "bench-e2e"
NETNS = "nat-director"
OPNS = "kube-lvs-system"
WATCH_NAME = "bench-ipvs-watch"
FULL = {"services": (1000, 10000), "changes": 100}
# Writes of each kind sent to find the API server's floor: enough that the
# pool's start is a small share of the time, few enough to keep it to seconds.
FLOOR_SAMPLE = 1000
SETTLE_KINDS = ("virtualservices", "realservers", "nodestates")
SMOKE = {"services": (3,), "changes": 5}

WATCHER = r"""
import sys, time
from lvs_agent.netlink_batch import IPVSConnection
from lvs_model.nodespec import ServiceKey
out = open(sys.argv[1], "a", buffering=1)
target_file, every = sys.argv[2], float(sys.argv[3])
conn = IPVSConnection()
target, prev, first = None, {}, False
while True:
    try:
        with open(target_file) as f:
            text = f.read().strip()
    except FileNotFoundError:
        text = ""
    if text and text != target:
        target, prev = text, {}
        first = True
    if target:
        vip, port, seq = target.split()
        svc = conn.read_services([ServiceKey("ipv4", "tcp", vip, int(port))])
        t = time.time()
        cur = {(s.address, s.port, d.address, d.port): d.weight for s in svc.values() for d in s.dests}
        lines = [f"{t:.6f} {a}:{p} {da}:{dp} {w}" for (a, p, da, dp), w in cur.items()
                 if prev.get((a, p, da, dp)) != w]
        if first:  # after the dests' current weights: the host patches only then
            lines.append(f"{t:.6f} TARGET {vip} {port} {seq}")
            first = False
        if lines:
            out.write("\n".join(lines) + "\n")
        prev = cur
    time.sleep(every)
"""


def log(msg: str) -> None:
    import sys
    print(f"[bench/e2e] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def vip(i: int) -> str:
    return f"10.2.{i >> 8}.{i & 255}"


RS_ADDRS = ("10.0.0.51", "10.0.0.52")


def hexkey(addr: str, port: int) -> str:
    """An IPv4 endpoint as /proc/net/ip_vs writes it."""
    return "%08X:%04X" % (struct.unpack("!I", socket.inet_aton(addr))[0], port)


def objects(m: int, start: int = 0) -> list[dict]:
    """The namespace, the VIPPool and VirtualServices ``start``..``m - 1`` with their RealServers."""
    out: list[dict] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VIPPool", "metadata": {"name": POOL},
         "spec": {"addresses": ["10.2.0.0/16"], "namespaces": [NS]}},
    ]
    for i in range(start, m):
        out.append({"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualService",
                    "metadata": {"name": f"vs{i}", "namespace": NS},
                    "spec": {"address": vip(i), "port": 80, "protocol": "tcp", "scheduler": "wlc",
                             "method": "nat", "natReturn": "gateway", "healthCheck": {"type": "none"},
                             "directorSelector": {"matchLabels": {"lvs.kube-lvs.io/director": "true"}}}})
        for j, a in enumerate(RS_ADDRS):
            out.append({"apiVersion": f"{GROUP}/{VERSION}", "kind": "RealServer",
                        "metadata": {"name": f"vs{i}-rs{j}", "namespace": NS},
                        "spec": {"virtualService": f"vs{i}", "address": a, "port": 80, "weight": 1}})
    return out


def percentile(xs: list[float], p: float) -> float | None:
    """Nearest rank."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


def _log_time(line: str) -> float | None:
    """The UTC epoch of a log line that starts with ``[YYYY-mm-dd HH:MM:SS,mmm]``
    (the operator's) or ``YYYY-mm-dd HH:MM:SS,mmm`` (the agent's)."""
    import calendar
    text = line.lstrip("[")[:23]
    try:
        base = calendar.timegm(time.strptime(text[:19], "%Y-%m-%d %H:%M:%S"))
        return base + int(text[20:23]) / 1000
    except ValueError:
        return None


def breakdown(trace: list[dict], operator_log: list[str], agent_log: list[str], offset: float,
              nodestate_prefix: str = f"{NETNS}-{NS}-") -> list[dict]:
    """Where each change's time went, from the host's trace and the two logs:
    ``operator`` from the patch (kubectl start) to the operator's log of the
    NodeState write, ``agent`` from that write to the weight seen in the
    kernel, split in turn at the agent's wake (the watch event: its log line
    of the pass says how long the pass took and waited) into ``delivery`` and
    ``pass``. The agent names the objects that woke a pass; its clock is the
    guest's (``offset``: guest - host). Parts whose lines are missing are None."""
    import re
    op_lines = [(t, ln) for ln in operator_log if (t := _log_time(ln)) is not None]
    passes = []
    for ln in agent_log:
        m = re.search(r"reconciled: .* in ([\d.]+)s \(waited ([\d.]+)s", ln)
        if m and (t := _log_time(ln)) is not None:
            passes.append((t - offset - float(m.group(1)) - float(m.group(2)), ln))
    out = []
    for tr in trace:
        name = nodestate_prefix + tr["vs"]
        seen = tr["seen_guest"] - offset if tr.get("seen_guest") is not None else None
        wrote = next((t for t, ln in op_lines if t >= tr["patch"] - 0.01 and ln.endswith(" " + name)), None)
        row = {"vs": tr["vs"], "operator": None, "agent": None, "delivery": None, "pass": None}
        if wrote is not None:
            row["operator"] = round(wrote - tr["patch"], 4)
            if seen is not None:
                row["agent"] = round(seen - wrote, 4)
                woke = next((t for t, ln in passes if t >= wrote - 0.2 and re.search(rf"[;,] {name}\b", ln)), None)
                if woke is not None:
                    row["delivery"], row["pass"] = round(woke - wrote, 4), round(seen - woke, 4)
        out.append(row)
    return out


def columns() -> list[R.Column]:
    return [
        R.Column("services", "VirtualServices", "int"),
        R.Column("changes", "changes", "int"),
        R.Column("seen", "seen in kernel", "count"),
        R.Column("p50", "p50", "sec"),
        R.Column("p99", "p99", "sec"),
        R.Column("max", "max", "sec"),
        R.Column("op_p50", "patch to NodeState write p50", "sec"),
        R.Column("op_max", "patch to NodeState write max", "sec"),
        R.Column("agent_p50", "write to kernel p50", "sec"),
        R.Column("agent_max", "write to kernel max", "sec"),
        R.Column("clock_err", "clock offset ±", "sec"),
        R.Column("host_busy", "host cores busy during changes", "cores"),
        R.Column("initial", "all services in kernel", "sec"),
        R.Column("settled", "statuses settled", "sec"),
        R.Column("creates", "creates", "count"),
        R.Column("vs_status", "VirtualService status writes", "count"),
        R.Column("rs_status", "RealServer status writes", "count"),
        R.Column("ns_status", "NodeState status writes", "count"),
        R.Column("ns_writes", "NodeState writes", "count"),
        R.Column("writes", "writes to settle", "count"),
        R.Column("floor", "API server floor for them", "sec"),
        R.Column("settled/floor", "settled / floor", "ratio"),
        R.Column("agent_rss_mib", "agent peak RSS MiB", "int"),
        R.Column("operator_rss_mib", "operator peak RSS MiB", "int"),
    ]


def clock_offset(system, tries: int = 7) -> tuple[float, float]:
    """(guest - host seconds, uncertainty): `date` in the guest, best round trip."""
    best = None
    for _ in range(tries):
        t1 = time.time()
        out = system.ctl.run(["date", "+%s.%N"]).check().out
        t2 = time.time()
        g = float(out.strip())
        cand = (t2 - t1, g - (t1 + t2) / 2)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1], best[0] / 2


def _vmhwm_mib(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return None


def agent_rss(system, director: str = NETNS) -> int | None:
    """VmHWM of the director's lvs-agent process in the guest (largest match)."""
    r = system.ctl.run(["pgrep", "-f", f"lvs-agent .*--node {director}( |$)"])
    best = None
    for pid in r.out.split():
        st = system.ctl.run(["cat", f"/proc/{pid}/status"])
        v = _vmhwm_mib(st.out) if st.rc == 0 else None
        if v and (best is None or v > best):
            best = v
    return best


def operator_rss(system) -> int | None:
    if system.operator is None:
        return None
    try:
        return _vmhwm_mib(Path(f"/proc/{system.operator.pid}/status").read_text())
    except OSError:
        return None


def cpu_seconds(system, director: str = NETNS) -> dict[str, float]:
    """CPU seconds so far of what shares the host's cores: the VM (qemu, all of
    the guest's work), the control plane, the operator; and, inside the VM,
    the director's agent."""
    from .operator_scale import _cpu_seconds, stat_cpu_seconds
    pids = {"vm": system.vm.proc.pid if system.vm and system.vm.proc else None,
            "operator": system.operator.pid if system.operator else None,
            **(system.cp.pids if system.cp else {})}
    out = {name: c for name, pid in pids.items() if pid and (c := _cpu_seconds(pid)) is not None}
    r = system.ctl.run(["sh", "-c", f"for p in $(pgrep -f 'lvs-agent --node {director}'); do cat /proc/$p/stat; done"])
    agent = 0.0
    for line in r.out.splitlines():
        try:
            agent += stat_cpu_seconds(line, 100)  # the guest's ticks: 1/100 s
        except (IndexError, ValueError):
            continue  # a process gone mid-read
    if agent:
        out["agent (in the VM)"] = agent
    return out


def ensure_director(system, director: str = NETNS) -> None:
    """The director's topology (`<kind>-director`) and its agent, unless already there."""
    kind = director.split("-", 1)[0]
    if kind not in system.topologies:
        log(f"building the {kind} topology in the VM")
        system.build_topology(kind)
    if not system.ctl.alive(f"agent-{director}"):
        log(f"starting the {director} agent")
        system.start_agent(director, director, resync=30)  # the product's default


def complete_services(proc_ip_vs: str, m: int) -> int:
    """Services 0..m-1 with all their dests, from /proc/net/ip_vs. Any weight: a
    smaller size's changes left some at other weights, and the sizes grow on top."""
    want = {hexkey(vip(i), 80) for i in range(m)}
    cur, svc = {}, None
    for line in proc_ip_vs.splitlines():
        p = line.split()
        if len(p) >= 2 and p[0] == "TCP":
            svc = p[1] if p[1] in want else None
            if svc:
                cur[svc] = 0
        elif svc and len(p) >= 4 and p[0] == "->":
            cur[svc] += 1
    return sum(1 for s, c in cur.items() if c == len(RS_ADDRS))


def _ip_vs(system, director: str) -> str:
    return system.ctl.run(["ip", "netns", "exec", director, "cat", "/proc/net/ip_vs"]).check().out


def _services_in_kernel(system, m: int, director: str = NETNS) -> int:
    return complete_services(_ip_vs(system, director), m)


def bench_services_in_kernel(system, director: str = NETNS) -> int:
    """How many services of the bench's VIP range (10.2.0.0/16) the director has."""
    return sum(1 for p in map(str.split, _ip_vs(system, director).splitlines())
               if p and p[0] in ("TCP", "UDP") and p[1].startswith("0A02"))


def settle(api, timeout: float, window: float = 5.0) -> float:
    """When NodeStates (the agent writes their status) and VirtualServices (the
    operator does) stopped changing: no resourceVersion moved over ``window``."""
    def rvs():
        return api.versions("nodestates", OPNS), api.versions("virtualservices", NS)
    prev, t_prev, deadline = None, time.perf_counter(), time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        cur = rvs()
        if cur == prev:
            return t_prev
        prev, t_prev = cur, t
        time.sleep(window)
    raise TimeoutError(f"statuses still changing after {timeout:.0f}s")


def measure(system, services: int, changes: int, change_timeout: float = 60,
            initial_timeout: float = 900, cleanup: bool = True, director: str = NETNS,
            start: int = 0, floor_sample: int = FLOOR_SAMPLE) -> tuple[dict, dict]:
    """On a running System: (row, details). `director` is the one Node labelled
    lvs.kube-lvs.io/director=true, its netns of the same name (nat-director by default).
    ``start``: services 0..start-1 are there already (a smaller size's), only the rest
    are created; ``cleanup``: delete the namespace afterwards; ``floor_sample``:
    writes of each kind sent to find the API server's floor for the settle's writes."""
    row: dict[str, Any] = {c.key: None for c in columns()}
    row.update(services=services, changes=changes)
    details: dict[str, Any] = {}
    guest_log = f"/tmp/e2e/{WATCH_NAME}.log"
    watching = False
    try:
        ensure_director(system, director)
        counts0 = W.request_counts(system.kubectl("get", "--raw", "/metrics"))
        t0 = time.perf_counter()
        objs = objects(services, start)
        details["added"] = services - start
        plurals = {"VirtualService": "virtualservices", "RealServer": "realservers"}
        system.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([o for o in objs if o["kind"] not in plurals]))
        from .operator_scale import Api, create_many
        api = Api(system.cp.admin_kubeconfig)
        create_many(api, [(plurals[o["kind"]], NS, o) for o in objs if o["kind"] in plurals],
                    group=1 + len(RS_ADDRS))
        details["apply_s"] = round(time.perf_counter() - t0, 2)
        last = [0]

        def all_in():
            last[0] = _services_in_kernel(system, services, director)
            return last[0] == services
        deadline = time.perf_counter() + initial_timeout
        poll = max(1.0, services / 1000)  # each poll formats the whole table in the TCG guest
        told = time.perf_counter()
        while not all_in():
            if time.perf_counter() - told >= 60:
                told = time.perf_counter()
                log(f"{last[0]} of {services} services complete in the kernel after {told - t0:.0f}s")
            if time.perf_counter() > deadline:
                row["seen"] = R.error(f"only {last[0]} of {services} services complete in the kernel "
                                      f"after {initial_timeout:.0f}s")
                _agent_log_tail(system, director, details)
                return row, details
            time.sleep(poll)
        row["initial"] = time.perf_counter() - t0
        log(f"{services} services in the director's kernel after {row['initial']:.1f}s")
        # Changes are measured in a steady state: once the agent's and the operator's
        # status writes for the new services have settled.
        row["settled"] = settle(api, initial_timeout) - t0
        log(f"statuses settled after {row['settled']:.1f}s")
        settle_writes = W.writes_between(counts0, W.request_counts(system.kubectl("get", "--raw", "/metrics")),
                                         SETTLE_KINDS)
        row.update(W.by_kind(settle_writes))
        details["settle_writes"] = {W.label(k): v for k, v in settle_writes.items()}

        target = f"/tmp/e2e/{WATCH_NAME}.target"
        system.ctl.run(["rm", "-f", guest_log, target])
        system.ctl.spawn(WATCH_NAME, ["ip", "netns", "exec", director, system.python, "-c", WATCHER,
                                      guest_log, target, "0.01"], log=f"/tmp/e2e/{WATCH_NAME}.err")
        watching = True
        from lvs_e2e.system import GUEST_RUN, wait_until

        def grep(pattern: str) -> str | None:
            r = system.ctl.run(["grep", "-m1", "-e", pattern, guest_log])
            return r.out.strip() if r.rc == 0 and r.out.strip() else None
        off1, err1 = clock_offset(system)
        cpu0, wall0 = cpu_seconds(system, director), time.perf_counter()
        lat: list[float] = []
        missed: list[str] = []
        trace: list[dict] = []  # per change: host times, for the breakdown against the logs
        op_log = system.workdir / "operator.log"
        op_from = op_log.stat().st_size if op_log.exists() else 0
        for c in range(changes):
            # Weights no smaller size used (its changes stay: the sizes grow on top),
            # so every change is a real change the kernel has to see.
            i, j, w = (c * 37) % services, c % 2, 2 + c + (changes if start else 0)
            # Point the watcher at the service about to change; once it logged the
            # service's current weights (its first read of it), patch.
            system.ctl.run(["sh", "-c", f"echo '{vip(i)} 80 {c}' > {target}.tmp && mv {target}.tmp {target}"])
            wait_until("watcher on the target", lambda: grep(f" TARGET {vip(i)} 80 {c}$"), 60, 0.1)
            needle = f" {vip(i)}:80 {RS_ADDRS[j]}:80 {w}"
            t_host = time.time()
            system.kubectl("patch", "realservers.lvs.kube-lvs.io", "-n", NS, f"vs{i}-rs{j}", "--type", "merge",
                           "-p", '{"spec":{"weight":%d}}' % w)
            trace.append({"vs": f"vs{i}", "patch": round(t_host, 4), "kubectl_done": round(time.time(), 4)})
            seen_at = None
            end = time.perf_counter() + change_timeout
            while time.perf_counter() < end:
                line = grep(needle + "$")
                if line:
                    seen_at = float(line.split()[0])
                    break
                time.sleep(0.2)  # each look is a process in the guest: fewer compete less with the agent
            if seen_at is None:
                missed.append(f"vs{i}-rs{j} weight {w}")
                if len(missed) == 1:
                    _agent_log_tail(system, director, details)
                if len(missed) >= 3 and not lat:
                    log("3 changes missed and none seen: not waiting for the rest")
                    break
            else:
                lat.append((t_host, seen_at))
                trace[-1]["seen_guest"] = round(seen_at, 4)
        cpu1, wall = cpu_seconds(system, director), time.perf_counter() - wall0
        details["cpu_during_changes"] = {"wall_s": round(wall, 1),
                                         **{k: round(v - cpu0.get(k, 0.0), 1) for k, v in cpu1.items()}}
        row["host_busy"] = round(sum(v - cpu0.get(k, 0.0) for k, v in cpu1.items() if k != "agent (in the VM)") / wall, 2)
        log(f"CPU seconds during the changes: {details['cpu_during_changes']}")
        off2, err2 = clock_offset(system)
        off = (off1 + off2) / 2
        details["trace"] = trace
        details["operator_log"] = _lines(op_log.read_bytes()[op_from:].decode(errors="replace"), "NodeState")
        details["agent_log"] = _lines(system.ctl.run(["grep", "-e", "reconciled:", "-e", "garbage collection",
                                                      "-e", "WARN", "-e", "ERROR",
                                                      f"{GUEST_RUN}/agent-{director}.log"]).out, "", 400)
        details.update(offset_before=off1, offset_after=off2, offset_err=max(err1, err2))
        xs = [g - off - h for h, g in lat]
        details["latencies"] = [round(x, 4) for x in xs]
        row["seen"] = len(xs) if not missed else R.error(f"{len(missed)} change(s) never seen within "
                                                          f"{change_timeout:.0f}s, e.g. {missed[:3]}")
        row["p50"], row["p99"], row["max"] = percentile(xs, 50), percentile(xs, 99), (max(xs) if xs else None)
        parts = breakdown(trace, details["operator_log"], details["agent_log"], off, f"{director}-{NS}-")
        details["breakdown"] = parts
        for key in ("operator", "agent"):
            got = [p[key] for p in parts if p[key] is not None]
            short = "op" if key == "operator" else key
            row[f"{short}_p50"], row[f"{short}_max"] = percentile(got, 50), (max(got) if got else None)
        row["clock_err"] = max(err1, err2) + abs(off2 - off1) / 2
        if not missed:
            _agent_log_tail(system, director, details)  # what the agent did meanwhile
        row["agent_rss_mib"] = agent_rss(system, director)
        row["operator_rss_mib"] = operator_rss(system)
        log(f"{len(xs)} changes: p50 {row['p50']}, p99 {row['p99']}, max {row['max']}, "
            f"clock offset {off:.3f}s ±{row['clock_err']:.3f}")
        floor(system, api, settle_writes, floor_sample, director, row, details)
        return row, details
    except Exception as e:  # noqa: BLE001 - an error cell, not a crash
        log(f"failed: {e}")
        if not R.is_error(row.get("seen")):
            row["seen"] = R.error(str(e)[:400])
        return row, details
    finally:
        if watching:
            try:
                system.ctl.signal(WATCH_NAME, 15, wait=20)
            except Exception:  # noqa: BLE001
                pass
        if cleanup:
            delete_services(system)


def floor(system, api, writes: dict, sample: int, director: str, row: dict, details: dict) -> None:
    """The API server's floor for the settle's ``writes`` (after the measured
    phases: it stops the operator and the agent meanwhile), into ``row`` and
    ``details``; what it disturbed settled again before returning."""
    from . import write_floor as F
    t0 = time.perf_counter()
    try:
        got = F.measure(system, system.cp.admin_kubeconfig, writes,
                        {"virtualservices": NS, "realservers": NS, "nodestates": OPNS},
                        {"nodestates": lambda o: o["metadata"]["name"].startswith(f"{director}-{NS}-")},
                        sample, director)
    except Exception as e:  # noqa: BLE001 - an error cell, the rest of the row kept
        log(f"floor not measured: {e}")
        row["floor"] = R.error(f"floor not measured: {e}"[:400])
        return
    finally:
        details["floor_wall_s"] = round(time.perf_counter() - t0, 1)
    details["floor"] = got
    row["floor"] = got["floor_s"]
    row["settled/floor"] = R.ratio(row.get("settled"), row["floor"])
    log(f"floor for the {row['writes']} writes to settle: {row['floor']} s at {got['threads']} threads "
        f"(settled / floor {row['settled/floor']}); {got['kinds']}")
    try:
        settle(api, 600)  # the operator's and the agent's catch-up, if any, before what comes next
    except TimeoutError as e:
        details["after_floor"] = str(e)
        log(f"after the floor: {e}")


def delete_services(system) -> None:
    system.kubectl("delete", "namespace", NS, "--ignore-not-found", "--wait=false", check=False)
    system.kubectl("delete", "vippool.lvs.kube-lvs.io", POOL, "--ignore-not-found", check=False)


STANDING_NOTES = [
    "lvs_e2e.system.System: control plane + lvs-operator on the host, nat topology + the nat-director's "
    "lvs-agent in the lab VM (TCG); M VirtualServices (VIPs 10.2.x.y from their own VIPPool, 2 "
    "RealServers each, health checks off, no traffic)",
    "latency: kubectl patch of one RealServer's weight on the host (process start included) until "
    "the new weight is in the director's IPVS table, one change at a time; detected by a watcher "
    "inside the guest reading the one service about to change (IPVS netlink, in the director's namespace) every 10 ms, its guest "
    "timestamps mapped to the host clock by an offset measured over the command channel "
    "(uncertainty in the 'clock offset ±' column)",
    "services created by the kubernetes Python client from 8 threads, each VirtualService before its "
    "RealServers (Namespace and VIPPool by kubectl); sizes grow: a size adds its services to the smaller "
    "size's (10,000 = the 1,000 measured before + 9,000 created), so its 'all services in kernel' and "
    "'statuses settled' times are for the services it added; "
    "changes start once every service is in the kernel and the statuses have settled (no NodeState or "
    "VirtualService resourceVersion moved over 5 s)",
    "path of one change: operator (watch -> compile of the one VirtualService -> NodeState replace), "
    "agent (watch -> incremental reconcile: that service re-read and re-planned, not the table)",
    "patch to NodeState write: from the patch (kubectl process start) to the operator's log line of "
    "the NodeState replace; write to kernel: from that line to the weight seen in the kernel (watch "
    "delivery into the VM and the agent's pass); each change's split is in the JSON's details.breakdown",
    "host cores busy during changes: CPU seconds of the VM (qemu: all of the guest's work), "
    "kube-apiserver, etcd, kube-controller-manager and the operator over the change phase's wall time "
    f"(the host has {os.cpu_count()} cores, shared); the JSON's details.cpu_during_changes splits it, with "
    "the agent's own share of the VM",
    "agent with the product's default --resync 30: every service re-checked for drift once per 30 s, a "
    "slice every 0.5 s between changes; statuses built and written by threads of their own",
    "writes to settle: the API server's own count (apiserver_request_total, answered 2xx) of the writes "
    "to VirtualServices, RealServers and NodeStates from the create's first request to 'statuses "
    "settled': creates (the bench's own VirtualServices and RealServers: the settle clock starts "
    "with them), status writes of each kind (operator: VirtualServices and RealServers; agent: "
    "NodeStates), NodeState writes (the operator's creates and replaces); per kind and verb in the "
    "JSON's details.settle_writes",
    "API server floor for them: after the changes, with the operator and the agent stopped (SIGSTOP), "
    "the same number of writes of each kind and verb sent by a plain client (kept-alive raw HTTPS, "
    "lvs_kube.status_patch) to the same objects with their own bodies: creates of copies (deleted "
    "after, not timed), status writes and replaces changing one value and then restoring it; at "
    f"most --e2e-floor-sample (default {FLOOR_SAMPLE:,}) writes per kind timed and the floor scaled "
    "up by count / writes sent; the "
    "kinds one after the other, from the fastest of 4, 8 and 16 threads (tried on the largest kind); "
    "details.floor has each kind's rate, body size and the threads chosen. settled / floor: issue "
    "21's goal is <= 1.3x",
    "context only, not a side-by-side peer: kube-proxy in IPVS mode was reported at ~20 s per "
    "endpoint change with ~4,000 endpoints (kubernetes#73382); issue 7's target is p99 < 1 s at 10k "
    "services",
]


def _lines(text: str, needle: str, last: int = 400) -> list[str]:
    """The last lines of a log that hold ``needle``: kept with the results, so a
    slow change can be traced through operator and agent afterwards."""
    return [ln for ln in text.splitlines() if needle in ln][-last:]


def _agent_log_tail(system, director: str, details: dict) -> None:
    """The agent's last log lines, in the details and the bench log: what it
    was doing when a change went missing."""
    try:
        tail = system.guest_log(f"agent-{director}.log", 60)
    except Exception as e:  # noqa: BLE001
        tail = f"(agent log not read: {e})"
    details["agent_log_tail"] = tail
    log("agent log tail:\n" + tail)


def build_table(rows: list[dict], notes: list[str]) -> R.Table:
    return R.Table("end_to_end", "5. End to end (kubectl patch of a RealServer until the weight is in the "
                   "director's kernel)", columns(), rows, STANDING_NOTES + notes)


def run(sizes: list[int], changes: int, workdir: Path | None = None,
        floor_sample: int = FLOOR_SAMPLE) -> tuple[R.Table, dict]:
    """Boot the whole system once and measure each size, smallest first; each size
    adds its services to the previous size's (after a failed size: from empty)."""
    from lvs_e2e.system import REPO, System
    workdir = workdir or REPO / "build" / "bench-e2e"
    rows, details, notes = [], [], []
    t0 = time.perf_counter()
    import shutil
    shutil.rmtree(workdir / "control-plane", ignore_errors=True)  # etcd data would outlive the run
    s = System(workdir=workdir, log=log)
    try:
        try:
            s.start_control_plane()
            s.start_operator()
            s.add_node("nat-director", True)
            s.boot()
            ensure_director(s)
        except Exception as e:  # noqa: BLE001
            rows = [{**{c.key: None for c in columns()}, "services": n, "changes": changes,
                     "seen": R.error(f"system did not start: {e}"[:400])} for n in sizes]
            return build_table(rows, notes), {"details": details}
        details.append({"boot_s": round(time.perf_counter() - t0, 1)})
        present = 0  # services already there: the smaller size's, kept (creating them again cost minutes)
        for k, n in enumerate(sorted(sizes)):
            if k and not present:  # the failed size's namespace must be gone from the kernel first
                from lvs_e2e.system import wait_until
                try:
                    wait_until("previous services gone", lambda: bench_services_in_kernel(s) == 0, 600, 2)
                    # And the namespace itself: applying it while it still terminates is a
                    # no-op, and every create would then fail with NotFound.
                    wait_until("previous namespace gone", lambda: not s.kubectl(
                        "get", "namespace", NS, "--ignore-not-found", "-o", "name").strip(), 600, 1)
                except Exception as e:  # noqa: BLE001 - an error row, the other sizes' rows kept
                    rows.append({**{c.key: None for c in columns()}, "services": n, "changes": changes,
                                 "seen": R.error(f"not run: {e}"[:400])})
                    d = {"services_left": bench_services_in_kernel(s)}
                    _agent_log_tail(s, NETNS, d)
                    details.append(d)
                    continue
            r, d = measure(s, n, changes, cleanup=False, start=present, floor_sample=floor_sample)
            rows.append(r)
            details.append(d)
            present = n
            if R.is_error(r.get("seen")) or R.is_error(r.get("p99")):
                delete_services(s)  # the next size starts from an empty namespace
                present = 0
    finally:
        s.close()
    return build_table(rows, notes), {"details": details, "wall_seconds": round(time.perf_counter() - t0, 1)}
