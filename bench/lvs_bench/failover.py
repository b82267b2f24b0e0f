"""Director failover (issue 17, part 6), run inside the lab VM: kube-lvs's
director HA side by side with keepalived (VRRP + the kernel's IPVS sync
daemon) on the same topology, with the same traffic and the same failure.

    PYTHONPATH=bench python -m lvs_bench.failover [--smoke] [--trials N] [--held N] [--out DIR] [--name NAME]

Topology (namespaces on one bridge, DR): client 192.168.2.1, directors d1 .2
and d2 .3, real servers rs1 .10 and rs2 .11 holding the VIP 192.168.2.100 on
``lo``; services VIP:80 (HTTP) and VIP:8080 (an echo server that keeps every
connection), ``rr`` over both real servers.

Contenders, each started on both directors of a fresh topology:

- *kube-lvs*: the agent's director side as tests/kernel/ha_director.py runs
  it (engine + HaController: Leases in a file-backed store, takeover
  announcements, the sync daemons), d1 preferred, the agent's defaults;
- *keepalived*: one VRRP instance (d1 MASTER priority 150, d2 BACKUP 100,
  ``advert_int 1``), the VIP as ``virtual_ipaddress``, ``lvs_sync_daemon eth0
  VI_1 id 5`` and ``virtual_server`` blocks for the same services with the
  same DR real servers, as keepalived.conf(5) and its lvs_syncd sample show.

A trial: once the VIP answers through one director, N held connections (200)
are opened through it and echo; the other director's connection table must
show them all (the sync daemon carried them). New HTTP requests start every
50 ms (0.5 s timeout each). Then every process of the holder's contender is
killed with SIGKILL and its link taken down (a node death). Measured from the
link going down: seconds until the first new request that succeeds started,
requests that failed meanwhile, requests that failed after that first success
(flapping), and how many held connections still echo. Trials alternate
between contenders so that the load of the shared machine weighs on both.
Figures are reported, never asserted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from . import report as R

VIP, HTTP_PORT, HOLD_PORT = "192.168.2.100", 80, 8080
HOSTS = {"client": "192.168.2.1", "d1": "192.168.2.2", "d2": "192.168.2.3",
         "rs1": "192.168.2.10", "rs2": "192.168.2.11"}
DIRECTORS, REAL_SERVERS = ("d1", "d2"), ("rs1", "rs2")
SYNC_ID, VRID = 5, 51
PRIORITY = {"d1": 150, "d2": 100}
HELD = 200
FULL_TRIALS, SMOKE_TRIALS = 3, 1
REQUEST_EVERY, REQUEST_TIMEOUT = 0.05, 0.5
AFTER = 2.0  # seconds of requests after the first success (flapping shows there)
DEADLINE = 120.0  # a bound for polling, not a performance target
PREFIX = "fo-"
RUN_DIR = Path("/tmp/kube-lvs-bench/failover")  # the guest's /tmp is a tmpfs
REPO = Path(__file__).resolve().parents[2]
HA_DIRECTOR = REPO / "tests" / "kernel" / "ha_director.py"
CONTENDERS = ("kube-lvs", "keepalived")


def log(msg: str) -> None:
    print(f"[failover {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class TrialError(Exception):
    """A trial whose figures cannot be reported."""


# --------------------------------------------------------------------------
# Configuration of the two contenders (pure)
# --------------------------------------------------------------------------

def node_doc(node: str) -> dict:
    """kube-lvs's node spec for director ``node``: both services, one group
    of both directors holding the VIP, d1 preferred."""
    def dests(port: int) -> list[dict]:
        return [{"address": HOSTS[r], "port": port, "method": "dr"} for r in REAL_SERVERS]
    return {"node": node, "uplink": "eth0",
            "services": [{"address": VIP, "port": p, "scheduler": "rr", "dests": dests(p)}
                         for p in (HTTP_PORT, HOLD_PORT)],
            "directorAddresses": [VIP],
            "directorGroups": [{"name": "g", "members": list(DIRECTORS), "vips": [VIP],
                                "syncId": SYNC_ID, "preferred": DIRECTORS[0]}]}


def keepalived_conf(node: str, dev: str = "eth0") -> str:
    """keepalived.conf for director ``node``: the same services and real
    servers, the VIP moved by VRRP on ``dev``, the kernel's sync daemon on
    ``dev`` following the instance's state (master daemon while MASTER,
    backup otherwise)."""
    state = "MASTER" if node == DIRECTORS[0] else "BACKUP"
    servers = "".join(
        f"virtual_server {VIP} {port} {{\n"
        "    lb_algo rr\n"
        "    lb_kind DR\n"
        "    protocol TCP\n"
        + "".join(f"    real_server {HOSTS[r]} {port} {{\n        weight 1\n    }}\n" for r in REAL_SERVERS)
        + "}\n"
        for port in (HTTP_PORT, HOLD_PORT))
    return (f"global_defs {{\n"
            f"    router_id {node}\n"
            f"    lvs_sync_daemon {dev} VI_1 id {SYNC_ID}\n"
            f"}}\n"
            f"vrrp_instance VI_1 {{\n"
            f"    state {state}\n"
            f"    interface {dev}\n"
            f"    virtual_router_id {VRID}\n"
            f"    priority {PRIORITY[node]}\n"
            f"    advert_int 1\n"
            f"    virtual_ipaddress {{\n"
            f"        {VIP}/32 dev {dev}\n"
            f"    }}\n"
            f"}}\n" + servers)


# --------------------------------------------------------------------------
# Figures (pure)
# --------------------------------------------------------------------------

def takeover(log_: Iterable[tuple[float, bool]], down: float) -> dict | None:
    """From the request log ((start, succeeded) per request) and the moment
    the holder's link went down: seconds until the first request that
    succeeded started, requests that failed before it, and requests that
    failed after it. None when no request succeeded after ``down``."""
    after = sorted((t, ok) for t, ok in log_ if t >= down)
    first = next((t for t, ok in after if ok), None)
    if first is None:
        return None
    return {"takeover_seconds": round(first - down, 3),
            "failed_requests": sum(1 for t, ok in after if t < first and not ok),
            "failed_after_first_success": sum(1 for t, ok in after if t > first and not ok),
            "requests_after": sum(1 for t, _ in after if t > first)}


def spread(values: list[float]) -> tuple[float, float, float] | None:
    """(median, min, max), or None for no values."""
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def _range_text(s: tuple[float, float, float] | None, fmt: Callable[[float], str]) -> str | None:
    return None if s is None else f"{fmt(s[1])} - {fmt(s[2])}"


def summary_row(who: str, trials: list[dict], held: int) -> dict[str, Any]:
    """One contender's row: median and range of each figure over its
    successful trials; error cells when none succeeded."""
    ok = [t for t in trials if "error" not in t]
    failed = len(trials) - len(ok)
    row: dict[str, Any] = {"who": who, "trials": len(ok), "held": held}
    if not ok:
        why = trials[0]["error"] if trials else "not run"
        for k in ("takeover", "takeover_range", "failed", "failed_range", "answering", "answering_min"):
            row[k] = R.error(why)
        row["failed_after"] = R.error(why)
        return row
    tk = spread([t["takeover_seconds"] for t in ok])
    fr = spread([t["failed_requests"] for t in ok])
    an = spread([t["held_answering"] for t in ok])
    row.update({"takeover": tk[0], "takeover_range": _range_text(tk, R.fmt_seconds),
                "failed": fr[0], "failed_range": _range_text(fr, lambda x: f"{x:g}"),
                "failed_after": sum(t["failed_after_first_success"] for t in ok),
                "answering": an[0], "answering_min": an[1]})
    if failed:
        row["trials"] = f"{len(ok)} (+{failed} failed)"
    return row


def build_tables(results: dict[str, list[dict]], held: int, notes: list[str]) -> list[R.Table]:
    """The side-by-side table (one row per contender, ratios to keepalived)
    and the table of every trial."""
    cols = [R.Column("who", "director HA", "text"),
            R.Column("takeover", "first new request after kill -9 + link down (median)", "sec"),
            R.Column("takeover_range", "min - max", "text"),
            R.Column("failed", "requests failed meanwhile (median)", "count"),
            R.Column("failed_range", "min - max", "text"),
            R.Column("failed_after", "failed after the first success (all trials)", "count"),
            R.Column("answering", "held connections answering (median)", "count"),
            R.Column("answering_min", "min", "count"),
            R.Column("held", "held", "count"),
            R.Column("trials", "trials", "text")]
    rows = [summary_row(who, results.get(who, []), held) for who in CONTENDERS]
    peer = rows[-1]
    for r in rows:
        r["takeover/keepalived"] = R.ratio(r.get("takeover"), peer.get("takeover")) if r is not peer else None
        r["failed/keepalived"] = R.ratio(r.get("failed"), peer.get("failed")) if r is not peer else None
    cols += [R.Column("takeover/keepalived", "takeover / keepalived", "ratio"),
             R.Column("failed/keepalived", "failed / keepalived", "ratio")]
    main = R.Table("failover", "6. Director failover, DR, two directors (kill -9 of the holder + its link down)",
                   cols, rows, notes)
    tcols = [R.Column("who", "director HA", "text"), R.Column("trial", "trial", "int"),
             R.Column("takeover_seconds", "first new request", "sec"),
             R.Column("failed_requests", "failed meanwhile", "count"),
             R.Column("failed_after_first_success", "failed after", "count"),
             R.Column("held_answering", "held answering", "count"),
             R.Column("sync_seconds", "held connections on the backup after", "sec"),
             R.Column("start_seconds", "start to VIP answering", "sec"),
             R.Column("link_down_after_kill", "link down after the kill", "sec"),
             R.Column("new_holder", "VIP holder after", "text")]
    trows = []
    for who in CONTENDERS:
        for i, t in enumerate(results.get(who, []), 1):
            if "error" in t:
                trows.append({"who": who, "trial": i, **{c.key: (R.error(t["error"]) if c.key == "takeover_seconds"
                                                                 else None) for c in tcols[2:]}})
            else:
                trows.append({"who": who, "trial": i, **{c.key: t.get(c.key) for c in tcols[2:]}})
    trials = R.Table("failover_trials", "Every trial", tcols, trows)
    return [main, trials]


def summary_lines(tables: list[R.Table]) -> list[str]:
    t = next((t for t in tables if t.id == "failover"), None)
    out = []
    for r in (t.rows if t else []):
        if R.is_error(r.get("takeover")):
            out.append(f"{r['who']}: not measured ({r['takeover']['error']})")
            continue
        out.append(f"{r['who']}: first new request {R.fmt_cell(r.get('takeover'), 'sec')} after kill -9 + link "
                   f"down ({r.get('takeover_range')}), {R.fmt_cell(r.get('failed'), 'count')} requests failed "
                   f"meanwhile, {R.fmt_cell(r.get('answering'), 'count')} of {r['held']} held connections "
                   f"answering" + (f" = {R.fmt_ratio(r['takeover/keepalived'])} keepalived's takeover time"
                                   if R.number(r.get("takeover/keepalived")) is not None else ""))
    return out


def render_markdown(tables: list[R.Table], machine: dict) -> str:
    head = ["# kube-lvs director failover, side by side with keepalived", "",
            "Generated by `bash bench/run.sh --parts 6` (`lvs_bench.failover`, in the lab VM). The "
            "same DR topology, traffic and failure for both; the ratio is kube-lvs / keepalived.",
            "", "| machine | |", "|---|---|"]
    head += [f"| {R._md_escape(k)} | {R._md_escape(v)} |" for k, v in R.machine_lines(machine)]
    head += ["", "## Summary", ""] + [f"- {R._md_escape(line)}" for line in summary_lines(tables)]
    head += ["", "## Tables", ""]
    return "\n".join(head) + "\n" + "\n".join(R.render_markdown(t) for t in tables)


def render_text(tables: list[R.Table], machine: dict) -> str:
    head = "kube-lvs director failover vs keepalived\n" + "".join(
        f"  {k}: {v}\n" for k, v in R.machine_lines(machine))
    summary = "summary:\n" + "".join(f"  - {line}\n" for line in summary_lines(tables))
    return head + "\n" + summary + "\n" + "\n".join(R.render_text(t) for t in tables)


def write_outputs(tables: list[R.Table], machine: dict, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    shown = {k: v for k, v in machine.items() if k != "details"}
    files = {out / f"{name}.json": R.report_json(tables, machine),
             out / f"{name}.md": render_markdown(tables, shown),
             out / f"{name}.txt": render_text(tables, shown)}
    for path, text in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return list(files)


# --------------------------------------------------------------------------
# The lab (I/O, inside the VM)
# --------------------------------------------------------------------------

def wait_for(fn: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise TrialError(f"no {what} after {deadline:.0f} s")
        time.sleep(0.2)


class Requests:
    """New HTTP requests to the VIP from the client, one every 50 ms, each
    with a 0.5 s timeout; logs (start, succeeded)."""

    def __init__(self, ns: str):
        from lvs_lab.servers import tcp_replies
        self.ns, self.tcp_replies = ns, tcp_replies
        self.log: list[tuple[float, bool]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            ok = self.tcp_replies(self.ns, VIP, HTTP_PORT, timeout=REQUEST_TIMEOUT)[0] is not None
            self.log.append((started, ok))
            time.sleep(max(0.0, REQUEST_EVERY - (time.monotonic() - started)))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def answering(socks: list[socket.socket], text: str = "after", within: float = 15.0) -> int:
    """How many held connections echo ``text`` back, all asked at once and
    given ``within`` seconds together (a black-holed connection must not cost
    its own timeout each)."""
    alive = []
    for s in socks:
        try:
            s.sendall(f"{text}\n".encode())
            alive.append(s)
        except OSError:
            pass
    end, count = time.monotonic() + within, 0
    for s in alive:
        data = b""
        try:
            while not data.endswith(b"\n") and (left := end - time.monotonic()) > 0:
                s.settimeout(left)
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
        except OSError:
            continue
        count += data.decode(errors="replace").strip() == text
    return count


@contextlib.contextmanager
def topology():
    """Client, d1, d2, rs1, rs2 on one bridge; DR real servers serving HTTP
    on 80 and an echo server that holds connections on 8080."""
    from lvs_lab.held import HoldServer
    from lvs_lab.topology import Lab, dr_backend_prepare
    with Lab(PREFIX) as lab:
        for host, addr in HOSTS.items():
            lab.host(host)
            lab.connect(host, "lan", "eth0", [f"{addr}/24"])
        for r in REAL_SERVERS:
            dr_backend_prepare(lab, r, VIP)
        lab.apply()
        holders = []
        try:
            for r in REAL_SERVERS:
                lab.serve(r, port=HTTP_PORT)
                holders.append(HoldServer(lab.ns(r), r, HOLD_PORT, echo=True))
            yield lab
        finally:
            for h in holders:
                h.close()


def holds_vip(lab, host: str) -> bool:
    """On any device: keepalived puts it on eth0, kube-lvs on its own."""
    return f"{VIP}/32" in lab.run(host, "ip", "-o", "addr", "show").stdout


def _tail(path: Path, lines: int = 4) -> str:
    with contextlib.suppress(OSError):
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Contender:
    """One director HA implementation on the two directors of a lab."""

    lab: Any
    rundir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def command(self, d: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        for d in DIRECTORS:
            # A session of its own: the whole process group is killed at once.
            self.procs[d] = self.lab.popen(d, *self.command(d), stdout=open(self.rundir / f"{d}.log", "ab"),
                                           stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, d: str) -> int:
        """Every process of the contender on ``d`` dies at once, as in a node
        death: first all are stopped (SIGSTOP: none can act any more, e.g.
        keepalived's VRRP child cannot send the priority 0 advert it sends
        when its parent dies or on SIGTERM), then killed (SIGKILL). The
        processes are the director namespace's (``ip netns pids``) and the
        contender's process group; returns how many there were."""
        p = self.procs[d]
        pids = {int(x) for x in subprocess.run(["ip", "netns", "pids", self.lab.ns(d)], capture_output=True,
                                               text=True).stdout.split()} - {os.getpid()}
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=30)
        return len(pids | {p.pid})

    def check_alive(self) -> None:
        for d, p in self.procs.items():
            if p.poll() is not None:
                raise TrialError(f"{d}: exited {p.returncode}: {_tail(self.rundir / f'{d}.log')}")

    def stop(self) -> None:
        for d in self.procs:
            self.kill(d)
        for d in DIRECTORS:  # the kernel's sync daemons live in the namespaces
            for state in ("master", "backup"):
                self.lab.run(d, "ipvsadm", "--stop-daemon", state, check=False)


