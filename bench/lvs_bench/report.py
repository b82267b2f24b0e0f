"""Result tables: ratios, growth, and their text / markdown / JSON forms (pure).

A benchmark result is a ``Table``: columns (key, label, kind) and rows of
cells. A cell is a number, a string, None (not applicable / not measured) or
an error ``{"error": "why"}``: a figure whose sanity check failed is never
printed as a number. Ratio and growth columns are derived here from the
measured ones, so every output form agrees.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

KINDS = ("int", "sec", "ratio", "growth", "count", "text", "usec", "cores")


def error(msg: str) -> dict:
    return {"error": str(msg)}


def is_error(cell: Any) -> bool:
    return isinstance(cell, dict) and "error" in cell


def number(cell: Any) -> float | None:
    """The cell's value if it is a usable number, else None."""
    if isinstance(cell, bool) or not isinstance(cell, (int, float)):
        return None
    if math.isnan(cell) or math.isinf(cell):
        return None
    return float(cell)


def ratio(a: Any, b: Any) -> float | None:
    """a / b, or None when either is missing, an error, or b is not positive."""
    x, y = number(a), number(b)
    if x is None or y is None or y <= 0:
        return None
    return x / y


def growth(sizes: list[Any], values: list[Any]) -> list[float | None]:
    """Per step, how much faster than linear the cost grew.

    ``(v[i] / v[i-1]) / (size[i] / size[i-1])``: 1.0 is linear, 2.0 means each
    unit of work got twice as expensive as at the previous size. The first row
    (and any row next to a missing value) is None.
    """
    out: list[float | None] = [None] * len(values)
    for i in range(1, len(values)):
        t = ratio(values[i], values[i - 1])
        s = ratio(sizes[i], sizes[i - 1])
        if t is not None and s:
            out[i] = t / s
    return out


def fmt_seconds(x: float) -> str:
    if x < 0.001:
        return f"{x * 1e6:.0f} µs"
    if x < 1:
        return f"{x * 1000:.1f} ms"
    if x < 100:
        return f"{x:.2f} s"
    return f"{x:.0f} s"


def fmt_ratio(x: float) -> str:
    """Two decimals, or two significant digits below 0.1 (0.0034x, not 0.00x)."""
    if 0 < x < 0.1:
        return f"{x:.2g}x"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def fmt_cell(cell: Any, kind: str) -> str:
    if cell is None:
        return "-"
    if is_error(cell):
        return "ERROR"
    if isinstance(cell, str):
        return cell
    x = number(cell)
    if x is None:
        return str(cell)
    if kind == "sec":
        return fmt_seconds(x)
    if kind == "ratio":
        return fmt_ratio(x)
    if kind in ("growth", "cores"):
        return f"{x:.2f}"
    if kind == "usec":
        return f"{x:.1f}"
    if kind in ("int", "count"):
        return f"{int(x):,}"
    return f"{x:g}"


@dataclass
class Column:
    key: str
    label: str
    kind: str = "sec"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.key}: kind {self.kind!r} is not one of {KINDS}")


