"""Pictures of a benchmark report, beside its tables: how each time grows with
the table's size (parts 1-3, ours next to ipvsadm-restore and keepalived) and
the distribution of end-to-end change latencies (part 5, one CDF per size).

    PYTHONPATH=bench python -m lvs_bench.plots bench/results/latest.json [OUT_DIR]

writes ``<name>.scaling.png`` and ``<name>.e2e-latency.png`` into OUT_DIR
(default: beside the JSON). bench/run.sh runs it after every run. A plot
whose data the report lacks (a run of some parts only) is left out.

The data is picked out by pure functions (``scaling_series``,
``latency_samples``, ``cdf``); only ``write_plots`` touches matplotlib.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# (table title prefix, x column, [(y column, legend)], panel title)
SCALING = [
    ("1.", "dests", [("ours", "kube-lvs"), ("ipvsadm_restore", "ipvsadm-restore"), ("keepalived", "keepalived")],
     "Programming from empty"),
    ("2.", "dests", [("ours", "kube-lvs, incremental"), ("ours_full", "kube-lvs, full reconcile"),
                     ("ipvsadm_restore", "ipvsadm-restore"), ("keepalived", "keepalived")],
     "One weight change"),
    ("3.", "dests", [("ours", "kube-lvs"), ("ipvsadm_save", "ipvsadm --save (a read only)")], "Drift: detect and repair"),
]


def _table(report: dict, prefix: str) -> dict | None:
    for t in report.get("benchmarks", []):
        if t.get("title", "").startswith(prefix) and t.get("status", "ok") == "ok":
            return t
    return None


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def scaling_series(report: dict) -> list[tuple[str, str, dict[str, list[tuple[float, float]]]]]:
    """[(panel title, x label, {legend: [(x, seconds)...]})] for parts 1-3;
    error cells and missing columns are left out, empty panels too."""
    out = []
    for prefix, xkey, ys, title in SCALING:
        t = _table(report, prefix)
        if t is None:
            continue
        lines = {}
        for ykey, legend in ys:
            pts = [(_num(r.get(xkey)), _num(r.get(ykey))) for r in t["rows"]]
            pts = [(x, y) for x, y in pts if x is not None and y is not None and y > 0]
            if pts:
                lines[legend] = sorted(pts)
        if lines:
            out.append((title, xkey, lines))
    return out


def latency_samples(report: dict) -> dict[int, list[float]]:
    """Part 5's change latencies (seconds) per number of services, from the
    host details the run keeps; sizes without latencies are left out."""
    table = _table(report, "5.")
    details = (report.get("machine", {}).get("host_details", {}).get("end_to_end", {}).get("details") or [])
    runs = [d["latencies"] for d in details if isinstance(d, dict) and d.get("latencies")]
    if table is None or not runs:
        return {}
    sizes = [int(r["services"]) for r in table["rows"] if _num(r.get("services")) is not None]
    return {size: [float(x) for x in lat] for size, lat in zip(sizes, runs)}


def cdf(values: list[float]) -> tuple[list[float], list[float]]:
    """The empirical CDF: sorted values and the fraction at or below each."""
    xs = sorted(values)
    n = len(xs)
    return xs, [(i + 1) / n for i in range(n)]


def write_plots(report: dict, out_dir: Path, name: str) -> list[Path]:
    """Render the plots the report has data for; returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    panels = scaling_series(report)
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for ax, (title, xlabel, lines) in zip(axes[0], panels):
            for legend, pts in lines.items():
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=legend)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(title)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("seconds")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle("Time versus table size (lab VM, lower is better)")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{name}.scaling.png", plt))
    samples = latency_samples(report)
    if samples:
        fig, ax = plt.subplots(figsize=(6, 4))
        for size, lat in sorted(samples.items()):
            xs, ys = cdf(lat)
            ax.step(xs, ys, where="post", label=f"{size:,} services ({len(lat)} changes)")
        ax.set_xlabel("seconds from kubectl patch to the weight in the director's kernel")
        ax.set_ylabel("fraction of changes")
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title("End-to-end change latency (CDF)")
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"{name}.e2e-latency.png", plt))
    return written


def _save(fig, path: Path, plt) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else src.parent
    for p in write_plots(json.loads(src.read_text()), out, src.stem):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