class KubeLvs(Contender):
    """The agent's director side, as tests/kernel/ha_director.py runs it."""

    def command(self, d: str) -> list[str]:
        spec = self.rundir / f"{d}.json"
        spec.write_text(json.dumps(node_doc(d)))
        return [sys.executable, str(HA_DIRECTOR), str(spec), str(self.rundir / "leases.json"),
                str(self.rundir / f"{d}.state")]


class Keepalived(Contender):
    """keepalived (VRRP and checker processes) with its config, pid files and
    log in the run directory."""

    def command(self, d: str) -> list[str]:
        conf = self.rundir / f"{d}.keepalived.conf"
        conf.write_text(keepalived_conf(d))
        pid = lambda what: str(self.rundir / f"{d}.{what}.pid")  # noqa: E731
        return ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--dont-respawn",
                "-f", str(conf), "-p", pid("keepalived"), "-c", pid("checkers"), "-r", pid("vrrp"),
                "-b", pid("bfd")]


def trial(kind: type[Contender], held_n: int, rundir: Path) -> dict:
    """One failover of ``kind`` on a fresh topology; its figures."""
    from lvs_lab.held import Held
    from lvs_lab.servers import tcp_replies
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    with topology() as lab:
        c = kind(lab, rundir)
        held: list = []
        try:
            t0 = time.monotonic()
            c.start()

            def serving() -> str | None:
                c.check_alive()
                holders = [d for d in DIRECTORS if holds_vip(lab, d)]
                if len(holders) == 1 and tcp_replies(lab.ns("client"), VIP, HTTP_PORT, timeout=1.0)[0]:
                    return holders[0]
                return None
            holder = wait_for(serving, "single VIP holder answering")
            start_seconds = time.monotonic() - t0
            backup = next(d for d in DIRECTORS if d != holder)

            held = [Held(lab.ns("client"), VIP, HOLD_PORT) for _ in range(held_n)]
            if not all(h.echo("before") == "before" for h in held):
                raise TrialError("a held connection did not echo before the failover")
            ports = {f"{HOSTS['client']}:{h.sock.getsockname()[1]}" for h in held}
            t1 = time.monotonic()

            def synced() -> bool:
                lines = lab.run(backup, "ipvsadm", "-Lnc").stdout.splitlines()
                return ports <= {f[3] for ln in lines if len(f := ln.split()) > 3 and f":{HOLD_PORT}" in ln}
            wait_for(synced, f"all {held_n} held connections in the backup's table")
            sync_seconds = time.monotonic() - t1

            requests = Requests(lab.ns("client"))
            try:
                time.sleep(2)
                killed = time.monotonic()
                processes = c.kill(holder)
                lab.run(holder, "ip", "link", "set", "eth0", "down")
                down = time.monotonic()  # from here on only the backup can answer
                wait_for(lambda: any(ok for t, ok in requests.log if t > down), "new request through the backup")
                time.sleep(AFTER)
            finally:
                requests.close()
            figures = takeover(requests.log, down)
            assert figures is not None  # wait_for saw one
            figures.update({"held_answering": answering([h.sock for h in held]),
                            "held": held_n, "sync_seconds": round(sync_seconds, 2),
                            "start_seconds": round(start_seconds, 2), "holder": holder,
                            "processes_killed": processes, "link_down_after_kill": round(down - killed, 2),
                            "new_holder": ",".join(d for d in DIRECTORS if d != holder and holds_vip(lab, d))
                                          or "none"})
            return figures
        except TrialError as e:
            raise TrialError(f"{e}; " + "; ".join(f"{d}: {_tail(rundir / f'{d}.log')}" for d in DIRECTORS)) from e
        finally:
            for h in held:
                with contextlib.suppress(OSError):
                    h.close()
            c.stop()