@dataclass
class Table:
    id: str
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # "ok", or "not measured: needs X" for a benchmark that cannot run yet.
    status: str = "ok"

    def keys(self) -> list[str]:
        return [c.key for c in self.columns]

    def add_ratio(self, num: str, den: str, label: str | None = None) -> str:
        """Add column ``num/den`` computed row by row; returns its key."""
        key = f"{num}/{den}"
        self.columns.append(Column(key, label or key, "ratio"))
        for r in self.rows:
            r[key] = ratio(r.get(num), r.get(den))
        return key

    def add_growth(self, size_key: str, value_key: str, label: str | None = None) -> str:
        key = f"{value_key}.growth"
        self.columns.append(Column(key, label or f"{value_key} growth", "growth"))
        g = growth([r.get(size_key) for r in self.rows], [r.get(value_key) for r in self.rows])
        for r, x in zip(self.rows, g):
            r[key] = x
        return key

    def add_per_unit(self, size_key: str, value_key: str, label: str | None = None) -> str:
        """Microseconds of ``value_key`` per unit of ``size_key``."""
        key = f"{value_key}.per_unit"
        self.columns.append(Column(key, label or f"{value_key} µs/unit", "usec"))
        for r in self.rows:
            q = ratio(r.get(value_key), r.get(size_key))
            r[key] = None if q is None else q * 1e6
        return key

    def errors(self) -> list[tuple[int, str, str]]:
        """(row index, column key, message) of every error cell."""
        return [(i, k, r[k]["error"]) for i, r in enumerate(self.rows)
                for k in self.keys() if is_error(r.get(k))]

    def missing_columns(self) -> list[str]:
        """Column keys absent from some row (every row must have every column)."""
        return [k for k in self.keys() if any(k not in r for r in self.rows)]

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "status": self.status,
                "columns": [{"key": c.key, "label": c.label, "kind": c.kind} for c in self.columns],
                "rows": self.rows, "notes": self.notes}

    @classmethod
    def from_json(cls, d: dict) -> "Table":
        return cls(d["id"], d["title"], [Column(**c) for c in d["columns"]], list(d["rows"]),
                   list(d.get("notes", [])), d.get("status", "ok"))


def _grid(t: Table) -> list[list[str]]:
    out = [[c.label for c in t.columns]]
    for r in t.rows:
        out.append([fmt_cell(r.get(c.key), c.kind) for c in t.columns])
    return out


def _error_notes(t: Table) -> list[str]:
    return [f"error in row {i + 1}, {k}: {msg}" for i, k, msg in t.errors()]


def render_text(t: Table) -> str:
    lines = [f"== {t.title}"]
    if t.status != "ok":
        lines.append(f"   {t.status}")
        lines += [f"   note: {n}" for n in t.notes]
        return "\n".join(lines) + "\n"
    grid = _grid(t)
    widths = [max(len(row[i]) for row in grid) for i in range(len(grid[0]))]
    for n, row in enumerate(grid):
        lines.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [f"   {n}" for n in _error_notes(t)]
    lines += [f"   note: {n}" for n in t.notes]
    return "\n".join(lines) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(t: Table) -> str:
    lines = [f"### {t.title}", ""]
    if t.status != "ok":
        lines.append(f"*{_md_escape(t.status)}*")
        lines += ["", *[f"- {_md_escape(n)}" for n in t.notes]] if t.notes else []
        return "\n".join(lines) + "\n"
    grid = _grid(t)
    lines.append("| " + " | ".join(_md_escape(c) for c in grid[0]) + " |")
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(grid[0]))) + "|")
    for row in grid[1:]:
        lines.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
    extra = _error_notes(t) + t.notes
    if extra:
        lines.append("")
        lines += [f"- {_md_escape(n)}" for n in extra]
    return "\n".join(lines) + "\n"


MACHINE_FIELDS = (
    ("date", "date"),
    ("guest_kernel", "kernel (VM, uname -r)"),
    ("host_cpu", "host CPU"),
    ("host_kernel", "host kernel"),
    ("host_load", "host load average at start (1/5/15 min)"),
    ("vcpus", "VM vCPUs"),
    ("accel", "accelerator"),
    ("guest_cpu", "VM CPU model"),
    ("python", "python"),
    ("pyroute2", "pyroute2"),
    ("ipvsadm", "ipvsadm"),
    ("keepalived", "keepalived"),
    ("commit", "commit"),
    ("mode", "mode"),
    ("repeat", "repetitions"),
    ("wall_seconds", "harness wall time (s)"),
)


def machine_lines(machine: dict) -> list[tuple[str, str]]:
    out = [(label, str(machine[k])) for k, label in MACHINE_FIELDS if machine.get(k) not in (None, "")]
    known = {k for k, _ in MACHINE_FIELDS}
    out += [(k, str(v)) for k, v in sorted(machine.items()) if k not in known and v not in (None, "")]
    return out


def _ratio_text(row: dict, key: str, peer: str) -> str:
    x = number(row.get(key))
    return f"{fmt_ratio(x)} {peer}" if x is not None else f"no ratio to {peer}"


