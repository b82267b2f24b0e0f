"""Kernel benchmarks (issue 7, parts 1-3), run inside the lab VM.

    PYTHONPATH=bench python -m lvs_bench.kernel [--smoke] [--sizes 1000,10000,100000] [--out DIR]

Every trial gets a fresh network namespace (IPVS tables are per namespace, so
each starts from an empty table without flushing anything). Per size:

1. programming from empty: ``ipvsadm-restore`` (the C tool), keepalived (its
   virtual servers, no checkers) and ours (``Engine.reconcile`` of the node
   spec), each into its own namespace; time until the table is complete;
2. one change: one dest's weight changes: ours (an incremental reconcile, as
   the agent runs on a watch event: ops issued, time), ours again as a full
   reconcile (the weight changed back; what the periodic resync costs) vs a
   full ``ipvsadm-restore`` of the changed table (what a restore-based tool
   does) and vs a keepalived reload (SIGHUP with the changed config);
3. drift: a dest deleted by hand (``ipvsadm -d``) in our namespace; time of
   ours to detect and repair it (observe + plan + apply), next to the time
   ``ipvsadm -Sn`` needs just to read the table.

Ours also runs as a process, as the agent starts (``agent_process.py``: spawn
to exit, imports, NodeState read and parse, one full reconcile): into an
empty namespace (part 1, like for like with the peers' processes) and on
ours' full table after parts 2-3 with the same ownership record (part 3: an
agent restart, which must find nothing to do). Part 2 also times ``ipvsadm
-e`` of the changed dest as one process (what a user of ipvsadm runs).

Before any figure is reported, the table is read back with ``ipvsadm -Sn``
and compared rule by rule with the workload; a mismatch becomes an error cell.

1b. lvsctl and ipvsadm as a user runs them, one process per command:
   ``lvsctl apply`` of a node file vs ``ipvsadm -R`` of the same rules, and
   one weight change (``lvsctl apply`` of the edited file vs ``ipvsadm -e``).
   ``--lvsctl-only`` runs just this table.

Parts 4-5 (operator scale, end-to-end latency) need the operator and the
control plane; they are reported as "not yet measured".

Processes: peers are started with their network namespace entered by
setns(2) between fork and exec (what ``ip netns exec`` does, without the
extra ``ip`` process and sysfs remount, which would add to the peers' times).
Ours runs in this long-lived process, as the agent does; interpreter start-up
and imports are not in its times, the peers' process start-up is in theirs
(and in ours' process figures).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import agent_process as A
from . import report as R
from . import workload as W

CLONE_NEWNET = 0x40000000
RUN_DIR = Path("/tmp/kube-lvs-bench")  # the guest's /tmp is a tmpfs
FULL_SIZES = (1_000, 10_000, 100_000)
SMOKE_SIZES = (20, 40)
DEFAULT_TIMEOUT = 900.0  # seconds, per peer trial
SWEEP_SLICES = 60  # the agent's sweep: --resync 30 / a pass every 0.5 s

_libc = ctypes.CDLL(None, use_errno=True)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class TrialError(Exception):
    """A trial whose result cannot be reported as a number."""


# --------------------------------------------------------------------------
# Network namespaces and processes in them
# --------------------------------------------------------------------------

def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


class NetNS:
    """A throwaway network namespace with a run directory under /tmp."""

    def __init__(self, name: str):
        self.name = name
        self.rundir = RUN_DIR / name
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.rundir.mkdir(parents=True)
        _run(["ip", "netns", "add", name])
        # Adding a dest fails with EINVAL while lo is down.
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        self.fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        self.procs: list[subprocess.Popen] = []

    def _enter(self) -> None:  # runs in the child between fork and exec
        if _libc.setns(self.fd, CLONE_NEWNET) != 0:
            os.write(2, b"setns failed\n")
            os._exit(126)

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, preexec_fn=self._enter, pass_fds=(self.fd,), **kw)
        self.procs.append(p)
        return p

    def run(self, argv: list[str], input: str | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(argv, preexec_fn=self._enter, pass_fds=(self.fd,), input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise TrialError(f"{' '.join(argv[:3])}... exited {p.returncode}: "
                             f"{(p.stderr or p.stdout).strip()[:300]}")
        return p

    def save(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, float]:
        """``ipvsadm -Sn`` output and how long it took."""
        t0 = time.perf_counter()
        out = self.run(["ipvsadm", "-Sn"], timeout=timeout).stdout
        return out, time.perf_counter() - t0

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    p.wait(timeout=30)
        self.procs.clear()

    def delete(self) -> None:
        self.kill_all()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        shutil.rmtree(self.rundir, ignore_errors=True)


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return idle, sum(parts[:8])


def quiesce(max_wait: float = 30.0, threshold: float = 0.9, window: float = 0.5) -> float:
    """Wait until the VM's CPUs are mostly idle (e.g. a deleted namespace's
    IPVS table has been torn down by the kernel); returns the time waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        i0, a0 = _cpu_times()
        time.sleep(window)
        i1, a1 = _cpu_times()
        if a1 > a0 and (i1 - i0) / (a1 - a0) >= threshold:
            break
    return time.perf_counter() - t0


def _check(ns: NetNS, w: W.Workload, changed=None) -> float:
    """Raise TrialError unless ns holds exactly the workload; returns the
    ``ipvsadm -Sn`` read time."""
    text, took = ns.save()
    err = W.check_table(w, text, changed)
    if err:
        raise TrialError(err)
    return took


# --------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------

def restore_trial(ns: NetNS, w: W.Workload, changed=None, timeout: float = DEFAULT_TIMEOUT,
                  argv: tuple[str, ...] = ("ipvsadm-restore",)) -> float:
    """``ipvsadm-restore < rules`` in ns; seconds from spawn to exit.

    ipvsadm-restore clears the table first (``ipvsadm -C``), then ``ipvsadm -R``:
    from empty that clear is free; on a full table it is what a restore-based
    tool must pay for every change.
    """
    # From a file on the guest's tmpfs, as `ipvsadm-restore < rules` (feeding a
    # pipe from Python writes 512 bytes per select round: slow under TCG).
    rules = ns.rundir / ("rules.changed" if changed else "rules")
    rules.write_text(W.restore_text(w, changed))
    with open(rules, "rb") as stdin:
        t0 = time.perf_counter()
        p = subprocess.run(list(argv), stdin=stdin, capture_output=True, text=True,
                           timeout=timeout, preexec_fn=ns._enter, pass_fds=(ns.fd,))
        took = time.perf_counter() - t0
    if p.returncode != 0:
        raise TrialError(f"{argv[0]} exited {p.returncode}: {p.stderr.strip()[:300]}")
    _check(ns, w, changed)
    return took


def _service_dests(ns: NetNS, i: int) -> dict[str, int] | None:
    """{rip: weight} of service i as ``ipvsadm -Ln -t`` shows it; None if absent."""
    p = ns.run(["ipvsadm", "-Ln", "-t", f"{W.vip(i)}:{W.VIP_PORT}"], check=False)
    if p.returncode != 0:
        return None
    out: dict[str, int] = {}
    for line in p.stdout.splitlines():
        f = line.split()
        # "  -> 10.64.0.1:8080   Masq   1   0   0"
        if len(f) >= 3 and f[0] == "->" and f[1][0].isdigit():
            out[f[1].rsplit(":", 1)[0]] = int(f[3]) if len(f) > 3 else 0
    return out