def contender_defaults() -> list[str]:
    """The settings each side ran with, read from the code (not restated)."""
    import inspect

    from lvs_agent.ha_agent import HaController
    from lvs_agent.ha_lease import DirectorLease
    duration = inspect.signature(DirectorLease.__init__).parameters["duration"].default
    renew = inspect.signature(HaController.__init__).parameters["renew_every"].default
    return [f"kube-lvs: tests/kernel/ha_director.py (engine + HaController, the agent's defaults: Lease "
            f"{duration:g} s, renewed every {renew:g} s; Leases in a file-backed store), d1 preferred",
            f"keepalived: VRRP instance advert_int 1, d1 MASTER priority {PRIORITY['d1']}, d2 BACKUP priority "
            f"{PRIORITY['d2']}, the VIP as virtual_ipaddress, lvs_sync_daemon eth0 VI_1 id {SYNC_ID}, "
            "virtual_server blocks for VIP:80 and VIP:8080 (rr, DR, real servers without checkers)",
            f"one trial: a fresh topology, {HELD} held connections by default (echo servers on the real "
            f"servers) that the backup's table must show before the failure, new HTTP requests every "
            f"{REQUEST_EVERY * 1000:.0f} ms ({REQUEST_TIMEOUT:g} s timeout); every process of the holder's "
            "contender stopped and killed at once (SIGSTOP, SIGKILL), then its link down (until then the "
            "kernel still forwards through it); times from the link going down to the start of the first "
            "request that succeeded; held connections asked to echo "
            f"{AFTER:g} s after that; trials alternate between the contenders"]