def _process_text(r: dict) -> str:
    """The program row's agent-as-a-process figures, if the row has them."""
    if "ours_process" not in r:
        return ""
    return (f"; ours from process start {fmt_cell(r.get('ours_process'), 'sec')} = "
            f"{_ratio_text(r, 'ours_process/ipvsadm_restore', 'ipvsadm-restore')}, "
            f"{_ratio_text(r, 'ours_process/keepalived', 'keepalived')}, peak RSS "
            f"{fmt_cell(r.get('ours_process_rss'), 'int')} MiB")


def summary_lines(tables: Iterable[Table]) -> list[str]:
    """One line per measured benchmark, at each size: the headline ratios."""
    by_id = {t.id: t for t in tables}
    out: list[str] = []
    t = by_id.get("program")
    if t and t.status == "ok":
        for r in t.rows:
            out.append(f"programming {fmt_cell(r.get('dests'), 'int')} dests from empty: ours "
                       f"{fmt_cell(r.get('ours'), 'sec')} = {_ratio_text(r, 'ours/ipvsadm_restore', 'ipvsadm-restore')}, "
                       f"{_ratio_text(r, 'ours/keepalived', 'keepalived')}" + _process_text(r))
    t = by_id.get("change")
    if t and t.status == "ok":
        for r in t.rows:
            out.append(f"one weight change in {fmt_cell(r.get('dests'), 'int')} dests: ours "
                       f"{fmt_cell(r.get('ours_ops'), 'count')} op(s), {fmt_cell(r.get('ours'), 'sec')} "
                       f"(incremental; full reconcile {fmt_cell(r.get('ours_full'), 'sec')}) = "
                       f"{_ratio_text(r, 'ours/ipvsadm_restore', 'a full restore')}, "
                       f"{_ratio_text(r, 'ours/keepalived', 'a keepalived reload')}"
                       + (f", {_ratio_text(r, 'ours/ipvsadm_edit', 'ipvsadm -e')}" if "ipvsadm_edit" in r else ""))
    t = by_id.get("drift")
    if t and t.status == "ok":
        for r in t.rows:
            out.append(f"drift repair in {fmt_cell(r.get('dests'), 'int')} dests: ours "
                       f"{fmt_cell(r.get('ours_ops'), 'count')} op(s), {fmt_cell(r.get('ours'), 'sec')} = "
                       f"{_ratio_text(r, 'ours/ipvsadm_save', 'ipvsadm -Sn reading the table')}; "
                       f"as the agent finds it, a sweep round {fmt_cell(r.get('ours_sweep'), 'sec')}, "
                       f"largest slice {fmt_cell(r.get('ours_slice'), 'sec')}"
                       + (f"; agent restart on the full table {fmt_cell(r.get('ours_restart'), 'sec')} = "
                          f"{_ratio_text(r, 'ours_restart/ipvsadm_save', 'ipvsadm -Sn')}" if "ours_restart" in r else ""))
    t = by_id.get("lvsctl")
    if t and t.status == "ok":
        for r in t.rows:
            out.append(f"lvsctl as a process, {fmt_cell(r.get('dests'), 'int')} dests: apply "
                       f"{fmt_cell(r.get('lvsctl'), 'sec')} (reconcile {fmt_cell(r.get('lvsctl_reconcile'), 'sec')}) = "
                       f"{_ratio_text(r, 'lvsctl/ipvsadm_restore', 'ipvsadm -R')}; one weight change "
                       f"{fmt_cell(r.get('lvsctl_change'), 'sec')} = "
                       f"{_ratio_text(r, 'lvsctl_change/ipvsadm_edit', 'ipvsadm -e')}")
    t = by_id.get("operator_scale")
    if t and t.status == "ok":
        for r in t.rows:
            out.append(f"operator, {fmt_cell(r.get('virtual_services'), 'int')} VirtualServices x "
                       f"{fmt_cell(r.get('real_servers'), 'int')} RealServers: start to all "
                       f"{fmt_cell(r.get('nodestates'), 'count')} NodeStates {fmt_cell(r.get('to_all'), 'sec')}; "
                       f"one change: {fmt_cell(r.get('change_writes'), 'count')} NodeState write(s) (target "
                       f"{fmt_cell(r.get('change_target'), 'count')}) in {fmt_cell(r.get('change_latency'), 'sec')}; "
                       f"peak RSS {fmt_cell(r.get('peak_rss_mib'), 'int')} MiB")
    t = by_id.get("end_to_end")
    if t and t.status == "ok":
        for r in t.rows:
            if is_error(r.get("seen")):
                out.append(f"end to end with {fmt_cell(r.get('services'), 'int')} services: not measured "
                           "(error below the table)")
                continue
            out.append(f"end to end with {fmt_cell(r.get('services'), 'int')} services: kubectl patch to kernel "
                       f"p50 {fmt_cell(r.get('p50'), 'sec')}, p99 {fmt_cell(r.get('p99'), 'sec')} over "
                       f"{fmt_cell(r.get('seen'), 'count')} changes (kube-proxy IPVS, kubernetes#73382: "
                       f"~20 s at ~4,000 endpoints; context only)")
            if r.get("floor") is not None:
                out.append(f"end to end with {fmt_cell(r.get('services'), 'int')} services: statuses settled "
                           f"{fmt_cell(r.get('settled'), 'sec')} = {fmt_cell(r.get('settled/floor'), 'ratio')} the "
                           f"API server's floor ({fmt_cell(r.get('floor'), 'sec')}) for the "
                           f"{fmt_cell(r.get('writes'), 'count')} writes they took")
    out += [f"{t.title}: {t.status}" for t in by_id.values() if t.status != "ok"]
    return out


