"""The benchmark plots (bench/lvs_bench/plots.py) from a recorded report:
bench/results/latest.json, cut down to what the plots read, rendered into a
temporary folder. Failed before: make bench wrote tables only."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from lvs_bench import plots  # noqa: E402

pytest.importorskip("matplotlib", reason="matplotlib is a test dependency: pip install -e '.[test]'")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def recorded() -> dict:
    """The recorded run, without the logs and traces the plots do not read."""
    report = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    e2e = report["machine"]["host_details"]["end_to_end"]["details"]
    report["machine"] = {"host_details": {"end_to_end": {"details": [
        {"latencies": d["latencies"]} if "latencies" in d else {} for d in e2e]}}}
    return report


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_render_as_pngs(recorded, tmp_path):
    written = plots.write_plots(recorded, tmp_path, "latest")
    assert [p.name for p in written] == ["latest.scaling.png", "latest.e2e-latency.png"]
    for p in written:
        w, h = png_size(p)
        assert w >= 400 and h >= 300 and p.stat().st_size > 10_000, (p, w, h)
    assert not list(tmp_path.glob("*.tmp"))


def test_scaling_series_follow_the_tables(recorded):
    panels = {title: lines for title, _, lines in plots.scaling_series(recorded)}
    assert list(panels) == ["Programming from empty", "One weight change", "Drift: detect and repair"]
    ours = panels["Programming from empty"]["kube-lvs"]
    first = next(t for t in recorded["benchmarks"] if t["title"].startswith("1."))
    assert ours == sorted((r["dests"], r["ours"]) for r in first["rows"]) and len(ours) >= 2


def test_latency_cdf_per_size(recorded):
    samples = plots.latency_samples(recorded)
    part5 = next(t for t in recorded["benchmarks"] if t["title"].startswith("5."))
    assert samples and sorted(samples) == sorted(r["services"] for r in part5["rows"])
    assert all(len(samples[r["services"]]) == r["seen"] for r in part5["rows"])
    xs, ys = plots.cdf([0.3, 0.1, 0.2, 0.2])
    assert xs == [0.1, 0.2, 0.2, 0.3] and ys == [0.25, 0.5, 0.75, 1.0]


def test_a_report_of_some_parts_plots_what_it_has(recorded, tmp_path):
    only_kernel = {"benchmarks": [t for t in recorded["benchmarks"] if t["title"][:2] in ("1.", "2.", "3.")],
                   "machine": {}}
    assert [p.name for p in plots.write_plots(only_kernel, tmp_path, "smoke")] == ["smoke.scaling.png"]
    assert plots.write_plots({"benchmarks": [], "machine": {}}, tmp_path / "none", "x") == []