def run(trials: int, held_n: int, mode: str, only: Iterable[str] = CONTENDERS) -> tuple[list[R.Table], dict]:
    from .kernel import machine_info, quiesce
    t_start = time.perf_counter()
    results: dict[str, list[dict]] = {who: [] for who in CONTENDERS}
    kinds: dict[str, type[Contender]] = {"kube-lvs": KubeLvs, "keepalived": Keepalived}
    missing = {"keepalived": "keepalived not installed: run `bash bench/setup.sh` on the host"} \
        if not shutil.which("keepalived") else {}
    for i in range(1, trials + 1):
        for who in CONTENDERS:
            if who not in only:
                continue
            if who in missing:
                results[who].append({"error": missing[who]})
                continue
            quiesce(max_wait=10)
            log(f"{who}: trial {i} of {trials}")
            try:
                fig = trial(kinds[who], held_n, RUN_DIR / who.replace("-", ""))
            except (TrialError, OSError, subprocess.SubprocessError) as e:
                fig = {"error": f"{type(e).__name__}: {e}"}
            log(f"{who}: trial {i}: {json.dumps(fig)}")
            results[who].append(fig)
    notes = contender_defaults()
    machine = machine_info(mode)
    machine.update({"repeat": f"{trials} trials per contender, median reported", "held": held_n,
                    "wall_seconds": round(time.perf_counter() - t_start, 1),
                    "details": {"trials": results}})
    return build_tables(results, held_n, notes), machine


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_bench.failover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help=f"{SMOKE_TRIALS} trial per contender (harness check)")
    ap.add_argument("--trials", type=int, help=f"trials per contender (default {FULL_TRIALS})")
    ap.add_argument("--held", type=int, default=HELD, help=f"held connections (default {HELD})")
    ap.add_argument("--out", help="directory for NAME.json/.md/.txt "
                                  "(default $KUBE_LVS_LAB_RESULTS/bench, else ./bench-results)")
    ap.add_argument("--name", help="file name stem (default: failover, or failover-smoke with --smoke)")
    ap.add_argument("--only", choices=CONTENDERS, action="append", help="run only this contender (repeatable)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or not os.path.exists("/proc/net/ip_vs"):
        print("lvs_bench.failover: needs root and an IPVS kernel: run it through bench/run.sh --parts 6 "
              "(the lab VM)", file=sys.stderr)
        return 2
    trials = args.trials or (SMOKE_TRIALS if args.smoke else FULL_TRIALS)
    mode = "smoke" if args.smoke else "full" if not (args.trials or args.only) else "custom"
    tables, machine = run(trials, args.held, mode, args.only or CONTENDERS)
    print(render_text(tables, {k: v for k, v in machine.items() if k != "details"}))
    base = os.environ.get("KUBE_LVS_LAB_RESULTS")
    out = Path(args.out) if args.out else (Path(base) / "bench" if base else Path("bench-results"))
    name = args.name or ("failover-smoke" if args.smoke else "failover")
    for f in write_outputs(tables, machine, out, name):
        log(f"wrote {f}")
    return 1 if any(t.errors() for t in tables) else 0


if __name__ == "__main__":
    sys.exit(main())
