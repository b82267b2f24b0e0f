"""Parts 4 and 5 of issue 7, run from the host (not inside the lab VM), merged
into a report written by lvs_bench.kernel (parts 1-3): their tables replace the
"not yet measured" stubs and the .md/.txt are re-rendered.

    PYTHONPATH=bench python -m lvs_bench.host --merge bench/results/latest.json [--smoke]
        [--operator-sizes 10000[,...]] [--e2e-services 1000[,10000]] [--e2e-changes 100] [--parts 4,5]

Without --merge (or when the file does not exist) a report of parts 4-5 alone
is written to --out/NAME.{json,md,txt}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import end_to_end as E
from . import operator_scale as O
from . import report as R


def _sizes(text: str | None, default) -> list[int]:
    if not text:
        return list(default)
    return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]


def write(tables: list[R.Table], machine: dict, stem: Path) -> list[Path]:
    md_machine = {k: v for k, v in machine.items() if k not in ("details", "warm_up", "host_details")}
    files = {
        stem.with_suffix(".json"): R.report_json(tables, machine),
        stem.with_suffix(".md"): R.render_report_markdown(tables, md_machine),
        stem.with_suffix(".txt"): R.render_report_text(tables, md_machine),
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return list(files)


def merge(tables: list[R.Table], new: list[R.Table]) -> list[R.Table]:
    by_id = {t.id: t for t in new}
    out = [by_id.pop(t.id, t) for t in tables]
    return out + list(by_id.values())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_bench.host", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help=f"tiny sizes: part 4 {O.SMOKE_SIZES[0]} VS x 3 RS, part 5 {E.SMOKE['services'][0]} services, "
                         f"{E.SMOKE['changes']} changes")
    ap.add_argument("--parts", default="4,5", help="which of 4,5 to run (default both)")
    ap.add_argument("--operator-sizes", help=f"part 4 VirtualService counts (default {O.FULL_SIZES})")
    ap.add_argument("--per-vs", type=int, help="part 4 RealServers per VirtualService (default 10, smoke 3)")
    ap.add_argument("--e2e-services", help=f"part 5 VirtualService counts (default {E.FULL['services']})")
    ap.add_argument("--e2e-changes", type=int, help=f"part 5 changes (default {E.FULL['changes']})")
    ap.add_argument("--e2e-floor-sample", type=int, default=E.FLOOR_SAMPLE,
                    help="part 5: writes of each kind timed for the API server's floor (default %(default)s)")
    ap.add_argument("--merge", help="report JSON of parts 1-3 to merge into (rewritten with .md/.txt)")
    ap.add_argument("--out", default="bench-results", help="directory when not merging")
    ap.add_argument("--name", default="host", help="file stem when not merging")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    t0 = time.perf_counter()
    new: list[R.Table] = []
    host_details: dict = {}
    if "4" in parts:
        sizes = _sizes(args.operator_sizes, O.SMOKE_SIZES if args.smoke else O.FULL_SIZES)
        per_vs = args.per_vs or (3 if args.smoke else 10)
        t, m = O.run(sizes, per_vs=per_vs)
        new.append(t)
        host_details["operator_scale"] = m
        print(R.render_text(t), flush=True)
    if "5" in parts:
        base = E.SMOKE if args.smoke else E.FULL
        sizes = _sizes(args.e2e_services, base["services"])
        t, m = E.run(sizes, args.e2e_changes or base["changes"], floor_sample=args.e2e_floor_sample)
        new.append(t)
        host_details["end_to_end"] = m
        print(R.render_text(t), flush=True)
    wall = round(time.perf_counter() - t0, 1)
    if args.merge and Path(args.merge).exists():
        tables, machine = R.load_report(Path(args.merge).read_text())
        stem = Path(args.merge).with_suffix("")
    else:
        tables, machine = [], {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "mode": "smoke" if args.smoke else "full"}
        stem = Path(args.out) / args.name
    machine["host_parts_wall_seconds"] = wall
    machine["host_load_after_parts_4_5"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    # A part run alone replaces its own details and keeps the other part's.
    machine["host_details"] = {**(machine.get("host_details") or {}), **host_details}
    tables = merge(tables, new)
    for f in write(tables, machine, stem):
        print(f"[bench/host] wrote {f}", file=sys.stderr)
    errors = [e for t in new for e in t.errors()]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