class Keepalived:
    """keepalived (checker process only) in ns; config, pid files and log in ns.rundir."""

    def __init__(self, ns: NetNS, w: W.Workload):
        self.ns, self.w = ns, w
        self.conf = ns.rundir / "keepalived.conf"
        self.logf = ns.rundir / "keepalived.log"
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        d = self.ns.rundir
        return ["keepalived", "--dont-fork", "--log-console", "--no-syslog", "--check",
                "--dont-respawn", "-f", str(self.conf), "-p", str(d / "keepalived.pid"),
                "-c", str(d / "checkers.pid"), "-r", str(d / "vrrp.pid"), "-b", str(d / "bfd.pid")]

    def _poll(self, t0: float, timeout: float, done: Callable[[], bool], what: str) -> float:
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise TrialError(f"keepalived exited {self.proc.returncode} before {what}: "
                                 f"{self.log_tail()}")
            if done():
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise TrialError(f"keepalived: no {what} after {timeout:.0f} s")
            time.sleep(0.01)

    def log_tail(self) -> str:
        try:
            return " | ".join(self.logf.read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return ""

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> float:
        """Start from an empty table; seconds until the whole table is in the kernel.

        Completion is probed on the last virtual server (keepalived adds virtual
        servers in config order, each with its real servers): when it has all
        its dests, the full table is read back and compared; if it is not
        complete yet, polling goes on with full reads.
        """
        w = self.w
        self.conf.write_text(W.keepalived_conf(w))
        last = w.services - 1
        t0 = time.perf_counter()
        self.proc = self.ns.popen(self.argv(), stdout=open(self.logf, "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)

        def last_complete() -> bool:
            d = _service_dests(self.ns, last)
            return d is not None and len(d) == w.dests_per_service

        took = self._poll(t0, timeout, last_complete, "complete last virtual server")
        while True:
            text, _ = self.ns.save()
            if W.check_table(w, text) is None:
                return took
            took = time.perf_counter() - t0  # not complete at the probe: the full read decides
            if took > timeout:
                raise TrialError(f"keepalived: {W.check_table(w, text)} after {took:.0f} s")

    def reload(self, changed: tuple[int, int, int], timeout: float = DEFAULT_TIMEOUT) -> float:
        """Rewrite the config with one weight changed, SIGHUP; seconds until the
        kernel shows the new weight (then the whole table is checked)."""
        assert self.proc is not None
        i, j, weight = changed
        self.conf.write_text(W.keepalived_conf(self.w, changed))
        rip = W.rip(i, j)

        def changed_seen() -> bool:
            d = _service_dests(self.ns, i)
            return d is not None and d.get(rip) == weight

        t0 = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGHUP)
        took = self._poll(t0, timeout, changed_seen, "new weight")
        _check(self.ns, self.w, changed)
        return took

    def stop(self) -> None:
        # SIGKILL: a clean stop removes 100k dests one by one; the namespace
        # is thrown away anyway.
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)


# --------------------------------------------------------------------------
# lvsctl and ipvsadm as a user runs them: one process per command
# --------------------------------------------------------------------------

LVSCTL_PER_SERVICE = 4  # the node file: NAT services of 4 dests each
LVSCTL_FULL_SIZES = (24_000,)  # 6,000 services x 4
LVSCTL_SMOKE_SIZES = (8,)
_LVSCTL_SUMMARY = re.compile(r"^(\d+) operations, (\d+) failed, uplink \S+, ([0-9.]+)s$", re.M)


def lvsctl_argv() -> list[str]:
    """The ``lvsctl`` console script beside this interpreter (what a user
    runs), else the module through this interpreter."""
    script = Path(sys.executable).with_name("lvsctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "lvs_agent.lvsctl"]


def lvsctl_summary(out: str) -> tuple[int, int, float] | None:
    """(operations, failed, reconcile seconds) from ``lvsctl apply``'s last line."""
    m = None
    for m in _LVSCTL_SUMMARY.finditer(out):
        pass
    return (int(m.group(1)), int(m.group(2)), float(m.group(3))) if m else None


def edit_argv(changed: tuple[int, int, int]) -> list[str]:
    """``ipvsadm -e`` of the changed dest: a user of ipvsadm's one weight change."""
    i, j, weight = changed
    return ["ipvsadm", "-e", "-t", f"{W.vip(i)}:{W.VIP_PORT}", "-r", f"{W.rip(i, j)}:{W.RIP_PORT}",
            "-m", "-w", str(weight)]


def edit_trial(ns: NetNS, w: W.Workload, changed: tuple[int, int, int], timeout: float) -> float:
    """``ipvsadm -e`` of the changed dest in ns (a full table), spawn to exit;
    the whole table is checked afterwards."""
    took, _ = timed_process(ns, edit_argv(changed), timeout)
    _check(ns, w, changed)
    return took


def spec_yaml(w: W.Workload, changed: tuple[int, int, int] | None = None) -> str:
    import yaml
    dumper = getattr(yaml, "CSafeDumper", None) or yaml.SafeDumper
    return yaml.dump(W.node_spec_doc(w, changed), Dumper=dumper, sort_keys=False)


def timed_process(ns: NetNS, argv: list[str], timeout: float, stdin_path: Path | None = None
                  ) -> tuple[float, str]:
    """Seconds from spawn to exit of argv in ns, and its output (to a file, as
    a user redirecting it; a pipe read from Python is slow under TCG)."""
    out = ns.rundir / "out.txt"
    with open(out, "wb") as f, (open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb")) as i:
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdin=i, stdout=f, stderr=subprocess.STDOUT, timeout=timeout,
                           preexec_fn=ns._enter, pass_fds=(ns.fd,))
        took = time.perf_counter() - t0
    text = out.read_text(errors="replace")
    if p.returncode != 0:
        raise TrialError(f"{' '.join(argv[-4:])} exited {p.returncode}: {text.strip()[-300:]}")
    return took, text


AGENT_PROCESS = Path(A.__file__)


def nodestates_json(w: W.Workload) -> str:
    """The agent's object-cache file holding the workload's NodeState."""
    import json
    return json.dumps(A.nodestate_objects(W.node_spec_doc(w)))


def agent_process_trial(ns: NetNS, w: W.Workload, objects_json: str, timeout: float,
                        record: Path | None = None, expect_ops: int | None = None) -> dict:
    """The agent's start as one process in ns (``agent_process.py``): its
    report (phases, ops, peak RSS) with "seconds", spawn to exit. The table is
    checked afterwards; ``expect_ops``: the ops its reconcile must issue."""
    objects = ns.rundir / "nodestates.json"
    objects.write_text(objects_json)
    record = record or ns.rundir / "agent.json"
    argv = [sys.executable, str(AGENT_PROCESS), str(objects), "--record", str(record)]
    took, out = timed_process(ns, argv, timeout)
    try:
        rep = A.parse_report(out, expect_ops)
    except ValueError as e:
        raise TrialError(f"agent process: {e}") from None
    _check(ns, w)
    return {**rep, "seconds": took}


def lvsctl_apply(ns: NetNS, w: W.Workload, changed=None, dry_run: bool = False,
                 timeout: float = DEFAULT_TIMEOUT) -> tuple[float, float | None]:
    """``lvsctl apply`` of the workload's node file in ns, as a process: (seconds
    from spawn to exit, the reconcile seconds it reports). The table is checked
    afterwards (a dry run must find nothing to do)."""
    f = ns.rundir / ("node.changed.yaml" if changed else "node.yaml")
    f.write_text(spec_yaml(w, changed))
    argv = [*lvsctl_argv(), "apply", str(f), "--netns", ns.name, "--state", str(ns.rundir / "lvsctl.json")]
    took, out = timed_process(ns, argv + (["--dry-run"] if dry_run else []), timeout)
    if dry_run:
        if "nothing to do" not in out:
            raise TrialError(f"dry run on the applied table planned something: {out.strip()[:300]}")
        return took, None
    summary = lvsctl_summary(out)
    if summary is None or summary[1]:
        raise TrialError(f"lvsctl apply: {out.strip()[-300:]}")
    _check(ns, w, changed)
    return took, summary[2]


def lvsctl_columns() -> list[R.Column]:
    return [
        R.Column("dests", "dests", "int"),
        R.Column("services", "services", "int"),
        R.Column("ipvsadm_restore", "ipvsadm -R", "sec"),
        R.Column("lvsctl", "lvsctl apply", "sec"),
        R.Column("lvsctl_reconcile", "lvsctl: reconcile", "sec"),
        R.Column("lvsctl_dry_run", "lvsctl apply --dry-run (full table)", "sec"),
        R.Column("ipvsadm_edit", "ipvsadm -e", "sec"),
        R.Column("lvsctl_change", "lvsctl apply (one weight changed)", "sec"),
    ]


LVSCTL_NOTES = [
    "every figure is one process from spawn to exit, as a user runs it: interpreter start-up, imports, "
    "reading and parsing the file included; lvsctl: reconcile = the reconcile time lvsctl itself prints",
    "ipvsadm -R: the same rules (ipvsadm -Sn form) from a file into an empty table; lvsctl apply: the "
    "node spec YAML into an empty table; --dry-run: the same file against the full table (nothing to do)",
    "one weight change: ipvsadm -e of that dest, vs lvsctl apply of the node file with that weight edited "
    "(lvsctl has no edit command: a user edits the file and applies it, a full reconcile; the agent's "
    "incremental change on a watch event is part 2's 'ours')",
]


def run_lvsctl_size(w: W.Workload, timeout: float) -> dict:
    n = w.total_dests
    changed = (w.services // 2, min(3, w.dests_per_service - 1), 7)
    row: dict[str, Any] = {"dests": n, "services": w.services}
    no_table = R.error("no complete table to change (the apply failed)")
    with fresh_ns(f"kb-ipvsadm-{n}") as ns:
        row["ipvsadm_restore"] = c = _cell(lambda: restore_trial(ns, w, timeout=timeout, argv=("ipvsadm", "-R")),
                                           f"{n} ipvsadm -R")
        if R.is_error(c):
            row["ipvsadm_edit"] = no_table
        else:
            quiesce()
            row["ipvsadm_edit"] = _cell(lambda: edit_trial(ns, w, changed, timeout), f"{n} ipvsadm -e")
    with fresh_ns(f"kb-lvsctl-{n}") as ns:
        res = _cell(lambda: lvsctl_apply(ns, w, timeout=timeout), f"{n} lvsctl apply")
        if R.is_error(res):
            row.update(lvsctl=res, lvsctl_reconcile=None, lvsctl_dry_run=no_table, lvsctl_change=no_table)
        else:
            row["lvsctl"], row["lvsctl_reconcile"] = res
            quiesce()
            row["lvsctl_dry_run"] = _cell(lambda: lvsctl_apply(ns, w, dry_run=True, timeout=timeout)[0],
                                          f"{n} lvsctl apply --dry-run")
            quiesce()
            row["lvsctl_change"] = _cell(lambda: lvsctl_apply(ns, w, changed, timeout=timeout)[0],
                                         f"{n} lvsctl apply (changed)")
    log(f"{n:,}: " + ", ".join(f"{c.label} {R.fmt_cell(row[c.key], c.kind)}" for c in lvsctl_columns()[2:]))
    return row


def build_lvsctl_table(rows: list[dict], notes: list[str]) -> R.Table:
    t = R.Table("lvsctl", "1b. lvsctl and ipvsadm as a user runs them (one process each, NAT services "
                f"of {LVSCTL_PER_SERVICE} dests)", lvsctl_columns(), rows, notes)
    t.add_ratio("lvsctl", "ipvsadm_restore", "lvsctl apply/ipvsadm -R")
    t.add_ratio("lvsctl_change", "ipvsadm_edit", "one change: lvsctl/ipvsadm -e")
    return t


def run_lvsctl(sizes: list[int], timeout: float = DEFAULT_TIMEOUT,
               per_service: int = LVSCTL_PER_SERVICE) -> R.Table:
    """The lvsctl table: at each size (total dests), ipvsadm then lvsctl."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    ns = NetNS("kb-warm-lvsctl")  # untimed: pages the interpreter and modules in, writes bytecode
    try:
        lvsctl_apply(ns, W.Workload(2, 2), timeout=timeout)
    except Exception as e:  # noqa: BLE001 - the timed trials report it properly
        log(f"warm-up lvsctl: {type(e).__name__}: {e}")
    finally:
        ns.delete()
    rows = [run_lvsctl_size(W.Workload.for_total(n, per_service), timeout) for n in sizes]
    return build_lvsctl_table(rows, list(LVSCTL_NOTES))


# --------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------

@dataclass
class OursResult:
    seconds: float
    ops: int  # every op the planner issued (links, sysctls, IPVS)
    ipvs_ops: int
    path: str  # "batch", or "-" when there were no IPVS ops
    phases: dict[str, float] = field(default_factory=dict)
    # Building the IPVS messages of this reconcile's ops, timed in a separate
    # untimed-by-the-headline pass (None: netlink_batch unavailable).
    build_seconds: float | None = None


class Ours:
    """lvs_agent's Engine programming ns, with its phases timed from outside.

    The engine's module-level ``observe`` and ``plan`` and its applier's
    ``apply`` and store's ``save`` are wrapped (not changed) to split the
    reconcile time; the headline figure is the whole ``reconcile`` call. An
    incremental reconcile's kernel read is the phase "read" (a full one's is
    "observe", so a fallback to full shows).
    """

    def __init__(self, ns: NetNS):
        from lvs_agent import engine as E
        self.E = E
        self.ns = ns
        t0 = time.perf_counter()
        self.record = ns.rundir / "ownership.json"
        self.engine = E.Engine(self.record, netns=ns.name)
        self.setup_seconds = time.perf_counter() - t0
        self.phases: dict[str, float] = {}
        self._wrap_instance()

    def _timed(self, name: str, fn):
        phases = self.phases

        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    def _wrap_instance(self) -> None:
        eng = self.engine
        eng.applier.apply = self._timed("apply", eng.applier.apply)
        eng.store.save = self._timed("save", eng.store.save)
        eng.store.load = self._timed("load", eng.store.load)

    @contextlib.contextmanager
    def _wrap_module(self):
        E = self.E
        phase = {"observe": "observe", "open_iproute": "open_iproute", "plan": "plan", "claim": "claim",
                 "settle": "settle", "build_report": "build_report", "read_ipvs_services": "read",
                 "plan_services": "plan", "claim_services": "claim"}
        names = [n for n in phase if hasattr(E, n)]
        saved = {n: getattr(E, n) for n in names}
        for n in names:
            setattr(E, n, self._timed(phase[n], saved[n]))
        try:
            yield
        finally:
            for n in names:
                setattr(E, n, saved[n])

    def reconcile(self, spec, incremental: bool = False) -> OursResult:
        from lvs_agent import ops as O
        from lvs_agent.gcpause import GCPauses
        self.phases.clear()
        gc.collect()
        if not incremental:
            GCPauses().before_full_pass()  # as the agent's full passes do
        with self._wrap_module():
            t0 = time.perf_counter()
            rep = self.engine.reconcile(spec, incremental=incremental)
            took = time.perf_counter() - t0
        if rep.failed or rep.problems or not rep.ok:
            first = (rep.failed[:1] or list(rep.problems.items())[:1] or rep.errors[:1]
                     or list(rep.service_errors.items())[:1])
            raise TrialError(f"reconcile reported {len(rep.failed)} failed ops, "
                             f"{len(rep.problems)} problems; first: {first}")
        ipvs = [op for op in rep.ops if isinstance(op, O.IPVS_OPS)]
        phases = dict(self.phases)
        phases["other"] = max(0.0, took - sum(phases.values()))
        return OursResult(took, len(rep.ops), len(ipvs), "batch" if ipvs else "-", phases,
                          self.build_time(ipvs))

    def sweep_round(self, spec) -> tuple[float, float, int]:
        """One round of the agent's drift sweep from its start: SWEEP_SLICES
        incremental passes each re-checking its slice of the services (the
        agent at --resync 30 passes every 0.5 s). (total seconds, the largest
        slice's seconds: what a change arriving meanwhile may wait, ops)."""
        size = math.ceil((len(spec.services) + 1) / SWEEP_SLICES)
        total = worst = 0.0
        ops = 0
        for _ in range(SWEEP_SLICES + 1):
            gc.collect()
            t0 = time.perf_counter()
            rep = self.engine.reconcile(spec, incremental=True, sweep=size)
            took = time.perf_counter() - t0
            if rep.failed or rep.problems or not rep.ok or not rep.swept:
                raise TrialError(f"sweep slice: {len(rep.failed)} failed ops, {len(rep.problems)} problems, "
                                 f"{rep.swept} swept")
            total, worst, ops = total + took, max(worst, took), ops + len(rep.ops)
            if rep.round_done:
                return total, worst, ops
        raise TrialError(f"the sweep round did not end after {SWEEP_SLICES + 1} slices")

    def build_time(self, ipvs_ops: list) -> float | None:
        """Seconds to build these ops' netlink messages, as the batch path does
        (a fresh connection, so its service-key cache starts cold, as in the
        timed run). Measured after the timed run, so that timing has no probes."""
        if not ipvs_ops:
            return 0.0
        try:
            from lvs_agent.netlink_batch import IPVSConnection
            conn = IPVSConnection(self.ns.name)
        except Exception:  # noqa: BLE001
            return None
        try:
            msg = conn.message
            gc.collect()
            t0 = time.perf_counter()
            for seq, op in enumerate(ipvs_ops, 1):
                msg(op, seq)
            return time.perf_counter() - t0
        finally:
            conn.close()

    def close(self) -> None:
        """Close the engine (again: a no-op)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# --------------------------------------------------------------------------
# The benchmarks
# --------------------------------------------------------------------------

def _cell(fn: Callable[[], Any], what: str) -> Any:
    """fn()'s value, or an error cell (logged) if the trial failed."""
    try:
        return fn()
    except TrialError as e:
        log(f"{what}: ERROR {e}")
        return R.error(str(e))
    except subprocess.TimeoutExpired as e:
        log(f"{what}: ERROR timed out")
        return R.error(f"timed out after {e.timeout:.0f} s")
    except Exception as e:  # noqa: BLE001 - one broken trial must not stop the run
        log(f"{what}: ERROR {type(e).__name__}: {e}")
        return R.error(f"{type(e).__name__}: {e}")


@dataclass
class Caps:
    """Largest size (total dests) each contender runs at, with the reason."""

    limits: dict[str, tuple[int, str]] = field(default_factory=dict)

    def skip(self, who: str, dests: int) -> str | None:
        lim = self.limits.get(who)
        if lim and dests > lim[0]:
            return f"not run above {lim[0]:,} dests: {lim[1]}"
        return None


def program_columns() -> list[R.Column]:
    return [
        R.Column("dests", "dests", "int"),
        R.Column("services", "services", "int"),
        R.Column("ours", "ours", "sec"),
        R.Column("ipvsadm_restore", "ipvsadm-restore", "sec"),
        R.Column("keepalived", "keepalived", "sec"),
        R.Column("ours_process", "ours from process start", "sec"),
        R.Column("ours_apply", "ours: apply", "sec"),
        R.Column("ours_build", "ours: msg build", "sec"),
        R.Column("ours_path", "ours: path", "text"),
        R.Column("ours_process_rss", "agent peak RSS MiB", "int"),
    ]


def change_columns() -> list[R.Column]:
    return [
        R.Column("dests", "dests", "int"),
        R.Column("ours_ops", "ours: ops", "count"),
        R.Column("ours", "ours", "sec"),
        R.Column("ours_full", "ours: full reconcile", "sec"),
        R.Column("ipvsadm_restore", "full ipvsadm-restore", "sec"),
        R.Column("keepalived", "keepalived reload", "sec"),
        R.Column("ipvsadm_edit", "ipvsadm -e", "sec"),
        R.Column("ours_read", "ours: read", "sec"),
        R.Column("ours_observe", "ours full: observe", "sec"),
    ]


def drift_columns() -> list[R.Column]:
    return [
        R.Column("dests", "dests", "int"),
        R.Column("ours_ops", "ours: ops", "count"),
        R.Column("ours", "ours: detect+repair", "sec"),
        R.Column("ipvsadm_save", "ipvsadm -Sn (read only)", "sec"),
        R.Column("ours_observe", "ours: observe", "sec"),
        R.Column("ours_sweep", f"ours: sweep round ({SWEEP_SLICES} slices)", "sec"),
        R.Column("ours_slice", "ours: largest slice", "sec"),
        R.Column("ours_restart", "ours: restart (process start to first full reconcile)", "sec"),
        R.Column("ours_restart_reconcile", "ours restart: reconcile", "sec"),
    ]


def _median(cells: list[Any]) -> Any:
    nums = [R.number(c) for c in cells]
    if any(x is None for x in nums) or not nums:
        return next((c for c in cells if R.is_error(c)), cells[0] if cells else None)
    return statistics.median(nums)


@contextlib.contextmanager
def fresh_ns(name: str):
    """A new namespace for one contender's trial (and its parts 2-3), deleted
    afterwards. Only one benchmark table exists at a time: IPVS hashes the
    services of every namespace into one global table, so a table left
    standing would slow the next contender's service lookups."""
    quiesce(max_wait=60)
    ns = NetNS(name)
    try:
        yield ns
    finally:
        ns.delete()


def share_unchanged(spec, changed_spec):
    """``changed_spec`` holding ``spec``'s own object for every service that
    did not change: what the agent hands the engine, since it reuses the parse
    of unchanged NodeState objects (the incremental reconcile finds changed
    services by identity first; a rebuilt 100k-dest spec would cost it a
    comparison of every dest)."""
    from dataclasses import replace
    mine = {s.key: s for s in spec.services}
    return replace(changed_spec, services=tuple(mine[s.key] if mine.get(s.key) == s else s
                                                for s in changed_spec.services))


def _phases_text(r: OursResult) -> str:
    return ", ".join(f"{k} {R.fmt_seconds(v)}" for k, v in r.phases.items())


def run_size(w: W.Workload, caps: Caps, repeat: int, timeout: float,
             details: list[dict]) -> tuple[dict, dict, dict]:
    """Parts 1-3 at one size. Per repetition, each contender in turn gets a fresh
    namespace: part 1 there, and on the first repetition parts 2 (and 3 for
    ours) on the same full table; then the namespace goes."""
    n = w.total_dests
    changed = (w.services // 2, min(3, w.dests_per_service - 1), 7)
    drifted = (w.services // 3, min(5, w.dests_per_service - 1))
    prog: dict[str, Any] = {"dests": n, "services": w.services}
    chg: dict[str, Any] = {"dests": n}
    dft: dict[str, Any] = {"dests": n}
    detail: dict[str, Any] = {"dests": n, "services": w.services, "repeat": repeat, "trials": []}
    details.append(detail)

    log(f"size {n:,} dests ({w.services:,} services x {w.dests_per_service}): building spec")
    t0 = time.perf_counter()
    spec = W.node_spec(w)
    spec_changed = share_unchanged(spec, W.node_spec(w, changed))
    objects_json = nodestates_json(w)
    detail["spec_build_seconds"] = time.perf_counter() - t0

    restore_t: list[Any] = []
    keep_t: list[Any] = []
    ours_t: list[Any] = []
    agent_t: list[Any] = []
    ours0: OursResult | None = None
    no_table = R.error("no complete table to change (part 1 failed)")

    for rep in range(repeat):
        # ---- ipvsadm-restore: 1, then (first repetition) 2 = full restore of the changed table
        if (why := caps.skip("ipvsadm_restore", n)) is not None:
            restore_t.append(why)
            chg.setdefault("ipvsadm_restore", why)
            chg.setdefault("ipvsadm_edit", why)
        else:
            with fresh_ns(f"kb-restore-{n}-{rep}") as ns:
                c = _cell(lambda: restore_trial(ns, w, timeout=timeout), f"{n} ipvsadm-restore")
                restore_t.append(c)
                log(f"{n:,}: ipvsadm-restore {R.fmt_cell(c, 'sec')}")
                if rep == 0:
                    if R.is_error(c):
                        chg["ipvsadm_restore"] = chg["ipvsadm_edit"] = no_table
                    else:
                        quiesce()
                        chg["ipvsadm_restore"] = _cell(lambda: restore_trial(ns, w, changed, timeout),
                                                       f"{n} full restore")
                        log(f"{n:,}: full ipvsadm-restore {R.fmt_cell(chg['ipvsadm_restore'], 'sec')}")
                        quiesce()
                        # Another weight than the restore's, so the check tells the edit took.
                        edited = (*changed[:2], changed[2] + 2)
                        chg["ipvsadm_edit"] = _cell(lambda: edit_trial(ns, w, edited, timeout),
                                                    f"{n} ipvsadm -e")
                        log(f"{n:,}: ipvsadm -e {R.fmt_cell(chg['ipvsadm_edit'], 'sec')}")

        # ---- keepalived: 1, then (first repetition) 2 = reload with the changed config
        if (why := caps.skip("keepalived", n)) is not None:
            keep_t.append(why)
            chg.setdefault("keepalived", why)
        else:
            with fresh_ns(f"kb-keepalived-{n}-{rep}") as ns:
                k = Keepalived(ns, w)
                try:
                    c = _cell(lambda: k.start(timeout), f"{n} keepalived")
                    keep_t.append(c)
                    log(f"{n:,}: keepalived {R.fmt_cell(c, 'sec')}")
                    if rep == 0:
                        if R.is_error(c):
                            chg["keepalived"] = no_table
                        else:
                            quiesce()
                            chg["keepalived"] = _cell(lambda: k.reload(changed, timeout),
                                                      f"{n} keepalived reload")
                            log(f"{n:,}: keepalived reload {R.fmt_cell(chg['keepalived'], 'sec')}")
                finally:
                    k.stop()

        # ---- ours from process start: the agent's start as a process, into an empty table
        if (why := caps.skip("ours", n)) is not None:
            agent_t.append(why)
        else:
            with fresh_ns(f"kb-agent-{n}-{rep}") as ns:
                c = _cell(lambda: agent_process_trial(ns, w, objects_json, timeout), f"{n} ours from process start")
                agent_t.append(c)
                if not R.is_error(c):
                    detail["trials"].append({"bench": "process", "rep": rep, **c})
                log(f"{n:,}: ours from process start {_process_text(c)}")

        # ---- ours: 1, then (first repetition) 2 and 3 on the same engine and table
        if (why := caps.skip("ours", n)) is not None:
            ours_t.append(why)
            if rep == 0:
                _ours_unmeasured(chg, dft, why)
            continue
        with fresh_ns(f"kb-ours-{n}-{rep}") as ns:
            try:
                o = Ours(ns)
            except Exception as e:  # noqa: BLE001
                c = R.error(f"cannot create the engine: {type(e).__name__}: {e}")
                ours_t.append(c)
                if rep == 0:
                    _ours_unmeasured(chg, dft, c)
                continue
            try:
                def program(o=o, ns=ns):
                    r = o.reconcile(spec)
                    _check(ns, w)
                    return r
                r = _cell(program, f"{n} ours")
                if not isinstance(r, OursResult):
                    ours_t.append(r)
                    if rep == 0:
                        _ours_unmeasured(chg, dft, no_table)
                    continue
                ours_t.append(r.seconds)
                detail["trials"].append({"bench": "program", "rep": rep, "ops": r.ops,
                                         "ipvs_ops": r.ipvs_ops, "path": r.path, "seconds": r.seconds,
                                         "phases": r.phases, "build_seconds": r.build_seconds,
                                         "engine_setup_seconds": o.setup_seconds})
                log(f"{n:,}: ours {R.fmt_seconds(r.seconds)} ({r.ipvs_ops:,} IPVS ops via {r.path}; "
                    f"{_phases_text(r)})")
                if rep != 0:
                    continue
                ours0 = r
                _ours_change_and_drift(o, ns, w, spec, spec_changed, changed, drifted, chg, dft, detail)
                o.close()  # the restart takes over its ownership record
                _ours_restart(ns, w, objects_json, timeout, o.record, dft, detail)
            finally:
                o.close()

    prog["ours"] = _median(ours_t)
    prog["ipvsadm_restore"] = _median(restore_t)
    prog["keepalived"] = _median(keep_t)
    prog["ours_apply"] = ours0.phases.get("apply") if ours0 else None
    prog["ours_build"] = ours0.build_seconds if ours0 else None
    prog["ours_path"] = ours0.path if ours0 else None
    prog["ours_process"] = _median([_process_field(c, "seconds") for c in agent_t])
    prog["ours_process_rss"] = _peak([_process_field(c, "peak_rss_mib") for c in agent_t])
    detail["program_trials"] = {"ours": ours_t, "ipvsadm_restore": restore_t, "keepalived": keep_t,
                                "ours_process": [_process_field(c, "seconds") for c in agent_t]}
    detail["teardown_quiesce_seconds"] = quiesce(max_wait=60)
    return prog, chg, dft


def _ours_unmeasured(chg: dict, dft: dict, why: Any) -> None:
    """Parts 2 and 3 of ours not run: ``why`` in their headline cells."""
    chg.update(ours=why, ours_ops=None, ours_full=None, ours_read=None, ours_observe=None)
    dft.update(ours=why, ours_ops=None, ipvsadm_save=None, ours_observe=None, ours_restart=why,
               ours_restart_reconcile=None)


def _process_field(c: Any, key: str) -> Any:
    """A process trial's field, or the trial's error / skip cell as it is."""
    return c[key] if isinstance(c, dict) and not R.is_error(c) else c


def _peak(cells: list[Any]) -> Any:
    """The largest number, or the first error / skip cell if any trial has one."""
    nums = [R.number(c) for c in cells]
    if any(x is None for x in nums) or not nums:
        return _median(cells)
    return max(nums)


def _process_text(c: Any) -> str:
    if not isinstance(c, dict) or R.is_error(c):
        return R.fmt_cell(c, "sec")
    return (f"{R.fmt_seconds(c['seconds'])} (imports {R.fmt_seconds(c['imports'])}, read+parse "
            f"{R.fmt_seconds(c['read_parse'])}, reconcile {R.fmt_seconds(c['reconcile'])}, {c['ops']:,} ops; "
            f"peak RSS {c['peak_rss_mib']:.0f} MiB)")


def _ours_restart(ns: NetNS, w: W.Workload, objects_json: str, timeout: float, record: Path,
                  dft: dict, detail: dict) -> None:
    """Part 3's agent restart: the agent's start as a process on ours' full
    table with its ownership record; it must find nothing to do."""
    n = w.total_dests
    quiesce()
    c = _cell(lambda: agent_process_trial(ns, w, objects_json, timeout, record=record, expect_ops=0), f"{n} ours restart")
    dft.update(ours_restart=_process_field(c, "seconds"),
               ours_restart_reconcile=None if R.is_error(c) else c["reconcile"])
    if not R.is_error(c):
        detail["trials"].append({"bench": "restart", **c})
    log(f"{n:,}: ours restart {_process_text(c)}")


def _ours_change_and_drift(o: Ours, ns: NetNS, w: W.Workload, spec, spec_changed, changed, drifted,
                           chg: dict, dft: dict, detail: dict) -> None:
    n = w.total_dests
    # ---- 2. one dest's weight changes: incremental (the engine remembers part 1's spec)
    quiesce()

    def change():
        r = o.reconcile(spec_changed, incremental=True)
        if "observe" in r.phases:
            raise TrialError("the incremental reconcile read the whole table (fell back to full)")
        _check(ns, w, changed)
        return r
    r = _cell(change, f"{n} ours change")
    if isinstance(r, OursResult):
        chg.update(ours=r.seconds, ours_ops=r.ops, ours_read=r.phases.get("read"))
        detail["trials"].append({"bench": "change", "ops": r.ops, "ipvs_ops": r.ipvs_ops,
                                 "seconds": r.seconds, "phases": r.phases})
        log(f"{n:,}: ours change (incremental): {r.ops} ops, {R.fmt_seconds(r.seconds)} ({_phases_text(r)})")
    else:
        chg.update(ours=r, ours_ops=None, ours_read=None)

    # ... and as a full reconcile: the weight back (from any state: a full reconcile repairs it).
    quiesce()

    def change_full():
        r = o.reconcile(spec)
        _check(ns, w)
        return r
    f = _cell(change_full, f"{n} ours full change")
    if not isinstance(f, OursResult):
        chg.update(ours_full=f, ours_observe=None)
        dft.update(ours=R.error("table not in a known state after part 2 failed"),
                   ours_ops=None, ipvsadm_save=None, ours_observe=None)
        return
    chg.update(ours_full=f.seconds, ours_observe=f.phases.get("observe"))
    detail["trials"].append({"bench": "change_full", "ops": f.ops, "ipvs_ops": f.ipvs_ops,
                             "seconds": f.seconds, "phases": f.phases})
    log(f"{n:,}: ours change (full reconcile): {f.ops} ops, {R.fmt_seconds(f.seconds)} ({_phases_text(f)})")

    # ---- 3. drift (the table is at ``spec`` again): one dest deleted by hand
    quiesce()
    i, j = drifted

    def drift():
        ns.run(["ipvsadm", "-d", "-t", f"{W.vip(i)}:{W.VIP_PORT}", "-r", f"{W.rip(i, j)}:{W.RIP_PORT}"])
        left = _service_dests(ns, i)
        if left is None or len(left) != w.dests_per_service - 1:
            raise TrialError(f"hand deletion did not take: {left}")
        r = o.reconcile(spec)  # full: that is how drift is found
        save_t = _check(ns, w)
        return r, save_t
    res = _cell(drift, f"{n} ours drift")
    if isinstance(res, tuple):
        r, save_t = res
        dft.update(ours=r.seconds, ours_ops=r.ops, ipvsadm_save=save_t, ours_observe=r.phases.get("observe"))
        detail["trials"].append({"bench": "drift", "ops": r.ops, "ipvs_ops": r.ipvs_ops,
                                 "seconds": r.seconds, "phases": r.phases})
        log(f"{n:,}: ours drift repair: {r.ops} ops, {R.fmt_seconds(r.seconds)} ({_phases_text(r)}); "
            f"ipvsadm -Sn {R.fmt_seconds(save_t)}")
    else:
        dft.update(ours=res, ours_ops=None, ipvsadm_save=None, ours_observe=None, ours_sweep=None, ours_slice=None)
        return

    # ... and found by the agent's sweep: the same deletion, then one round of slices.
    quiesce()

    def sweep():
        ns.run(["ipvsadm", "-d", "-t", f"{W.vip(i)}:{W.VIP_PORT}", "-r", f"{W.rip(i, j)}:{W.RIP_PORT}"])
        total, worst, ops = o.sweep_round(spec)
        if ops != 1:
            raise TrialError(f"the sweep round issued {ops} ops, not the 1 that repairs the dest")
        _check(ns, w)
        return total, worst
    res = _cell(sweep, f"{n} ours sweep")
    if isinstance(res, tuple):
        dft.update(ours_sweep=res[0], ours_slice=res[1])
        detail["trials"].append({"bench": "sweep", "seconds": res[0], "largest_slice": res[1]})
        log(f"{n:,}: ours sweep round: {R.fmt_seconds(res[0])}, largest slice {R.fmt_seconds(res[1])}")
    else:
        dft.update(ours_sweep=res, ours_slice=None)


def warm_up() -> dict:
    """One tiny untimed round of every contender: loads the binaries through
    the VM's 9p root into its page cache and does ours' lazy imports, so the
    first timed trial does not pay for them (a long-lived agent does not)."""
    w = W.Workload(2, 2)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for kind in ("restore", "keepalived", "ours", "agent"):
        ns = NetNS(f"kb-warm-{kind}")
        try:
            if kind == "restore":
                restore_trial(ns, w)
            elif kind == "keepalived":
                k = Keepalived(ns, w)
                k.start(120)
                k.stop()
            elif kind == "agent":
                agent_process_trial(ns, w, nodestates_json(w), 120)
            else:
                o = Ours(ns)
                o.reconcile(W.node_spec(w))
                o.reconcile(W.node_spec(w, (1, 1, 3)), incremental=True)
                o.reconcile(W.node_spec(w))
                o.close()
        except Exception as e:  # noqa: BLE001 - the timed trials report it properly
            out[kind] = f"{type(e).__name__}: {e}"
            log(f"warm-up {kind}: {out[kind]}")
        finally:
            ns.delete()
    out["seconds"] = time.perf_counter() - t0
    return out


def machine_info(mode: str) -> dict:
    def first_line(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return ""

    guest_cpu = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                guest_cpu = line.split(":", 1)[1].strip()
                break
    try:
        from importlib.metadata import version
        pyroute2 = version("pyroute2")
    except Exception:  # noqa: BLE001
        pyroute2 = ""
    in_lab = bool(os.environ.get("KUBE_LVS_LAB"))
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "guest_kernel": platform.release(),
        "host_cpu": os.environ.get("BENCH_HOST_CPU", ""),
        "host_kernel": os.environ.get("BENCH_HOST_KERNEL", ""),
        "host_load": os.environ.get("BENCH_HOST_LOAD", ""),
        "vcpus": os.cpu_count(),
        "guest_cpu": guest_cpu,
        "accel": "qemu TCG (lab VM)" if in_lab else "native",
        "python": platform.python_version(),
        "pyroute2": pyroute2,
        "ipvsadm": first_line(["ipvsadm", "--version"]),
        "keepalived": first_line(["keepalived", "--version"]),
        "commit": os.environ.get("BENCH_COMMIT", ""),
        "mode": mode,
    }


def not_yet_tables() -> list[R.Table]:
    return [
        R.Table("operator_scale", "4. Operator scale (10k VirtualServices x 10 RealServers, real API server)",
                [], status="not yet measured: needs the operator (lvs_operator) running against the "
                           "control-plane tier (lvs_cluster)",
                notes=["planned: time to compile and write all per-node objects; API writes issued for one "
                       "RealServer change (target: the affected per-node objects only) and its latency; "
                       "peak memory of operator and agent"]),
        R.Table("end_to_end", "5. End to end (kubectl apply of a RealServer change until the dest is in the kernel)",
                [], status="not yet measured: needs the operator and the agent shell wired to the API "
                           "server, with the agent in the lab VM (e2e tier)",
                notes=["planned: p50/p99 over 100 changes with 1k and 10k services present; "
                       "target p99 < 1 s at 10k services (kubernetes#73382: ~20 s at ~4,000 endpoints)"]),
    ]


def build_tables(progs: list[dict], chgs: list[dict], dfts: list[dict], notes: dict[str, list[str]]) -> list[R.Table]:
    t1 = R.Table("program", "1. Programming from empty (N services x 10 NAT dests, time to a complete table)",
                 program_columns(), progs, notes.get("program", []))
    t1.add_ratio("ours", "ipvsadm_restore", "ours/ipvsadm-restore")
    t1.add_ratio("ours", "keepalived", "ours/keepalived")
    t1.add_ratio("ours_process", "ipvsadm_restore", "ours from start/ipvsadm-restore")
    t1.add_ratio("ours_process", "keepalived", "ours from start/keepalived")
    t1.add_per_unit("dests", "ours", "ours µs/dest")
    t1.add_growth("dests", "ours", "growth ours")
    t1.add_growth("dests", "ipvsadm_restore", "growth restore")
    t1.add_growth("dests", "keepalived", "growth keepalived")
    t2 = R.Table("change", "2. One dest's weight changes in a full table",
                 change_columns(), chgs, notes.get("change", []))
    t2.add_ratio("ours", "ipvsadm_restore", "ours/restore")
    t2.add_ratio("ours", "keepalived", "ours/keepalived")
    t2.add_ratio("ours", "ours_full", "ours/full reconcile")
    t2.add_ratio("ours", "ipvsadm_edit", "ours/ipvsadm -e")
    t2.add_growth("dests", "ours", "growth ours")
    t2.add_growth("dests", "ours_full", "growth full reconcile")
    t3 = R.Table("drift", "3. Drift: a dest deleted by hand, time to detect and repair",
                 drift_columns(), dfts, notes.get("drift", []))
    t3.add_ratio("ours", "ipvsadm_save", "ours/ipvsadm -Sn")
    t3.add_ratio("ours_restart", "ipvsadm_save", "restart/ipvsadm -Sn")
    t3.add_per_unit("dests", "ours", "ours µs/dest")
    t3.add_growth("dests", "ours", "growth ours")
    return [t1, t2, t3] + not_yet_tables()


STANDING_NOTES = {
    "program": [
        "ours: Engine.reconcile of the node spec in a long-lived process (observe, plan, ownership "
        "record saved, apply); peers: process spawn to table complete. ours: apply = the apply "
        "phase of that reconcile; ours: msg build = building those netlink messages alone, timed "
        "in a separate pass (part of apply)",
        "keepalived: checker process only, real servers without checkers; completion polled every "
        "~10 ms with ipvsadm on the last virtual server, then the whole table verified",
        "every figure verified by reading the table back with ipvsadm -Sn and comparing rule by rule",
        "ours from process start: like for like with the peers' processes, ours as one process doing what "
        "the agent does when it starts (interpreter start-up, imports, NodeState read from a JSON file and "
        "parsed as the agent does, Engine created with an ownership record, one full reconcile), spawn to "
        "exit. agent peak RSS: that process's VmHWM, the engine programming N dests from its parsed spec "
        "(goal <= 300 MiB at 100k); the agent's API client, watch and status parts are not in it",
    ],
    "change": [
        "ours: incremental reconcile of the spec with one weight changed, as the agent runs on a watch "
        "event (only the changed service read from the kernel, planned and applied); ops = operations "
        "the planner issued (target 1); ours: read = reading that one service. The changed spec "
        "shares the unchanged services' objects, as the agent's reuse of unchanged NodeState parses "
        "gives it",
        "ours: full reconcile: the weight changed back by a full reconcile (observe the whole table, "
        "plan, apply), as the agent's periodic resync does; ours full: observe = its table read",
        "full ipvsadm-restore: clear + restore of the changed table (a restore-based tool's cost per "
        "change); keepalived reload: SIGHUP with the changed config until the kernel shows the weight",
        "ipvsadm -e: the dest's weight set by one ipvsadm process on the full table (the ipvsadm-restore "
        "namespace), what a user of ipvsadm runs for one change; ours/ipvsadm -e: the agent's change vs "
        "that (goal <= 1.0x)",
    ],
    "drift": [
        "ipvsadm -d of one dest in our namespace, then one reconcile; ipvsadm -Sn is the C tool merely "
        "reading the same table (a floor for detection). keepalived does not repair drift without "
        "checkers (keepalived#1877), ipvsadm-restore has no notion of it",
        f"ours: sweep round: the same deletion found and repaired by the agent's way, a round of "
        f"{SWEEP_SLICES} incremental passes each re-checking 1/{SWEEP_SLICES} of the services (at "
        "--resync 30 the agent runs one every 0.5 s); largest slice: the most a change arriving "
        "during the sweep waits for it",
        "ours: restart: the agent restarting on its full table, as every DaemonSet rollout does: ours' "
        "engine closed, then the agent's start as a process (table 1's 'from process start') with the same "
        "ownership record, spawn to exit; its first full reconcile must issue 0 ops. Reading the table is "
        "its floor, hence the ratio to ipvsadm -Sn (goal <= 1.5x); ours restart: reconcile = that "
        "reconcile alone",
    ],
}


def parse_caps(items: list[str]) -> Caps:
    caps = Caps()
    for it in items:
        who, _, rest = it.partition("=")
        lim, _, why = rest.partition(":")
        caps.limits[who] = (int(lim), why or "capped by --cap")
    return caps


def run(sizes: list[int], *, mode: str, repeat: int = 1, repeat_upto: int = 10_000,
        timeout: float = DEFAULT_TIMEOUT,
        caps: Caps | None = None, per_service: int = 10) -> tuple[list[R.Table], dict]:
    caps = caps or Caps()
    t_start = time.perf_counter()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    notes = {k: list(v) for k, v in STANDING_NOTES.items()}
    for who, (lim, reason) in sorted(caps.limits.items()):
        if any(n > lim for n in sizes):
            notes["program"].append(f"{who} capped at {lim:,} dests: {reason}")
    progs, chgs, dfts, details = [], [], [], []
    warm = warm_up()
    for n in sizes:
        w = W.Workload.for_total(n, per_service)
        p, c, d = run_size(w, caps, repeat if n <= repeat_upto else 1, timeout, details)
        progs.append(p)
        chgs.append(c)
        dfts.append(d)
    machine = machine_info(mode)
    machine["repeat"] = (f"median of {repeat} for part 1 up to {repeat_upto:,} dests, 1 above"
                         if repeat > 1 else 1)
    machine["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    machine["details"] = details
    machine["warm_up"] = warm
    return build_tables(progs, chgs, dfts, notes), machine


def write_outputs(tables: list[R.Table], machine: dict, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md_machine = {k: v for k, v in machine.items() if k not in ("details", "warm_up")}
    files = {
        out / f"{name}.json": R.report_json(tables, machine),
        out / f"{name}.md": R.render_report_markdown(tables, md_machine),
        out / f"{name}.txt": R.render_report_text(tables, md_machine),
    }
    for path, text in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return list(files)


def parse_sizes(text: str) -> list[int]:
    """"1000,10_000" -> [1000, 10000]; "" -> []."""
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_bench.kernel", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help=f"tiny sizes {SMOKE_SIZES} (harness check)")
    ap.add_argument("--sizes", help="comma-separated total dests (default 1000,10000,100000)")
    ap.add_argument("--per-service", type=int, default=10, help="dests per service (default 10)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="trials per size for part 1, median reported (default 3)")
    ap.add_argument("--repeat-upto", type=int, default=10_000, metavar="DESTS",
                    help="repeat only sizes up to DESTS; larger ones run once (default 10000)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per peer trial")
    ap.add_argument("--cap", action="append", default=[], metavar="WHO=DESTS[:REASON]",
                    help="skip WHO (ours, ipvsadm_restore, keepalived) above DESTS")
    ap.add_argument("--out", help="directory for NAME.json/.md/.txt "
                                  "(default $KUBE_LVS_LAB_RESULTS/bench, else ./bench-results)")
    ap.add_argument("--name", help="file name stem (default: latest, or smoke with --smoke)")
    ap.add_argument("--lvsctl-sizes", metavar="DESTS,..",
                    help=f"total dests of the lvsctl table (1b; default {LVSCTL_FULL_SIZES[0]}, "
                         f"{LVSCTL_SMOKE_SIZES[0]} with --smoke; '' skips it)")
    ap.add_argument("--lvsctl-only", action="store_true", help="only the lvsctl table (1b), not parts 1-3")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("lvs_bench.kernel: needs root and an IPVS kernel: run it through bench/run.sh "
              "(the lab VM)", file=sys.stderr)
        return 2
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    else:
        sizes = list(SMOKE_SIZES if args.smoke else FULL_SIZES)
    mode = "smoke" if args.smoke else "full" if not args.sizes else "custom"
    repeat = 1 if args.smoke else max(1, args.repeat)
    lsizes = (parse_sizes(args.lvsctl_sizes) if args.lvsctl_sizes is not None
              else list(LVSCTL_SMOKE_SIZES if args.smoke else LVSCTL_FULL_SIZES))
    if args.lvsctl_only:
        tables, machine = [], machine_info(mode)
    else:
        tables, machine = run(sizes, mode=mode, repeat=repeat, repeat_upto=args.repeat_upto,
                              timeout=args.timeout, caps=parse_caps(args.cap), per_service=args.per_service)
    if lsizes:
        tables.insert(min(3, len(tables)), run_lvsctl(lsizes, args.timeout))
    print(R.render_report_text(tables, {k: v for k, v in machine.items() if k not in ("details", "warm_up")}))
    base = os.environ.get("KUBE_LVS_LAB_RESULTS")
    out = Path(args.out) if args.out else (Path(base) / "bench" if base else Path("bench-results"))
    name = args.name or ("smoke" if args.smoke else "latest")
    for f in write_outputs(tables, machine, out, name):
        log(f"wrote {f}")
    errors = [e for t in tables for e in t.errors()]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