def render_report_text(tables: Iterable[Table], machine: dict) -> str:
    tables = list(tables)
    head = "kube-lvs kernel benchmarks\n" + "".join(f"  {k}: {v}\n" for k, v in machine_lines(machine))
    summary = "summary (ratios ours/peer, below 1.00x ours is faster):\n" + "".join(
        f"  - {line}\n" for line in summary_lines(tables))
    return head + "\n" + summary + "\n" + "\n".join(render_text(t) for t in tables)


def render_report_markdown(tables: Iterable[Table], machine: dict) -> str:
    head = ["# kube-lvs benchmark results", "",
            "Generated by `bench/run.sh`; ratios are ours / peer, measured side by side in the same "
            "VM run (below 1.00x ours is faster). Growth: (time step) / (size step), 1.00 = linear.",
            "", "| machine | |", "|---|---|"]
    head += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in machine_lines(machine)]
    tables = list(tables)
    head += ["", "## Summary", ""] + [f"- {_md_escape(line)}" for line in summary_lines(tables)]
    head += ["", "## Tables", ""]
    return "\n".join(head) + "\n" + "\n".join(render_markdown(t) for t in tables)


def report_json(tables: Iterable[Table], machine: dict) -> str:
    return json.dumps({"version": 1, "machine": machine, "benchmarks": [t.to_json() for t in tables]},
                      indent=1, sort_keys=False) + "\n"


def load_report(text: str) -> tuple[list[Table], dict]:
    d = json.loads(text)
    return [Table.from_json(t) for t in d["benchmarks"]], d.get("machine", {})


def rerender(json_path: str) -> list[str]:
    """Write NAME.md and NAME.txt next to NAME.json from it (e.g. after a
    change of the report layout, without re-running the VM)."""
    import os
    with open(json_path) as f:
        tables, machine = load_report(f.read())
    machine = {k: v for k, v in machine.items() if k not in ("details", "warm_up", "host_details")}
    stem = json_path[:-5] if json_path.endswith(".json") else json_path
    out = []
    for ext, text in ((".md", render_report_markdown(tables, machine)),
                      (".txt", render_report_text(tables, machine))):
        with open(stem + ext + ".tmp", "w") as f:
            f.write(text)
        os.replace(stem + ext + ".tmp", stem + ext)
        out.append(stem + ext)
    return out


if __name__ == "__main__":
    import sys
    if len(sys.argv) < 2:
        sys.exit("usage: PYTHONPATH=bench python -m lvs_bench.report RESULTS.json... (re-renders .md/.txt)")
    for p in sys.argv[1:]:
        print("\n".join(rerender(p)))
