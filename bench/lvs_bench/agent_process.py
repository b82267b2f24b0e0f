"""What the agent does when it starts, as one process the benchmark times from
outside (spawn to exit), like the peers' processes:

    python agent_process.py OBJECTS.json --record OWNERSHIP.json [--node NAME]

imports the agent's modules, reads its NodeState objects from a JSON file in
the format of its object cache (name -> object), merges and parses them as the
agent does, creates the Engine with the ownership record (held, as the agent
holds it), runs one full reconcile of the network namespace it was started in,
and exits. Its last stdout line is a JSON report: its own phase split, the ops
the reconcile issued, and its peak resident memory.

Run as a file, not through the ``lvs_bench`` package, so that the "imports"
phase is the agent's imports alone. The parsing helpers are pure (unit-tested).
"""
from __future__ import annotations

import time

_T0 = time.perf_counter()  # before any other import: "imports" starts here

import json  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

PHASES = ("imports", "read_parse", "reconcile")


def vm_hwm_mib(status_text: str) -> float | None:
    """Peak resident set (VmHWM) in MiB from a /proc/PID/status text."""
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            f = line.split()
            if len(f) >= 3 and f[2] == "kB" and f[1].isdigit():
                return int(f[1]) / 1024
    return None


def parse_report(out: str, expect_ops: int | None = None) -> dict[str, Any]:
    """The report from the process's output (its last JSON line), checked: every
    phase a non-negative number, no failed op, ``expect_ops`` ops if given.
    ValueError says what is wrong."""
    line = next((ln for ln in reversed(out.splitlines()) if ln.lstrip().startswith("{")), None)
    if line is None:
        raise ValueError(f"no JSON report in the output: {out.strip()[-300:]!r}")
    try:
        rep = json.loads(line)
    except ValueError as e:
        raise ValueError(f"bad JSON report: {e}: {line[:300]!r}") from None
    if not isinstance(rep, dict):
        raise ValueError(f"the report is not an object: {line[:300]!r}")
    for k in (*PHASES, "ops", "failed", "peak_rss_mib"):
        v = rep.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"report field {k} = {v!r}, not a non-negative number")
    if rep["failed"]:
        raise ValueError(f"the reconcile had {rep['failed']} failed ops: {rep.get('first_error')}")
    if expect_ops is not None and rep["ops"] != expect_ops:
        raise ValueError(f"the reconcile issued {rep['ops']} ops, expected {expect_ops}")
    return rep


def nodestate_objects(spec_doc: dict, name: str = "bench") -> dict[str, dict]:
    """The object-cache file's content for one NodeState with that spec."""
    return {name: {"apiVersion": "lvs.kube-lvs.io/v1alpha1", "kind": "NodeState",
                   "metadata": {"name": name}, "spec": spec_doc}}


def main(argv: list[str]) -> int:
    import argparse
    from pathlib import Path

    from lvs_agent.engine import DRAIN_RECORD, Engine
    from lvs_agent.gcpause import GCPauses
    from lvs_agent.nodestate import merge
    from lvs_agent.object_cache import ObjectCache
    from lvs_agent.state import hold_record
    t_imports = time.perf_counter()

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("objects", type=Path, help="NodeState objects, name -> object (object cache format)")
    ap.add_argument("--record", type=Path, required=True, help="the ownership record")
    ap.add_argument("--node", default="bench")
    args = ap.parse_args(argv)

    objects = ObjectCache(args.objects).load()
    if not objects:
        print(f"no objects in {args.objects}", file=sys.stderr)
        return 2
    merged = merge(objects, args.node)
    if merged.errors:
        print(f"NodeState errors: {dict(list(merged.errors.items())[:1])}", file=sys.stderr)
        return 2
    t_parse = time.perf_counter()

    lock = hold_record(args.record, "lvs_bench agent_process")
    try:
        with Engine(args.record, drain_path=args.record.with_name(DRAIN_RECORD)) as engine:
            GCPauses().before_full_pass()  # as the agent's first pass does
            rep = engine.reconcile(merged.spec)
    finally:
        lock.release()
    t_done = time.perf_counter()

    failed = list(rep.failed)
    first = (failed[:1] or list(rep.problems.items())[:1] or rep.errors[:1]
             or list(rep.service_errors.items())[:1])
    problems = len(rep.problems) + len(rep.errors) + len(rep.service_errors) + (0 if rep.ok else 1)
    with open("/proc/self/status") as f:
        rss = vm_hwm_mib(f.read())
    print(json.dumps({
        "imports": t_imports - _T0, "read_parse": t_parse - t_imports, "reconcile": t_done - t_parse,
        "ops": len(rep.ops), "failed": len(failed) + problems, "first_error": str(first[0]) if first else None,
        "services": len(merged.spec.services), "peak_rss_mib": rss,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
